/**
 * The routing report of a model on a sample of batches (docs/methods.md "What the analysis measures"),
 * as plain numbers: everything is computed from `model.run(…, { trace: true })` under noGrad inside
 * a tidy scope per batch, and accumulated over every token of every batch (token-weighted means).
 *
 * Per routed call (each routed sublayer j — attention and MLP apart — and the Kimi modes' "final"):
 *   meanMaxWeight      mean over tokens of max_i α_i                        (1/N uniform … 1 one-hot)
 *   meanEntropy        mean over tokens of −Σ α_i ln α_i, in nats           (ln N uniform … 0 one-hot)
 *   meanAlpha          mean α per source position (the heatmap row)
 *   sourceNorms        mean ‖s_i‖₂ per source
 *   adjacentCosine     mean cos(s_i, s_{i+1}) per adjacent pair (tokens where either is zero skipped)
 *   effectiveRank      mean over sampled tokens of exp(H(σ/Σσ)), σ = singular values of the N×d
 *                      source matrix (Roy & Vetterli): 1 when all sources are parallel, N when they
 *                      are orthogonal with equal norms. σ² are the eigenvalues of the N×N Gram matrix
 *                      S Sᵀ, found with cyclic Jacobi rotations (N ≤ 2L+1 is small).
 *   directionalRank    the same with every non-zero source scaled to unit norm (directions only)
 *   flat               meanMaxWeight ≤ flatFactor / N (default 1.5): the call routes almost uniformly
 * Flattening depth (per group: every call, attention calls, MLP calls): the first call, in sublayer
 * order, from which that call and every later call of the group with N ≥ 2 sources is flat; null
 * when the deepest such call is not flat. Calls with one source (α = 1 necessarily) are ignored.
 *
 * DDL modes: β per sublayer (mean, std, range, 20 bins over [0, 2]). Modes that keep a residual
 * stream (standard, delta, delta-block, ddl): mean ‖h‖ entering each sublayer and the cosine of
 * consecutive streams — the only numbers standard residuals have.
 */
import type { Batch } from "../data/batches.js";
import type { ModeName } from "../model/config.js";
import type { DecoderLM } from "../model/decoder.js";
import {
  type CallKey,
  callLabel,
  describeCall,
  modeByName,
  modeOf,
  sourceLabels,
  type Trace,
} from "../model/residual.js";
import { BETA_BINS, RoutingAccumulator } from "../model/stats.js";
import { tidy } from "../tensor/memory.js";
import { noGrad, type Tensor } from "../tensor/tensor.js";

// ---------------------------------------------------------------------------------------------
// statistics on plain arrays

export { maxAndEntropy } from "../model/stats.js";

/** Euclidean norm of a[off … off+d). */
export function l2Norm(a: ArrayLike<number>, d: number, off = 0): number {
  let s = 0;
  for (let k = 0; k < d; k++) s += a[off + k]! * a[off + k]!;
  return Math.sqrt(s);
}

/** Cosine similarity of a[aOff…+d) and b[bOff…+d); null when either vector is zero. */
export function cosine(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  d: number,
  aOff = 0,
  bOff = 0,
): number | null {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let k = 0; k < d; k++) {
    const x = a[aOff + k]!;
    const y = b[bOff + k]!;
    ab += x * y;
    aa += x * x;
    bb += y * y;
  }
  if (aa === 0 || bb === 0) return null;
  return Math.max(-1, Math.min(1, ab / Math.sqrt(aa * bb)));
}

/**
 * Eigenvalues of the symmetric n×n matrix A (row-major; not modified), by cyclic Jacobi rotations
 * until the off-diagonal mass is below 1e-28 of the total. Unsorted.
 */
export function symmetricEigenvalues(A: ArrayLike<number>, n: number, maxSweeps = 64): Float64Array {
  const a = Float64Array.from({ length: n * n }, (_, i) => A[i]!);
  let total = 0;
  for (let i = 0; i < n * n; i++) total += a[i]! * a[i]!;
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q]! * a[p * n + q]!;
    if (off <= 1e-28 * total) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q]!;
        if (apq === 0) continue;
        const theta = (a[q * n + q]! - a[p * n + p]!) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p]!;
          const akq = a[k * n + q]!;
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k]!;
          const aqk = a[q * n + k]!;
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
      }
  }
  return Float64Array.from({ length: n }, (_, i) => a[i * n + i]!);
}

