/**
 * The study's plan and its committed results, shared by the driver (scripts/study.ts), the report
 * (scripts/study-report.ts) and the tests.
 *
 * Plan: every part is a compare preset <presets>/<part>.json (configs/study/ by default) whose
 * `compare` block lists the modes and seeds; a run is named <mode>-s<seed>.
 *
 * Training folders (not tracked; checkpoints live here):  <runs>/<part>/<run>/   (runs/study/)
 * Committed results (tracked; small; what the report reads): <results>/<part>/<run>/ (study/results/)
 *   run.json        the run's full specification, as training wrote it
 *   metrics.jsonl   one record per step (the training log; validation loss every eval_every steps)
 *   result.json     the final numbers: {part, run, mode, seed, steps, tokens, valLoss,
 *                   valPerplexity, valBpb, finalTrainLoss, params, tokensPerSecond, peakTensorMB,
 *                   seconds, reusedFrom?}
 *   analysis.json   the routing analysis of the final checkpoint (src/analysis/routing.ts's report
 *                   on 8 validation batches), computed when the run is exported, while its
 *                   checkpoint exists
 *   diverged.json   instead of result.json and analysis.json when the loss went non-finite:
 *                   {step, loss}
 * A run is done for the study when its result.json or diverged.json is in the results folder; a
 * run whose settings equal a committed run of another part (the 12-layer depth point and the main
 * study's seed 0) is copied from it, with `reusedFrom` naming the source, and not trained again.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { analyzeModel, type AnalysisReport } from "../src/analysis/routing.js";
import { nativeBackend } from "../src/backend/index.js";
import { describeNative } from "../src/backend/native/index.js";
import { modeKeys } from "../src/cli/common.js";
import { PresetSchema, type Preset } from "../src/cli/preset.js";
import { specFrom } from "../src/cli/train.js";
import { evalBatches } from "../src/data/batches.js";
import { loadPrepared } from "../src/data/prepared.js";
import { loadCheckpoint } from "../src/model/checkpoint.js";
import { readSafetensors } from "../src/io/safetensors.js";
import { writeFileAtomic } from "../src/io/atomic.js";
import { MODE_NAMES, type ModeName } from "../src/model/config.js";
import { type CompareResult, type DivergedRun, summarizeModes } from "../src/workflows/compare.js";
import { finishedRun, resolveSpec, type RunResult, type RunSpec } from "../src/train/run.js";
import { mean, std, studentTCdf, type Verdict, type WelchResult } from "../src/train/statistics.js";

/** Every part, in the default order of `npm run study`. */
export const PARTS = [
  "main",
  "states",
  "lr-1.5e-3",
  "lr-6e-3",
  "budget-4x",
  "depth-6",
  "depth-12",
  "depth-24",
  "shakespeare",
] as const;

export interface StudyDirs {
  /** Folder of the part presets (configs/study). */
  presets: string;
  /** Training folders (runs/study). */
  runs: string;
  /** Committed results (study/results). */
  results: string;
}

export const DEFAULT_DIRS: StudyDirs = {
  presets: path.join("configs", "study"),
  runs: path.join("runs", "study"),
  results: path.join("study", "results"),
};

export interface PlannedRun {
  part: string;
  mode: ModeName;
  seed: number;
  /** <mode>-s<seed> */
  run: string;
}

/** The committed numbers of one finished run. */
export interface RunRecord {
  part: string;
  run: string;
  mode: ModeName;
  seed: number;
  steps: number;
  tokens: number;
  valLoss: number;
  valPerplexity: number;
  valBpb: number;
  finalTrainLoss: number;
  params: number;
  tokensPerSecond: number;
  peakTensorMB: number;
  seconds: number;
  /**
   * The learned gates a_j of a gated run (`…_res_alpha`, zero at the start), by tensor name:
   * how much of its routed term each call uses at the end (absent for ungated modes).
   */
  gates?: Record<string, number>;
  /** Where it was exported (the machine that trained it): CPU, cores, memory, Node, native build. */
  machine: string;
  /** "<part>/<run>" when this run's results were copied from an identical run of another part. */
  reusedFrom?: string;
}

/** One line describing this machine and the native backend. */
export function machineLine(): string {
  const native = nativeBackend() ? `(${describeNative()})` : "unavailable";
  return `${os.cpus()[0]?.model ?? "?"}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; native backend ${native}`;
}

const readJson = <T>(f: string): T => JSON.parse(fs.readFileSync(f, "utf8")) as T;

export function presetFile(dirs: StudyDirs, part: string): string {
  return path.join(dirs.presets, `${part}.json`);
}

