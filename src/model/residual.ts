/**
 * The residual family (docs/methods.md "Modes"): how the decoder routes its stream between the 2L
 * sublayers j = 0 … 2L−1 (attention of layer i is j = 2i, its MLP j = 2i+1).
 *
 * The decoder loop is the same for every mode:
 *     mode.begin(h0, trace)
 *     for each sublayer j:   x = mode.input(j);  r = f_j(x)  (r.normed = its pre-norm, r.out = o_j);  mode.update(j, x, r)
 *     h = mode.end()                                        // fed to the final norm
 * `standard` is h ← h + f_j(h): it changes nothing at the call sites. Each mode registers its own
 * parameters on the layer modules under the authors' tensor names (model.layers.{i}.attn_res_proj…),
 * and records what analysis needs (routing weights α per call, DDL's β) in the trace it is given.
 *
 *   standard       h ← h + o_j
 *   attnres-full   x_j = route([h0, o_0 … o_{j−1}]); final routing over all of them (no stream)
 *   attnres-block  sources: completed block sums (b_0 = h0) + the running sum of the current block
 *   delta          h kept; x_j = h + route([h0, o_0 … o_{j−1}]) (j ≥ 1); h ← h + o_j
 *   delta-block    h kept; sources [h0, Δ_1 … Δ_k], Δ_b = h at the end of block b − h at its start
 *   ddl            x ← x + β (v − k·x) k, k = o_j/‖o_j‖, β = 2σ(w_β·c + b_β)
 *   ddl-expanded   state X [d, 4]: x_in = Σ_c C[:,c] X[:,c]; X ← X + β k (vᵀ − kᵀX)
 * With attnres_sources "states" the per-sublayer modes route over hidden states instead of outputs
 * (s_0 = h0, s_{j+1} = the stream after sublayer j), each routed term behind a zero-initialised
 * scalar gate a_j, so that the model starts as exactly the standard one:
 *   attnres-full   x_j = s_j + a_j (route([s_0 … s_j]) − s_j); s_{j+1} = x_j + o_j;
 *                  final s_2L + a_F (route([s_0 … s_2L]) − s_2L)
 *   delta          h kept; x_j = h_j + a_j route([h_0 … h_j]) (j ≥ 1), x_0 = h_0; h ← h + o_j
 */
import { Linear, RMSNorm } from "../nn/layers.js";
import { type InitContext, Module } from "../nn/module.js";
import {
  add,
  ddlRead,
  ddlUpdate,
  expand,
  mul,
  reshape,
  rmsnorm,
  route,
  scale,
  sigmoid,
  sub,
} from "../tensor/ops.js";
import type { Tensor } from "../tensor/tensor.js";
import type { ModelConfig, ModeName } from "./config.js";

export interface SublayerResult {
  /** o_j, the sublayer's output [B, T, d]. */
  out: Tensor;
  /** c, the sublayer's own pre-norm of its input x (DDL reads it). */
  normed: Tensor;
}

/** Analysis data of one forward pass, keyed by sublayer index j or "final". */
export interface Trace {
  /** Routing weights [B, T, N] per routed call (no gradient). */
  alphas: Map<number | "final", Tensor>;
  /** The sources [B, T, d] each routed call read, in order. */
  sources: Map<number | "final", Tensor[]>;
  /** The residual stream h entering sublayer j (modes that keep one: standard, delta*, ddl). */
  streams: Map<number, Tensor>;
  /** DDL's β [B, T, 1] per sublayer. */
  betas: Map<number, Tensor>;
}

export function emptyTrace(): Trace {
  return { alphas: new Map(), sources: new Map(), streams: new Map(), betas: new Map() };
}

export abstract class ResidualMode {
  abstract readonly name: ModeName;
  protected trace: Trace | null = null;
  abstract begin(h0: Tensor, trace: Trace | null): void;
  abstract input(j: number): Tensor;
  abstract update(j: number, x: Tensor, r: SublayerResult): void;
  abstract end(): Tensor;
}

/** The layer modules a mode attaches parameters to. */
export interface ModeHost {
  layers: readonly Module[];
  body: Module;
}

const kindOf = (j: number): "attn" | "mlp" => (j % 2 === 0 ? "attn" : "mlp");

class Standard extends ResidualMode {
  readonly name = "standard";
  private h!: Tensor;
  begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.h = h0;
  }
  input(j: number): Tensor {
    this.trace?.streams.set(j, this.h);
    return this.h;
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.h = add(this.h, r.out);
  }
  end(): Tensor {
    return this.h;
  }
}