/** Effective rank exp(H(σ/Σσ)) from the Gram matrix G = S Sᵀ (n×n) of n vectors; null if all are zero. */
export function effectiveRankFromGram(G: ArrayLike<number>, n: number): number | null {
  const sig = Array.from(symmetricEigenvalues(G, n), (l) => Math.sqrt(Math.max(0, l)));
  const total = sig.reduce((s, v) => s + v, 0);
  if (!(total > 0)) return null;
  let h = 0;
  for (const v of sig) {
    const p = v / total;
    if (p > 0) h -= p * Math.log(p);
  }
  return Math.exp(h);
}

/** The Gram matrix of the non-zero vectors scaled to unit norm (cosines), and how many there are. */
export function unitGram(G: ArrayLike<number>, n: number): [Float64Array, number] {
  const keep: number[] = [];
  for (let i = 0; i < n; i++) if (G[i * n + i]! > 0) keep.push(i);
  const m = keep.length;
  const U = new Float64Array(m * m);
  keep.forEach((i, a) =>
    keep.forEach((j, b) => (U[a * m + b] = G[i * n + j]! / Math.sqrt(G[i * n + i]! * G[j * n + j]!))),
  );
  return [U, m];
}

/** Effective rank of the matrix whose rows are `vectors` (all of one length); null if all are zero. */
export function effectiveRank(vectors: readonly ArrayLike<number>[]): number | null {
  const n = vectors.length;
  if (n === 0) return null;
  const d = vectors[0]!.length;
  const G = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = i; j < n; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += vectors[i]![k]! * vectors[j]![k]!;
      G[i * n + j] = G[j * n + i] = s;
    }
  return effectiveRankFromGram(G, n);
}

// ---------------------------------------------------------------------------------------------
// the report

export { type CallKey, callLabel } from "../model/residual.js";

/**
 * What source position p (0-based) of a routed call holds, as the mode says (ModeDef.sourceLabel):
 * h0 then each sublayer's output (attnres-full, delta), h0 then block sums B1, B2 … (attnres-block;
 * the last one of a call may still be accumulating), h0 then block deltas Δ1, Δ2 … (delta-block);
 * the additive modes' null source, when enabled, comes first; over hidden states (sources
 * "states") "after L0.attn" … name the stream after each sublayer.
 */
export function sourceLabel(
  mode: ModeName,
  nullSource: boolean,
  p: number,
  sources: "outputs" | "states" = "outputs",
): string {
  const m = modeByName(mode);
  if (!m) throw new Error(`unknown residual mode ${mode}`);
  return m.sourceLabel(p, { attnres_use_null_source: nullSource, attnres_sources: sources });
}

export interface CallStats {
  key: CallKey;
  label: string;
  layer: number | null;
  kind: "attn" | "mlp" | "final";
  /** N, the number of sources. */
  sources: number;
  sourceLabels: string[];
  meanMaxWeight: number;
  /** 1/N: the max weight of uniform routing. */
  uniformWeight: number;
  /** meanMaxWeight · N: 1 for uniform routing, N for one-hot. */
  sharpness: number;
  meanEntropy: number;
  /** ln N: the entropy of uniform routing. */
  maxEntropy: number;
  /** meanEntropy / ln N (null for N = 1). */
  normalizedEntropy: number | null;
  meanAlpha: number[];
  sourceNorms: number[];
  /** Mean cos(s_i, s_{i+1}) for i = 0 … N−2 (null where every token had a zero source). */
  adjacentCosine: (number | null)[];
  meanAdjacentCosine: number | null;
  effectiveRank: number | null;
  /** The same for the sources scaled to unit norm (directions only, as the RMS-normalised keys see them). */
  directionalRank: number | null;
  /** meanMaxWeight ≤ flatFactor / N; null for N = 1. */
  flat: boolean | null;
}

export interface BetaStats {
  j: number;
  label: string;
  layer: number;
  kind: "attn" | "mlp";
  mean: number;
  std: number;
  min: number;
  max: number;
  /** Bin edges (21, over [0, 2]) and counts (20). */
  edges: number[];
  counts: number[];
}

export interface StreamStats {
  j: number;
  label: string;
  /** Mean ‖h‖₂ of the stream entering sublayer j. */
  meanNorm: number;
  /** Mean cos(h_j, h_{j+1}) of consecutive streams (null for the last sublayer). */
  cosineWithNext: number | null;
}

