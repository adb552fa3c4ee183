/**
 * `attnres plan`'s estimator: per-device memory and FLOPs per token of one training step, for a
 * model config, a residual mode, a world size, a dtype, a sharding strategy and a micro-batch
 * [B, T] — on paper, nothing is allocated.
 *
 * Memory per device = parameters + gradients + AdamW moments (m, v) + activations + the backward
 * pass's working set. Activations are counted tensor by tensor from what each engine's code really
 * keeps alive between the forward and the backward pass, in elements per micro-batch of n = B·T
 * tokens (d hidden, q = heads·head_dim, kv = kv_heads·head_dim, f = MLP width, V vocab):
 *
 *   ts     the TypeScript engine (src/model, src/nn, src/tensor): a training step is one tidy()
 *          scope, so EVERY tensor the forward pass creates lives until the step ends (not only the
 *          ones a backward needs). Fused ops keep little: rmsnorm its output + one rstd per row,
 *          attention its output + one log-sum-exp per row and head (no [T, T] matrix), depth
 *          routing its output + α and rstd [n, N] (it reads the N sources in place).
 *   torch  eager PyTorch as the reference model (python/attnres_torch/model.py) writes it: only the
 *          tensors autograd saves (and the Python lists of sources) stay; RMSNorm is composite
 *          (keeps x², x·rstd, rstd and its output); attention is either "math" (the reference's
 *          softmax(QKᵀ)V: keeps the [B, H, T, T] probabilities) or "flash" (a fused kernel such as
 *          torch ≥ 2's scaled_dot_product_attention: q, k, v, output, log-sum-exp); depth routing
 *          is either "stacked" (the reference's torch.stack of the N sources, then RMSNorm, logits
 *          and softmax over the stack: 4 copies of the stack saved per routed call, O(L²) over a
 *          Full/Delta network) or "fused" (one op that saves only α and rstd, as the TS engine's).
 *
 * The routing modes also keep their O(L) sources across the depth (h0 and every sublayer output
 * for attnres-full and delta; completed block sums for the block modes; DDL-expanded's
 * [n, d, 4] state per sublayer); `routingState` reports those bytes on their own.
 *
 * Activation checkpointing (torch only; the TS engine has none) is per decoder layer: a layer's
 * inputs (the stream, or the routing state) are kept, its insides are recomputed during the
 * backward pass, so the peak is the boundary state + one layer's activations + the head.
 *
 * dtype "float32": everything in float32. dtype "bfloat16": bf16 autocast as the torch engine
 * runs it on a GPU — float32 parameters, gradients and moments, activations in bf16 (2 bytes;
 * the log-probabilities of the loss stay float32) and a bf16 copy of the weights (autocast's cache
 * under DDP; under FSDP the gathered units are bf16).
 *
 * Sharding: "ddp" replicates parameters, gradients and moments; "fsdp" (full shard) divides them
 * by the world size and adds the gathered units in flight (two of the largest unit's parameters,
 * current + prefetched, and its unsharded gradient; units are the embedding, each decoder layer,
 * and the LM head). Activations do not depend on the world size (B is per device).
 *
 * FLOPs per token of a training step = 3 × forward (backward ≈ 2 × forward), + 1 forward of the
 * decoder layers with checkpointing. Forward = 2 × every matmul weight (layers + LM head), plus
 * causal attention (2·T·q per layer for QKᵀ and PV over the causal half; the "math" kernel
 * computes the full square, twice that), plus depth routing (≈ 7·N·d per routed call over N
 * sources) and DDL's elementwise updates. Norms, RoPE and SwiGLU (< 1 %) are left out.
 */
import { type ModelConfig, type ModelConfigInput, type ModeName, parseConfig } from "../model/config.js";
import { countParameters } from "../model/decoder.js";
import { optionError } from "../io/errors.js";
import {
  layerOf,
  modeByName,
  type ModeMemory,
  modeName as modeOf,
  modeOf as modeDefOf,
  NO_MEMORY,
} from "../model/residual.js";

export type PlanEngine = "ts" | "torch";
export type PlanDType = "float32" | "bfloat16";
export type Sharding = "ddp" | "fsdp";
export type AttentionKernel = "math" | "flash";
export type RoutingKernel = "stacked" | "fused";

export interface PlanOptions {
  /** Sequences per micro-batch on one device. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  worldSize: number;
  dtype: PlanDType;
  sharding: Sharding;
  engine: PlanEngine;
  /** torch only (default flash); the TS engine's fused attention keeps no [T, T] matrix. */
  attention?: AttentionKernel;
  /** torch only (default stacked, the reference model); the TS engine's routing is fused. */
  routing?: RoutingKernel;
}

