/**
 * ddl (Deep Delta Learning, scalar value): the stream is updated by a rank-one delta rule,
 *   x ← x + β (v − k·x) k,   k = o_j / sqrt(‖o_j‖² + ε²),   β = 2σ(w_β·c + b_β) [B, T, 1],
 * with c the sublayer's pre-norm of its input and v = w_v·c (ddl_value_form "linear") or
 * 4σ(w_v·x) ("sigmoid4"). Parameters per sublayer: {attn,mlp}_ddl_beta_proj (Linear d→1, normal
 * std 0.5/√d, bias b_β = logit(ddl_beta0 / 2)) and {attn,mlp}_ddl_v_proj (Linear d→1, bias 0).
 * Records β per sublayer and the stream entering it in the trace; no routing weights.
 */
import { Linear } from "../../nn/layers.js";
import type { InitContext } from "../../nn/module.js";
import { ddlStep, rmsnorm, scale, sigmoid } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { ModelConfig } from "../config.js";
import {
  type ModeDef,
  type ModeHost,
  type ModeRun,
  NO_MEMORY,
  NO_OPTIONS,
  SUBLAYER_KINDS,
  type SublayerResult,
  type Trace,
} from "./mode.js";
import { sublayerSourceLabel } from "./routing.js";

interface DdlSublayer {
  beta: Linear;
  v: Linear;
  /** The expanded mode's read C [d, dv]; null for the scalar one. */
  read: Tensor | null;
}

/** The per-sublayer DDL parameters (valueChannels 1: ddl; > 1: ddl-expanded's value width). */
export class DdlParams {
  readonly p: DdlSublayer[] = [];
  readonly kEps2: number;
  constructor(
    readonly c: ModelConfig,
    host: ModeHost,
    ctx: InitContext,
    valueChannels = 1,
  ) {
    const d = c.hidden_size;
    const std = 0.5 / Math.sqrt(d);
    const b0 = Math.log(c.ddl_beta0 / 2 / (1 - c.ddl_beta0 / 2));
    this.kEps2 = c.ddl_k_eps * c.ddl_k_eps;
    for (const layer of host.layers)
      for (const kind of SUBLAYER_KINDS) {
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
  }
  /** k = u / sqrt(‖u‖² + ε²) [B, T, d] and β = 2σ(w_β·c + b_β) [B, T, 1] of sublayer j (β traced). */
  keyBeta(j: number, r: SublayerResult, trace: Trace | null): { k: Tensor; beta: Tensor } {
    // u / sqrt(‖u‖² + ε²) = RMSNorm(u; eps ε²/d) / sqrt(d): one fused op instead of five.
    const d = this.c.hidden_size;
    const k = scale(rmsnorm(r.out, null, this.kEps2 / d), 1 / Math.sqrt(d));
    const beta = scale(sigmoid(this.p[j]!.beta.forward(r.normed)), 2);
    trace?.betas.set(j, beta);
    return { k, beta };
  }
}

class DdlRun implements ModeRun {
  constructor(
    private readonly p: DdlParams,
    private h: Tensor,
    private readonly trace: Trace | null,
  ) {}
  input(j: number): Tensor {
    this.trace?.streams.set(j, this.h);
    return this.h;
  }
  update(j: number, x: Tensor, r: SublayerResult): void {
    // k, β, v and x + β (v − k·x) k in one fused op (ddlStep), which never materialises k.
    const { beta: bp, v: vp } = this.p.p[j]!;
    const { y, beta } = ddlStep(
      x,
      r.out,
      r.normed,
      bp.weight,
      bp.bias!,
      vp.weight,
      vp.bias!,
      this.p.kEps2,
      this.p.c.ddl_value_form === "sigmoid4",
    );
    this.trace?.betas.set(j, beta);
    this.h = y;
  }
  end(): Tensor {
    return this.h;
  }
}

/** What both DDL modes declare alike: their config keys and parameters; no routing, no conversion. */
export const DDL_COMMON = {
  configKeys: ["ddl_beta0", "ddl_k_eps", "ddl_value_form", "ddl_value_channels"], // all kept in config.json
  options: NO_OPTIONS,
  params: /_ddl_/, // final_ddl_read included
  convert: null,
  sourceLabel: sublayerSourceLabel, // (no routed calls)
};

export const ddl: ModeDef<"ddl", "ddl"> = {
  name: "ddl",
  key: "ddl",
  ...DDL_COMMON,
  memory: {
    ...NO_MEMORY, // no routed calls, no adds of its own: the update below is all
    // the new stream, β and three numbers per row (ddlStep); eager PyTorch: u, k, the new h.
    sublayerTs: (_c, { n, d }) => n * d + 4 * n,
    sublayerTorch: (c, { n, d }) => 3 * n * d + n * (5 + (c.ddl_value_form === "linear" ? 0 : 1)),
    sublayerFlops: ({ d }) => 16 * d,
    runningGrads: ({ n, d }) => 3 * n * d,
    torchHeld: () => 1, // h0; the streams are counted per sublayer
  },
  build(c, host, ctx) {
    const p = new DdlParams(c, host, ctx);
    return { name: "ddl", begin: (h0, trace) => new DdlRun(p, h0, trace) };
  },
};
