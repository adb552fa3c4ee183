/**
 * The decoder-only LM (Llama/Qwen3 backbone, docs/methods.md "The backbone"), readable in one file.
 *
 *   ids [B, T] → embed_tokens → h0 [B, T, d]
 *   for layer i:  sublayer 2i   = self_attn(input_layernorm(x))
 *                 sublayer 2i+1 = mlp(post_attention_layernorm(x))
 *                 (what x is, and how the stream is updated, is the residual mode's business:
 *                 src/model/residual.ts, one file per mode in src/model/modes/)
 *   → norm → lm_head (or the tied embedding) → logits [B, T, vocab]
 *
 * Parameter names are the HF checkpoint names (model.layers.{i}.self_attn.q_proj.weight, …).
 *
 * Incremental decoding: `newCache(B, maxLen)` makes a DecoderCache (one KVCache [B, maxLen, Hkv, D]
 * per layer); `run(ids, B, T, { cache })` appends T tokens at position cache.length (or posOffset).
 * Nothing else needs caching: in every residual mode the depth routing at a token reads only that
 * token's own sources (h0 and the sublayer outputs at the same position), which are recomputed as
 * the token passes through the layers (test/generate.test.ts holds cached to uncached logits).
 */
import type { Backend, DType } from "../backend/backend.js";
import { defaultBackend, defaultDType, referenceBackend } from "../backend/index.js";
import { Attention, Embedding, KVCache, Linear, MLP, RMSNorm } from "../nn/layers.js";
import { type InitContext, Module } from "../nn/module.js";
import { crossEntropy, type Llama3RopeScaling, matmul, RopeTable, slice } from "../tensor/ops.js";
import { Rng } from "../tensor/random.js";
import type { Tensor } from "../tensor/tensor.js";
import { type DecoderLMConfig, type ModelConfig, parseConfig } from "./config.js";
import {
  emptyTrace,
  makeResidualMode,
  type ResidualMode,
  type SublayerResult,
  type Trace,
} from "./residual.js";
import { routingStats, type RoutingReport } from "./stats.js";

export interface ModelOptions {
  backend?: Backend;
  dtype?: DType;
  seed?: number;
  /** Shape-only parameters (no memory): the model can be inspected and counted, not run. */
  meta?: boolean;
  /** false: skip the random initial values (zero-filled) because every weight is loaded next. */
  randomInit?: boolean;
  /**
   * Run on the weights of this model instead of allocating: its parameters, in creation order, are
   * shared with this one's first ones (see InitContext.adopt). For a model of the same backbone
   * (e.g. the standard original of a routed conversion, or the same model at another eps).
   * Disposing this model releases only its views.
   */
  shareWeightsOf?: DecoderLM;
  /**
   * Parameters to adopt in creation order instead (InitContext.adopt), when they are not one
   * model's: e.g. one layer's buffers repeated for every layer, refilled layer by layer (convert's
   * layer-by-layer check, src/workflows/convert.ts).
   */
  adoptParams?: readonly Tensor[];
}

export class DecoderLayer extends Module {
  readonly input_layernorm: RMSNorm;
  readonly self_attn: Attention;
  readonly post_attention_layernorm: RMSNorm;
  readonly mlp: MLP;

  constructor(c: ModelConfig, ctx: InitContext) {
    super();
    const std = c.initializer_range;
    this.input_layernorm = this.child("input_layernorm", new RMSNorm(c.hidden_size, c.rms_norm_eps, ctx));
    this.self_attn = this.child(
      "self_attn",
      new Attention(
        {
          hidden: c.hidden_size,
          heads: c.num_attention_heads,
          kvHeads: c.num_key_value_heads,
          headDim: c.head_dim,
          qkNorm: c.attention_qk_norm,
          eps: c.rms_norm_eps,
        },
        ctx,
        std,
      ),
    );
    this.post_attention_layernorm = this.child(
      "post_attention_layernorm",
      new RMSNorm(c.hidden_size, c.rms_norm_eps, ctx),
    );
    this.mlp = this.child("mlp", new MLP(c.hidden_size, c.intermediate_size, ctx, std));
  }

  attnSublayer(x: Tensor, table: RopeTable, posOffset: number, cache?: KVCache): SublayerResult {
    const normed = this.input_layernorm.forward(x);
    return { normed, out: this.self_attn.forward(normed, table, posOffset, cache) };
  }

