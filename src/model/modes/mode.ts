/**
 * The contract every residual mode implements (one file per mode in this folder; the registry in
 * src/model/residual.ts lists them), and the sublayer convention all of them share.
 *
 * Sublayers: the decoder has 2L of them, j = 0 … 2L−1; the attention of layer i is j = 2i, its MLP
 * j = 2i+1 (`layerOf`, `kindOf`, `callLabel` below are the only place that says so).
 *
 * A mode is a `ModeDef`: its names, the config keys it reads, how its config is checked, how its
 * parameters are named, whether a standard checkpoint converts to it exactly, how the analysis
 * labels its sources, and `build`, which registers its parameters on the layer modules and returns
 * a `ResidualMode`. The decoder calls, for every forward pass,
 *     run = mode.begin(h0 [B, T, d], trace)               // per-call state: run is reentrant
 *     for each sublayer j:  x = run.input(j);  r = f_j(x);  run.update(j, x, r)
 *     h = run.end()                                        // [B, T, d], fed to the final norm
 * and never names a mode. All state of one pass lives in the object `begin` returns (plain JS
 * fields holding tensors the pass makes anyway), so two passes may interleave on one model.
 * Incremental decoding needs no further state: at every token, every mode reads only that token's
 * own sources (h0 and the sublayer outputs at the same position), recomputed as the token passes
 * through the layers; only attention keeps a KV cache, outside the mode.
 */
import type { InitContext, Module } from "../../nn/module.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { ModelConfig } from "../config.js";

export interface SublayerResult {
  /** o_j, the sublayer's output [B, T, d]. */
  out: Tensor;
  /** c, the sublayer's own pre-norm of its input x (DDL reads it). */
  normed: Tensor;
}

/** A routed call: sublayer index j, or "final" (the routing before the final norm). */
export type CallKey = number | "final";

/** Analysis data of one forward pass, keyed by sublayer index j or "final". */
export interface Trace {
  /** Routing weights [B, T, N] per routed call (no gradient). */
  alphas: Map<CallKey, Tensor>;
  /** The sources [B, T, d] each routed call read, in order. */
  sources: Map<CallKey, Tensor[]>;
  /** The residual stream h entering sublayer j (modes that keep one: standard, delta*, ddl). */
  streams: Map<number, Tensor>;
  /** DDL's β [B, T, 1] per sublayer. */
  betas: Map<number, Tensor>;
}

export function emptyTrace(): Trace {
  return { alphas: new Map(), sources: new Map(), streams: new Map(), betas: new Map() };
}

// ---- the sublayer convention

export type SublayerKind = "attn" | "mlp";
/** The two sublayers of a layer, in order (their tensor-name prefixes: attn_res_proj, mlp_res_proj …). */
export const SUBLAYER_KINDS: readonly SublayerKind[] = ["attn", "mlp"];
/** The layer of sublayer j. */
export const layerOf = (j: number): number => j >> 1;
/** Attention (even j) or MLP (odd j). */
export const kindOf = (j: number): SublayerKind => (j % 2 === 0 ? "attn" : "mlp");
/** Whether sublayer j opens a layer whose index is a multiple of P (a block boundary of the block modes). */
export const opensBlock = (j: number, P: number): boolean => j % 2 === 0 && layerOf(j) % P === 0;
/** "L3.attn", "L3.mlp" or "final". */
export function callLabel(key: CallKey): string {
  return key === "final" ? "final" : `L${layerOf(key)}.${kindOf(key)}`;
}
/** The layer and kind of a call ("final": no layer). */
export function callPlace(key: CallKey): { layer: number | null; kind: SublayerKind | "final" } {
  return key === "final" ? { layer: null, kind: "final" } : { layer: layerOf(key), kind: kindOf(key) };
}
/** Layers per block of the block modes: ceil(L / attnres_num_blocks). */
export function layersPerBlock(c: ModelConfig): number {
  return Math.max(1, Math.ceil(c.num_hidden_layers / c.attnres_num_blocks!));
}

// ---- the contract

