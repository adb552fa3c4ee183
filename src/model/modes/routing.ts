/**
 * Building blocks the routed modes share (attnres-*, delta*): a depth router per sublayer — a
 * query w (Linear d→1, zero-initialised, tensor `{attn|mlp|final}_res_proj.weight` [1, d]) and a
 * key gain g (RMSNorm weight, ones, `{…}_res_norm.weight` [d]) — the routed call that records its
 * α [B, T, N] and sources in the trace, and the additive update x_j = h + [a_j ·] route([null_j] + S)
 * of the delta modes with their optional null sources [d] and zero gates [] per sublayer.
 */
import { Linear, RMSNorm } from "../../nn/layers.js";
import type { InitContext, Module } from "../../nn/module.js";
import { add, expand, mul, route, type RouteLink, type RoutePartial } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { ModelConfig } from "../config.js";
import {
  type CallKey,
  callLabel,
  type ModeHost,
  type SourceLabelConfig,
  SUBLAYER_KINDS,
  type Trace,
} from "./mode.js";

/** A routing query (Linear d→1, zero) and key gain (RMSNorm weight, ones). */
export interface Router {
  w: Tensor;
  g: Tensor;
}

export function addRouter(m: Module, prefix: string, c: ModelConfig, ctx: InitContext): Router {
  const proj = m.child(`${prefix}_res_proj`, new Linear(c.hidden_size, 1, ctx, 0));
  const norm = m.child(`${prefix}_res_norm`, new RMSNorm(c.hidden_size, c.rms_norm_eps, ctx));
  return { w: proj.weight, g: norm.weight };
}

/** One router per sublayer, in sublayer order (index j). */
export function sublayerRouters(c: ModelConfig, host: ModeHost, ctx: InitContext): Router[] {
  const routers: Router[] = [];
  for (const layer of host.layers)
    for (const kind of SUBLAYER_KINDS) routers.push(addRouter(layer, kind, c, ctx));
  return routers;
}

/** One scalar parameter `{kind}_${name}` per sublayer, constant-initialised, in sublayer order. */
export function sublayerScalars(host: ModeHost, name: string, value: number, ctx: InitContext): Tensor[] {
  const out: Tensor[] = [];
  for (const layer of host.layers)
    for (const kind of SUBLAYER_KINDS)
      out.push(layer.param(`${kind}_${name}`, [], { kind: "const", value }, ctx));
  return out;
}

/**
 * The routed calls of one forward pass over a growing source list (each call's sources begin with
 * the sources of the call before it), numbered 0 … count−1. Calls pair up so that the last call is
 * the second of a pair: the first of a pair, given the second's router, computes the second's share
 * of their common sources in its own pass (route's `link`), and the second reads only its newer
 * sources — one read of the shared sources for two calls. Results equal unlinked calls up to
 * rounding; the backward does not change.
 */
export class RouteChain {
  private partial: RoutePartial | null = null;
  constructor(private readonly count: number) {}
  /** The link of call k (next: the router of call k + 1, if any). */
  link(k: number, sources: readonly Tensor[], r: Router, next: Router | null): RouteLink {
    const held = this.partial;
    this.partial = null;
    if (held?.fits(sources, r.w, r.g)) return { prior: held };
    held?.release();
    return next && (this.count - k) % 2 === 0 ? { next } : {};
  }
  keep(partial: RoutePartial | undefined): void {
    this.partial = partial ?? null;
  }
}

/**
 * route(sources) with router r → [B, T, d] (plus base when given, in the same kernel); α and the
 * sources go to the trace under `key`. With a chain, call k of it (`at`, with the next call's
 * router).
 */
export function routeTraced(
  key: CallKey,
  sources: readonly Tensor[],
  r: Router,
  eps: number,
  trace: Trace | null,
  base: Tensor | null = null,
  at: { chain: RouteChain; k: number; next: Router | null } | null = null,
): Tensor {
  const link = at ? at.chain.link(at.k, sources, r, at.next) : {};
  const { out, alpha, partial } = route(sources, r.w, r.g, eps, base, link);
  at?.chain.keep(partial);
  trace?.alphas.set(key, alpha);
  trace?.sources.set(key, [...sources]);
  return out;
}

/** The parameters of an additive (delta) mode: routers, optional null sources and zero gates. */
export class AdditiveParams {
  readonly routers: Router[];
  readonly nulls: Tensor[] = [];
  readonly gates: Tensor[] = [];
  readonly eps: number;
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    this.eps = c.rms_norm_eps;
    this.routers = sublayerRouters(c, host, ctx);
    for (const layer of host.layers)
      for (const kind of SUBLAYER_KINDS) {
        if (c.attnres_use_null_source)
          this.nulls.push(
            layer.param(`${kind}_null_source`, [c.hidden_size], { kind: "const", value: 0 }, ctx),
          );
        if (c.attnres_gate_type === "learnable_alpha")
          this.gates.push(layer.param(`${kind}_res_alpha`, [], { kind: "const", value: 0 }, ctx));
      }
  }
  /** One forward pass's chain of routed calls (none with null sources: they differ per call). */
  chain(): RouteChain | null {
    return this.nulls.length ? null : new RouteChain(this.routers.length);
  }
  /** x_j = h + [a_j ·] route([null_j] + S); h itself when there is nothing to route. */
  input(j: number, h: Tensor, S: Tensor[], trace: Trace | null, chain: RouteChain | null): Tensor {
    trace?.streams.set(j, h);
    const src = this.nulls.length ? [expand(this.nulls[j]!, h.shape), ...S] : S;
    if (src.length === 0) return h;
    const at = chain && { chain, k: j, next: this.routers[j + 1] ?? null };
    const r = this.routers[j]!;
    if (!this.gates.length) return routeTraced(j, src, r, this.eps, trace, h, at); // h + route, fused
    return add(h, mul(routeTraced(j, src, r, this.eps, trace, null, at), this.gates[j]!));
  }
}

/** Parameter names of the routed modes: routers, gates, null sources (final_* included). */
export const ROUTED_PARAMS = /_res_proj\.|_res_norm\.|_res_alpha$|_null_source$|final_res_/;
/** The routed modes' parameters that start at zero (queries, gates, null sources; gains start at 1). */
export const ROUTED_ZERO_PARAMS = /_res_proj\.|_null_source$|_res_alpha$/;

/** Source labels: [null,] h0, then prefix(1), prefix(2) … for the later sources. */
export function outputSourceLabel(p: number, nullSource: boolean, prefix: (p: number) => string): string {
  if (nullSource) {
    if (p === 0) return "null";
    p -= 1;
  }
  return p === 0 ? "h0" : prefix(p);
}

/**
 * Source labels of the per-sublayer modes: over outputs h0, L0.attn, L0.mlp … (each sublayer's
 * output); over states (attnres_sources "states") h0, after L0.attn, after L0.mlp … (the stream
 * after each sublayer).
 */
export const sublayerSourceLabel = (p: number, c: SourceLabelConfig): string =>
  outputSourceLabel(p, c.attnres_use_null_source, (q) =>
    c.attnres_sources === "states" ? `after ${callLabel(q - 1)}` : callLabel(q - 1),
  );
