/**
 * The building blocks of a Llama/Qwen3 decoder, named as in HF checkpoints.
 *   Linear     y = x Wᵀ, W [out, in], no bias
 *   Embedding  weight [vocab, d]
 *   RMSNorm    weight [d] (ones at init)
 *   Attention  q/k/v/o_proj, optional per-head q_norm/k_norm (Qwen3), RoPE, GQA, causal; with a
 *              KVCache (incremental decoding) it appends the new positions' k, v and attends over
 *              the cached prefix
 *   MLP        down(silu(gate(x)) * up(x))
 * One token without gradients (batch-1 decoding) takes fused paths: q/k/v in one gemvMany call,
 * gate/up/SwiGLU in one gemvSwiglu call, and with a KV cache qk-norm, RoPE, the cache write and
 * attention in one decodeAttention call (the same values to float32 rounding; no backward needed).
 */
import type { Backend, Buf, DType } from "../backend/backend.js";
import {
  add,
  attention,
  embedding,
  matmul,
  reshape,
  rmsnorm,
  rope,
  RopeTable,
  swiglu,
} from "../tensor/ops.js";
import { empty, isGradEnabled, type Tensor } from "../tensor/tensor.js";
import { type InitContext, Module } from "./module.js";

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  /** std 0 initialises the weight to zeros; `bias` (a constant) adds a bias [out]. */
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    ctx: InitContext,
    std: number,
    bias?: number,
  ) {
    super();
    this.weight = this.param(
      "weight",
      [outFeatures, inFeatures],
      std === 0 ? { kind: "const", value: 0 } : { kind: "normal", std },
      ctx,
    );
    this.bias =
      bias === undefined ? null : this.param("bias", [outFeatures], { kind: "const", value: bias }, ctx);
  }
  /** x [..., in] → [..., out] */
  forward(x: Tensor): Tensor {
    const y = matmul(x, this.weight, { transB: true });
    return this.bias ? add(y, this.bias) : y;
  }
}

export class Embedding extends Module {
  readonly weight: Tensor;
  constructor(vocab: number, dim: number, ctx: InitContext, std: number) {
    super();
    this.weight = this.param("weight", [vocab, dim], { kind: "normal", std }, ctx);
  }
  /** ids (shape S) → [...S, d] */
  forward(ids: Int32Array, shape: readonly number[]): Tensor {
    return embedding(this.weight, ids, shape);
  }
}

export class RMSNorm extends Module {
  readonly weight: Tensor;
  constructor(
    dim: number,
    readonly eps: number,
    ctx: InitContext,
  ) {
    super();
    this.weight = this.param("weight", [dim], { kind: "const", value: 1 }, ctx);
  }
  forward(x: Tensor): Tensor {
    return rmsnorm(x, this.weight, this.eps);
  }
}

export interface AttentionShape {
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  qkNorm: boolean;
  eps: number;
}

/**
 * Keys and values of one attention layer for incremental decoding: k, v [B, maxLen, Hkv, D], as
 * attention reads them (after k_norm and RoPE at their absolute positions). Both tensors are
 * persistent (outside any tidy scope) until dispose(). Positions [0, posOffset + T) must have been
 * written before a call at posOffset reads them; the decoder's cache object keeps that count.
 * Each batch row's prefix [0, Tk) is contiguous ([Tk, Hkv, D] at row b · maxLen · Hkv · D), so
 * attention reads it in place, without copying.
 */
export class KVCache {
  readonly k: Tensor;
  readonly v: Tensor;
  constructor(
    readonly B: number,
    readonly maxLen: number,
    readonly kvHeads: number,
    readonly headDim: number,
    opts: { backend: Backend; dtype: DType },
  ) {
    if (!Number.isInteger(B) || B < 1 || !Number.isInteger(maxLen) || maxLen < 1)
      throw new Error(`KV cache: batch size ${B} and length ${maxLen} must be positive integers`);
    this.k = empty([B, maxLen, kvHeads, headDim], opts).keep();
    this.v = empty([B, maxLen, kvHeads, headDim], opts).keep();
  }
  get isDisposed(): boolean {
    return this.k.isDisposed;
  }
  dispose(): void {
    this.k.dispose();
    this.v.dispose();
  }
}

function rows(buf: Buf, start: number, n: number): Buf {
  return buf.subarray(start, start + n);
}

export class Attention extends Module {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;
  readonly q_norm: RMSNorm | null;
  readonly k_norm: RMSNorm | null;