export interface FlatPoint {
  key: CallKey;
  label: string;
  layer: number | null;
}

export interface Flattening {
  factor: number;
  /** Over every routed call in order (final last), over attention calls, over MLP calls. */
  all: FlatPoint | null;
  attn: FlatPoint | null;
  mlp: FlatPoint | null;
  /** Labels of every flat call. */
  flatCalls: string[];
}

export interface GroupMeans {
  all: number | null;
  attn: number | null;
  mlp: number | null;
}

export interface AnalysisReport {
  mode: ModeName;
  model: {
    layers: number;
    hiddenSize: number;
    vocabSize: number;
    parameters: number;
    numBlocks: number | null;
    nullSource: boolean;
    gate: boolean;
  };
  sample: { batches: number; batchSize: number; seqLen: number; tokens: number; rankTokens: number };
  /** Whether the mode routes over depth (has α). */
  routed: boolean;
  calls: CallStats[];
  /** Heatmap column labels: the source positions of the call with the most sources. */
  columns: string[];
  /** Means over routed calls with ≥ 2 sources (each call weighs the same). */
  averages: {
    maxWeight: GroupMeans;
    normalizedEntropy: GroupMeans;
    effectiveRank: GroupMeans;
    directionalRank: GroupMeans;
  };
  flattening: Flattening | null;
  beta: BetaStats[];
  stream: StreamStats[];
  /** Plain-language remarks (e.g. that a mode has no routing). */
  notes: string[];
}

export interface AnalyzeOptions {
  /** Tokens per batch (evenly spaced) whose sources' effective rank is computed; default 64. */
  rankTokens?: number;
  /** A call is flat when its mean max weight ≤ flatFactor / N; default 1.5. */
  flatFactor?: number;
  /** Called after each batch. */
  onBatch?: (done: number, total: number) => void;
}

/** What the analysis adds to a call's α statistics (model/stats.ts): its sources' norms, cosines and ranks. */
class SourceAcc {
  norm: Float64Array;
  cosSum: Float64Array;
  cosN: Float64Array;
  rankSum = 0;
  rankN = 0;
  dirSum = 0;
  dirN = 0;
  constructor(readonly N: number) {
    this.norm = new Float64Array(N);
    this.cosSum = new Float64Array(Math.max(0, N - 1));
    this.cosN = new Float64Array(Math.max(0, N - 1));
  }
}

/** Per-batch caches: a source tensor read by several calls is measured once. */
class BatchCache {
  private norms = new Map<Tensor, number>();
  private cos = new Map<Tensor, Map<Tensor, [number, number]>>();
  constructor(
    readonly rows: number,
    readonly d: number,
  ) {}
  normSum(t: Tensor): number {
    let s = this.norms.get(t);
    if (s === undefined) {
      s = 0;
      const a = t.data;
      for (let r = 0; r < this.rows; r++) s += l2Norm(a, this.d, r * this.d);
      this.norms.set(t, s);
    }
    return s;
  }
  cosSum(x: Tensor, y: Tensor): [number, number] {
    let m = this.cos.get(x);
    if (!m) this.cos.set(x, (m = new Map()));
    let v = m.get(y);
    if (!v) {
      v = [0, 0];
      const a = x.data;
      const b = y.data;
      for (let r = 0; r < this.rows; r++) {
        const c = cosine(a, b, this.d, r * this.d, r * this.d);
        if (c !== null) {
          v[0] += c;
          v[1]++;
        }
      }
      m.set(y, v);
    }
    return v;
  }
}

function accumulateSources(
  acc: SourceAcc,
  sources: readonly Tensor[],
  cache: BatchCache,
  sample: number[],
): void {
  const N = acc.N;
  const { d } = cache;
  sources.forEach((s, i) => (acc.norm[i]! += cache.normSum(s)));
  for (let i = 0; i + 1 < N; i++) {
    const [s, n] = cache.cosSum(sources[i]!, sources[i + 1]!);
    acc.cosSum[i]! += s;
    acc.cosN[i]! += n;
  }
  const G = new Float64Array(N * N);
  const bufs = sources.map((s) => s.data);
  for (const r of sample) {
    const o = r * d;
    for (let i = 0; i < N; i++)
      for (let j = i; j < N; j++) {
        let s = 0;
        const x = bufs[i]!;
        const y = bufs[j]!;
        for (let k = 0; k < d; k++) s += x[o + k]! * y[o + k]!;
        G[i * N + j] = G[j * N + i] = s;
      }
    const er = effectiveRankFromGram(G, N);
    if (er !== null) {
      acc.rankSum += er;
      acc.rankN++;
    }
    const dr = effectiveRankFromGram(...unitGram(G, N));
    if (dr !== null) {
      acc.dirSum += dr;
      acc.dirN++;
    }
  }
}