/** A routing query (Linear d→1, zero) and key gain (RMSNorm weight, ones). */
interface Router {
  w: Tensor;
  g: Tensor;
}

function addRouter(m: Module, prefix: string, c: ModelConfig, ctx: InitContext): Router {
  const proj = m.child(`${prefix}_res_proj`, new Linear(c.hidden_size, 1, ctx, 0));
  const norm = m.child(`${prefix}_res_norm`, new RMSNorm(c.hidden_size, c.rms_norm_eps, ctx));
  return { w: proj.weight, g: norm.weight };
}

abstract class Routed extends ResidualMode {
  protected readonly routers: Router[] = [];
  constructor(
    protected readonly c: ModelConfig,
    host: ModeHost,
    ctx: InitContext,
  ) {
    super();
    host.layers.forEach((layer) => {
      this.routers.push(addRouter(layer, "attn", c, ctx));
      this.routers.push(addRouter(layer, "mlp", c, ctx));
    });
  }
  protected route(key: number | "final", sources: readonly Tensor[], r: Router): Tensor {
    const { out, alpha } = route(sources, r.w, r.g, this.c.rms_norm_eps);
    this.trace?.alphas.set(key, alpha);
    this.trace?.sources.set(key, [...sources]);
    return out;
  }
}

class AttnResFull extends Routed {
  readonly name: ModeName = "attnres-full";
  protected final: Router;
  private sources: Tensor[] = [];
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    super(c, host, ctx);
    this.final = addRouter(host.body, "final", c, ctx);
  }
  begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.sources = [h0];
  }
  input(j: number): Tensor {
    return this.route(j, this.sources, this.routers[j]!);
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.sources.push(r.out);
  }
  end(): Tensor {
    return this.route("final", this.sources, this.final);
  }
}

class AttnResBlock extends AttnResFull {
  override readonly name: ModeName = "attnres-block";
  private readonly P: number;
  private blocks: Tensor[] = [];
  private partial: Tensor | null = null;
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    super(c, host, ctx);
    this.P = Math.max(1, Math.ceil(c.num_hidden_layers / c.attnres_num_blocks!));
  }
  private current(): Tensor[] {
    return this.partial ? [...this.blocks, this.partial] : this.blocks;
  }
  override begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.blocks = [h0];
    this.partial = null;
  }
  override input(j: number): Tensor {
    const x = this.route(j, this.current(), this.routers[j]!);
    const i = j >> 1;
    // The first attention sublayer of a new block saw the block that just ended; store it.
    if (j % 2 === 0 && i > 0 && i % this.P === 0 && this.partial) {
      this.blocks.push(this.partial);
      this.partial = null;
    }
    return x;
  }
  override update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.partial = this.partial ? add(this.partial, r.out) : r.out;
  }
  override end(): Tensor {
    return this.route("final", this.current(), this.final);
  }
}

/**
 * AttnRes (replacement) over hidden states: the state entering sublayer j is replaced by the
 * gated routing over every state so far, x_j = s_j + a_j (route([s_0 … s_j]) − s_j), and the state
 * after the sublayer is s_{j+1} = x_j + o_j. Zero gates give s_{j+1} = s_j + o_j: standard.
 */
class AttnResStates extends Routed {
  readonly name: ModeName = "attnres-full";
  private readonly final: Router;
  private readonly gates: Tensor[] = [];
  private readonly finalGate: Tensor;
  private states: Tensor[] = [];
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    super(c, host, ctx);
    this.final = addRouter(host.body, "final", c, ctx);
    host.layers.forEach((layer) => {
      for (const kind of ["attn", "mlp"])
        this.gates.push(layer.param(`${kind}_res_alpha`, [], { kind: "const", value: 0 }, ctx));
    });
    this.finalGate = host.body.param("final_res_alpha", [], { kind: "const", value: 0 }, ctx);
  }
  /** s + a (route(states) − s), s the latest state. */
  private gated(key: number | "final", r: Router, a: Tensor): Tensor {
    const s = this.states[this.states.length - 1]!;
    return add(s, mul(sub(this.route(key, this.states, r), s), a));
  }
  begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.states = [h0];
  }
  input(j: number): Tensor {
    this.trace?.streams.set(j, this.states[this.states.length - 1]!);
    return this.gated(j, this.routers[j]!, this.gates[j]!);
  }
  update(_j: number, x: Tensor, r: SublayerResult): void {
    this.states.push(add(x, r.out));
  }
  end(): Tensor {
    return this.gated("final", this.final, this.finalGate);
  }
}

