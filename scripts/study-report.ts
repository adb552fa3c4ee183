/**
 * `npm run study:report` — writes docs/results.md (and docs/results/*.png) from the committed
 * study results alone (study/results/<part>/<run>/: run.json, metrics.jsonl, result.json,
 * analysis.json — written by `npm run study`, layout in scripts/study-lib.ts) and the part presets
 * (configs/study/*.json, for what is planned). No checkpoint, dataset or runs/ folder is read, so a
 * fresh clone regenerates the page. Every number in the page comes from those files; figures are
 * drawn from them here. The papers' figures quoted for comparison are those of
 * docs/methods.md. Verdicts follow the fixed rules stated on the page; a part whose runs have not
 * all finished says how many are done instead of a verdict.
 *   npm run study:report [-- --results study/results --presets configs/study --out docs/results.md]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import * as prettier from "prettier";
import type { AnalysisReport, CallStats } from "../src/analysis/routing.js";
import { writeAnalysis } from "../src/analysis/report.js";
import { figure, heading, tableHead, tableRow, writeReport } from "../src/io/report.js";
import { type ChartSpec, lineChart, type LineChartOptions, writeChart } from "../src/plot/index.js";
import type { CompareResult } from "../src/workflows/compare.js";
import { lossCurvesChart, routingDepthChart } from "../src/workflows/compare-figures.js";
import type { RunSpec } from "../src/train/run.js";
import { mean, std, verdictLower, type Verdict, type WelchResult } from "../src/train/statistics.js";
import {
  DEFAULT_DIRS,
  gapChange,
  gapTrend,
  ranking,
  readAnalysis,
  readPart,
  valCurve,
  type GapTrend,
  type PartResults,
  type StudyDirs,
} from "./study-lib.js";

const { values: a } = (() => {
  try {
    return parseArgs({
      options: {
        results: { type: "string", default: DEFAULT_DIRS.results },
        presets: { type: "string", default: DEFAULT_DIRS.presets },
        out: { type: "string", default: "docs/results.md" },
      },
    });
  } catch (e) {
    process.stderr.write(`npm run study:report: ${(e as Error).message}\n`);
    process.exit(2);
  }
})();
const dirs: StudyDirs = { presets: a.presets!, results: a.results!, runs: DEFAULT_DIRS.runs };
const outFile = a.out!;
const figDir = path.join(path.dirname(outFile), "results");
fs.rmSync(figDir, { recursive: true, force: true });
fs.mkdirSync(figDir, { recursive: true });

const P = 0.05;
// The papers' figures, as docs/methods.md quotes them.
const PAPER = {
  deepMax: { attnres: 0.2, delta: 0.6 },
  avgMax: { attnres: 0.35, delta: 0.62 },
  pplGain: "1.7–8.2 %",
  scale: "220M–7.6B parameters, 10K steps of FineWeb-Edu",
};

const fixed = (d: number) => (x: number | null | undefined) =>
  x === null || x === undefined || Number.isNaN(x) ? "n/a" : x.toFixed(d);
const [f2, f3, f4] = [fixed(2), fixed(3), fixed(4)];
const pm = ([m, s]: [number, number], f = f4) => (Number.isNaN(s) ? f(m) : `${f(m)} ± ${f(s)}`);
const pmOf = (xs: number[], f = f4) => pm([mean(xs), std(xs)], f);
const pStr = (w: WelchResult | null) =>
  w ? `t = ${w.t.toFixed(2)}, df = ${w.df.toFixed(1)}, p = ${w.p.toPrecision(2)}` : "n/a";
const pct = (x: number) => `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(1)} %`;

/** Whether a published value lies within mean ± 2·std of the per-seed measurements. */
function vsPaper(xs: number[], published: number): string {
  const m = mean(xs);
  const band = 2 * std(xs);
  if (!Number.isFinite(band)) return "**not testable** (needs ≥ 2 runs)";
  if (Math.abs(published - m) <= band) return "**consistent with the papers' value**";
  return `**differs from the papers' value** (${m < published ? "lower" : "higher"})`;
}

/** The verdict words, for a claim phrased as "a is lower than b". */
function words(v: Verdict): string {
  switch (v.kind) {
    case "holds":
      return "**holds**";
    case "opposite":
      return "**does not hold** (the opposite is significant)";
    case "noise":
      return "**not distinguishable from noise** at this scale";
    case "untestable":
      return "**not testable** (needs ≥ 2 runs on each side)";
  }
}

/** A part's committed results, or null when none of its runs is done. */
function readCompare(part: string): PartResults | null {
  const r = readPart(dirs, part);
  return r && r.runs.length > 0 ? r : null;
}

/** "Not run yet: N of M runs done" for a part (done = finished or diverged). */
function notYet(part: string): string {
  const r = readPart(dirs, part);
  if (!r) return `Not planned here (no ${path.join(dirs.presets, `${part}.json`)}).`;
  return `Not run yet: ${r.done} of ${r.planned} runs done (\`npm run study -- ${part}\`).`;
}

/** The committed routing report of one run. */
function analysisOf(runDir: string): AnalysisReport {
  const r = readAnalysis(runDir);
  if (!r)
    throw new Error(
      `${runDir} has no analysis.json; run \`npm run study -- --export\` where its checkpoint is`,
    );
  return r;
}

const tmpFigures = fs.mkdtempSync(path.join(os.tmpdir(), "attnres-study-"));
process.on("exit", () => fs.rmSync(tmpFigures, { recursive: true, force: true }));

/** The analysis figures of a committed run (drawn from analysis.json), as results/<prefix>-*.png. */
async function analysisFigures(runDir: string, prefix: string): Promise<{ alpha?: string; max?: string }> {
  const rep = readAnalysis(runDir);
  if (!rep) return {};
  const dir = path.join(tmpFigures, prefix);
  await writeAnalysis(rep, dir);
  const out: { alpha?: string; max?: string } = {};
  for (const [k, f, name] of [
    ["alpha", "alpha-heatmap.png", `${prefix}-alpha.png`],
    ["max", "max-weight.png", `${prefix}-max-weight.png`],
  ] as const)
    if (fs.existsSync(path.join(dir, f))) {
      fs.copyFileSync(path.join(dir, f), path.join(figDir, name));
      out[k] = `results/${name}`;
    }
  return out;
}

/** Mean validation loss per mode against step, as results/<name>.png. */
async function lossFigure(c: CompareResult, name: string, title: string): Promise<string | null> {
  return pngFigure(lossCurvesChart(c, title), name);
}

/** Mean max routing weight by sublayer per routed mode (first seed), as results/<name>.png. */
async function depthFigure(c: CompareResult, name: string): Promise<string | null> {
  return pngFigure(routingDepthChart(c), name);
}

/** A chart written as results/<name>.png only (the study report links PNGs), or null without one. */
async function pngFigure(chart: LineChartOptions | null, name: string): Promise<string | null> {
  if (!chart) return null;
  await lineChart(path.join(figDir, name), chart);
  fs.rmSync(path.join(figDir, `${name}.svg`), { force: true });
  return `results/${name}.png`;
}

const losses = (c: CompareResult, mode: string) =>
  c.runs.filter((r) => r.mode === mode).map((r) => r.valLoss);