/** The layer modules a mode attaches parameters to. */
export interface ModeHost {
  layers: readonly Module[];
  body: Module;
}

/** The state of one forward pass (made by ResidualMode.begin). */
export interface ModeRun {
  /** x_j, the input of sublayer j [B, T, d]. */
  input(j: number): Tensor;
  /** Takes sublayer j's result (x its input). */
  update(j: number, x: Tensor, r: SublayerResult): void;
  /** The stream fed to the final norm [B, T, d]. */
  end(): Tensor;
}

/** A mode built for one model (its parameters registered); begin() starts a forward pass. */
export interface ResidualMode {
  readonly name: string;
  /** h0 [B, T, d]; trace: where to record α, sources, streams and β (null: record nothing). */
  begin(h0: Tensor, trace: Trace | null): ModeRun;
}

/** How a standard checkpoint converts to a mode (null in ModeDef.convert: it does not). */
export interface ConvertSpec {
  /** "exact": the converted model computes the standard one's logits exactly; "eps-residue": up to the RMSNorm ε. */
  exactness: "exact" | "eps-residue";
  /** Config keys the converted config always gets (e.g. the zero gate). */
  keys?: Readonly<Record<string, unknown>>;
  /** The mode's parameters initialised to 0 (the others to 1); conversion checks both. */
  zeroParams: RegExp;
}

/**
 * The routing schedule of a mode over the 2L sublayers, for the memory model of `attnres plan`:
 * how many sources each routed call reads (0 = not routed), the final routing's N (0 = none), how
 * many new [n, d] tensors the mode's own adds/subs make per sublayer (stream adds, block sums,
 * block deltas; routing outputs not included), and how many [n, d] sources it holds at the end.
 */
export interface RoutingSchedule {
  routeN: number[];
  finalN: number;
  adds: number[];
  heldSources: number;
}

/** The sizes the memory facts are stated in: n = B·T tokens, width d, L layers, DDL-expanded's value channels dv. */
export interface MemorySizes {
  n: number;
  d: number;
  L: number;
  dv: number;
}

/**
 * What a mode keeps for the backward pass, as the memory model of `attnres plan`
 * (src/plan/estimate.ts) costs it, in elements (multiply by the dtype's bytes). The estimate adds
 * the backbone's sublayers, the routing calls of `schedule` and the head itself; a mode states
 * only what is its own.
 */
export interface ModeMemory {
  schedule(c: ModelConfig): RoutingSchedule;
  /**
   * The state it keeps across the depth: "sources" (the routed calls' sources: h0 and sublayer
   * outputs, or block sums / deltas: heldSources [n, d] tensors), "expanded" (DDL-expanded's
   * [n, d, dv] state after every sublayer and h0's), "stream" (only the stream the next sublayer
   * reads, counted as activations).
   */
  state: "sources" | "expanded" | "stream";
  /**
   * How a routed sublayer input is made: "route" (x_j = route(…), one [n, d] tensor the next norm
   * keeps), "stream-plus-route" (x_j = h + [a·] r: one [n, d] tensor, two with the gate; a null
   * source is one more [n, d] copy per sublayer), or null (no routed input).
   */
  input: "route" | "stream-plus-route" | null;
  /** Elements its own per-sublayer update keeps (DDL's k, β, v, new state; 0 for the others): in the TypeScript engine and in eager PyTorch. */
  sublayerTs(c: ModelConfig, s: MemorySizes): number;
  sublayerTorch(c: ModelConfig, s: MemorySizes): number;
  /** Elements the TypeScript engine keeps after the last sublayer besides the final routing (DDL-expanded's expand and readout). */
  finalTs(s: MemorySizes): number;
  /** Forward FLOPs per token and sublayer of its own update (DDL's), besides 7·N·d per routed call. */
  sublayerFlops(s: MemorySizes): number;
  /** The TypeScript engine's backward: the gradients running along the depth while a sublayer's backward runs, in elements. */
  runningGrads(s: MemorySizes, schedule: RoutingSchedule): number;
  /** [n, d] tensors eager PyTorch holds across the depth (sources, streams the norms keep). */
  torchHeld(s: MemorySizes, schedule: RoutingSchedule): number;
  /** Whether the final norm reads a [n, d] tensor of the mode's own (delta's last h, DDL-expanded's readout). */
  finalStream: boolean;
  /** Elements per token a layer boundary keeps under per-layer checkpointing: 0 (the sources are the input), d (a stream), d·dv. */
  boundary(s: MemorySizes): number;
}