export interface PlanRow {
  mode: ModeName;
  params: number;
  /** Bytes per device. */
  paramBytes: number;
  gradBytes: number;
  adamBytes: number;
  /** bf16 weight copies (autocast) or FSDP's gathered units in flight. */
  extraBytes: number;
  /** Activations kept for the backward pass without checkpointing (routing state included). */
  activationBytes: number;
  /** Of which: the sources/state the residual mode keeps across the depth. */
  routingStateBytes: number;
  /** The backward pass's largest working set on top of the kept activations. */
  workingBytes: number;
  /** Activations with per-layer checkpointing (boundary state + one layer + head); null for ts. */
  checkpointedActivationBytes: number | null;
  peakBytes: number;
  checkpointedPeakBytes: number | null;
  flopsPerToken: number;
  checkpointedFlopsPerToken: number | null;
}

/**
 * The config of `base` with residual mode `mode`; block modes get `blocks` (default: the config's
 * attnres_num_blocks, else 8), at most one per layer.
 */
export function withMode(
  base: ModelConfigInput | Record<string, unknown>,
  mode: ModeName,
  blocks?: number,
): ModelConfig {
  const def = modeByName(mode);
  if (!def) throw new Error(`unknown residual mode ${mode}`);
  const raw: Record<string, unknown> = { ...base, attnres_mode: def.key };
  if (def.options.blocks) {
    const L = Number(raw.num_hidden_layers);
    raw.attnres_num_blocks = Math.min(blocks ?? Number(raw.attnres_num_blocks ?? 8), L);
  } else delete raw.attnres_num_blocks;
  if (!def.options.additive) {
    delete raw.attnres_use_null_source;
    delete raw.attnres_gate_type;
  }
  return parseConfig(raw, "model config");
}

interface Shape {
  n: number;
  T: number;
  d: number;
  q: number;
  kv: number;
  H: number;
  Hkv: number;
  f: number;
  V: number;
  L: number;
  qk: boolean;
  dv: number;
}

function shapeOf(c: ModelConfig, o: PlanOptions): Shape {
  return {
    n: o.batch * o.seq,
    T: o.seq,
    d: c.hidden_size,
    q: c.num_attention_heads * c.head_dim,
    kv: c.num_key_value_heads * c.head_dim,
    H: c.num_attention_heads,
    Hkv: c.num_key_value_heads,
    f: c.intermediate_size,
    V: c.vocab_size,
    L: c.num_hidden_layers,
    qk: c.attention_qk_norm,
    dv: c.ddl_value_channels,
  };
}

/** The memory facts of c's mode (ModeDef.memory; NO_MEMORY for a mode that states none). */
function memoryOf(c: ModelConfig): ModeMemory {
  return modeDefOf(c).memory ?? NO_MEMORY;
}

/** Activation tallies in elements (per micro-batch). */
interface Tally {
  /** Kept from the forward pass to the backward pass (no checkpointing). */
  stored: number;
  routingState: number;
  /** The backward pass's working set on top of `stored`. */
  working: number;
  /** Per-layer checkpointing: boundary state + head (without the recomputed layer). */
  boundary: number;
  /** The largest single layer's kept activations (recomputed under checkpointing). */
  layerMax: number;
  /** Elements kept in float32 even under bf16 autocast (the loss's log-probabilities). */
  fp32: number;
}

/**
 * Elements of the state a mode keeps across the depth: the sources of the routed modes (h0 and
 * every sublayer output for attnres-full and delta, the block sums for attnres-block, h0 and the
 * block deltas for delta-block) and DDL-expanded's [n, d, dv] state after every sublayer.
 * Standard and scalar DDL keep only the stream each next sublayer reads (counted as activations).
 */
function routingStateOf(c: ModelConfig, s: Shape): number {
  const { n, d, L, dv } = s;
  const mem = memoryOf(c);
  if (mem.state === "stream") return 0;
  if (mem.state === "expanded") return (2 * L + 1) * n * d * dv;
  return mem.schedule(c).heldSources * n * d;
}

// ---------------------------------------------------------------- the TypeScript engine

