/**
 * Comparing residual modes: every mode × seed trains on the same data and token budget as its own
 * resumable run (<out>/<mode>-s<seed>/; a finished run is never redone, a partial one resumes),
 * then the results are summarised:
 *   results.json   every run's numbers, per-mode mean ± std, Welch tests, curves, routing by depth
 *   results.md     the table (val loss, perplexity, bits/byte as mean ± std; parameters; tokens/s;
 *                  peak tensor memory), a Welch t-test of each mode against standard, figure links
 * The loss curves (mean validation loss per mode against step) and the mean max routing weight
 * by depth (per routed mode, measured on validation batches) are returned for plotting.
 * A run whose loss goes non-finite is not retried and not dropped silently: <dir>/diverged.json
 * records the step, the run is left out of the means and listed under `diverged`, and the
 * comparison goes on with the next run.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { evalBatches } from "../data/batches.js";
import { doctestScale } from "../train/doctest-scale.js";
import { loadPrepared } from "../data/prepared.js";
import { writeFileAtomic } from "../io/atomic.js";
import { figure, heading, table, writeReport } from "../io/report.js";
import { loadCheckpoint } from "../model/checkpoint.js";
import type { ModeName } from "../model/config.js";
import { tidy } from "../tensor/memory.js";
import { noGrad } from "../tensor/tensor.js";
import { runTraining, type RunOptions, type RunResult, type RunSpec } from "../train/run.js";
import { mean, std, welch, type WelchResult } from "../train/statistics.js";
import { TrainingDiverged } from "../train/trainer.js";

export interface CompareRun {
  mode: ModeName;
  seed: number;
  dir: string;
}

export interface ModeSummary {
  mode: ModeName;
  runs: number;
  valLoss: [number, number];
  perplexity: [number, number];
  bpb: [number, number];
  params: number;
  tokensPerSecond: number;
  peakTensorMB: number;
  /** Welch test of this mode's val loss against standard's (null for standard or < 2 seeds). */
  vsStandard: WelchResult | null;
}

/** A run that stopped on a non-finite loss (kept in <dir>/diverged.json). */
export interface DivergedRun extends CompareRun {
  step: number;
  loss: number | string;
}

export interface CompareResult {
  out: string;
  complete: boolean;
  runs: (RunResult & { seed: number })[];
  /** Runs that diverged: reported, never averaged in (absent in older results files). */
  diverged?: DivergedRun[];
  summary: ModeSummary[];
  /** Mean validation loss per evaluated step, per mode. */
  curves: { mode: ModeName; steps: number[]; valLoss: number[] }[];
  /** Mean max routing weight per routed sublayer (j), per routed mode (first seed's checkpoint). */
  routingByDepth: { mode: ModeName; j: number[]; meanMaxWeight: number[] }[];
}

export interface CompareOptions extends Pick<RunOptions, "signal" | "log" | "onStep"> {
  /** Called before each run starts (or is found finished). */
  onRun?: (run: CompareRun, index: number, total: number) => void;
  /** The training engine (default runTraining; the torch engine has the same signature). */
  train?: typeof runTraining;
}

/** Trains (or resumes) every run, then writes results.json and results.md into `out`. */
export async function runCompare(
  specFor: (mode: ModeName, seed: number) => RunSpec,
  modes: readonly ModeName[],
  seeds: readonly number[],
  out: string,
  opts: CompareOptions = {},
): Promise<CompareResult> {
  fs.mkdirSync(out, { recursive: true });
  const runs: (RunResult & { seed: number })[] = [];
  const plan: CompareRun[] = modes.flatMap((mode) =>
    seeds.map((seed) => ({ mode, seed, dir: path.join(out, `${mode}-s${seed}`) })),
  );
  const diverged: DivergedRun[] = [];
  let complete = true;
  for (const [i, r] of plan.entries()) {
    opts.onRun?.(r, i, plan.length);
    const marker = path.join(r.dir, "diverged.json");
    if (fs.existsSync(marker)) {
      diverged.push({
        ...r,
        ...(JSON.parse(fs.readFileSync(marker, "utf8")) as Pick<DivergedRun, "step" | "loss">),
      });
      continue;
    }
    let res: RunResult;
    try {
      res = await (opts.train ?? runTraining)(specFor(r.mode, r.seed), r.dir, {
        resume: "auto",
        signal: opts.signal,
        log: opts.log,
        onStep: opts.onStep,
      });
    } catch (e) {
      if (!(e instanceof TrainingDiverged)) throw e;
      // JSON has no NaN/Infinity: keep the non-finite loss as its name.
      const d = { step: e.step, loss: String(e.loss) };
      writeFileAtomic(marker, JSON.stringify(d, null, 2) + "\n");
      opts.log?.(
        `${r.mode}, seed ${r.seed} diverged at step ${e.step}; it is reported and left out of the means`,
      );
      diverged.push({ ...r, ...d });
      continue;
    }
    if (!res.done) {
      complete = false;
      break;
    }
    runs.push({ ...res, seed: r.seed });
  }
  const byMode = (m: ModeName) => runs.filter((r) => r.mode === m);
  const summary = summarizeModes(modes, runs);
  const curves = modes
    .filter((m) => byMode(m).length > 0)
    .map((m) => {
      const perRun = byMode(m).map((r) => readValCurve(r.dir));
      const steps = perRun[0]!.map(([s]) => s);
      return { mode: m, steps, valLoss: steps.map((_, k) => mean(perRun.map((c) => c[k]?.[1] ?? NaN))) };
    });
  const routingByDepth = complete ? routingDepth(runs, specFor) : [];
  const result: CompareResult = { out, complete, runs, diverged, summary, curves, routingByDepth };
  writeFileAtomic(path.join(out, "results.json"), JSON.stringify(result, null, 2) + "\n");
  writeReport(path.join(out, "results.md"), resultsMarkdown(result));
  return result;
}