  mlpSublayer(x: Tensor): SublayerResult {
    const normed = this.post_attention_layernorm.forward(x);
    return { normed, out: this.mlp.forward(normed) };
  }
}

class DecoderBody extends Module {
  readonly embed_tokens: Embedding;
  readonly layers: DecoderLayer[] = [];
  readonly norm: RMSNorm;
  constructor(c: ModelConfig, ctx: InitContext) {
    super();
    this.embed_tokens = this.child(
      "embed_tokens",
      new Embedding(c.vocab_size, c.hidden_size, ctx, c.initializer_range),
    );
    for (let i = 0; i < c.num_hidden_layers; i++)
      this.layers.push(this.child(`layers.${i}`, new DecoderLayer(c, ctx)));
    this.norm = this.child("norm", new RMSNorm(c.hidden_size, c.rms_norm_eps, ctx));
  }
}

/**
 * The KV caches of every layer for incremental decoding of B sequences up to maxLen tokens.
 * `length` counts the positions already written (the next run appends there). Persistent:
 * dispose() releases its memory (2 · layers · B · maxLen · Hkv · D elements).
 */
export class DecoderCache {
  length = 0;
  constructor(
    readonly B: number,
    readonly maxLen: number,
    readonly layers: readonly KVCache[],
  ) {}
  get isDisposed(): boolean {
    return this.layers.some((l) => l.isDisposed);
  }
  dispose(): void {
    for (const l of this.layers) l.dispose();
  }
}

export interface ForwardOptions {
  /**
   * Position of the first token (incremental decoding). Default 0, or cache.length with a cache;
   * with a cache it may be at most cache.length (rewinding overwrites later positions).
   */
  posOffset?: number;
  /** Incremental decoding (inference only, under noGrad): attend over, and append to, this cache. */
  cache?: DecoderCache;
  /** Return routing weights (α per routed call) and DDL's β beside the logits. */
  trace?: boolean;
  /**
   * Compute the logits of the last position only: [B, 1, vocab] instead of [B, T, vocab] (what
   * generation needs after a prefill; the final norm and the LM head then run on B rows, not B·T).
   */
  lastOnly?: boolean;
}

export interface ForwardOutput {
  logits: Tensor;
  /** Present when opts.trace: the raw α/β tensors of this pass (no gradient). */
  trace?: Trace;
}

export class DecoderLM extends Module {
  readonly config: ModelConfig;
  readonly model: DecoderBody;
  readonly lm_head: Linear | null;
  readonly rope: RopeTable;
  readonly residual: ResidualMode;

  constructor(config: DecoderLMConfig | ModelConfig, opts: ModelOptions = {}) {
    super();
    const c = parseConfig(config);
    this.config = c;
    const backend = opts.backend ?? (opts.meta ? referenceBackend : defaultBackend());
    const ctx: InitContext = {
      backend,
      dtype: opts.dtype ?? defaultDType(backend),
      rng: new Rng(opts.seed ?? 0),
      meta: opts.meta ?? false,
      random: opts.randomInit ?? true,
      created: [],
      adopt: opts.adoptParams ?? opts.shareWeightsOf?.createdParams,
    };
    this.model = this.child("model", new DecoderBody(c, ctx));
    this.lm_head = c.tie_word_embeddings
      ? null
      : this.child("lm_head", new Linear(c.hidden_size, c.vocab_size, ctx, c.initializer_range));
    const rs = c.rope_scaling;
    const scaling = rs && rs.rope_type === "llama3" ? (rs as Llama3RopeScaling) : null;
    // A model on another's weights shares its rotary tables too when they are the same.
    const other = opts.shareWeightsOf?.rope;
    this.rope =
      other &&
      other.headDim === c.head_dim &&
      other.maxPos === c.max_position_embeddings &&
      other.theta === c.rope_theta &&
      JSON.stringify(other.scaling) === JSON.stringify(scaling)
        ? other
        : new RopeTable(c.head_dim, c.max_position_embeddings, c.rope_theta, scaling);
    // The residual mode's parameters are created after the backbone's, so a seed gives the same
    // backbone weights in every mode.
    this.residual = makeResidualMode(c, { layers: this.model.layers, body: this.model }, ctx);
    for (const [name, p] of this.namedParameters()) p.name = name; // full HF names, for messages and groups
    this.createdParams = ctx.created!;
  }