function tsTally(c: ModelConfig, s: Shape): Tally {
  const { n, d, q, kv, H, Hkv, f, V, L, qk } = s;
  const mem = memoryOf(c);
  const bk = mem.schedule(c);
  // rmsnorm: out + rstd; q, k, v; q/k norms; rope q, k; attention out + lse; o_proj.
  const attn = n * (2 * d + 1 + 3 * q + 3 * kv + H + (qk ? q + kv + H + Hkv : 0));
  // rmsnorm; gate, up, swiglu; down.
  const mlp = n * (2 * d + 1 + 3 * f);
  // route: out [n, d], alpha and rstd [n, N].
  const route = (N: number) => (N > 0 ? n * (d + 2 * N) : 0);
  let extra = 0;
  const nul = c.attnres_use_null_source;
  const gate = c.attnres_gate_type === "learnable_alpha";
  for (let j = 0; j < 2 * L; j++) {
    const N = bk.routeN[j]!;
    extra += route(N) + bk.adds[j]! * n * d;
    if (mem.input === "stream-plus-route") {
      if (nul) extra += n * d; // expand(null source) is a copy
      if (N > 0) extra += n * d * (1 + (gate ? 1 : 0)); // x = h + [a·] r
    }
    extra += mem.sublayerTs(c, s); // the mode's own update (DDL)
  }
  extra += route(bk.finalN);
  extra += mem.finalTs(s);
  // Of which the mode's state across the depth (sublayer outputs / block sums already counted).
  const routingState = routingStateOf(c, s);
  const head = n * d + (n * d + n) + n * V + 2 * n; // h0, final norm, logits, loss + lse
  const stored = L * (attn + mlp) + extra + head;
  // Backward working set: the head (dlogits, dh, a V×d parameter-gradient temporary), or a
  // sublayer's backward plus the running gradients of every source still waiting for its own.
  const headWork = n * V + n * d + V * d;
  const mlpWork = 3 * n * f + 2 * n * d + d * f;
  const attnWork = n * (2 * q + 2 * kv + d) + d * q;
  const running = mem.runningGrads(s, bk);
  const working = Math.max(headWork, running + Math.max(mlpWork, attnWork));
  return { stored, routingState, working, boundary: stored, layerMax: 0, fp32: 0 };
}

// ---------------------------------------------------------------- eager PyTorch

function torchTally(c: ModelConfig, s: Shape, attention: AttentionKernel, routing: RoutingKernel): Tally {
  const { n, T, d, q, kv, H, Hkv, f, V, L, qk } = s;
  const mem = memoryOf(c);
  const bk = mem.schedule(c);
  // Composite RMSNorm keeps three [n, d] tensors besides its input (x², x·rstd, its output) and
  // rstd; a composite RMSNorm over a stack keeps four copies of it (measured with saved-tensor
  // hooks on torch 1.13).
  const norm = 3 * n * d + n;
  // q/k norms keep their input, x², x·rstd and rstd; q (copy for the batched matmul or the kernel's
  // input), k and v repeated to the query heads, the [B, H, T, T] probabilities or (flash) the
  // output and log-sum-exp, the [n, q] copy o_proj reads.
  const qkNorm = qk ? n * (3 * q + H + 3 * kv + Hkv) : 0;
  const core = attention === "math" ? n * 4 * q + n * H * T : n * 5 * q + n * H;
  const attn = norm + qkNorm + core;
  const mlp = norm + 4 * n * f; // gate out, silu out, up out, product
  const routeKept = (N: number) =>
    N === 0 ? 0 : routing === "stacked" ? 4 * N * n * d + 2 * N * n : 2 * N * n;
  const perLayer = new Array<number>(L).fill(attn + mlp);
  const gate = c.attnres_gate_type === "learnable_alpha";
  for (let j = 0; j < 2 * L; j++) {
    const N = bk.routeN[j]!;
    let e = routeKept(N);
    if (mem.input === "route") e += n * d; // x_j = route(…) kept by the norm
    if (mem.input === "stream-plus-route" && N > 0) e += n * d * (1 + (gate ? 1 : 0)); // x_j = h + [a·] r
    e += mem.sublayerTorch(c, s); // the mode's own update (DDL)
    perLayer[layerOf(j)]! += e;
  }
  const held = mem.torchHeld(s, bk); // [n, d] tensors the mode holds across the depth (sources, streams)
  const finalIn = mem.finalStream ? n * d : 0; // the final norm's input, when no sublayer count holds it
  const finalRoute = routeKept(bk.finalN) + (bk.finalN > 0 ? n * d : 0);
  const logprobs = n * V;
  const head = norm + finalIn + finalRoute + logprobs;
  const routingState = routingStateOf(c, s);
  const stored = perLayer.reduce((x, y) => x + y, 0) + held * n * d + head;
  // Under per-layer checkpointing a layer keeps only its inputs: the stream entering it (none in
  // attnres-full, whose input is the source list; DDL-expanded's X), plus the routed modes'
  // sources, which are kept anyway, and the head (with the final norm's input).
  const perBoundary = n * mem.boundary(s);
  const routed = mem.state === "sources";
  const boundary = L * perBoundary + (routed ? held * n * d : 0) + head + (finalIn === 0 ? n * d : 0);
  const layerMax = Math.max(...perLayer);
  // Backward working set: autograd frees each node's saved tensors as it runs, so a sublayer's
  // gradients mostly replace what it kept. What is added on top of everything kept is the head's
  // (the log-probabilities' and the logits' gradients, dh, a V×d gradient temporary) or the
  // largest routed call's: its stack's gradients, about 2.5 stacks at once with the composite
  // RMSNorm (measured on torch 1.13), or one gradient per source when fused.
  const headWork = 2 * n * V + n * d + V * d;
  const Nmax = Math.max(bk.finalN, ...bk.routeN);
  const routeWork = routing === "stacked" ? 2.5 * Nmax * n * d : (Nmax + 1) * n * d;
  const working = Math.max(headWork, routeWork);
  return { stored, routingState, working, boundary, layerMax, fp32: logprobs };
}