abstract class Additive extends Routed {
  private readonly nulls: Tensor[] = [];
  private readonly gates: Tensor[] = [];
  protected h!: Tensor;
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    super(c, host, ctx);
    host.layers.forEach((layer) => {
      for (const kind of ["attn", "mlp"]) {
        if (c.attnres_use_null_source)
          this.nulls.push(
            layer.param(`${kind}_null_source`, [c.hidden_size], { kind: "const", value: 0 }, ctx),
          );
        if (c.attnres_gate_type === "learnable_alpha")
          this.gates.push(layer.param(`${kind}_res_alpha`, [], { kind: "const", value: 0 }, ctx));
      }
    });
  }
  /** x_j = h + [a_j ·] route([null_j] + S). */
  protected additive(j: number, S: Tensor[]): Tensor {
    this.trace?.streams.set(j, this.h);
    const src = this.nulls.length ? [expand(this.nulls[j]!, this.h.shape), ...S] : S;
    if (src.length === 0) return this.h;
    const r = this.route(j, src, this.routers[j]!);
    return add(this.h, this.gates.length ? mul(r, this.gates[j]!) : r);
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.h = add(this.h, r.out);
  }
  end(): Tensor {
    return this.h;
  }
}

class Delta extends Additive {
  readonly name = "delta";
  private h0!: Tensor;
  private outs: Tensor[] = [];
  begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.h = this.h0 = h0;
    this.outs = [];
  }
  input(j: number): Tensor {
    return this.additive(j, j === 0 ? [] : [this.h0, ...this.outs]);
  }
  override update(j: number, x: Tensor, r: SublayerResult): void {
    this.outs.push(r.out);
    super.update(j, x, r);
  }
}

/** Delta (additive) over hidden states: x_j = h_j + a_j route([h_0 … h_j]) for j ≥ 1, x_0 = h_0. */
class DeltaStates extends Additive {
  readonly name = "delta";
  private states: Tensor[] = [];
  begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.h = h0;
    this.states = [h0];
  }
  input(j: number): Tensor {
    return this.additive(j, j === 0 ? [] : [...this.states]);
  }
  override update(j: number, x: Tensor, r: SublayerResult): void {
    super.update(j, x, r);
    this.states.push(this.h);
  }
}

/**
 * Delta Block with the correct Δ: Δ_b = h at the end of block b − h at its start (the released
 * code subtracts the previous *source* instead, which is wrong from the third block on). Boundary
 * layers are i % P == 0, layer 0 included: after a boundary layer's attention routing and before
 * its residual add, the new source (h0 at layer 0, else h − h_block_start) is appended, so that
 * layer's MLP already sees it.
 */
class DeltaBlock extends Additive {
  readonly name = "delta-block";
  private readonly P: number;
  private sources: Tensor[] = [];
  private blockStart: Tensor | null = null;
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    super(c, host, ctx);
    this.P = Math.max(1, Math.ceil(c.num_hidden_layers / c.attnres_num_blocks!));
  }
  /** The current sources (tests check the bookkeeping against true block deltas). */
  currentSources(): readonly Tensor[] {
    return this.sources;
  }
  begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.h = h0;
    this.sources = [];
    this.blockStart = null;
  }
  input(j: number): Tensor {
    const x = this.additive(j, [...this.sources]);
    if (j % 2 === 0 && (j >> 1) % this.P === 0) {
      this.sources.push(this.blockStart ? sub(this.h, this.blockStart) : this.h);
      this.blockStart = this.h;
    }
    return x;
  }
}

interface DdlParams {
  beta: Linear;
  v: Linear;
  read: Tensor | null;
}