const summaryOf = (c: CompareResult, mode: string) => c.summary.find((s) => s.mode === mode);
/** Relative change of mean perplexity of `mode` against standard, in percent. */
function pplChange(c: CompareResult, mode: string): number {
  const m = summaryOf(c, mode);
  const s = summaryOf(c, "standard");
  return m && s ? (m.perplexity[0] / s.perplexity[0] - 1) * 100 : NaN;
}
const specOf = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, "run.json"), "utf8")) as RunSpec;

function lossTable(c: CompareResult): string[] {
  return [
    ...tableHead([
      "mode",
      "runs",
      "val loss (nats/token)",
      "perplexity",
      "vs standard",
      "bits/byte",
      "parameters",
      "tokens/s",
      "peak tensor MB",
    ]),
    ...c.summary.map((s) =>
      tableRow([
        `${s.mode}`,
        `${s.runs}`,
        `${pm(s.valLoss)}`,
        `${pm(s.perplexity, f2)}`,
        `${s.mode === "standard" ? "" : pct(pplChange(c, s.mode))}`,
        `${pm(s.bpb)}`,
        `${s.params.toLocaleString("en-US")}`,
        `${s.tokensPerSecond.toFixed(0)}`,
        `${s.peakTensorMB.toFixed(0)}`,
      ]),
    ),
  ];
}

function divergedLines(c: CompareResult): string[] {
  const d = c.diverged ?? [];
  return d.length
    ? [
        "Diverged runs (non-finite loss; reported, not retried, left out of the means):",
        "",
        ...d.map((x) => `- ${x.mode}, seed ${x.seed}: loss ${x.loss} at step ${x.step}`),
        "",
      ]
    : ["No run diverged.", ""];
}

/** Per-run routing numbers that the tables aggregate over seeds. */
interface RoutingRow {
  seed: number;
  max: { all: number; attn: number; mlp: number };
  /** Mean max weight over the deepest third of the calls with ≥ 2 sources, and 1/N there. */
  deep: number;
  deepUniform: number;
  entropy: { attn: number; mlp: number };
  flatAttn: string;
  flatMlp: string;
}

function routingRow(seed: number, rep: AnalysisReport): RoutingRow {
  const calls = rep.calls.filter((c: CallStats) => c.key !== "final" && c.sources >= 2);
  const third = calls.slice(Math.floor((2 * calls.length) / 3));
  const n = (x: number | null) => x ?? NaN;
  return {
    seed,
    max: {
      all: n(rep.averages.maxWeight.all),
      attn: n(rep.averages.maxWeight.attn),
      mlp: n(rep.averages.maxWeight.mlp),
    },
    deep: mean(third.map((c) => c.meanMaxWeight)),
    deepUniform: mean(third.map((c) => c.uniformWeight)),
    entropy: { attn: n(rep.averages.normalizedEntropy.attn), mlp: n(rep.averages.normalizedEntropy.mlp) },
    flatAttn: rep.flattening?.attn?.label ?? "none",
    flatMlp: rep.flattening?.mlp?.label ?? "none",
  };
}

const routedModes = (c: CompareResult) =>
  [...new Set(c.runs.map((r) => r.mode))].filter((m) => m !== "standard" && !m.startsWith("ddl"));

/** Routing rows of every routed run of a comparison, by mode. */
async function routingOf(c: CompareResult): Promise<Map<string, RoutingRow[]>> {
  const out = new Map<string, RoutingRow[]>();
  for (const m of routedModes(c))
    for (const r of c.runs.filter((x) => x.mode === m))
      out.set(m, [...(out.get(m) ?? []), routingRow(r.seed, analysisOf(r.dir))]);
  return out;
}

function routingTable(rows: Map<string, RoutingRow[]>): string[] {
  const t = [
    ...tableHead([
      "mode",
      "runs",
      "mean max α: all calls",
      "attention",
      "MLP",
      "deepest third (uniform 1/N)",
      "normalized entropy: attention",
      "MLP",
      "flat from (attention; MLP), per seed",
    ]),
  ];
  for (const [m, rs] of rows) {
    const col = (f: (r: RoutingRow) => number) => pmOf(rs.map(f), f3);
    t.push(
      tableRow([
        `${m}`,
        `${rs.length}`,
        `${col((r) => r.max.all)}`,
        `${col((r) => r.max.attn)}`,
        `${col((r) => r.max.mlp)}`,
        `${col((r) => r.deep)} (${f3(mean(rs.map((r) => r.deepUniform)))})`,
        `${col((r) => r.entropy.attn)}`,
        `${col((r) => r.entropy.mlp)}`,
        `${rs.map((r) => `${r.flatAttn}; ${r.flatMlp}`).join(" / ")}`,
      ]),
    );
  }
  return t;
}

/** Wall time of the training steps of every distinct run (runs copied from another part count once). */
function trainingHours(parts: (PartResults | null)[]): number {
  let t = 0;
  for (const c of parts) for (const r of c?.runs ?? []) if (!r.record.reusedFrom) t += r.seconds;
  return t / 3600;
}

// ---------------------------------------------------------------------------------------------

const main = readCompare("main");
const depthParts = ["depth-6", "depth-12", "depth-24"]
  .map((p) => [p, readCompare(p)] as const)
  .filter((x): x is readonly [string, PartResults] => x[1] !== null);
const sh = readCompare("shakespeare");
const budget = readCompare("budget-4x");
const states = readCompare("states");
const lrParts = (["lr-1.5e-3", "lr-6e-3"] as const).map((p) => [p, readCompare(p)] as const);
const extraParts = [budget, states, ...lrParts.map(([, c]) => c)];
const mainSpec = main?.runs[0] ? specOf(main.runs[0].dir) : null;
/** Tokens each main-study run trained on. */
const mainTokens = mainSpec
  ? mainSpec.train.steps * mainSpec.train.batch_size * mainSpec.train.seq_len * mainSpec.train.grad_accum
  : NaN;

const verdicts: string[] = [];
/** Sentences for "What we now believe": only verdicts that a test decided (or "cannot be told apart"). */
const beliefs: string[] = [];
const body: string[] = [];
const say = (...l: string[]) => body.push(...l);
const tokensOf = (c: PartResults) => {
  const t = c.preset.train;
  return t.steps * t.batch_size * t.seq_len * (t.grad_accum ?? 1);
};
const mTok = (n: number) => `${(n / 1e6).toFixed(1)}M`;

