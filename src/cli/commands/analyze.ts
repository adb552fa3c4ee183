/** The definition of `attnres analyze` (options, help); the work is in ../analyze.ts, loaded on use. */
import type { Command } from "commander";
import type { AnalyzeFlags } from "../analyze.js";
import { positive, positiveInt, windowOptions } from "../common.js";

export function registerAnalyze(program: Command): void {
  const cmd = program
    .command("analyze")
    .description("routing report of a checkpoint: max weight, entropy, α heatmap, source redundancy, β (ddl)")
    .requiredOption("-c, --checkpoint <dir>", "checkpoint folder (config.json + model.safetensors)")
    .requiredOption(
      "-d, --data <dir>",
      "prepared dataset folder (attnres prepare); its validation split is used",
    )
    .option("-o, --out <dir>", "output folder (default <checkpoint>/analysis)")
    .option(
      "--rank-tokens <n>",
      "tokens per batch whose sources' effective rank is computed",
      positiveInt,
      64,
    )
    .option("--flat-factor <x>", "a call is flat when its mean max weight ≤ x / N (x ≥ 1)", positive, 1.5)
    .option("-q, --quiet", "no progress output");
  windowOptions(cmd, 8)
    .addHelpText(
      "after",
      [
        "",
        "Writes report.json, summary.md and figures (SVG + PNG): alpha-heatmap, max-weight, entropy,",
        "source-norms, adjacent-cosine, effective-rank, beta-histograms (ddl modes), stream-norms.",
        "Definitions: docs/analysis.md.",
        "",
        "Examples:",
        "  attnres analyze --checkpoint runs/sotu-tiny-delta-s0/checkpoint --data data/sotu-byte",
        "  attnres analyze -c runs/sotu-tiny-delta-s0/checkpoint -d data/sotu-byte --batches 4 --out reports/delta",
        "",
      ].join("\n"),
    )
    .action(async (o: AnalyzeFlags) => {
      const { analyzeCommand, analyzeSummary } = await import("../analyze.js");
      const { report, written } = await analyzeCommand(o);
      if (!o.quiet) process.stdout.write(analyzeSummary(report, written) + "\n");
    });
}