// ---------------------------------------------------------------- FLOPs

function forwardFlops(
  c: ModelConfig,
  s: Shape,
  attention: AttentionKernel,
): { layers: number; head: number } {
  const { T, d, q, kv, f, V, L } = s;
  const mem = memoryOf(c);
  const bk = mem.schedule(c);
  const matmul = 2 * (d * q + 2 * d * kv + q * d + 3 * d * f);
  const attn = (attention === "math" ? 4 : 2) * T * q;
  let routing = 0;
  for (const N of bk.routeN) routing += 7 * N * d;
  routing += 2 * L * mem.sublayerFlops(s);
  return { layers: L * (matmul + attn) + routing, head: 2 * d * V + 7 * bk.finalN * d };
}

// ---------------------------------------------------------------- the plan

/** One row of the plan for config `c` (its residual mode is the row's). */
export function planRow(c: ModelConfig, o: PlanOptions): PlanRow {
  for (const [k, v] of [
    ["batch", o.batch],
    ["seq", o.seq],
    ["world size", o.worldSize],
  ] as const)
    if (!Number.isInteger(v) || v < 1) throw new Error(`plan: ${k} must be a positive integer, got ${v}`);
  if (o.engine === "ts" && (o.sharding !== "ddp" || o.worldSize !== 1 || o.dtype !== "float32"))
    throw optionError(
      (n) =>
        `plan: the TypeScript engine trains on one process in float32 (use ${n("engine", "torch")} for sharding, several devices or bfloat16)`,
    );
  const s = shapeOf(c, o);
  const attention = o.engine === "ts" ? "flash" : (o.attention ?? "flash");
  const t = o.engine === "ts" ? tsTally(c, s) : torchTally(c, s, attention, o.routing ?? "stacked");
  const params = countParameters(c);
  const W = o.worldSize;
  const shard = o.sharding === "fsdp" ? W : 1;
  const bf16 = o.dtype === "bfloat16";
  const paramBytes = (4 * params) / shard;
  const gradBytes = (4 * params) / shard;
  const adamBytes = (8 * params) / shard;
  let extraBytes = 0;
  if (o.sharding === "fsdp") {
    const layer =
      (countParameters(c) - c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2)) /
      c.num_hidden_layers;
    const unit = Math.max(layer, c.vocab_size * c.hidden_size);
    extraBytes = 2 * unit * (bf16 ? 2 : 4) + 4 * unit;
  } else if (bf16) extraBytes = 2 * params;
  const act = bf16 ? 2 : 4;
  const bytes = (el: number) => (el - t.fp32) * act + t.fp32 * 4;
  const activationBytes = bytes(t.stored);
  const workingBytes = t.working * act;
  const persistent = paramBytes + gradBytes + adamBytes + extraBytes;
  const ckpt = o.engine === "torch" ? bytes(t.boundary + t.layerMax) : null;
  const fl = forwardFlops(c, s, attention);
  return {
    mode: modeOf(c),
    params,
    paramBytes,
    gradBytes,
    adamBytes,
    extraBytes,
    activationBytes,
    routingStateBytes: t.routingState * act,
    workingBytes,
    checkpointedActivationBytes: ckpt,
    peakBytes: persistent + activationBytes + workingBytes,
    checkpointedPeakBytes: ckpt === null ? null : persistent + ckpt + workingBytes,
    flopsPerToken: 3 * (fl.layers + fl.head),
    checkpointedFlopsPerToken: o.engine === "torch" ? 4 * fl.layers + 3 * fl.head : null,
  };
}

/** The plan of `base` in each of `modes`. */
export function plan(
  base: ModelConfigInput | Record<string, unknown>,
  modes: readonly ModeName[],
  o: PlanOptions & { blocks?: number },
): PlanRow[] {
  return modes.map((m) => planRow(withMode(base, m, o.blocks), o));
}
