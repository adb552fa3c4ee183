/**
 * Routing statistics the papers report, from a forward pass's trace (plain numbers, computed
 * without gradients): per routed sublayer the mean over tokens of the max routing weight, the
 * mean entropy, and the mean α per source; for DDL the distribution of β per sublayer.
 */
import type { Trace } from "./residual.js";

export interface SublayerRouting {
  /** Sublayer index j, or "final" for the Kimi modes' final routing. */
  j: number | "final";
  layer: number | null;
  kind: "attn" | "mlp" | "final";
  sources: number;
  meanMaxWeight: number;
  meanEntropy: number;
  /** Mean α per source over tokens (length = sources). */
  meanAlpha: number[];
}

export interface SublayerBeta {
  j: number;
  layer: number;
  kind: "attn" | "mlp";
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

export function routingStats(trace: Trace): RoutingReport {
  const routing: SublayerRouting[] = [];
  for (const [j, alpha] of trace.alphas) {
    const N = alpha.shape[alpha.rank - 1]!;
    const rows = alpha.size / N;
    const a = alpha.data;
    let maxSum = 0;
    let entSum = 0;
    const mean = new Array<number>(N).fill(0);
    for (let r = 0; r < rows; r++) {
      let mx = 0;
      let ent = 0;
      for (let i = 0; i < N; i++) {
        const v = a[r * N + i]!;
        if (v > mx) mx = v;
        if (v > 0) ent -= v * Math.log(v);
        mean[i]! += v;
      }
      maxSum += mx;
      entSum += ent;
    }
    routing.push({
      j,
      layer: j === "final" ? null : j >> 1,
      kind: j === "final" ? "final" : j % 2 === 0 ? "attn" : "mlp",
      sources: N,
      meanMaxWeight: maxSum / rows,
      meanEntropy: entSum / rows,
      meanAlpha: mean.map((m) => m / rows),
    });
  }
  routing.sort((p, q) => (p.j === "final" ? 1 : q.j === "final" ? -1 : p.j - q.j));
  const beta: SublayerBeta[] = [];
  for (const [j, b] of trace.betas) {
    const d = b.data;
    let s = 0;
    let ss = 0;
    let mn = Infinity;
    let mx = -Infinity;
    const hist = new Array<number>(20).fill(0);
    for (let i = 0; i < b.size; i++) {
      const v = d[i]!;
      s += v;
      ss += v * v;
      mn = Math.min(mn, v);
      mx = Math.max(mx, v);
      hist[Math.min(19, Math.max(0, Math.floor(v * 10)))]!++;
    }
    const m = s / b.size;
    beta.push({
      j,
      layer: j >> 1,
      kind: j % 2 === 0 ? "attn" : "mlp",
      mean: m,
      std: Math.sqrt(Math.max(0, ss / b.size - m * m)),
      min: mn,
      max: mx,
      histogram: hist,
    });
  }
  beta.sort((p, q) => p.j - q.j);
  return { routing, beta };
}