  /** The parameters in creation order (the backbone's first), for `shareWeightsOf`. */
  readonly createdParams: readonly Tensor[];

  /** Empty KV caches for B sequences of at most maxLen (default max_position_embeddings) tokens. */
  newCache(B: number, maxLen = this.config.max_position_embeddings): DecoderCache {
    const c = this.config;
    if (!Number.isInteger(B) || B < 1)
      throw new Error(`newCache: batch size ${B} must be a positive integer`);
    if (!Number.isInteger(maxLen) || maxLen < 1 || maxLen > c.max_position_embeddings)
      throw new Error(
        `newCache: length ${maxLen} must be a positive integer at most max_position_embeddings (${c.max_position_embeddings})`,
      );
    const w = this.model.embed_tokens.weight;
    const layers: KVCache[] = [];
    try {
      for (let i = 0; i < c.num_hidden_layers; i++)
        layers.push(
          new KVCache(B, maxLen, c.num_key_value_heads, c.head_dim, { backend: w.backend, dtype: w.dtype }),
        );
    } catch (e) {
      for (const l of layers) l.dispose();
      throw e;
    }
    return new DecoderCache(B, maxLen, layers);
  }

  /**
   * ids [B*T] (row-major [B, T]) → logits [B, T, vocab] ([B, 1, vocab] with lastOnly), and the
   * routing trace when asked.
   */
  run(ids: Int32Array, B: number, T: number, opts: ForwardOptions = {}): ForwardOutput {
    if (ids.length !== B * T) throw new Error(`forward: ${ids.length} ids for B=${B}, T=${T}`);
    const cache = opts.cache;
    const posOffset = opts.posOffset ?? cache?.length ?? 0;
    if (cache) {
      if (cache.isDisposed) throw new Error("forward: the cache was disposed");
      if (cache.B !== B) throw new Error(`forward: a cache for B=${cache.B} cannot decode B=${B}`);
      if (posOffset > cache.length)
        throw new Error(
          `forward: position ${posOffset} would leave a gap after the ${cache.length} cached positions`,
        );
      if (posOffset + T > cache.maxLen)
        throw new Error(
          `forward: positions up to ${posOffset + T} do not fit in the cache of length ${cache.maxLen}`,
        );
    }
    const trace: Trace | null = opts.trace ? emptyTrace() : null;
    const res = this.residual.begin(this.model.embed_tokens.forward(ids, [B, T]), trace);
    this.model.layers.forEach((layer, i) => {
      const xa = res.input(2 * i);
      res.update(2 * i, xa, layer.attnSublayer(xa, this.rope, posOffset, cache?.layers[i]));
      const xm = res.input(2 * i + 1);
      res.update(2 * i + 1, xm, layer.mlpSublayer(xm));
    });
    const hs = res.end();
    const h = this.model.norm.forward(opts.lastOnly && T > 1 ? slice(hs, 1, T - 1, T) : hs);
    const logits = this.lm_head
      ? this.lm_head.forward(h)
      : matmul(h, this.model.embed_tokens.weight, { transB: true });
    if (cache) cache.length = posOffset + T;
    return trace ? { logits, trace } : { logits };
  }

  /** ids [B*T] (row-major [B, T]) → logits [B, T, vocab]. */
  forward(ids: Int32Array, B: number, T: number, opts: ForwardOptions = {}): Tensor {
    return this.run(ids, B, T, opts).logits;
  }

  /** Logits plus per-sublayer routing statistics (max weight, entropy, mean α per source; β for DDL). */
  analyze(ids: Int32Array, B: number, T: number): { logits: Tensor; report: RoutingReport } {
    const { logits, trace } = this.run(ids, B, T, { trace: true });
    return { logits, report: routingStats(trace!) };
  }

  /** Mean next-token cross-entropy; targets [B*T] with -100 = ignore. */
  loss(ids: Int32Array, targets: Int32Array, B: number, T: number): Tensor {
    const logits = this.forward(ids, B, T);
    return crossEntropy(logits, targets, { ignoreIndex: -100 });
  }
}

/** Parameter count of a configuration, from shapes alone (nothing is allocated). */
export function countParameters(config: DecoderLMConfig | ModelConfig): number {
  return new DecoderLM(config, { meta: true }).numParameters();
}
