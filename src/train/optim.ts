/**
 * Optimisation: AdamW with parameter groups (own lr and weight decay each; PyTorch's exact update
 * order, fused in one kernel per tensor), global-norm gradient clipping with PyTorch's semantics,
 * and the linear-warmup + cosine-decay learning-rate schedule.
 * Optimizer state (m, v) is allocated once, outside any scope, and reused every step.
 */
import { empty, type Tensor } from "../tensor/tensor.js";

export interface ParamGroup {
  params: Tensor[];
  lr: number;
  weightDecay: number;
  /** Free-form label (e.g. "matrices", "norms", "routing") for logs. */
  name?: string;
}

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
}

export class AdamW {
  readonly groups: ParamGroup[];
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** Number of steps taken so far. */
  t = 0;
  private state = new Map<Tensor, { m: Tensor; v: Tensor }>();

  constructor(groups: ParamGroup[], opts: AdamWOptions = {}) {
    const seen = new Set<Tensor>();
    for (const g of groups)
      for (const p of g.params) {
        if (seen.has(p)) throw new Error(`AdamW: parameter ${p.name || "(unnamed)"} is in two groups`);
        seen.add(p);
      }
    this.groups = groups;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
  }

  /** One step. lrScale multiplies every group's lr (the schedule). Parameters without grad are skipped. */
  step(lrScale = 1): void {
    this.t++;
    const bc1 = 1 - Math.pow(this.beta1, this.t);
    const bc2 = 1 - Math.pow(this.beta2, this.t);
    for (const g of this.groups)
      for (const p of g.params) {
        if (!p.grad) continue;
        let s = this.state.get(p);
        if (!s) {
          const opts = { backend: p.backend, dtype: p.dtype };
          s = { m: empty(p.shape, opts).keep(), v: empty(p.shape, opts).keep() };
          p.backend.fill(s.m.data, 0, p.size);
          p.backend.fill(s.v.data, 0, p.size);
          this.state.set(p, s);
        }
        p.backend.adamw(
          p.data,
          p.grad.data,
          s.m.data,
          s.v.data,
          p.size,
          g.lr * lrScale,
          this.beta1,
          this.beta2,
          this.eps,
          g.weightDecay,
          bc1,
          bc2,
        );
      }
  }

  /** Moments as named arrays (m.<param>, v.<param>) for a checkpoint. */
  exportState(
    named: readonly [string, Tensor][],
  ): [string, { shape: readonly number[]; data: ArrayLike<number> }][] {
    const out: [string, { shape: readonly number[]; data: ArrayLike<number> }][] = [];
    for (const [name, p] of named) {
      const st = this.state.get(p);
      if (!st) continue;
      out.push([`m.${name}`, { shape: p.shape, data: st.m.data.subarray(0, p.size) }]);
      out.push([`v.${name}`, { shape: p.shape, data: st.v.data.subarray(0, p.size) }]);
    }
    return out;
  }

  /**
   * Restores moments saved by exportState and the step count t. Refuses (naming `source` and the
   * tensor) a t that is not a non-negative integer, non-finite moments and negative second moments:
   * any of them would put NaN into the weights at the next step.
   */
  loadState(
    named: readonly [string, Tensor][],
    tensors: ReadonlyMap<string, { shape: readonly number[]; data: ArrayLike<number> }>,
    t: number,
    source = "optimizer state",
  ): void {
    if (!Number.isSafeInteger(t) || t < 0)
      throw new Error(`${source}: the AdamW step count ${t} is not a non-negative integer`);
    for (const [name, p] of named) {
      const m = tensors.get(`m.${name}`);
      const v = tensors.get(`v.${name}`);
      if (!m && !v) continue;
      if (!m || !v || m.data.length !== p.size || v.data.length !== p.size)
        throw new Error(`${source}: the moments of ${name} are incomplete or have the wrong size`);
      for (let i = 0; i < p.size; i++) {
        if (!Number.isFinite(m.data[i]!))
          throw new Error(`${source}: tensor m.${name} holds ${m.data[i]} at index ${i}`);
        const vi = v.data[i]!;
        if (!Number.isFinite(vi) || vi < 0)
          throw new Error(
            `${source}: tensor v.${name} holds ${vi} at index ${i} (second moments are finite and ≥ 0)`,
          );
      }
      const opts = { backend: p.backend, dtype: p.dtype };
      const st = { m: empty(p.shape, opts).keep(), v: empty(p.shape, opts).keep() };
      st.m.data.set(m.data);
      st.v.data.set(v.data);
      this.state.get(p)?.m.dispose();
      this.state.get(p)?.v.dispose();
      this.state.set(p, st);
    }
    this.t = t;
  }

  /** The moment buffers of a parameter (for checkpointing). */
  stateOf(p: Tensor): { m: Tensor; v: Tensor } | undefined {
    return this.state.get(p);
  }

  dispose(): void {
    for (const s of this.state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    this.state.clear();
  }
}

/**
 * Scales all gradients so that their global L2 norm is at most maxNorm, as
 * torch.nn.utils.clip_grad_norm_ does (coef = maxNorm / (norm + 1e-6), clamped to 1).
 * Returns the norm before clipping.
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): number {
  let ss = 0;
  for (const p of params) if (p.grad) ss += p.backend.sumSquares(p.grad.data, p.grad.size);
  const norm = Math.sqrt(ss);
  const coef = Math.min(1, maxNorm / (norm + 1e-6));
  if (coef < 1)
    for (const p of params)
      if (p.grad)
        p.backend.binary("mul", p.grad.data, [1], scalarBuf(p, coef), [0], p.grad.data, [p.grad.size]);
  return norm;
}

const scalars = new Map<string, Float32Array | Float64Array>();
/** A one-element buffer holding v, reused across calls (one per backend and dtype). */
function scalarBuf(p: Tensor, v: number): Float32Array | Float64Array {
  const key = `${p.backend.name}:${p.dtype}`;
  let b = scalars.get(key);
  if (!b) scalars.set(key, (b = p.backend.alloc(p.dtype, 1)));
  b[0] = v;
  return b;
}

export interface ScheduleOptions {
  warmup: number;
  total: number;
  /** Final lr as a fraction of the peak (0.1 = decay to 10 %). */
  minRatio: number;
}

/** LR multiplier at step `it` (0-based): linear warmup to 1, then cosine decay to minRatio. */
export function lrMultiplier(it: number, o: ScheduleOptions): number {
  if (it < o.warmup) return (it + 1) / o.warmup;
  if (it >= o.total) return o.minRatio;
  const ratio = (it - o.warmup) / Math.max(1, o.total - o.warmup);
  return o.minRatio + 0.5 * (1 + Math.cos(Math.PI * ratio)) * (1 - o.minRatio);
}