function readValCurve(dir: string): [number, number][] {
  return fs
    .readFileSync(path.join(dir, "metrics.jsonl"), "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { step: number; val_loss?: number })
    .filter((r) => r.val_loss !== undefined)
    .map((r) => [r.step, r.val_loss!]);
}

function routingDepth(
  runs: (RunResult & { seed: number })[],
  specFor: (mode: ModeName, seed: number) => RunSpec,
): CompareResult["routingByDepth"] {
  const out: CompareResult["routingByDepth"] = [];
  const seen = new Set<string>();
  for (const r of runs) {
    if (seen.has(r.mode) || r.mode === "standard" || r.mode.startsWith("ddl")) continue;
    seen.add(r.mode);
    const spec = specFor(r.mode as ModeName, r.seed);
    const data = loadPrepared(spec.data);
    const model = loadCheckpoint(path.join(r.dir, "checkpoint"));
    try {
      const t = doctestScale(spec.train); // the settings the run trained with
      const batches = evalBatches(data.val, t.batch_size, t.seq_len, Math.min(4, t.eval_batches));
      const sums = new Map<number, number>();
      for (const b of batches)
        noGrad(() =>
          tidy(() => {
            for (const s of model.analyze(b.ids, b.B, b.T).report.routing)
              if (s.j !== "final") sums.set(s.j, (sums.get(s.j) ?? 0) + s.meanMaxWeight / batches.length);
          }),
        );
      const js = [...sums.keys()].sort((p, q) => p - q);
      out.push({ mode: r.mode as ModeName, j: js, meanMaxWeight: js.map((j) => sums.get(j)!) });
    } finally {
      model.dispose();
    }
  }
  return out;
}

const pm = ([m, s]: [number, number], digits = 4) =>
  Number.isNaN(s) ? m.toFixed(digits) : `${m.toFixed(digits)} ± ${s.toFixed(digits)}`;

/** The numbers a mode summary needs from each finished run. */
export type SummaryRun = Pick<
  RunResult,
  "mode" | "valLoss" | "valPerplexity" | "valBpb" | "params" | "tokensPerSecond" | "peakTensorMB"
>;

/**
 * One row per mode that has runs, in `modes` order: mean ± std over seeds, and Welch's test of its
 * validation losses against standard's. With `needTwo`, the test is left out (null) unless both
 * sides have at least two runs.
 */
export function summarizeModes(
  modes: readonly ModeName[],
  runs: readonly SummaryRun[],
  needTwo = false,
): ModeSummary[] {
  const byMode = (m: string) => runs.filter((r) => r.mode === m);
  const std0 = byMode("standard").map((r) => r.valLoss);
  return modes
    .filter((m) => byMode(m).length > 0)
    .map((m) => {
      const rs = byMode(m);
      const pick = (f: (r: SummaryRun) => number): [number, number] => [mean(rs.map(f)), std(rs.map(f))];
      const losses = rs.map((r) => r.valLoss);
      const tested = m !== "standard" && (!needTwo || (losses.length >= 2 && std0.length >= 2));
      return {
        mode: m,
        runs: rs.length,
        valLoss: pick((r) => r.valLoss),
        perplexity: pick((r) => r.valPerplexity),
        bpb: pick((r) => r.valBpb),
        params: rs[0]!.params,
        tokensPerSecond: mean(rs.map((r) => r.tokensPerSecond)),
        peakTensorMB: Math.max(...rs.map((r) => r.peakTensorMB)),
        vsStandard: tested ? welch(losses, std0) : null,
      };
    });
}

export function resultsMarkdown(r: CompareResult, figures: string[] = []): string {
  const lines = [
    heading(1, "Comparison"),
    "",
    r.complete ? "" : "**Incomplete**: some runs have not finished; re-run the same command to continue.\n",
    ...table(
      ["mode", "runs", "val loss", "perplexity", "bits/byte", "parameters", "tokens/s", "peak tensor MB"],
      r.summary.map((s) => [
        s.mode,
        String(s.runs),
        pm(s.valLoss),
        pm(s.perplexity, 2),
        pm(s.bpb),
        s.params.toLocaleString("en-US"),
        s.tokensPerSecond.toFixed(0),
        s.peakTensorMB.toFixed(0),
      ]),
    ),
    "",
    ...(r.diverged?.length
      ? [
          "**Diverged** (non-finite loss; not retried, left out of the means):",
          "",
          ...r.diverged.map((d) => `- ${d.mode}, seed ${d.seed}: loss ${d.loss} at step ${d.step}`),
          "",
        ]
      : []),
    "Mean ± sample standard deviation over seeds. Welch's t-test of each mode's validation loss against standard's (two-sided):",
    "",
    ...table(
      ["mode", "Δ val loss vs standard", "t", "df", "p"],
      r.summary
        .filter((s) => s.mode !== "standard")
        .map((s) => {
          const base = r.summary.find((x) => x.mode === "standard");
          const d = base ? (s.valLoss[0] - base.valLoss[0]).toFixed(4) : "n/a";
          const w = s.vsStandard;
          return w
            ? [s.mode, d, w.t.toFixed(2), w.df.toFixed(1), w.p.toPrecision(3)]
            : [s.mode, d, "n/a", "n/a", "n/a (needs ≥ 2 seeds of both)"];
        }),
    ),
    "",
    ...figures.map((f) => figure(path.basename(f), f)),
    "",
  ];
  return lines.join("\n");
}