const meanOf = (xs: (number | null)[]): number | null => {
  const v = xs.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length ? v.reduce((s, x) => s + x, 0) / v.length : null;
};

/** The first call from which every later call of the list (N ≥ 2) is flat; null if none. */
export function flatteningPoint(
  calls: readonly Pick<CallStats, "key" | "label" | "layer" | "flat">[],
): FlatPoint | null {
  const cand = calls.filter((c) => c.flat !== null);
  let start: (typeof cand)[number] | null = null;
  for (let i = cand.length - 1; i >= 0 && cand[i]!.flat; i--) start = cand[i]!;
  return start ? { key: start.key, label: start.label, layer: start.layer } : null;
}

/** Runs the model with a trace over every batch and returns the routing report. */
export function analyzeModel(
  model: DecoderLM,
  batches: readonly Batch[],
  opts: AnalyzeOptions = {},
): AnalysisReport {
  if (batches.length === 0) throw new Error("analyzeModel: no batches to analyse");
  const c = model.config;
  const def = modeOf(c);
  const mode = def.name as ModeName;
  const d = c.hidden_size;
  const rankTokens = opts.rankTokens ?? 64;
  const factor = opts.flatFactor ?? 1.5;
  if (!(factor >= 1)) throw new Error(`the flat factor must be at least 1, got ${factor}`);
  const routing = new RoutingAccumulator();
  const calls = new Map<CallKey, SourceAcc>();
  const streams = new Map<number, { norm: number; n: number; cos: number; cosN: number }>();
  let tokens = 0;
  let sampled = 0;
  batches.forEach((b, bi) => {
    noGrad(() =>
      tidy(() => {
        const trace: Trace = model.run(b.ids, b.B, b.T, { trace: true }).trace!;
        const rows = b.B * b.T;
        const m = Math.min(rows, rankTokens);
        const sample = Array.from({ length: m }, (_, k) => Math.floor(((k + 0.5) * rows) / m));
        const cache = new BatchCache(rows, d);
        for (const [key, alphas] of routing.add(trace)) {
          let acc = calls.get(key);
          if (!acc) calls.set(key, (acc = new SourceAcc(alphas.N)));
          accumulateSources(acc, trace.sources.get(key)!, cache, sample);
        }
        const js = [...trace.streams.keys()].sort((p, q) => p - q);
        for (const j of js) {
          let s = streams.get(j);
          if (!s) streams.set(j, (s = { norm: 0, n: 0, cos: 0, cosN: 0 }));
          s.norm += cache.normSum(trace.streams.get(j)!);
          s.n += rows;
          const next = trace.streams.get(j + 1);
          if (next) {
            const [cs, cn] = cache.cosSum(trace.streams.get(j)!, next);
            s.cos += cs;
            s.cosN += cn;
          }
        }
        tokens += rows;
        sampled += m;
      }),
    );
    opts.onBatch?.(bi + 1, batches.length);
  });

  const callStats: CallStats[] = routing.callKeys().map((key) => {
    const al = routing.calls.get(key)!;
    const a = calls.get(key)!;
    const N = a.N;
    const meanMax = al.meanMaxWeight;
    const meanEnt = al.meanEntropy;
    const adj = Array.from(a.cosSum, (s, i) => (a.cosN[i]! > 0 ? s / a.cosN[i]! : null));
    return {
      ...describeCall(c, key, N),
      meanMaxWeight: meanMax,
      uniformWeight: 1 / N,
      sharpness: meanMax * N,
      meanEntropy: meanEnt,
      maxEntropy: Math.log(N),
      normalizedEntropy: N > 1 ? meanEnt / Math.log(N) : null,
      meanAlpha: al.meanAlpha(),
      sourceNorms: Array.from(a.norm, (s) => s / al.tokens),
      adjacentCosine: adj,
      meanAdjacentCosine: meanOf(adj),
      effectiveRank: a.rankN > 0 ? a.rankSum / a.rankN : null,
      directionalRank: a.dirN > 0 ? a.dirSum / a.dirN : null,
      flat: N > 1 ? meanMax <= factor / N : null,
    };
  });
  const routed = callStats.length > 0;
  const widest = callStats.reduce((w, s) => Math.max(w, s.sources), 0);
  const multi = callStats.filter((s) => s.sources > 1);
  const group = (f: (s: CallStats) => number | null): GroupMeans => ({
    all: meanOf(multi.map(f)),
    attn: meanOf(multi.filter((s) => s.kind === "attn").map(f)),
    mlp: meanOf(multi.filter((s) => s.kind === "mlp").map(f)),
  });

  const notes: string[] = [];
  if (!routed)
    notes.push(
      mode === "standard"
        ? "standard residuals do not route over depth: there are no routing weights, sources or flattening depth; the stream statistics below are what this mode has."
        : `${mode} does not route over depth by attention: there are no routing weights or sources; β and the stream statistics below describe its residual updates.`,
    );
  else if (multi.length === 0)
    notes.push("every routed call has a single source, so its weight is 1 by construction.");

  const beta: BetaStats[] = routing.report().beta.map((b) => ({
    j: b.j,
    label: callLabel(b.j),
    layer: b.layer,
    kind: b.kind,
    mean: b.mean,
    std: b.std,
    min: b.min,
    max: b.max,
    edges: Array.from({ length: BETA_BINS + 1 }, (_, i) => (2 * i) / BETA_BINS),
    counts: b.histogram,
  }));
  const stream: StreamStats[] = [...streams.keys()]
    .sort((p, q) => p - q)
    .map((j) => {
      const s = streams.get(j)!;
      return {
        j,
        label: callLabel(j),
        meanNorm: s.norm / s.n,
        cosineWithNext: s.cosN > 0 ? s.cos / s.cosN : null,
      };
    });

  return {
    mode,
    model: {
      layers: c.num_hidden_layers,
      hiddenSize: d,
      vocabSize: c.vocab_size,
      parameters: model.numParameters(),
      numBlocks: def.options.blocks ? (c.attnres_num_blocks ?? null) : null,
      nullSource: c.attnres_use_null_source,
      gate: c.attnres_gate_type === "learnable_alpha",
    },
    sample: {
      batches: batches.length,
      batchSize: batches[0]!.B,
      seqLen: batches[0]!.T,
      tokens,
      rankTokens: sampled,
    },
    routed,
    calls: callStats,
    columns: sourceLabels(c, widest),
    averages: {
      maxWeight: group((s) => s.meanMaxWeight),
      normalizedEntropy: group((s) => s.normalizedEntropy),
      effectiveRank: group((s) => s.effectiveRank),
      directionalRank: group((s) => s.directionalRank),
    },
    flattening: routed
      ? {
          factor,
          all: flatteningPoint(callStats),
          attn: flatteningPoint(callStats.filter((s) => s.kind === "attn")),
          mlp: flatteningPoint(callStats.filter((s) => s.kind === "mlp")),
          flatCalls: callStats.filter((s) => s.flat).map((s) => s.label),
        }
      : null,
    beta,
    stream,
    notes,
  };
}

