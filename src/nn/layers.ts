/**
 * The building blocks of a Llama/Qwen3 decoder, named as in HF checkpoints.
 *   Linear     y = x Wᵀ, W [out, in], no bias
 *   Embedding  weight [vocab, d]
 *   RMSNorm    weight [d] (ones at init)
 *   Attention  q/k/v/o_proj, optional per-head q_norm/k_norm (Qwen3), RoPE, GQA, causal
 *   MLP        down(silu(gate(x)) * up(x))
 */
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
import type { Tensor } from "../tensor/tensor.js";
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

/** Cached keys and values of one attention layer for incremental decoding: [B, Tmax, Hkv, D]. */
export interface KVCache {
  k: Tensor;
  v: Tensor;
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

  /** x [B, T, hidden] (already normed) → [B, T, hidden]. */
  forward(x: Tensor, table: RopeTable, posOffset = 0): Tensor {
    const [B, T] = x.shape as [number, number];
    const { heads, kvHeads, headDim } = this.s;
    let q = reshape(this.q_proj.forward(x), [B, T, heads, headDim]);
    let k = reshape(this.k_proj.forward(x), [B, T, kvHeads, headDim]);
    const v = reshape(this.v_proj.forward(x), [B, T, kvHeads, headDim]);
    if (this.q_norm) q = this.q_norm.forward(q);
    if (this.k_norm) k = this.k_norm.forward(k);
    q = rope(q, table, posOffset);
    k = rope(k, table, posOffset);
    const o = attention(q, k, v, { causal: true });
    return this.o_proj.forward(reshape(o, [B, T, heads * headDim]));
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
    return this.down_proj.forward(swiglu(this.gate_proj.forward(x), this.up_proj.forward(x)));
  }
}