/** Deep Delta Learning, scalar value: x ← x + β (v − k·x) k. */
class Ddl extends ResidualMode {
  readonly name: ModeName = "ddl";
  protected readonly p: DdlParams[] = [];
  protected readonly kEps2: number;
  protected h!: Tensor;
  constructor(
    protected readonly c: ModelConfig,
    host: ModeHost,
    ctx: InitContext,
    valueChannels = 1,
  ) {
    super();
    const d = c.hidden_size;
    const std = 0.5 / Math.sqrt(d);
    const b0 = Math.log(c.ddl_beta0 / 2 / (1 - c.ddl_beta0 / 2));
    this.kEps2 = c.ddl_k_eps * c.ddl_k_eps;
    host.layers.forEach((layer) => {
      for (const kind of ["attn", "mlp"]) {
        const beta = layer.child(`${kind}_ddl_beta_proj`, new Linear(d, 1, ctx, std, b0));
        const v = layer.child(
          `${kind}_ddl_v_proj`,
          new Linear(d, valueChannels, ctx, std, valueChannels === 1 ? 0 : undefined),
        );
        const read =
          valueChannels === 1
            ? null
            : layer.param(
                `${kind}_ddl_read`,
                [d, valueChannels],
                { kind: "const", value: 1 / valueChannels },
                ctx,
              );
        this.p.push({ beta, v, read });
      }
    });
  }
  begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.h = h0;
  }
  input(j: number): Tensor {
    this.trace?.streams.set(j, this.h);
    return this.h;
  }
  /** k = u / sqrt(‖u‖² + ε²) and β = 2σ(w_β·c + b_β) of sublayer j. */
  protected keyBeta(j: number, r: SublayerResult): { k: Tensor; beta: Tensor } {
    // u / sqrt(‖u‖² + ε²) = RMSNorm(u; eps ε²/d) / sqrt(d): one fused op instead of five.
    const d = this.c.hidden_size;
    const k = scale(rmsnorm(r.out, null, this.kEps2 / d), 1 / Math.sqrt(d));
    const beta = scale(sigmoid(this.p[j]!.beta.forward(r.normed)), 2);
    this.trace?.betas.set(j, beta);
    return { k, beta };
  }
  update(j: number, x: Tensor, r: SublayerResult): void {
    const { k, beta } = this.keyBeta(j, r);
    const vp = this.p[j]!.v;
    const v = this.c.ddl_value_form === "linear" ? vp.forward(r.normed) : scale(sigmoid(vp.forward(x)), 4);
    // x + β (v − k·x) k: the expanded state's fused update with one value channel.
    this.h = reshape(ddlUpdate(reshape(x, [...x.shape, 1]), k, beta, v), x.shape);
  }
  end(): Tensor {
    return this.h;
  }
}

/** DDL with an expanded state X [B, T, d, dv] per token and a learned per-dimension read C [d, dv]. */
class DdlExpanded extends Ddl {
  override readonly name: ModeName = "ddl-expanded";
  private readonly dv: number;
  private readonly finalRead: Tensor;
  private X!: Tensor;
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    super(c, host, ctx, c.ddl_value_channels);
    this.dv = c.ddl_value_channels;
    this.finalRead = host.body.param(
      "final_ddl_read",
      [c.hidden_size, this.dv],
      { kind: "const", value: 1 / this.dv },
      ctx,
    );
  }
  override begin(h0: Tensor, trace: Trace | null): void {
    this.trace = trace;
    this.X = expand(reshape(h0, [...h0.shape, 1]), [...h0.shape, this.dv]);
  }
  override input(j: number): Tensor {
    return ddlRead(this.X, this.p[j]!.read!); // [B, T, d]
  }
  override update(j: number, x: Tensor, r: SublayerResult): void {
    const { k, beta } = this.keyBeta(j, r); // [B, T, d], [B, T, 1]
    const v = this.p[j]!.v.forward(x); // [B, T, dv]
    this.X = ddlUpdate(this.X, k, beta, v); // X + β k (vᵀ − kᵀX), [B, T, d, dv]
  }
  override end(): Tensor {
    return ddlRead(this.X, this.finalRead);
  }
}

/** User-facing mode name of a config. */
export function modeName(c: ModelConfig): ModeName {
  const m = c.attnres_mode;
  return m === "full"
    ? "attnres-full"
    : m === "block"
      ? "attnres-block"
      : m === "delta_block"
        ? "delta-block"
        : m === "ddl_expanded"
          ? "ddl-expanded"
          : m;
}

/** Builds the config's residual mode, registering its parameters on the host's modules. */
export function makeResidualMode(c: ModelConfig, host: ModeHost, ctx: InitContext): ResidualMode {
  switch (modeName(c)) {
    case "standard":
      return new Standard();
    case "attnres-full":
      return c.attnres_sources === "states" ? new AttnResStates(c, host, ctx) : new AttnResFull(c, host, ctx);
    case "attnres-block":
      return new AttnResBlock(c, host, ctx);
    case "delta":
      return c.attnres_sources === "states" ? new DeltaStates(c, host, ctx) : new Delta(c, host, ctx);
    case "delta-block":
      return new DeltaBlock(c, host, ctx);
    case "ddl":
      return new Ddl(c, host, ctx);
    case "ddl-expanded":
      return new DdlExpanded(c, host, ctx);
  }
}

export { kindOf };
