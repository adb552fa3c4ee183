/**
 * delta (config attnres_mode "delta"): keeps the stream h ← h + o_j and adds to it a routing over
 * h0 and every earlier sublayer output, x_j = h + [a_j ·] route([null_j,] h0, o_0 … o_{j−1}) for
 * j ≥ 1, x_0 = h0. Parameters: a router per sublayer ({attn,mlp}_res_proj.weight [1, d],
 * …_res_norm.weight [d]); with attnres_use_null_source a learnable null source per sublayer
 * ({attn,mlp}_null_source [d], zero); with attnres_gate_type "learnable_alpha" a zero gate per
 * sublayer ({attn,mlp}_res_alpha []).
 *
 * With attnres_sources "states" it routes over hidden states: x_j = h_j + a_j route([h_0 … h_j])
 * (j ≥ 1), x_0 = h_0 (the gate is required, so it starts as the standard model).
 */
import { add } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import { DeltaDecodeRun, isDecodeRow } from "./delta-decode.js";
import { type ModeDef, type ModeRun, routedMemory, type SublayerResult, type Trace } from "./mode.js";
import {
  AdditiveParams,
  ROUTED_PARAMS,
  type RouteChain,
  ROUTED_ZERO_PARAMS,
  sublayerSourceLabel,
} from "./routing.js";

class DeltaRun implements ModeRun {
  private readonly outs: Tensor[] = [];
  private readonly chain: RouteChain | null;
  constructor(
    private readonly p: AdditiveParams,
    private readonly h0: Tensor,
    private h: Tensor,
    private readonly trace: Trace | null,
  ) {
    this.chain = p.chain();
  }
  input(j: number): Tensor {
    return this.p.input(j, this.h, j === 0 ? [] : [this.h0, ...this.outs], this.trace, this.chain);
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.outs.push(r.out);
    this.h = add(this.h, r.out);
  }
  end(): Tensor {
    return this.h;
  }
}

class DeltaStatesRun implements ModeRun {
  private readonly states: Tensor[];
  private readonly chain: RouteChain | null;
  constructor(
    private readonly p: AdditiveParams,
    private h: Tensor,
    private readonly trace: Trace | null,
  ) {
    this.states = [h];
    this.chain = p.chain();
  }
  input(j: number): Tensor {
    return this.p.input(j, this.h, j === 0 ? [] : [...this.states], this.trace, this.chain);
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.h = add(this.h, r.out);
    this.states.push(this.h);
  }
  end(): Tensor {
    return this.h;
  }
}

export const delta: ModeDef<"delta", "delta"> = {
  name: "delta",
  key: "delta",
  configKeys: ["attnres_sources", "attnres_use_null_source", "attnres_gate_type"],
  options: { blocks: false, states: true, additive: true },
  params: ROUTED_PARAMS,
  convert: { exactness: "eps-residue", zeroParams: ROUTED_ZERO_PARAMS },
  sourceLabel: sublayerSourceLabel,
  memory: routedMemory(
    (c) => {
      // Sublayer j ≥ 1 routes h0 and o_0 … o_{j−1} (and the null source); h ← h + o_j.
      const J = 2 * c.num_hidden_layers;
      const nul = c.attnres_use_null_source ? 1 : 0;
      return {
        routeN: Array.from({ length: J }, (_, j) => (j === 0 ? 0 : j + 1) + nul),
        finalN: 0,
        adds: new Array<number>(J).fill(1),
        heldSources: J + 1,
      };
    },
    "stream-plus-route",
    (s) => 2 * s.L + 1, // h0 and every o_j (the streams in between are not kept)
    true, // the last h
  ),
  build(c, host, ctx) {
    const p = new AdditiveParams(c, host, ctx);
    const name = "delta";
    const states = c.attnres_sources === "states";
    const J = 2 * c.num_hidden_layers;
    const begin = (h0: Tensor, trace: Trace | null): ModeRun =>
      isDecodeRow(h0, trace)
        ? new DeltaDecodeRun(p, h0, states, J) // one token: src/model/modes/delta-decode.ts
        : states
          ? new DeltaStatesRun(p, h0, trace)
          : new DeltaRun(p, h0, h0, trace);
    return { name, begin };
  },
};