/** The parts that have a preset, in PARTS order first, then any others by name. */
export function availableParts(dirs: StudyDirs): string[] {
  if (!fs.existsSync(dirs.presets)) return [];
  const have = fs
    .readdirSync(dirs.presets)
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.slice(0, -5));
  const known = PARTS.filter((p) => have.includes(p));
  return [...known, ...have.filter((p) => !(PARTS as readonly string[]).includes(p)).sort()];
}

export function loadPart(dirs: StudyDirs, part: string): Preset {
  const f = presetFile(dirs, part);
  if (!fs.existsSync(f)) throw new Error(`no study part "${part}" (${f} does not exist)`);
  const r = PresetSchema.safeParse(readJson(f));
  if (!r.success) throw new Error(`invalid study preset ${f}: ${r.error.issues[0]?.message ?? "?"}`);
  if (!r.data.compare) throw new Error(`study preset ${f} has no "compare" block (modes and seeds)`);
  return r.data;
}

/** The planned runs of a part, seed-major (every mode of seed 0 first), optionally filtered. */
export function planOf(
  dirs: StudyDirs,
  part: string,
  filter: { modes?: readonly string[]; seeds?: readonly number[] } = {},
): PlannedRun[] {
  const { compare } = loadPart(dirs, part);
  const out: PlannedRun[] = [];
  for (const seed of compare!.seeds)
    for (const m of compare!.modes) {
      if (!(m in MODE_NAMES)) throw new Error(`study preset ${part}: unknown mode "${m}"`);
      if (filter.modes && !filter.modes.includes(m)) continue;
      if (filter.seeds && !filter.seeds.includes(seed)) continue;
      out.push({ part, mode: m as ModeName, seed, run: `${m}-s${seed}` });
    }
  return out;
}

/** The specification a planned run trains with, exactly as `attnres compare` builds it. */
export async function specOfRun(dirs: StudyDirs, r: PlannedRun): Promise<RunSpec> {
  const preset = loadPart(dirs, r.part);
  const base = await specFrom(preset, { preset: presetFile(dirs, r.part), quiet: true });
  const spec: RunSpec = {
    ...base,
    model: { ...base.model, ...(r.mode === "standard" ? {} : modeKeys(r.mode)) },
    train: { ...base.train, seed: r.seed },
  };
  return resolveSpec(spec, loadPrepared(spec.data));
}

/** The model and training settings of a spec (what makes two runs the same run). */
const core = (s: RunSpec) => JSON.stringify({ model: s.model, train: s.train });

export const runDir = (dirs: StudyDirs, r: { part: string; run: string }) =>
  path.join(dirs.runs, r.part, r.run);
export const resultDir = (dirs: StudyDirs, r: { part: string; run: string }) =>
  path.join(dirs.results, r.part, r.run);

/** Whether the run's results are in the results folder (finished or diverged). */
export function isDone(dirs: StudyDirs, r: { part: string; run: string }): boolean {
  const d = resultDir(dirs, r);
  return fs.existsSync(path.join(d, "result.json")) || fs.existsSync(path.join(d, "diverged.json"));
}

/** Throws when a committed run was trained with other settings than its preset gives now. */
export function checkCommitted(dirs: StudyDirs, r: PlannedRun, spec: RunSpec): void {
  const f = path.join(resultDir(dirs, r), "run.json");
  if (fs.existsSync(f) && core(readJson<RunSpec>(f)) !== core(spec))
    throw new Error(
      `${resultDir(dirs, r)} was trained with other settings than ${presetFile(dirs, r.part)} gives now; restore the preset, or remove that folder to train the run again`,
    );
}

/**
 * Writes the small outputs of a finished (or diverged) training run into its results folder:
 * run.json, metrics.jsonl, result.json and analysis.json (computed now from the checkpoint).
 * Returns false (and writes nothing) when the run has not finished.
 */
export function exportRun(dirs: StudyDirs, r: PlannedRun, spec: RunSpec): boolean {
  const src = runDir(dirs, r);
  const dst = resultDir(dirs, r);
  const divergedFile = path.join(src, "diverged.json");
  const done = finishedRun(src);
  if (!done && !fs.existsSync(divergedFile)) return false;
  if (
    fs.existsSync(path.join(src, "run.json")) &&
    core(readJson<RunSpec>(path.join(src, "run.json"))) !== core(spec)
  )
    throw new Error(
      `${src} holds a run with other settings than ${presetFile(dirs, r.part)} gives; move it away`,
    );
  const tmp = `${dst}.tmp`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  for (const f of ["run.json", "metrics.jsonl"])
    if (fs.existsSync(path.join(src, f))) fs.copyFileSync(path.join(src, f), path.join(tmp, f));
  if (done) {
    const analysis = analyzeRun(src, spec);
    writeFileAtomic(path.join(tmp, "analysis.json"), JSON.stringify(analysis) + "\n");
    const rec = recordOf(r, spec, done);
    const gates = gatesOf(src);
    writeFileAtomic(
      path.join(tmp, "result.json"),
      JSON.stringify(Object.keys(gates).length ? { ...rec, gates } : rec, null, 2) + "\n",
    );
  } else fs.copyFileSync(divergedFile, path.join(tmp, "diverged.json"));
  fs.rmSync(dst, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(dst), { recursive: true });
  fs.renameSync(tmp, dst);
  return true;
}