  constructor(
    readonly s: AttentionShape,
    ctx: InitContext,
    std: number,
  ) {
    super();
    this.q_proj = this.child("q_proj", new Linear(s.hidden, s.heads * s.headDim, ctx, std));
    this.k_proj = this.child("k_proj", new Linear(s.hidden, s.kvHeads * s.headDim, ctx, std));
    this.v_proj = this.child("v_proj", new Linear(s.hidden, s.kvHeads * s.headDim, ctx, std));
    this.o_proj = this.child("o_proj", new Linear(s.heads * s.headDim, s.hidden, ctx, std));
    this.q_norm = s.qkNorm ? this.child("q_norm", new RMSNorm(s.headDim, s.eps, ctx)) : null;
    this.k_norm = s.qkNorm ? this.child("k_norm", new RMSNorm(s.headDim, s.eps, ctx)) : null;
  }

  /**
   * x [B, T, hidden] (already normed) → [B, T, hidden]; the tokens sit at positions posOffset + t.
   * Without a cache, attention is causal over these T tokens alone. With one (inference only,
   * under noGrad), their k and v are written into the cache at [posOffset, posOffset + T) and
   * each token attends causally over cached positions [0, posOffset + t].
   */
  forward(x: Tensor, table: RopeTable, posOffset = 0, cache?: KVCache): Tensor {
    const [B, T] = x.shape as [number, number];
    const { heads, kvHeads, headDim } = this.s;
    let q: Tensor;
    let k: Tensor;
    let v: Tensor;
    if (B * T === 1 && !isGradEnabled() && this.q_proj.bias === null) {
      // One token (decoding): the three projections in one pass over their weights.
      const be = x.backend;
      const opts = { backend: be, dtype: x.dtype };
      q = empty([B, T, heads, headDim], opts);
      k = empty([B, T, kvHeads, headDim], opts);
      v = empty([B, T, kvHeads, headDim], opts);
      const p = [this.q_proj, this.k_proj, this.v_proj];
      be.gemvMany(
        x.data,
        p.map((l) => l.weight.data),
        [q.data, k.data, v.data],
        p.map((l) => l.outFeatures),
        this.s.hidden,
      );
    } else {
      q = reshape(this.q_proj.forward(x), [B, T, heads, headDim]);
      k = reshape(this.k_proj.forward(x), [B, T, kvHeads, headDim]);
      v = reshape(this.v_proj.forward(x), [B, T, kvHeads, headDim]);
    }
    if (cache && B * T === 1 && !isGradEnabled())
      return this.o_proj.forward(this.decodeStep(q, k, v, table, posOffset, cache));
    if (this.q_norm) q = this.q_norm.forward(q);
    if (this.k_norm) k = this.k_norm.forward(k);
    q = rope(q, table, posOffset);
    k = rope(k, table, posOffset);
    const o = cache ? this.cachedAttention(q, k, v, posOffset, cache) : attention(q, k, v, { causal: true });
    return this.o_proj.forward(reshape(o, [B, T, heads * headDim]));
  }

  /**
   * One token (B = T = 1, under noGrad) with a cache: q/k-norm, RoPE, the cache write and attention
   * over [0, posOffset] in one decodeAttention call. q [1, 1, H, D], k, v [1, 1, Hkv, D] (the
   * projections) → [1, 1, H · D].
   */
  private decodeStep(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: RopeTable,
    posOffset: number,
    cache: KVCache,
  ): Tensor {
    const { heads, kvHeads, headDim, eps } = this.s;
    this.checkCache(q, 1, posOffset, cache);
    if (headDim !== table.headDim)
      throw new Error(`rope: head dim ${headDim} but the table was built for ${table.headDim}`);
    if (posOffset + 1 > table.maxPos)
      throw new Error(
        `rope: positions up to ${posOffset + 1} exceed the table's ${table.maxPos} (max_position_embeddings)`,
      );
    const { cos, sin } = table.tables(q);
    const out = empty([1, 1, heads * headDim], { backend: q.backend, dtype: q.dtype });
    q.backend.decodeAttention(
      q.data,
      k.data,
      v.data,
      this.q_norm?.weight.data ?? null,
      this.k_norm?.weight.data ?? null,
      eps,
      cos,
      sin,
      cache.k.data,
      cache.v.data,
      posOffset,
      out.data,
      heads,
      kvHeads,
      headDim,
      1 / Math.sqrt(headDim),
    );
    return out;
  }

