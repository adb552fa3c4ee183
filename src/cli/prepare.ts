/**
 * `attnres prepare`: tokenize a corpus into a prepared dataset folder (src/data/prepare.ts):
 * meta.json, train.bin, val.bin and the tokenizer. Re-running with the same inputs is instant.
 */
import { prepareDetailed, type PrepareResult } from "../data/prepare.js";

export { registerPrepare } from "./commands/prepare.js";

export interface PrepareFlags {
  corpus: string;
  tokenizer: string;
  vocabSize?: number;
  out?: string;
  quiet?: boolean;
  allowBinary?: boolean;
}

export async function prepareCommand(f: PrepareFlags): Promise<PrepareResult> {
  return prepareDetailed({
    corpus: f.corpus,
    tokenizer: f.tokenizer,
    vocabSize: f.vocabSize,
    out: f.out,
    quiet: f.quiet,
    allowBinary: f.allowBinary,
  });
}