if (!main || !mainSpec) {
  say(heading(2, "Main study"), "", notYet("main"), "");
} else {
  const spec = mainSpec;
  say(
    heading(
      2,
      `Main study: SOTU, byte-level BPE ${spec.model.vocab_size ?? "?"}, ${spec.model.num_hidden_layers} layers, d ${spec.model.hidden_size}`,
    ),
    "",
    `Settings: configs/study/main.json — ${spec.train.steps} steps of ${spec.train.batch_size} × ${spec.train.seq_len} tokens (${mainTokens.toLocaleString("en-US")} tokens per run), the same for every mode and seed. Results: ${path.join(dirs.results, "main")}/.`,
    "",
    ...(main.complete
      ? []
      : [
          `**Incomplete** (${main.done} of ${main.planned} runs done) — the tables cover the finished runs only.`,
          "",
        ]),
    ...lossTable(main),
    "",
    'Mean ± sample standard deviation over seeds. "vs standard" is the change in mean perplexity; tokens/s is the mean training throughput of the runs on this machine, which other work sometimes shared, so it is indicative only (controlled speed ratios per mode: docs/benchmarks.md); peak tensor MB is the largest live tensor memory of a run.',
    "",
    ...divergedLines(main),
  );
  const std0 = losses(main, "standard");
  const comps: [string, string, string][] = [
    ["delta vs standard", "delta", "standard"],
    ["delta-block vs standard", "delta-block", "standard"],
    ["delta vs attnres-full", "delta", "attnres-full"],
    ["delta-block vs attnres-block", "delta-block", "attnres-block"],
    ["attnres-full vs standard", "attnres-full", "standard"],
    ["attnres-block vs standard", "attnres-block", "standard"],
    ["ddl vs standard", "ddl", "standard"],
    ["ddl-expanded vs standard", "ddl-expanded", "standard"],
  ];
  const rows = [
    ...tableHead([
      "claim: the first has lower val loss than the second",
      "Δ val loss",
      "Welch (two-sided)",
      "verdict",
    ]),
  ];
  const v = new Map<string, Verdict>();
  for (const [name, x, y] of comps) {
    const lx = losses(main, x);
    const ly = y === "standard" ? std0 : losses(main, y);
    if (lx.length === 0 || ly.length === 0) continue;
    const r = verdictLower(lx, ly, P);
    v.set(name, r);
    rows.push(tableRow([`${name}`, `${f4(r.delta)}`, `${pStr(r.welch)}`, `${words(r)}`]));
  }
  say(heading(3, "Validation loss: every mode against standard, and Delta against AttnRes"), "", ...rows, "");
  const lc = await lossFigure(main, "main-loss-curves", "Validation loss, main study");
  if (lc) say(figure("validation loss curves, main study", lc), "");
  const order = [...main.summary].sort((p, q) => p.valLoss[0] - q.valLoss[0]).map((s) => s.mode);
  say(
    `Observed order by mean validation loss, best first: ${order.join(" < ")}. The papers' order at 220M (perplexity): delta < delta-block < attnres-full < attnres-block < standard.`,
    "",
  );
  for (const [name, claim] of [
    [
      "delta vs standard",
      `Delta AttnRes has lower validation perplexity than standard residuals (papers: ${PAPER.pplGain} lower)`,
    ],
    ["delta vs attnres-full", "Delta AttnRes beats AttnRes (Full)"],
    ["delta-block vs standard", "Delta Block beats standard residuals"],
    ["attnres-full vs standard", "AttnRes (Full) beats standard residuals"],
  ] as const) {
    const r = v.get(name);
    if (!r) continue;
    const [x] = name.split(" vs ");
    const extra = name.endsWith("standard") ? `; perplexity ${pct(pplChange(main, x!))}` : "";
    verdicts.push(
      tableRow([`${claim}`, "main", `Δ loss ${f4(r.delta)}${extra}; ${pStr(r.welch)}`, `${words(r)}`]),
    );
    const [y] = name.split(" vs ").slice(1);
    const b = belief(r, x!, y!, `at ${mTok(mainTokens)} tokens (main study)`);
    if (b) beliefs.push(b);
  }

  // Routing of every routed run.
  const routing = await routingOf(main);
  say(
    heading(3, "Routing: every routed run, attention and MLP sublayers apart"),
    "",
    `Measured by \`attnres analyze\`'s analysis on 8 validation batches per run (computed from each run's final checkpoint when it finished; committed as analysis.json). Mean max α is the mean over tokens of the largest routing weight of a call, averaged over calls with at least two sources; the uniform value 1/N is what flat routing gives. "Flat from" is the first sublayer from which every later call of that kind routes almost uniformly (mean max α ≤ 1.5/N; "none" = the deepest call is not flat). Block modes route over far fewer sources (N ≤ blocks + 1), so their max weights are not comparable with the per-sublayer modes.`,
    "",
    ...routingTable(routing),
    "",
  );
  for (const mode of routedModes(main)) {
    const r = main.runs.find((x) => x.mode === mode)!;
    const { alpha: h, max: m } = await analysisFigures(r.dir, `main-${r.mode}`);
    if (h || m)
      say(
        heading(4, `${r.mode}, seed ${r.seed}`),
        "",
        ...(h ? [figure(`${r.mode}: mean α per sublayer (rows) over sources (columns)`, h)] : []),
        ...(m ? [figure(`${r.mode}: mean max α by sublayer`, m)] : []),
        "",
      );
  }
  const full = routing.get("attnres-full");
  const delta = routing.get("delta");
  if (full && delta) {
    const sharp = verdictLower(
      full.map((r) => r.max.all),
      delta.map((r) => r.max.all),
      P,
    );
    const deep = verdictLower(
      full.map((r) => r.deep),
      delta.map((r) => r.deep),
      P,
    );
    say(
      `attnres-full's mean max α is ${pmOf(
        full.map((r) => r.max.all),
        f3,
      )} against delta's ${pmOf(
        delta.map((r) => r.max.all),
        f3,
      )} (papers: ${PAPER.avgMax.attnres} vs ${PAPER.avgMax.delta}); ${pStr(sharp.welch)}. In the deepest third: ${pmOf(
        full.map((r) => r.deep),
        f3,
      )} vs ${pmOf(
        delta.map((r) => r.deep),
        f3,
      )} (papers: ≈ ${PAPER.deepMax.attnres} vs ≈ ${PAPER.deepMax.delta}; uniform there is ${f3(mean(full.map((r) => r.deepUniform)))}); ${pStr(deep.welch)}.`,
      "",
    );
    verdicts.push(
      tableRow([
        `Delta routing is sharper than AttnRes routing (papers: mean max α ${PAPER.avgMax.delta} vs ${PAPER.avgMax.attnres})`,
        "main",
        `attnres-full ${f3(mean(full.map((r) => r.max.all)))} vs delta ${f3(mean(delta.map((r) => r.max.all)))}; ${pStr(sharp.welch)}`,
        `${words(sharp)}`,
      ]),
    );
    const flatSeeds = full.filter((r) => r.flatAttn !== "none" || r.flatMlp !== "none").length;
    const flatWord =
      flatSeeds === full.length
        ? "**holds**"
        : flatSeeds === 0
          ? "**does not hold**"
          : `**not consistent across seeds** (${flatSeeds} of ${full.length})`;
    const deepFull = full.map((r) => r.deep);
    const deepDelta = delta.map((r) => r.deep);
    verdicts.push(
      tableRow([
        `In deep layers AttnRes routing has max α ≈ ${PAPER.deepMax.attnres}`,
        "main",
        `deepest-third max α of attnres-full ${pmOf(deepFull, f3)}`,
        `${vsPaper(deepFull, PAPER.deepMax.attnres)}`,
      ]),
      tableRow([
        `In deep layers Delta routing stays sharp, max α ≈ ${PAPER.deepMax.delta}`,
        "main",
        `deepest-third max α of delta ${pmOf(deepDelta, f3)}`,
        `${vsPaper(deepDelta, PAPER.deepMax.delta)}`,
      ]),
      tableRow([
        "In deep layers Delta routing is sharper than AttnRes routing",
        "main",
        `attnres-full ${f3(mean(deepFull))} vs delta ${f3(mean(deepDelta))}; ${pStr(deep.welch)}`,
        `${words(deep)}`,
      ]),
      tableRow([
        "Deep AttnRes routing collapses to near-uniform weights",
        "main",
        `deepest-third max α ${f3(mean(deepFull))} against a uniform ${f3(mean(full.map((r) => r.deepUniform)))}; flat from (attention; MLP), per seed: ${full.map((r) => `${r.flatAttn}; ${r.flatMlp}`).join(" / ")}`,
        `${flatWord} (flat = mean max α ≤ 1.5/N, from some sublayer to the last, in every seed)`,
      ]),
    );
  }

  // DDL: β per sublayer.
  const ddlModes = [...new Set(main.runs.map((r) => r.mode))].filter((m) => m.startsWith("ddl"));
  if (ddlModes.length) {
    const t = [
      ...tableHead([
        "mode",
        "runs",
        "mean β: attention",
        "MLP",
        "lowest sublayer mean β",
        "highest sublayer mean β",
      ]),
    ];
    for (const m of ddlModes) {
      const reps = main.runs.filter((r) => r.mode === m).map((r) => analysisOf(r.dir));
      const kindMean = (rep: AnalysisReport, k: string) =>
        mean(rep.beta.filter((b) => b.kind === k).map((b) => b.mean));
      t.push(
        tableRow([
          `${m}`,
          `${reps.length}`,
          `${pmOf(
            reps.map((r) => kindMean(r, "attn")),
            f3,
          )}`,
          `${pmOf(
            reps.map((r) => kindMean(r, "mlp")),
            f3,
          )}`,
          `${pmOf(
            reps.map((r) => Math.min(...r.beta.map((b) => b.mean))),
            f3,
          )}`,
          `${pmOf(
            reps.map((r) => Math.max(...r.beta.map((b) => b.mean))),
            f3,
          )}`,
        ]),
      );
    }
    say(
      heading(3, "Deep Delta Learning: the gate β per sublayer"),
      "",
      "β ∈ (0, 2) scales each sublayer's rank-1 update of the state (β₀ = 1 at initialisation): near 0 the sublayer is skipped, near 2 it reflects the state's component along k.",
      "",
      ...t,
      "",
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Second round: token budget, routing vs sources (2 × 2), learning rate.

const BUDGET_MODES = ["standard", "attnres-full", "delta", "delta-block"] as const;
/** "a beats b" in words for the belief paragraph, from a verdict on "a is lower than b". */
function belief(v: Verdict, a: string, b: string, where: string): string | null {
  const s = beliefText(v, a, b, where);
  return s && s[0]!.toUpperCase() + s.slice(1);
}
function beliefText(v: Verdict, a: string, b: string, where: string): string | null {
  const p = v.welch ? `p = ${v.welch.p.toPrecision(2)}` : "";
  switch (v.kind) {
    case "holds":
      return `${a} reaches a lower validation loss than ${b} ${where} (Δ ${f4(v.delta)}, ${p}).`;
    case "opposite":
      return `${b} reaches a lower validation loss than ${a} ${where} (Δ ${f4(-v.delta)}, ${p}).`;
    case "noise":
      return `${a} and ${b} cannot be told apart ${where} (${p}).`;
    case "untestable":
      return null;
  }
}

/** Validation loss against tokens, per mode: mean line and min–max band over seeds (+ points). */
async function budgetFigure(c: PartResults, points: { mode: string; tokens: number; loss: number }[]) {
  const perTok = c.preset.train.batch_size * c.preset.train.seq_len * (c.preset.train.grad_accum ?? 1);
  const rows: { mode: string; tokens: number; mean: number; lo: number; hi: number }[] = [];
  for (const m of BUDGET_MODES) {
    const curves = c.runs.filter((r) => r.mode === m).map((r) => valCurve(r.dir));
    if (curves.length === 0) continue;
    for (const [k, [step]] of curves[0]!.entries()) {
      const ys = curves.map((cv) => cv[k]?.[1]).filter((y): y is number => Number.isFinite(y));
      if (ys.length === 0) continue;
      rows.push({ mode: m, tokens: step * perTok, mean: mean(ys), lo: Math.min(...ys), hi: Math.max(...ys) });
    }
  }
  if (rows.length === 0) return null;
  const modes = BUDGET_MODES.filter((m) => rows.some((r) => r.mode === m));
  const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
  const scale = { domain: [...BUDGET_MODES], range: palette };
  const color = { field: "mode", type: "nominal", title: null, sort: modes, scale, legend: null };
  const x = { field: "tokens", type: "quantitative", title: "training tokens", axis: { format: "~s" } };
  const legend = { orient: "bottom", symbolType: "stroke", symbolStrokeWidth: 2, symbolOpacity: 1 };
  const spec = {
    title: {
      text: "Validation loss against training tokens",
      subtitle: [
        "budget-4x runs: mean over seeds, band = min–max over seeds",
        `diamonds: the main study's ${mTok(points[0]?.tokens ?? NaN)}-token runs (mean over seeds)`,
      ],
    },
    width: 480,
    height: 260,
    resolve: { legend: { color: "independent" } },
    layer: [
      {
        data: { values: rows },
        mark: { type: "area", opacity: 0.18 },
        encoding: {
          x,
          y: {
            field: "lo",
            type: "quantitative",
            scale: { zero: false },
            title: "validation loss (nats/token)",
          },
          y2: { field: "hi" },
          color,
        },
      },
      {
        data: { values: rows },
        mark: { type: "line", strokeWidth: 1.8 },
        encoding: { x, y: { field: "mean", type: "quantitative" }, color: { ...color, legend } },
      },
      {
        data: { values: points },
        mark: { type: "point", shape: "diamond", filled: true, size: 70 },
        encoding: { x, y: { field: "loss", type: "quantitative" }, color },
      },
    ],
  };
  await writeChart(spec as unknown as ChartSpec, path.join(figDir, "budget-loss-vs-tokens"));
  fs.rmSync(path.join(figDir, "budget-loss-vs-tokens.svg"), { force: true });
  return "results/budget-loss-vs-tokens.png";
}

// --- token budget -------------------------------------------------------------------------------
say(heading(2, "Token budget: does the order change with 4× the tokens?"), "");
if (!budget || !main) say(notYet("budget-4x"), "");
else {
  const t1 = tokensOf(main);
  const t4 = tokensOf(budget);
  const lossAt = (c: PartResults, m: string) => losses(c, m);
  say(
    `Settings: configs/study/budget-4x.json — the main study's settings with ${budget.preset.train.steps} steps (${t4.toLocaleString("en-US")} tokens per run, the cosine schedule stretched over them); the ${mTok(t1)}-token points are the main study's runs (configs/study/main.json). ${budget.complete ? "" : `**Incomplete**: ${budget.done} of ${budget.planned} runs done; the tables cover the finished runs only.`}`,
    "",
    ...tableHead([
      "mode",
      `runs at ${mTok(t1)}`,
      `val loss at ${mTok(t1)}`,
      `runs at ${mTok(t4)}`,
      `val loss at ${mTok(t4)}`,
      "change",
    ]),
  );
  for (const m of BUDGET_MODES) {
    const a1 = lossAt(main, m);
    const a4 = lossAt(budget, m);
    say(
      tableRow([
        `${m}`,
        `${a1.length}`,
        `${a1.length ? pmOf(a1) : "n/a"}`,
        `${a4.length}`,
        `${a4.length ? pmOf(a4) : "n/a"}`,
        `${a1.length && a4.length ? f4(mean(a4) - mean(a1)) : "n/a"}`,
      ]),
    );
  }
  say(
    "",
    ...tableHead([
      "claim: the first has lower val loss than the second",
      `Δ at ${mTok(t1)}`,
      "Welch",
      "verdict",
      `Δ at ${mTok(t4)}`,
      "Welch",
      "verdict",
    ]),
  );
  const pairs: [string, string][] = [
    ["delta", "standard"],
    ["delta-block", "standard"],
    ["attnres-full", "standard"],
    ["delta", "attnres-full"],
    ["delta", "delta-block"],
  ];
  const at = new Map<string, [Verdict, Verdict]>();
  for (const [x, y] of pairs) {
    const v1 = verdictLower(lossAt(main, x), lossAt(main, y), P);
    const v4 = verdictLower(lossAt(budget, x), lossAt(budget, y), P);
    at.set(`${x} vs ${y}`, [v1, v4]);
    say(
      tableRow([
        `${x} vs ${y}`,
        `${f4(v1.delta)}`,
        `${pStr(v1.welch)}`,
        `${words(v1)}`,
        `${f4(v4.delta)}`,
        `${pStr(v4.welch)}`,
        `${words(v4)}`,
      ]),
    );
  }
  const [g1, g4] = at.get("delta vs attnres-full")!;
  const change = gapChange(
    lossAt(main, "attnres-full"),
    lossAt(main, "delta"),
    lossAt(budget, "attnres-full"),
    lossAt(budget, "delta"),
  );
  const trend = gapTrend(g1, g4, change, P);
  const trendWords: Record<GapTrend, string> = {
    flips: "**flips**",
    shrinks: "**shrinks**",
    grows: "**grows**",
    holds: "**holds** (no significant change)",
    untestable: "**not testable yet** (needs ≥ 2 runs of each mode at both budgets)",
  };
  say(
    "",
    `The gap attnres-full − delta is ${f4(-g1.delta)} at ${mTok(t1)} and ${f4(-g4.delta)} at ${mTok(t4)} tokens; the change of the gap ${change ? `is ${f4(change.gap2 - change.gap1)} (${pStr(change)})` : "is not testable yet"}. Rule: the gap **flips** when at ${mTok(t4)} it is significant (p < ${P}) with the other sign; otherwise it **shrinks** or **grows** when the change of the gap is significant (a Welch-type test of the difference of the two differences of means, Welch–Satterthwaite degrees of freedom), and **holds** when it is not. Verdict: the gap ${trendWords[trend]}.`,
    "",
  );
  verdicts.push(
    tableRow([
      "The order of AttnRes (Full) and Delta AttnRes changes with 4× the tokens",
      "budget-4x",
      `attnres-full − delta: ${f4(-g1.delta)} at ${mTok(t1)}, ${f4(-g4.delta)} at ${mTok(t4)}; change ${change ? pStr(change) : "n/a"}`,
      `the gap ${trendWords[trend]}`,
    ]),
  );
  for (const [x, y] of [
    ["delta", "standard"],
    ["delta", "attnres-full"],
  ] as const) {
    const [, v4] = at.get(`${x} vs ${y}`)!;
    verdicts.push(
      tableRow([
        `${x === "delta" && y === "standard" ? "Delta AttnRes beats standard residuals" : "Delta AttnRes beats AttnRes (Full)"} at ${mTok(t4)} tokens`,
        "budget-4x",
        `Δ loss ${f4(v4.delta)}; ${pStr(v4.welch)}`,
        `${words(v4)}`,
      ]),
    );
    const b = belief(v4, x, y, `at ${mTok(t4)} tokens`);
    if (b) beliefs.push(b);
  }
  if (trend !== "untestable")
    beliefs.push(
      trend === "holds"
        ? `Between ${mTok(t1)} and ${mTok(t4)} tokens the gap between attnres-full and delta did not change significantly.`
        : `Between ${mTok(t1)} and ${mTok(t4)} tokens the gap between attnres-full and delta ${trend}${trend === "flips" ? ` (significant at ${mTok(t4)} tokens with the other sign)` : " significantly"}.`,
    );
  const points = BUDGET_MODES.filter((m) => lossAt(main, m).length).map((m) => ({
    mode: m,
    tokens: t1,
    loss: mean(lossAt(main, m)),
  }));
  const fig = await budgetFigure(budget, points);
  if (fig)
    say(
      figure("validation loss against training tokens, four modes, seed bands", fig),
      "",
      `The ${mTok(t1)}-token diamonds are runs with their own (shorter) schedule, so they need not lie on the 4× curves at the same token count (their learning rate has already decayed there, the 4× runs' has not): compare modes within one budget, not the curves with the diamonds.`,
      "",
    );
}

// --- 2 × 2 --------------------------------------------------------------------------------------
say(heading(2, "Routing vs sources: a 2 × 2"), "");
if (!states || !main) say(notYet("states"), "");
else {
  const cell = (src: "outputs" | "states", comb: "replace" | "add") =>
    losses(src === "outputs" ? main : states, comb === "replace" ? "attnres-full" : "delta");
  const params = (src: "outputs" | "states", comb: "replace" | "add") =>
    summaryOf(src === "outputs" ? main : states, comb === "replace" ? "attnres-full" : "delta")?.params;
  const stdParams = summaryOf(main, "standard")?.params;
  const fmtExtra = (p?: number) =>
    p === undefined || stdParams === undefined ? "n/a" : `+${(p - stdParams).toLocaleString("en-US")}`;
  const cellStr = (xs: number[]) => (xs.length ? `${pmOf(xs)} (n = ${xs.length})` : "n/a");
  say(
    `Settings: the main study's for every cell. The (outputs, ·) cells are the main study's attnres-full and delta runs; the (states, ·) cells are configs/study/states.json (\`attnres_sources: "states"\`, which adds the zero gate; docs/residual-modes.md specifies every cell). ${states.complete ? "" : `**Incomplete**: ${states.done} of ${states.planned} runs of the states cells done.`}`,
    "",
    ...tableHead(["sources ↓ · combination →", "replace (Kimi)", "add (Delta)"]),
    tableRow(["outputs", `${cellStr(cell("outputs", "replace"))}`, `${cellStr(cell("outputs", "add"))}`]),
    tableRow(["states", `${cellStr(cell("states", "replace"))}`, `${cellStr(cell("states", "add"))}`]),
    "",
    `Validation loss (nats/token), mean ± std over seeds. Parameters beyond the standard model's ${summaryOf(main, "standard")?.params.toLocaleString("en-US") ?? "n/a"}: outputs/replace ${fmtExtra(params("outputs", "replace"))}, outputs/add ${fmtExtra(params("outputs", "add"))}, states/replace ${fmtExtra(params("states", "replace"))}, states/add ${fmtExtra(params("states", "add"))}.`,
    "",
    ...tableHead([
      "claim: the first has lower val loss than the second",
      "Δ val loss",
      "Welch (two-sided)",
      "verdict",
    ]),
  );
  const axes: [string, string, number[], number[], string][] = [
    [
      "add vs replace, sources = outputs",
      "adding",
      cell("outputs", "add"),
      cell("outputs", "replace"),
      "over outputs",
    ],
    [
      "add vs replace, sources = states",
      "adding",
      cell("states", "add"),
      cell("states", "replace"),
      "over states",
    ],
    [
      "outputs vs states, combination = replace",
      "outputs",
      cell("outputs", "replace"),
      cell("states", "replace"),
      "when replacing",
    ],
    [
      "outputs vs states, combination = add",
      "outputs",
      cell("outputs", "add"),
      cell("states", "add"),
      "when adding",
    ],
  ];
  for (const [name, , x, y, where] of axes) {
    const r = verdictLower(x, y, P);
    say(tableRow([`${name}`, `${f4(r.delta)}`, `${pStr(r.welch)}`, `${words(r)}`]));
    const [first, second] = name.startsWith("add")
      ? ["adding", "replacing"]
      : ["outputs as sources", "states as sources"];
    verdicts.push(
      tableRow([
        `${name.startsWith("add") ? `Additive beats replacement routing with the sources fixed (${name.split(", ")[1]})` : `Outputs beat hidden states as sources with the combination fixed (${name.split(", ")[1]})`}`,
        "2 × 2",
        `Δ loss ${f4(r.delta)}; ${pStr(r.welch)}`,
        `${words(r)}`,
      ]),
    );
    const b = belief(r, first, second, `${where} (2 × 2, ${mTok(tokensOf(main))} tokens)`);
    if (b) beliefs.push(b);
  }
  say("");
  const fig = await lineChart(path.join(figDir, "two-by-two"), {
    title: "Routing vs sources",
    subtitle: "mean validation loss over seeds; lines join the cells with the same combination",
    series: (["replace", "add"] as const).map((comb) => ({
      name: comb === "replace" ? "replace (Kimi)" : "add (Delta)",
      points: (["outputs", "states"] as const).map((src) => {
        const xs = cell(src, comb);
        return { x: src, y: xs.length ? mean(xs) : null };
      }),
    })),
    xTitle: "sources",
    yTitle: "validation loss (nats/token)",
    width: 300,
  });
  fs.rmSync(fig.svg, { force: true });
  say(figure("validation loss of the four cells", "results/two-by-two.png"), "");
  // Routing per cell: how sharp each cell's routing became (all calls with ≥ 2 sources).
  const sharp = (src: "outputs" | "states", comb: "replace" | "add") => {
    const c = src === "outputs" ? main : states;
    const rows = c.runs
      .filter((r) => r.mode === (comb === "replace" ? "attnres-full" : "delta"))
      .map((r) => routingRow(r.seed, analysisOf(r.dir)));
    return rows.length
      ? `${pmOf(
          rows.map((r) => r.max.all),
          f3,
        )} (deepest third ${pmOf(
          rows.map((r) => r.deep),
          f3,
        )})`
      : "n/a";
  };
  say(
    "Routing of each cell: mean max α over the calls with ≥ 2 sources (and over the deepest third of them), mean ± std over seeds; the states cells route behind their gate, so α says which states a call mixes, not how much of the mix it uses.",
    "",
    ...tableHead(["sources ↓ · combination →", "replace (Kimi)", "add (Delta)"]),
    tableRow(["outputs", `${sharp("outputs", "replace")}`, `${sharp("outputs", "add")}`]),
    tableRow(["states", `${sharp("states", "replace")}`, `${sharp("states", "add")}`]),
    "",
  );
  const gate = (comb: "replace" | "add") => {
    const per = states.runs
      .filter((r) => r.mode === (comb === "replace" ? "attnres-full" : "delta") && r.record.gates)
      .map((r) => Object.values(r.record.gates!).map(Math.abs));
    return per.length
      ? `${pmOf(
          per.map((g) => mean(g)),
          f3,
        )} (largest ${pmOf(
          per.map((g) => Math.max(...g)),
          f3,
        )})`
      : "n/a";
  };
  say(
    `Learned gates of the states cells (zero at the start; mean |a_j| over every gate, and the largest, mean ± std over seeds): replace ${gate("replace")}; add ${gate("add")}.`,
    "",
  );
}

// --- learning rate ------------------------------------------------------------------------------
say(heading(2, "Learning-rate check: does the single learning rate favour a mode?"), "");
{
  const LR_MODES = ["standard", "attnres-full", "delta"];
  const rows: { lr: string; loss: Record<string, number> }[] = [];
  const seed0 = (c: PartResults | null, m: string) =>
    c?.runs.find((r) => r.mode === m && r.seed === 0)?.valLoss ?? NaN;
  const [low, high] = lrParts.map(([, c]) => c);
  if (low) rows.push({ lr: "1.5e-3", loss: Object.fromEntries(LR_MODES.map((m) => [m, seed0(low, m)])) });
  if (main) rows.push({ lr: "3e-3", loss: Object.fromEntries(LR_MODES.map((m) => [m, seed0(main, m)])) });
  if (high) rows.push({ lr: "6e-3", loss: Object.fromEntries(LR_MODES.map((m) => [m, seed0(high, m)])) });
  const done = lrParts.reduce((p, [part]) => p + (readPart(dirs, part)?.done ?? 0), 0);
  const planned = lrParts.reduce((p, [part]) => p + (readPart(dirs, part)?.planned ?? 0), 0);
  if (!low && !high)
    say(`Not run yet: ${done} of ${planned} runs done (\`npm run study -- lr-1.5e-3 lr-6e-3\`).`, "");
  else {
    say(
      `Settings: configs/study/lr-1.5e-3.json and lr-6e-3.json — the main study's settings at half and double its peak learning rate, seed 0; the 3e-3 column is the main study's seed 0. ${done < planned ? `**Incomplete**: ${done} of ${planned} runs done.` : ""}`,
      "",
      ...tableHead(["peak lr", ...LR_MODES, "ranking, best first"]),
      ...rows.map((r) =>
        tableRow([`${r.lr}`, ...LR_MODES.map((m) => f4(r.loss[m])), `${ranking(r.loss).join(" < ")}`]),
      ),
      "",
    );
    const full = rows.filter((r) => ranking(r.loss).length === LR_MODES.length);
    const distinct = [...new Set(full.map((r) => ranking(r.loss).join(" < ")))];
    const spread = main ? LR_MODES.map((m) => `${m} ${f4(std(losses(main, m)))}`).join(", ") : "n/a";
    let line: string;
    if (full.length < 2) line = "Too few complete rows to compare rankings yet.";
    else if (distinct.length === 1)
      line = `**The ranking is the same at every rate checked** (${full.map((r) => r.lr).join(", ")}): ${distinct[0]}.`;
    else
      line = `**The ranking changes with the learning rate**: ${full.map((r) => `at ${r.lr}: ${ranking(r.loss).join(" < ")}`).join("; ")}.`;
    say(
      line,
      `One seed per rate, so no test: the main study's seed-to-seed standard deviations (${spread}) show how large a difference must be to mean anything.`,
      "",
    );
    if (full.length >= 2)
      beliefs.push(
        distinct.length === 1
          ? `The order standard/attnres-full/delta is the same at half, the main and double learning rate (one seed per rate: a check, not a test).`
          : `The order of standard, attnres-full and delta changes with the learning rate (one seed per rate: a warning, not a test), so the main study's single rate may favour a mode.`,
      );
    const fig = await lineChart(path.join(figDir, "lr-check"), {
      title: "Validation loss against peak learning rate",
      subtitle: "seed 0; the main study uses 3e-3",
      series: LR_MODES.map((m) => ({ name: m, points: rows.map((r) => ({ x: r.lr, y: r.loss[m] })) })),
      xTitle: "peak learning rate",
      yTitle: "validation loss (nats/token)",
      width: 300,
    });
    fs.rmSync(fig.svg, { force: true });
    say(figure("validation loss against peak learning rate", "results/lr-check.png"), "");
  }
}

// --- bfloat16 matmuls ----------------------------------------------------------------------------
say(heading(2, "bfloat16 matmuls: does training with bf16 operands stay within the seed noise?"), "");
{
  const bf = readCompare("bf16");
  const bfRuns = bf ? bf.runs.filter((r) => r.mode === "standard").sort((x, y) => x.seed - y.seed) : [];
  const f32 = main ? main.runs.filter((r) => r.mode === "standard") : [];
  const f32Of = (seed: number) => f32.find((r) => r.seed === seed);
  const paired = bfRuns.filter((r) => f32Of(r.seed));
  const planned = readPart(dirs, "bf16");
  if (!bf || paired.length === 0 || f32.length < 2) say(notYet("bf16"), "");
  else {
    const b = bfRuns.map((r) => r.valLoss);
    const f = f32.map((r) => r.valLoss);
    const v = verdictLower(f, b); // "float32 is lower than bfloat16"
    const diffs = paired.map((r) => r.valLoss - f32Of(r.seed)!.valLoss);
    say(
      `Settings: configs/study/bf16.json — the main study's settings exactly, standard mode, with \`matmul_dtype: bfloat16\` (both operands of every GEMM rounded to bfloat16; accumulation, weights and optimizer in float32). The float32 runs are the main study's standard runs: the same seeds, so the same initial weights and batches, and per seed the difference is the rounding alone. ${planned && planned.done < planned.planned ? `**Incomplete**: ${planned.done} of ${planned.planned} runs done.` : ""}`,
      "",
      ...tableHead(["seed", "float32", "bfloat16 matmuls", "bfloat16 − float32"]),
      ...paired.map((r) =>
        tableRow([
          `${r.seed}`,
          f4(f32Of(r.seed)!.valLoss),
          f4(r.valLoss),
          f4(r.valLoss - f32Of(r.seed)!.valLoss),
        ]),
      ),
      tableRow(["mean ± std", pmOf(f), pmOf(b), pmOf(diffs)]),
      "",
      `Is float32 lower than bfloat16 (Welch, over seeds)? ${words(v)} (Δ ${f4(v.delta)}, ${pStr(v.welch)}). ` +
        (v.kind === "noise"
          ? "Training with bfloat16 operands ends where float32 training does, within the seed-to-seed noise of this setting."
          : v.kind === "holds"
            ? "bfloat16 operands cost measurable validation loss at this scale."
            : v.kind === "opposite"
              ? "bfloat16 operands end lower than float32 here."
              : "One bfloat16 run so far: a check, not a test."),
      "Step times of both precisions are in docs/benchmarks.md (`npm run bench`); the runs' own tokens/s are not comparable (other work shared the machine).",
      "",
    );
    if (v.kind === "noise" || v.kind === "holds")
      beliefs.push(
        v.kind === "noise"
          ? "bfloat16 matmul operands (float32 accumulation) train the standard model to the same validation loss as float32 within the seed noise (3 seeds, 600 steps)."
          : "bfloat16 matmul operands cost validation loss against float32 at this scale.",
      );
    const mainCurve = main!.curves.find((c) => c.mode === "standard");
    const bfCurve = bf.curves.find((c) => c.mode === "standard");
    if (mainCurve && bfCurve) {
      const fig = await lineChart(path.join(figDir, "bf16"), {
        title: "Validation loss, float32 and bfloat16 matmuls",
        subtitle: "standard mode, main settings; mean over seeds",
        series: [
          { name: "float32", points: mainCurve.steps.map((x, i) => ({ x, y: mainCurve.valLoss[i] })) },
          { name: "bfloat16", points: bfCurve.steps.map((x, i) => ({ x, y: bfCurve.valLoss[i] })) },
        ],
        xTitle: "step",
        yTitle: "validation loss (nats/token)",
      });
      fs.rmSync(fig.svg, { force: true });
      say(figure("validation loss with float32 and bfloat16 matmuls", "results/bf16.png"), "");
    }
  }
}

// built when the page is assembled: every part above and below may add a belief
const believeLines = () => [
  heading(2, "What we now believe"),
  "",
  beliefs.length
    ? `Only what the tests on this page support (p < ${P} by the rules above; "cannot be told apart" means no significant difference at this scale, not equality): ${beliefs.join(" ")}`
    : "Nothing yet: no part has finished runs.",
  "",
];

say(heading(2, "Depth sweep: 6, 12, 24 layers at d 128 (one seed)"), "");
if (depthParts.length === 0)
  say(...["depth-6", "depth-12", "depth-24"].map((p) => `- ${p}: ${notYet(p)}`), "");
else {
  say(
    "Settings: configs/study/depth-{6,12,24}.json (the main study's, with the depth changed; the 12-layer point is the main study's seed 0).",
    "",
    ...tableHead([
      "layers",
      "standard",
      "attnres-full",
      "delta",
      "delta − standard",
      "attnres-full − standard",
      "delta − attnres-full",
    ]),
  );
  const gaps: { layers: number; delta: number; full: number }[] = [];
  for (const [p, c] of depthParts) {
    const l = (m: string) => losses(c, m)[0] ?? NaN;
    gaps.push({
      layers: Number(p.slice(6)),
      delta: l("delta") - l("standard"),
      full: l("attnres-full") - l("standard"),
    });
    say(
      tableRow([
        `${p.slice(6)}`,
        `${f4(l("standard"))}`,
        `${f4(l("attnres-full"))}`,
        `${f4(l("delta"))}`,
        `${f4(l("delta") - l("standard"))}`,
        `${f4(l("attnres-full") - l("standard"))}`,
        `${f4(l("delta") - l("attnres-full"))}`,
      ]),
    );
  }
  say("", "Validation loss in nats/token, one seed per point.", "");
  const rrows = [
    ...tableHead([
      "layers",
      "mode",
      "mean max α: attention",
      "MLP",
      "deepest third (uniform 1/N)",
      "flat from (attention; MLP)",
    ]),
  ];
  const deepBy: { layers: number; full: number; delta: number; uniform: number }[] = [];
  const figs: string[] = [];
  for (const [p, c] of depthParts) {
    const rows = await routingOf(c);
    for (const [m, rs] of rows) {
      const r = rs[0]!;
      rrows.push(
        tableRow([
          `${p.slice(6)}`,
          `${m}`,
          `${f3(r.max.attn)}`,
          `${f3(r.max.mlp)}`,
          `${f3(r.deep)} (${f3(r.deepUniform)})`,
          `${r.flatAttn}; ${r.flatMlp}`,
        ]),
      );
    }
    deepBy.push({
      layers: Number(p.slice(6)),
      full: rows.get("attnres-full")?.[0]?.deep ?? NaN,
      delta: rows.get("delta")?.[0]?.deep ?? NaN,
      uniform: rows.get("attnres-full")?.[0]?.deepUniform ?? NaN,
    });
    const fig = await depthFigure(c, `${p}-routing`);
    if (fig) figs.push(figure(`mean max α by sublayer, ${p}`, fig), "");
  }
  say(...rrows, "", ...figs);
  if (depthParts.length === 3) {
    const grows = (xs: number[]) => xs.every((x, i) => i === 0 || x > xs[i - 1]!);
    const shrinks = (xs: number[]) => xs.every((x, i) => i === 0 || x < xs[i - 1]!);
    const gapAdv = gaps.map((g) => -g.delta); // delta's advantage over standard
    const trend = grows(gapAdv)
      ? "grows with depth"
      : shrinks(gapAdv)
        ? "shrinks with depth"
        : "does not change monotonically with depth";
    const ratio = deepBy.map((d) => d.delta - d.full);
    const rTrend = grows(ratio)
      ? "grows with depth"
      : shrinks(ratio)
        ? "shrinks with depth"
        : "does not change monotonically with depth";
    verdicts.push(
      tableRow([
        "The gap (Delta over standard) grows with depth",
        "depth sweep",
        `delta − standard: ${gaps.map((g) => `${g.layers}L ${f4(g.delta)}`).join(", ")}; the advantage ${trend}`,
        `**one seed: a trend, not a test** (${trend})`,
      ]),
      tableRow([
        "AttnRes routing collapse grows with depth while Delta stays sharp",
        "depth sweep",
        `deepest-third max α (× uniform) at ${deepBy.map((d) => `${d.layers}L: attnres-full ${f3(d.full)} (${(d.full / d.uniform).toFixed(1)}×), delta ${f3(d.delta)} (${(d.delta / d.uniform).toFixed(1)}×)`).join("; ")}; delta − attnres-full ${rTrend}`,
        `**one seed: a trend, not a test** (${rTrend})`,
      ]),
    );
  }
}

say(heading(2, "Second corpus: tinyshakespeare, character level (3 seeds)"), "");
if (!sh) say(notYet("shakespeare"), "");
else {
  say(
    "Settings: configs/study/shakespeare.json — the shipped `corpora/tinyshakespeare.txt` (`attnres prepare --corpus shakespeare`), byte-level tokens, the main study's model and training settings.",
    "",
    ...lossTable(sh),
    "",
    ...divergedLines(sh),
  );
  for (const [name, x, y] of [
    ["delta vs standard", "delta", "standard"],
    ["delta vs attnres-full", "delta", "attnres-full"],
    ["attnres-full vs standard", "attnres-full", "standard"],
  ] as const) {
    const r = verdictLower(losses(sh, x), losses(sh, y), P);
    say(`- ${name}: Δ val loss ${f4(r.delta)}, ${pStr(r.welch)}: ${words(r)}.`);
    const b = belief(r, x, y, "on the second corpus (tinyshakespeare, character level)");
    if (b) beliefs.push(b);
    if (name === "delta vs standard")
      verdicts.push(
        tableRow([
          "Delta AttnRes beats standard residuals on a second corpus",
          "shakespeare",
          `Δ loss ${f4(r.delta)}; perplexity ${pct(pplChange(sh, "delta"))}; ${pStr(r.welch)}`,
          `${words(r)}`,
        ]),
      );
  }
  say("");
  const routing = await routingOf(sh);
  if (routing.size) say(...routingTable(routing), "");
  const lc = await lossFigure(sh, "shakespeare-loss-curves", "Validation loss, tinyshakespeare");
  if (lc) say(figure("validation loss curves, tinyshakespeare", lc), "");
}

const allParts = [main, ...depthParts.map(([, c]) => c), sh, ...extraParts];
// each machine description the runs recorded (the backend's description changed between versions
// of attnres on the same machine), with how many runs it covers
const machineRuns = new Map<string, number>();
for (const m of allParts.flatMap(
  (c) => c?.runs.filter((r) => !r.record.reusedFrom).map((r) => r.record.machine ?? "not recorded") ?? [],
))
  machineRuns.set(m, (machineRuns.get(m) ?? 0) + 1);
const machines = [...machineRuns].map(([m, n]) =>
  machineRuns.size > 1 ? `[${m}] (${n} run${n === 1 ? "" : "s"})` : m,
);
const standardParams = main ? summaryOf(main, "standard")?.params : undefined;
const lines = [
  heading(1, "Do the papers' claims hold at laptop scale?"),
  "",
  "Generated by `npm run study:report` from the committed run outputs in study/results/ (written by `npm run study` as each run finishes); do not edit by hand.",
  "Reproduce everything from a fresh clone:",
  "",
  "<!-- doctest: syntax-only (installs apt packages; hours of training) -->",
  "",
  "```sh",
  "bash scripts/setup.sh && npm run study && npm run study:report",
  "```",
  "",
  "The study resumes where it stopped (Ctrl-C is safe) and never retrains a run whose results are in study/results/, so a clone continues where the committed results end; `npm run study -- main` (or any part: `budget-4x`, `states`, `lr-1.5e-3`, `lr-6e-3`, `depth-6`, `depth-12`, `depth-24`, `shakespeare`) runs one part, `--modes a,b` and `--seeds 0,1` narrow it, `npm run study -- --list` shows what is left.",
  "",
  `Trained on (no GPU): ${machines.length ? machines.join("; ") : "no run yet"}. Wall time of the training steps of all distinct runs: ${trainingHours(allParts).toFixed(1)} h (evaluation, checkpointing and analysis excluded).`,
  "",
  `Rules: a claim that one mode has the lower validation loss (or the sharper routing) **holds** when Welch's two-sided t-test over seeds gives p < ${P} in that direction, **does not hold** when p < ${P} in the other direction, and is **not distinguishable from noise** otherwise. A measured value is **consistent with** a published one when the published value lies within the mean ± 2 standard deviations over seeds. Every mode has exactly the same settings (no per-mode tuning); no run was dropped or repeated, and a run that diverges is reported.`,
  "",
  heading(2, "Verdicts"),
  "",
  ...tableHead(["claim", "where", "measured", "verdict"]),
  ...(verdicts.length ? verdicts : [tableRow(["(no finished part yet)", "", "", ""])]),
  "",
  ...believeLines(),
  ...body,
  heading(2, "Claims the study does not measure"),
  "",
  "- *Zero-initialised routing is the identity, so a pretrained checkpoint converts by fine-tuning*: checked exactly by the test suite",
  "  (test/residual.test.ts, test/convert.test.ts; docs/convert.md), not by this study.",
  "- *Delta Block adds 4·d·L parameters and runs faster and lighter than AttnRes*: the parameter counts are in the tables above",
  "  and checked by test/residual.test.ts; speed and memory per mode are in docs/benchmarks.md (`npm run bench`).",
  "",
  heading(2, "What a proper test would need"),
  "",
  `The papers' results come from ${PAPER.scale}, where Delta AttnRes improves perplexity by ${PAPER.pplGain}. This study trains ${standardParams ? `${(standardParams / 1e6).toFixed(2)}M-parameter` : "small"} models on ${Number.isFinite(mainTokens) ? `${(mainTokens / 1e6).toFixed(2)}M` : "a few million"} tokens per run, three seeds per mode: an effect of a few percent in perplexity is comparable with the seed-to-seed spread here (see the standard deviations above), so only large effects can reach significance. Several effects here are far larger than the papers' (see "vs standard" above): after ${Number.isFinite(mainTokens) ? `${(mainTokens / 1e6).toFixed(2)}M` : "a few million"} tokens the models are far from converged, so the study measures how fast each mode learns early in training, not where it ends up, and the ordering may change with longer training. A proper test of the loss claims needs models of at least ~100M parameters trained on ~1–2B tokens, several seeds per mode — GPU-weeks, not a laptop. The routing claims are cheaper: they are about depth (24+ layers, long enough training for routing to specialise) more than width, and the depth sweep above is where this study probes them.`,
  "",
];
// The page is formatted like the rest of the tree (the format check covers docs/).
const style = (await prettier.resolveConfig(path.resolve("docs", "results.md"))) ?? {};
writeReport(outFile, await prettier.format(lines.join("\n"), { ...style, parser: "markdown" }));
process.stdout.write(`wrote ${outFile} and ${fs.readdirSync(figDir).length} figures in ${figDir}\n`);