function recordOf(r: PlannedRun, spec: RunSpec, res: RunResult): RunRecord {
  const t = spec.train;
  return {
    part: r.part,
    run: r.run,
    mode: r.mode,
    seed: r.seed,
    steps: res.steps,
    tokens: res.steps * t.batch_size * t.seq_len * t.grad_accum,
    valLoss: res.valLoss,
    valPerplexity: res.valPerplexity,
    valBpb: res.valBpb,
    finalTrainLoss: res.finalTrainLoss,
    params: res.params,
    tokensPerSecond: res.tokensPerSecond,
    peakTensorMB: res.peakTensorMB,
    seconds: res.seconds,
    machine: machineLine(),
  };
}

/** The scalar gates (`…_res_alpha`) of a finished run's final weights, by name. */
function gatesOf(dir: string): Record<string, number> {
  const { tensors } = readSafetensors(path.join(dir, "checkpoint", "model.safetensors"));
  const out: Record<string, number> = {};
  for (const [name, t] of tensors) if (name.endsWith("_res_alpha")) out[name] = t.data[0]!;
  return out;
}

/** The routing analysis of a finished run's checkpoint on 8 validation batches (cached there). */
function analyzeRun(dir: string, spec: RunSpec): AnalysisReport {
  const ckpt = path.join(dir, "checkpoint");
  const cached = path.join(ckpt, "analysis", "report.json");
  if (fs.existsSync(cached)) return readJson<AnalysisReport>(cached);
  const data = loadPrepared(spec.data);
  const model = loadCheckpoint(ckpt);
  try {
    return analyzeModel(model, evalBatches(data.val, spec.train.batch_size, spec.train.seq_len, 8));
  } finally {
    model.dispose();
  }
}

/**
 * Copies the committed results of a run of another part with the same settings, if there is one
 * (marking `reusedFrom`); returns its "<part>/<run>" or null.
 */
