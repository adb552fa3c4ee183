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
  /** What source position p (0-based) of one of its routed calls holds under config c (null source, outputs or states), for the analysis. */
  sourceLabel(p: number, c: SourceLabelConfig): string;
  /** Registers its parameters on the host's modules (tensor names fixed) and returns the mode. */
  build(c: ModelConfig, host: ModeHost, ctx: InitContext): ResidualMode;
}
