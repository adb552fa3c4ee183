/** The definition of `attnres prepare` (options, help); the work is in ../prepare.ts, loaded on use. */
import { InvalidArgumentError, type Command } from "commander";
import type { PrepareFlags } from "../prepare.js";

function vocabArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError("expected a positive integer");
  return n;
}

export function registerPrepare(program: Command): void {
  program
    .command("prepare")
    .description("tokenize a corpus into a prepared dataset (train.bin, val.bin, meta.json, tokenizer)")
    .option(
      "--corpus <name|path>",
      "sotu, brown, moby, shakespeare, or a text file / folder of .txt and .md files",
      "sotu",
    )
    .option(
      "-t, --tokenizer <name|path>",
      "byte, bpe (trained here), qwen3, llama3, or a path to an HF tokenizer.json",
      "byte",
    )
    .option("--vocab-size <n>", "BPE vocabulary size: 256 bytes + merges (bpe only; default 8192)", vocabArg)
    .option("-o, --out <dir>", "output folder (default data/<corpus>-<tokenizer>[-<vocab size>])")
    .option("--allow-binary", "accept corpus files with NUL bytes or invalid UTF-8 (bad bytes become U+FFFD)")
    .option("-q, --quiet", "no progress bars or summary")
    .addHelpText(
      "after",
      `
Validation splits are fixed, never random: sotu validates on the 2013–2021 addresses, brown on
the last 10 % of each genre's samples, moby on chapters 120–135 and the Epilogue, shakespeare (the shipped
tinyshakespeare) and a text file on their last ~10 %, a folder on its last files (path order) holding ≥ 10 % of the bytes.
A BPE tokenizer is trained on the training split only. See docs/data.md.

Examples:
  attnres prepare                                     # sotu, byte tokens → data/sotu-byte
  attnres prepare --tokenizer bpe --vocab-size 8192   # train a BPE → data/sotu-bpe-8192
  attnres prepare --corpus moby --tokenizer qwen3     # Qwen3's tokenizer → data/moby-qwen3
  attnres prepare --corpus notes/ --tokenizer path/to/tokenizer.json --out data/notes
  attnres prepare --corpus book.txt --tokenizer bpe --vocab-size 2048
`,
    )
    .action(async (o: PrepareFlags) => {
      const { prepareCommand } = await import("../prepare.js");
      await prepareCommand(o);
    });
}
