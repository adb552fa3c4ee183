/** The definition of `attnres eval-mc` (options, help); the work is in ../eval-mc.ts, loaded on use. */
import type { Command } from "commander";
import { positiveInt } from "../common.js";

export function registerEvalMc(program: Command): void {
  program
    .command("eval-mc")
    .description("zero-shot multiple-choice accuracy (acc, acc_norm) by log-likelihood on a JSONL task file")
    .requiredOption("-c, --checkpoint <dir>", "checkpoint folder (config.json, model.safetensors, tokenizer)")
    .requiredOption(
      "--tasks <file>",
      'JSONL task file: {"context": "...", "choices": ["...", "..."], "gold": 0} per line',
    )
    .option("--limit <n>", "score only the first n items", positiveInt)
    .option("--json", "print the summary as JSON (no progress output)")
    .option("-o, --out <file>", "write the summary and per-item log-likelihoods as JSON")
    .addHelpText(
      "after",
      [
        "",
        "acc: the choice with the largest summed log-likelihood is the gold one; acc_norm: the same with",
        "each log-likelihood divided by the choice's length in UTF-8 bytes (docs/eval-mc.md).",
        "",
        "Example:",
        "  attnres eval-mc -c runs/sotu-tiny-standard-s0/checkpoint --tasks examples/tasks/tiny-mc.jsonl",
        "",
      ].join("\n"),
    )
    .action(
      async (o: { checkpoint: string; tasks: string; limit?: number; json?: boolean; out?: string }) => {
        const { evalMcCommand, formatMcResult } = await import("../eval-mc.js");
        const r = evalMcCommand({ ...o, quiet: o.json });
        if (o.json) {
          const { details: _details, ...summary } = r;
          process.stdout.write(JSON.stringify(summary) + "\n");
        } else process.stdout.write(formatMcResult(r) + "\n");
      },
    );
}
