/**
 * `attnres generate`: samples a continuation of a prompt from a checkpoint (any residual mode) with
 * a KV cache, streaming the decoded text to stdout. The checkpoint folder must hold the tokenizer
 * it was trained with (attnres_tokenizer.json or tokenizer.json, as `attnres train` writes it).
 *
 *   generateCommand(opts, write)   the command as a function (tests): writes the prompt (unless
 *                                  echo is false) and the new text through `write`, returns the ids
 *   registerGenerate(program)      adds the subcommand to commander
 */
import { randomInt } from "node:crypto";
import type { Tokenizer } from "../data/tokenizer.js";
import { checkpointTokenizer, loadCheckpoint, readConfig } from "../model/checkpoint.js";
import { generate } from "../model/generate.js";

export interface GenerateCommandOptions {
  checkpoint: string;
  prompt?: string;
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Default: a random seed. */
  seed?: number;
  /** Write the prompt before the continuation (default true). */
  echo?: boolean;
}

export { registerGenerate } from "./commands/generate.js";

/**
 * Decodes the ids generated so far and emits only the text not written yet; text ending in an
 * incomplete character (U+FFFD from a partial UTF-8 sequence) waits for the next token.
 */
function streamer(tok: Tokenizer, write: (s: string) => void): { push(id: number): void; end(): void } {
  const ids: number[] = [];
  let written = "";
  const flush = (final: boolean) => {
    const text = tok.decode(ids);
    if (!final && text.endsWith("\uFFFD")) return;
    if (text.startsWith(written)) write(text.slice(written.length));
    else write(text.slice(commonPrefix(text, written))); // a tokenizer that re-spells the tail
    written = text;
  };
  return {
    push(id) {
      ids.push(id);
      flush(false);
    },
    end() {
      flush(true);
    },
  };
}

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

export function generateCommand(
  o: GenerateCommandOptions,
  write: (s: string) => void = (s) => void process.stdout.write(s),
): { ids: Int32Array; text: string } {
  const dir = o.checkpoint;
  const maxNew = o.maxNewTokens ?? 200;
  if (!Number.isInteger(maxNew) || maxNew < 0)
    throw new Error(`--max-new-tokens must be an integer ≥ 0, not ${maxNew}`);
  const config = readConfig(dir); // a clear error when dir is not a checkpoint
  const tok = checkpointTokenizer(dir, config);
  const prompt = o.prompt ?? "";
  if (prompt.length === 0) throw new Error("the prompt is empty: give some text with --prompt");
  const ids = tok.encode(prompt);
  if (ids.length === 0) throw new Error("the prompt encodes to no tokens: give some text with --prompt");
  const model = loadCheckpoint(dir);
  try {
    if (o.echo ?? true) write(prompt);
    const out = streamer(tok, write);
    const res = generate(model, ids, {
      maxNewTokens: maxNew,
      temperature: o.temperature ?? 1,
      topK: o.topK ?? 0,
      topP: o.topP ?? 1,
      seed: o.seed ?? randomInt(2 ** 31),
      vocabLimit: tok.vocabSize,
      onToken: (id) => out.push(id),
    });
    out.end();
    write("\n");
    return { ids: res.ids[0]!, text: tok.decode(res.ids[0]!) };
  } finally {
    model.dispose();
  }
}
