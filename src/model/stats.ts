/**
 * Routing statistics, the one implementation: per routed call the mean over tokens of the max
 * routing weight, the mean entropy (nats) and the mean α per source; for DDL the distribution of
 * β per sublayer. Plain numbers accumulated from traces (computed without gradients), token-
 * weighted over any number of forward passes. `routingStats` is model.analyze's report of one pass;
 * src/analysis/routing.ts builds the full analysis (source norms, cosines, ranks, flattening) on
 * these same accumulators, and the study report reads that analysis.
 *
 *   α of a call: [B, T, N] (N sources)   β of a sublayer: [B, T, 1], in (0, 2), binned in 20 bins of 0.1
 */
import type { Tensor } from "../tensor/tensor.js";
import { type CallKey, callPlace, type SublayerKind, type Trace } from "./modes/mode.js";

export interface SublayerRouting {
  /** Sublayer index j, or "final" for the Kimi modes' final routing. */
  j: CallKey;
  layer: number | null;
  kind: SublayerKind | "final";
  sources: number;
  meanMaxWeight: number;
  meanEntropy: number;
  /** Mean α per source over tokens (length = sources). */
  meanAlpha: number[];
}

export interface SublayerBeta {
  j: number;
  layer: number;
  kind: SublayerKind;
  mean: number;
  std: number;
  min: number;
  max: number;
  /** Counts of β in 20 equal bins over [0, 2]. */
  histogram: number[];
}

export interface RoutingReport {
  routing: SublayerRouting[];
  beta: SublayerBeta[];
}

/** Max and entropy (nats) of one weight vector w[off … off+N). */
export function maxAndEntropy(w: ArrayLike<number>, N: number, off = 0): { max: number; entropy: number } {
  let max = 0;
  let entropy = 0;
  for (let i = 0; i < N; i++) {
    const v = w[off + i]!;
    if (v > max) max = v;
    if (v > 0) entropy -= v * Math.log(v);
  }
  return { max, entropy };
}

/** Sums over tokens of one routed call's max weight, entropy and α per source. */
export class AlphaAccumulator {
  tokens = 0;
  maxSum = 0;
  entSum = 0;
  readonly alpha: Float64Array;
  constructor(readonly N: number) {
    this.alpha = new Float64Array(N);
  }
  /** alpha [B, T, N]. */
  add(alpha: Tensor): void {
    const N = this.N;
    const a = alpha.data;
    const rows = alpha.size / N;
    for (let r = 0; r < rows; r++) {
      const { max, entropy } = maxAndEntropy(a, N, r * N);
      this.maxSum += max;
      this.entSum += entropy;
      for (let i = 0; i < N; i++) this.alpha[i]! += a[r * N + i]!;
    }
    this.tokens += rows;
  }
  get meanMaxWeight(): number {
    return this.maxSum / this.tokens;
  }
  get meanEntropy(): number {
    return this.entSum / this.tokens;
  }
  meanAlpha(): number[] {
    return Array.from(this.alpha, (s) => s / this.tokens);
  }
}

export const BETA_BINS = 20;

/** Count, moments, range and 20-bin histogram over [0, 2] of one sublayer's β. */
export class BetaAccumulator {
  n = 0;
  sum = 0;
  sq = 0;
  min = Infinity;
  max = -Infinity;
  counts = new Array<number>(BETA_BINS).fill(0);
  add(t: Tensor): void {
    const b = t.data;
    for (let i = 0; i < t.size; i++) {
      const v = b[i]!;
      this.n++;
      this.sum += v;
      this.sq += v * v;
      if (v < this.min) this.min = v;
      if (v > this.max) this.max = v;
      this.counts[Math.min(BETA_BINS - 1, Math.max(0, Math.floor((v / 2) * BETA_BINS)))]!++;
    }
  }
  get mean(): number {
    return this.sum / this.n;
  }
  get std(): number {
    const m = this.mean;
    return Math.sqrt(Math.max(0, this.sq / this.n - m * m));
  }
}

/** Sublayers in order, "final" last. */
export const callOrder = (p: CallKey, q: CallKey): number => (p === "final" ? 1 : q === "final" ? -1 : p - q);

/** The α and β accumulators of every call of one or more traces. */
export class RoutingAccumulator {
  readonly calls = new Map<CallKey, AlphaAccumulator>();
  readonly betas = new Map<number, BetaAccumulator>();
  /** Adds a trace's α and β; returns, per call of the trace, its accumulator (in trace order). */
  add(trace: Trace): [CallKey, AlphaAccumulator][] {
    const seen: [CallKey, AlphaAccumulator][] = [];
    for (const [key, alpha] of trace.alphas) {
      const N = alpha.shape[alpha.rank - 1]!;
      let acc = this.calls.get(key);
      if (!acc) this.calls.set(key, (acc = new AlphaAccumulator(N)));
      if (acc.N !== N) throw new Error(`internal: call ${String(key)} had ${acc.N} sources, now ${N}`);
      acc.add(alpha);
      seen.push([key, acc]);
    }
    for (const [j, beta] of trace.betas) {
      let acc = this.betas.get(j);
      if (!acc) this.betas.set(j, (acc = new BetaAccumulator()));
      acc.add(beta);
    }
    return seen;
  }
  /** The calls in order ("final" last). */
  callKeys(): CallKey[] {
    return [...this.calls.keys()].sort(callOrder);
  }
  /** The β sublayers in order. */
  betaKeys(): number[] {
    return [...this.betas.keys()].sort((p, q) => p - q);
  }
  report(): RoutingReport {
    const routing = this.callKeys().map((j): SublayerRouting => {
      const a = this.calls.get(j)!;
      return {
        j,
        ...callPlace(j),
        sources: a.N,
        meanMaxWeight: a.meanMaxWeight,
        meanEntropy: a.meanEntropy,
        meanAlpha: a.meanAlpha(),
      };
    });
    const beta = this.betaKeys().map((j): SublayerBeta => {
      const b = this.betas.get(j)!;
      return {
        j,
        ...(callPlace(j) as { layer: number; kind: SublayerKind }),
        mean: b.mean,
        std: b.std,
        min: b.min,
        max: b.max,
        histogram: b.counts,
      };
    });
    return { routing, beta };
  }
}

/** The routing statistics of one forward pass's trace. */
export function routingStats(trace: Trace): RoutingReport {
  const acc = new RoutingAccumulator();
  acc.add(trace);
  return acc.report();
}