const f3 = (x: number) => x.toFixed(3);

/** One plain sentence on whether and where routing flattens. */
export function flatteningVerdict(r: AnalysisReport): string {
  if (!r.routed || !r.flattening) return `${r.mode} has no depth routing, so nothing can flatten.`;
  const fl = r.flattening;
  const multi = r.calls.filter((s) => s.sources > 1);
  if (multi.length === 0) return "No routed call has more than one source, so flattening is undefined.";
  const within = `within ${fl.factor}× of uniform (mean max weight ≤ ${fl.factor}/N)`;
  if (fl.all) {
    const first = multi[0]!;
    const where =
      fl.all.key === first.key
        ? "from the first routed call with a choice"
        : `from ${fl.all.label}${fl.all.layer !== null ? ` (layer ${fl.all.layer} of ${r.model.layers})` : ""} on`;
    return `Routing is flat ${where}: every later routed call is ${within}.`;
  }
  const last = multi[multi.length - 1]!;
  const flats = fl.flatCalls.length ? ` (flat calls: ${fl.flatCalls.join(", ")})` : " (no call is flat)";
  return `Routing stays sharp to the end: the deepest routed call, ${last.label}, has mean max weight ${f3(last.meanMaxWeight)} = ${last.sharpness.toFixed(2)}× uniform 1/${last.sources}, more than ${fl.factor}×${flats}.`;
}
