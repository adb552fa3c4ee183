/**
 * ddl-expanded (config attnres_mode "ddl_expanded"): DDL with an expanded state X [B, T, d, dv]
 * per token (dv = ddl_value_channels), X_0 = h0 repeated; sublayer j reads x_in = Σ_c C_j[:,c] X[:,c]
 * with a learned per-dimension read C_j [d, dv] (constant 1/dv) and updates
 * X ← X + β k (vᵀ − kᵀX), v = w_v·x [B, T, dv]; the final read C_F (model.final_ddl_read [d, dv])
 * gives the stream for the final norm. Parameters: DDL's per sublayer (v_proj with dv outputs)
 * plus {attn,mlp}_ddl_read and final_ddl_read.
 */
import { ddlRead, ddlUpdateRead, expand, reshape } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import { DDL_COMMON, DdlParams } from "./ddl.js";
import { type ModeDef, type ModeRun, NO_MEMORY, type SublayerResult, type Trace } from "./mode.js";

class ExpandedRun implements ModeRun {
  private X: Tensor;
  /** The read of X for sublayer j (p.p.length: the end), computed with the update that made X. */
  private next: { j: number; x: Tensor } | null = null;
  constructor(
    private readonly p: DdlParams,
    private readonly finalRead: Tensor,
    h0: Tensor,
    private readonly trace: Trace | null,
  ) {
    const dv = finalRead.shape[1]!;
    this.X = expand(reshape(h0, [...h0.shape, 1]), [...h0.shape, dv]);
  }
  private take(j: number, C: Tensor): Tensor {
    const x = this.next?.j === j ? this.next.x : ddlRead(this.X, C); // [B, T, d]
    this.next = null;
    return x;
  }
  input(j: number): Tensor {
    return this.take(j, this.p.p[j]!.read!);
  }
  update(j: number, x: Tensor, r: SublayerResult): void {
    const { k, beta } = this.p.keyBeta(j, r, this.trace); // [B, T, d], [B, T, 1]
    const v = this.p.p[j]!.v.forward(x); // [B, T, dv]
    // X + β k (vᵀ − kᵀX) [B, T, d, dv], and the next sublayer's read of it in the same pass
    const { Y, x: next } = ddlUpdateRead(this.X, k, beta, v, this.p.p[j + 1]?.read ?? this.finalRead);
    this.X = Y;
    this.next = { j: j + 1, x: next };
  }
  end(): Tensor {
    return this.take(this.p.p.length, this.finalRead);
  }
}

export const ddlExpanded: ModeDef<"ddl-expanded", "ddl_expanded"> = {
  name: "ddl-expanded",
  key: "ddl_expanded",
  ...DDL_COMMON,
  memory: {
    ...NO_MEMORY, // no routed calls, no adds of its own
    state: "expanded",
    // Fused kernels: read x_in [n, d]; k (square, sum, +ε, rsqrt, mul); β (linear, sigmoid, scale);
    // v [n, dv]; the new state Y [n, d, dv]. Eager PyTorch: X, x_in, u, k, β·k, v − kX.
    sublayerTs: (_, { n, d, dv }) => n * d * dv + 3 * n * d + 6 * n + n * dv,
    sublayerTorch: (_, { n, d, dv }) => n * d * (dv + 4) + n * (4 + dv),
    finalTs: ({ n, d, dv }) => n * d * dv + n * d, // X0 expand; the fused readout
    sublayerFlops: ({ d, dv }) => 16 * d + 8 * d * dv,
    runningGrads: ({ n, d, dv }) => 2 * n * d * dv + 2 * n * d,
    torchHeld: () => 1, // h0 (X0 is a view of it)
    finalStream: true, // the readout
    boundary: ({ d, dv }) => d * dv, // X
  },
  build(c, host, ctx) {
    const p = new DdlParams(c, host, ctx, c.ddl_value_channels);
    const finalRead = host.body.param(
      "final_ddl_read",
      [c.hidden_size, c.ddl_value_channels],
      { kind: "const", value: 1 / c.ddl_value_channels },
      ctx,
    );
    return { name: "ddl-expanded", begin: (h0, trace) => new ExpandedRun(p, finalRead, h0, trace) };
  },
};