export function reuseIdentical(dirs: StudyDirs, r: PlannedRun, spec: RunSpec): string | null {
  for (const other of availableParts(dirs)) {
    if (other === r.part) continue;
    const o = { part: other, run: r.run };
    const f = path.join(resultDir(dirs, o), "result.json");
    const specFile = path.join(resultDir(dirs, o), "run.json");
    if (!fs.existsSync(f) || !fs.existsSync(specFile) || core(readJson<RunSpec>(specFile)) !== core(spec))
      continue;
    const rec = readJson<RunRecord>(f);
    if (rec.reusedFrom) continue;
    const dst = resultDir(dirs, r);
    fs.rmSync(dst, { recursive: true, force: true });
    fs.cpSync(resultDir(dirs, o), dst, { recursive: true });
    const from = `${other}/${r.run}`;
    writeFileAtomic(
      path.join(dst, "result.json"),
      JSON.stringify({ ...rec, part: r.part, reusedFrom: from }, null, 2) + "\n",
    );
    return from;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// reading the committed results

/** One committed run: its record and its folder (analysis.json, metrics.jsonl). */
export type StudyRun = RunResult & { seed: number; record: RunRecord };

/** A part's committed results, in the shape `attnres compare` gives, plus its plan. */
export interface PartResults extends CompareResult {
  part: string;
  runs: StudyRun[];
  /** Planned runs (from the preset) and how many of them are done (finished or diverged). */
  planned: number;
  done: number;
  preset: Preset;
}

export function readAnalysis(dir: string): AnalysisReport | null {
  const f = path.join(dir, "analysis.json");
  return fs.existsSync(f) ? readJson<AnalysisReport>(f) : null;
}

/** Validation loss per evaluated step of a committed run: [step, loss][]. */
export function valCurve(dir: string): [number, number][] {
  const f = path.join(dir, "metrics.jsonl");
  if (!fs.existsSync(f)) return [];
  return fs
    .readFileSync(f, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { step: number; val_loss?: number })
    .filter((x) => x.val_loss !== undefined && x.val_loss !== null)
    .map((x) => [x.step, x.val_loss!]);
}

/** The committed results of a part (null when its preset is missing). Never trains anything. */
export function readPart(dirs: StudyDirs, part: string): PartResults | null {
  if (!fs.existsSync(presetFile(dirs, part))) return null;
  const preset = loadPart(dirs, part);
  const plan = planOf(dirs, part);
  const runs: StudyRun[] = [];
  const diverged: DivergedRun[] = [];
  for (const p of plan) {
    const dir = resultDir(dirs, p);
    if (fs.existsSync(path.join(dir, "result.json"))) {
      const rec = readJson<RunRecord>(path.join(dir, "result.json"));
      runs.push({
        dir,
        mode: rec.mode,
        steps: rec.steps,
        done: true,
        interrupted: false,
        finalTrainLoss: rec.finalTrainLoss,
        valLoss: rec.valLoss,
        valPerplexity: rec.valPerplexity,
        valBpb: rec.valBpb,
        params: rec.params,
        tokensPerSecond: rec.tokensPerSecond,
        peakTensorMB: rec.peakTensorMB,
        seconds: rec.seconds,
        seed: rec.seed,
        record: rec,
      });
    } else if (fs.existsSync(path.join(dir, "diverged.json"))) {
      const d = readJson<{ step: number; loss: number | string }>(path.join(dir, "diverged.json"));
      diverged.push({ mode: p.mode, seed: p.seed, dir, step: d.step, loss: d.loss });
    }
  }
  const modes = preset.compare!.modes as ModeName[];
  const byMode = (m: string) => runs.filter((r) => r.mode === m);
  const summary = summarizeModes(modes, runs, true);
  const curves = summary.map((s) => {
    const perRun = byMode(s.mode).map((r) => valCurve(r.dir));
    const steps = perRun[0]!.map(([st]) => st);
    return { mode: s.mode, steps, valLoss: steps.map((_, k) => mean(perRun.map((c) => c[k]?.[1] ?? NaN))) };
  });
  const routingByDepth: CompareResult["routingByDepth"] = [];
  for (const s of summary) {
    const rep = readAnalysis(byMode(s.mode)[0]!.dir);
    if (!rep?.routed) continue;
    const calls = rep.calls.filter((c) => c.key !== "final");
    routingByDepth.push({
      mode: s.mode,
      j: calls.map((c) => c.key as number),
      meanMaxWeight: calls.map((c) => c.meanMaxWeight),
    });
  }
  const done = runs.length + diverged.length;
  return {
    part,
    out: path.join(dirs.results, part),
    complete: done === plan.length,
    runs,
    diverged,
    summary,
    curves,
    routingByDepth,
    planned: plan.length,
    done,
    preset,
  };
}

// ---------------------------------------------------------------------------------------------
// tests the report's new sections use

/**
 * Whether the gap mean(a) − mean(b) changed between two budgets: a Welch-type t-test of
 * (mean(a2) − mean(b2)) − (mean(a1) − mean(b1)) with the four groups' variances and the
 * Welch–Satterthwaite degrees of freedom. Null when a group has fewer than two values.
 */
export function gapChange(
  a1: readonly number[],
  b1: readonly number[],
  a2: readonly number[],
  b2: readonly number[],
): (WelchResult & { gap1: number; gap2: number }) | null {
  const groups = [a1, b1, a2, b2];
  if (groups.some((g) => g.length < 2)) return null;
  const v = groups.map((g) => std(g) ** 2 / g.length);
  const se2 = v.reduce((p, x) => p + x, 0);
  if (se2 === 0) return null;
  const gap1 = mean(a1) - mean(b1);
  const gap2 = mean(a2) - mean(b2);
  const t = (gap2 - gap1) / Math.sqrt(se2);
  const df = se2 ** 2 / v.reduce((p, x, i) => p + x ** 2 / (groups[i]!.length - 1), 0);
  return { t, df, p: 2 * (1 - studentTCdf(Math.abs(t), df)), gap1, gap2 };
}

export type GapTrend = "flips" | "shrinks" | "grows" | "holds" | "untestable";

/**
 * How a gap evolves from the first budget to the second: "flips" when the second budget's gap
 * is significant (Welch p < alpha) with the opposite sign of the first's; otherwise "shrinks" or
 * "grows" when the change of the gap is significant (gapChange p < alpha) and its size went down
 * or up; "holds" when the change is not significant.
 */
export function gapTrend(
  first: Verdict,
  second: Verdict,
  change: WelchResult | null,
  alpha = 0.05,
): GapTrend {
  if (!change || second.kind === "untestable" || first.kind === "untestable") return "untestable";
  const significant2 = second.kind === "holds" || second.kind === "opposite";
  if (significant2 && Math.sign(second.delta) !== Math.sign(first.delta)) return "flips";
  if (change.p < alpha) return Math.abs(second.delta) < Math.abs(first.delta) ? "shrinks" : "grows";
  return "holds";
}

/** Modes ordered by loss, best first (modes without a finite loss left out). */
export function ranking(losses: Record<string, number>): string[] {
  return Object.keys(losses)
    .filter((m) => Number.isFinite(losses[m]))
    .sort((p, q) => losses[p]! - losses[q]!);
}
