/** The definition of `attnres generate` (options, help); the work is in ../generate.ts, loaded on use. */
import * as fs from "node:fs";
import { type Command, InvalidArgumentError, Option } from "commander";
import type { GenerateCommandOptions } from "../generate.js";

/** An integer flag value in [min, max] (token ids are int32: at most 2³¹ − 1 new tokens). */
function intArg(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === "" || !Number.isSafeInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(`expected an integer ≥ ${min} and ≤ ${max}`);
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
      intArg(0, 2 ** 31 - 1),
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
    .action(async (o: GenerateCommandOptions) => {
      const { generateCommand } = await import("../generate.js");
      let prompt = o.prompt;
      if (prompt === undefined && !process.stdin.isTTY)
        prompt = fs.readFileSync(0, "utf8").replace(/\r?\n$/, "");
      generateCommand({ ...o, prompt });
    });
}