/** A schedule of no routed calls; `adds` new [n, d] tensors per sublayer. */
export function unroutedSchedule(c: ModelConfig, adds: 0 | 1): RoutingSchedule {
  const J = 2 * c.num_hidden_layers;
  return {
    routeN: new Array<number>(J).fill(0),
    finalN: 0,
    adds: new Array<number>(J).fill(adds),
    heldSources: 0,
  };
}

/**
 * The memory facts of a mode that routes sources (`schedule`, `input`): no update of its own;
 * while a sublayer's backward runs, one gradient per source of the widest routed call and the
 * stream's; a stream crosses each layer boundary.
 */
export function routedMemory(
  schedule: ModeMemory["schedule"],
  input: ModeMemory["input"],
  torchHeld: ModeMemory["torchHeld"],
  finalStream: boolean,
): ModeMemory {
  return {
    schedule,
    state: "sources",
    input,
    sublayerTs: () => 0,
    sublayerTorch: () => 0,
    finalTs: () => 0,
    sublayerFlops: () => 0,
    runningGrads: (s, k) => (Math.max(k.finalN, ...k.routeN) + 1) * s.n * s.d,
    torchHeld,
    finalStream,
    boundary: (s) => s.d,
  };
}

/** How a mode without memory facts (one added with registerMode that states none) is costed: no routing state, one stream. */
export const NO_MEMORY: ModeMemory = {
  schedule: (c) => unroutedSchedule(c, 0),
  state: "stream",
  input: null,
  sublayerTs: () => 0,
  sublayerTorch: () => 0,
  finalTs: () => 0,
  sublayerFlops: () => 0,
  runningGrads: (s) => s.n * s.d,
  torchHeld: () => 0,
  finalStream: false,
  boundary: (s) => s.d,
};

/** Config flags the schema checks per mode (src/model/config.ts). */
export interface ModeOptions {
  /** Needs attnres_num_blocks (≤ num_hidden_layers). */
  blocks: boolean;
  /** Accepts attnres_sources "states". */
  states: boolean;
  /** Accepts the null source and the gate (attnres_use_null_source, attnres_gate_type). */
  additive: boolean;
}

/** No block count, no states as sources, no null source or gate. */
export const NO_OPTIONS: ModeOptions = { blocks: false, states: false, additive: false };

/** The config keys a source label depends on. */
export type SourceLabelConfig = Pick<ModelConfig, "attnres_use_null_source" | "attnres_sources">;

export interface ModeDef<Name extends string = string, Key extends string = string> {
  /** User-facing name (CLI, docs, reports). */
  readonly name: Name;
  /** Its value of the config key attnres_mode. */
  readonly key: Key;
  /** Config keys besides attnres_mode that belong to it (kept in its config.json; other modes' ddl_* and attnres_num_blocks are dropped). */
  readonly configKeys: readonly string[];
  readonly options: ModeOptions;
  /** Matches the full names of the parameters it adds (model.layers.3.attn_res_proj.weight …). */
  readonly params: RegExp;
  readonly convert: ConvertSpec | null;
  /** What it keeps for the backward pass, for `attnres plan` (NO_MEMORY when absent). */
  readonly memory?: ModeMemory;
  /** What source position p (0-based) of one of its routed calls holds under config c (null source, outputs or states), for the analysis. */
  sourceLabel(p: number, c: SourceLabelConfig): string;
  /** Registers its parameters on the host's modules (tensor names fixed) and returns the mode. */
  build(c: ModelConfig, host: ModeHost, ctx: InitContext): ResidualMode;
}