  /** Throws unless `cache` can take T positions of q's batch at posOffset. */
  private checkCache(q: Tensor, T: number, posOffset: number, cache: KVCache): void {
    const B = q.shape[0]!;
    const D = this.s.headDim;
    const Hkv = this.s.kvHeads;
    if (cache.isDisposed) throw new Error("attention: the KV cache was disposed");
    if (cache.B !== B || cache.kvHeads !== Hkv || cache.headDim !== D)
      throw new Error(
        `attention: a KV cache for B=${cache.B}, ${cache.kvHeads} kv heads of dim ${cache.headDim} ` +
          `cannot hold B=${B}, ${Hkv} kv heads of dim ${D}`,
      );
    if (!Number.isInteger(posOffset) || posOffset < 0 || posOffset + T > cache.maxLen)
      throw new Error(
        `attention: positions [${posOffset}, ${posOffset + T}) do not fit in a KV cache of length ${cache.maxLen}`,
      );
    if (cache.k.backend !== q.backend || cache.k.dtype !== q.dtype)
      throw new Error(
        `attention: the KV cache lives on ${cache.k.backend.name}/${cache.k.dtype}, the model on ${q.backend.name}/${q.dtype}`,
      );
  }

  /** Appends k, v [B, T, Hkv, D] at posOffset, then attention of q [B, T, H, D] over [0, posOffset + T). */
  private cachedAttention(q: Tensor, k: Tensor, v: Tensor, posOffset: number, cache: KVCache): Tensor {
    const [B, T, H, D] = q.shape as [number, number, number, number];
    const Hkv = this.s.kvHeads;
    if (isGradEnabled() && (q.requiresGrad || k.requiresGrad || v.requiresGrad))
      throw new Error("attention: the KV cache is for inference only; run the model under noGrad()");
    this.checkCache(q, T, posOffset, cache);
    const be = q.backend;
    const row = Hkv * D; // one position of one batch row in the cache
    const stride = cache.maxLen * row; // one batch row
    const src = [T * row, row, 1];
    const dst = [stride, row, 1];
    be.copy(k.data, 0, src, cache.k.data, posOffset * row, dst, [B, T, row], false);
    be.copy(v.data, 0, src, cache.v.data, posOffset * row, dst, [B, T, row], false);
    // The fused kernel wants [B, Tk, Hkv, D] contiguous; each row's cached prefix is, so it runs
    // once per batch row on views of the buffers (B = 1 is a single call on the whole prefix).
    const Tk = posOffset + T;
    const out = empty(q.shape, { backend: be, dtype: q.dtype });
    const lse = empty([B, H, T], { backend: be, dtype: q.dtype });
    const qn = T * H * D;
    for (let b = 0; b < B; b++)
      be.attention(
        rows(q.data, b * qn, qn),
        rows(cache.k.data, b * stride, Tk * row),
        rows(cache.v.data, b * stride, Tk * row),
        rows(out.data, b * qn, qn),
        rows(lse.data, b * H * T, H * T),
        1,
        T,
        Tk,
        H,
        Hkv,
        D,
        1 / Math.sqrt(D),
        true,
      );
    lse.dispose();
    return out;
  }
}

export class MLP extends Module {
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;
  constructor(hidden: number, ff: number, ctx: InitContext, std: number) {
    super();
    this.gate_proj = this.child("gate_proj", new Linear(hidden, ff, ctx, std));
    this.up_proj = this.child("up_proj", new Linear(hidden, ff, ctx, std));
    this.down_proj = this.child("down_proj", new Linear(ff, hidden, ctx, std));
  }
  forward(x: Tensor): Tensor {
    const hidden = this.gate_proj.inFeatures;
    if (x.size === hidden && !isGradEnabled() && this.gate_proj.bias === null && this.up_proj.bias === null) {
      // One token (decoding): gate, up and SwiGLU in one pass over the two weights.
      const ff = this.gate_proj.outFeatures;
      const h = empty([...x.shape.slice(0, -1), ff], { backend: x.backend, dtype: x.dtype });
      x.backend.gemvSwiglu(x.data, this.gate_proj.weight.data, this.up_proj.weight.data, h.data, ff, hidden);
      return this.down_proj.forward(h);
    }
    return this.down_proj.forward(swiglu(this.gate_proj.forward(x), this.up_proj.forward(x)));
  }
}
