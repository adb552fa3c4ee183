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
import * as fs from "node:fs";
import { type Command, InvalidArgumentError, Option } from "commander";
import type { Tokenizer } from "../data/tokenizer.js";
import { checkpointTokenizer, loadCheckpoint, readConfig } from "../io/checkpoint.js";
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

function intArg(min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === "" || !Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`expected an integer ≥ ${min}`);
    return n;
  };
}

function numberArg(ok: (n: number) => boolean, what: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === "" || !ok(n)) throw new InvalidArgumentError(`expected ${what}`);
    return n;
  };
}

export function registerGenerate(program: Command): void {
  program
    .command("generate")
    .description("sample a continuation of a prompt from a checkpoint (KV-cached, every residual mode)")
    .requiredOption("-c, --checkpoint <dir>", "checkpoint folder (config.json, model.safetensors, tokenizer)")
    .option("--prompt <text>", "text to continue (read from stdin when omitted and stdin is piped)")
    .option(
      "-n, --max-new-tokens <n>",
      "tokens to sample (beyond the context, the model reads the last max_position_embeddings tokens)",
      intArg(0),
      200,
    )
    .option(
      "--temperature <x>",
      "softmax temperature (0 = greedy)",
      numberArg((n) => Number.isFinite(n) && n >= 0, "a number ≥ 0"),
      1,
    )
    .option("--top-k <k>", "sample among the k most probable tokens (0 = off)", intArg(0), 0)
    .option(
      "--top-p <p>",
      "sample among the most probable tokens holding probability p (1 = off)",
      numberArg((n) => n > 0 && n <= 1, "a number in (0, 1]"),
      1,
    )
    .option("--seed <n>", "seed for sampling (default: random)", intArg(0))
    .addOption(new Option("--no-echo", "print only the new text, not the prompt"))
    .addHelpText(
      "after",
      [
        "",
        "Examples:",
        "  (runs/sotu-tiny-standard-s0 is what `attnres train` writes by default)",
        '  attnres generate -c runs/sotu-tiny-standard-s0/checkpoint --prompt "The State of the Union"',
        '  attnres generate -c runs/sotu-tiny-standard-s0/checkpoint --prompt "We" --temperature 0   # greedy',
        '  attnres generate -c runs/sotu-tiny-standard-s0/checkpoint --prompt "We" --top-p 0.9 --seed 1 -n 400',
        '  echo "Fellow citizens" | attnres generate -c runs/sotu-tiny-standard-s0/checkpoint --top-k 20',
        "",
      ].join("\n"),
    )
    .action((o: GenerateCommandOptions) => {
      let prompt = o.prompt;
      if (prompt === undefined && !process.stdin.isTTY)
        prompt = fs.readFileSync(0, "utf8").replace(/\r?\n$/, "");
      generateCommand({ ...o, prompt });
    });
}
