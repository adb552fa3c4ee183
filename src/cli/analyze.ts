/**
 * `attnres analyze`: the routing report of a checkpoint on the validation split of a prepared
 * dataset (consecutive windows, the same every time): per routed call the mean max weight,
 * entropy, mean α per source (heatmap), source norms, adjacent-source cosine, effective rank and
 * the flattening depth; DDL's β histograms; the residual stream's norms. Writes report.json,
 * summary.md and the figures (SVG + PNG) into --out (default <checkpoint>/analysis).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeAnalysis, type WrittenAnalysis } from "../analysis/report.js";
import { type AnalysisReport, analyzeModel, flatteningVerdict } from "../analysis/routing.js";
import { evalBatches } from "../data/batches.js";
import { loadPrepared } from "../data/prepared.js";
import { loadCheckpoint } from "../model/checkpoint.js";
import { progress } from "./common.js";

export { registerAnalyze } from "./commands/analyze.js";

export interface AnalyzeFlags {
  checkpoint: string;
  data: string;
  batches?: number;
  batchSize?: number;
  seqLen?: number;
  out?: string;
  rankTokens?: number;
  flatFactor?: number;
  quiet?: boolean;
}

export interface AnalyzeResult {
  report: AnalysisReport;
  written: WrittenAnalysis;
}

export async function analyzeCommand(f: AnalyzeFlags): Promise<AnalyzeResult> {
  if (!fs.existsSync(f.checkpoint)) throw new Error(`checkpoint folder ${f.checkpoint} does not exist`);
  if (!fs.existsSync(f.data))
    throw new Error(`data folder ${f.data} does not exist (make one with attnres prepare)`);
  if (f.flatFactor !== undefined && f.flatFactor < 1)
    throw new Error(`--flat-factor must be at least 1 (1 = exactly uniform), got ${f.flatFactor}`);
  if (f.out !== undefined && fs.existsSync(f.out) && !fs.statSync(f.out).isDirectory())
    throw new Error(`--out ${f.out} exists and is not a folder`);
  const data = loadPrepared(f.data);
  const model = loadCheckpoint(f.checkpoint);
  const bar = progress("batch", f.quiet);
  try {
    if (data.tokenizer.vocabSize > model.config.vocab_size)
      throw new Error(
        `the dataset's tokenizer has ${data.tokenizer.vocabSize} ids but the model embeds only ${model.config.vocab_size}: analyse it on data prepared with the model's tokenizer`,
      );
    const T = Math.min(f.seqLen ?? 256, model.config.max_position_embeddings);
    const batches = evalBatches(data.val, f.batchSize ?? 8, T, f.batches ?? 8);
    const report = analyzeModel(model, batches, {
      rankTokens: f.rankTokens,
      flatFactor: f.flatFactor,
      onBatch: (done, total) =>
        bar.update(done, total, { tokens: (done * batches[0]!.B * T).toLocaleString("en-US") }),
    });
    bar.stop();
    const out = f.out ?? path.join(f.checkpoint, "analysis");
    const written = await writeAnalysis(report, out, {
      checkpoint: f.checkpoint,
      data: f.data,
      split: "val",
    });
    return { report, written };
  } finally {
    bar.stop();
    model.dispose();
  }
}

/** Short console summary of a report. */
export function analyzeSummary(r: AnalysisReport, w: WrittenAnalysis): string {
  const lines = [`${r.mode}: ${r.sample.tokens.toLocaleString("en-US")} tokens analysed`];
  if (r.routed) {
    const m = r.averages.maxWeight;
    const f = (x: number | null) => (x === null ? "n/a" : x.toFixed(3));
    lines.push(`mean max weight ${f(m.all)} (attention ${f(m.attn)}, MLP ${f(m.mlp)})`);
  } else lines.push(...r.notes);
  if (r.beta.length)
    lines.push(
      `β: mean ${(r.beta.reduce((s, b) => s + b.mean, 0) / r.beta.length).toFixed(3)} over ${r.beta.length} sublayers`,
    );
  lines.push(
    flatteningVerdict(r),
    `wrote ${w.files.length} files to ${w.dir} (summary: ${path.join(w.dir, "summary.md")})`,
  );
  return lines.join("\n");
}
