/**
 * delta-block (config attnres_mode "delta_block", needs attnres_num_blocks): keeps the stream
 * h ← h + o_j and adds a routing over [null,] h0 and the block deltas Δ_b = h at the end of block b
 * − h at its start (the released code subtracts the previous *source* instead, which is wrong from
 * the third block on). Boundary layers are i % P == 0, layer 0 included (P = ceil(L / blocks)):
 * after a boundary layer's attention routing and before its residual add, the new source (h0 at
 * layer 0, else h − h_block_start) is appended, so that layer's MLP already sees it. Parameters as
 * delta's (routers, optional null sources and gates).
 */
import { add, sub } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import {
  layersPerBlock,
  type ModeDef,
  type ModeRun,
  opensBlock,
  routedMemory,
  type SublayerResult,
  type Trace,
} from "./mode.js";
import type { ModelConfig } from "../config.js";
import {
  AdditiveParams,
  outputSourceLabel,
  ROUTED_PARAMS,
  type RouteChain,
  ROUTED_ZERO_PARAMS,
} from "./routing.js";

class DeltaBlockRun implements ModeRun {
  private readonly sources: Tensor[] = [];
  private blockStart: Tensor | null = null;
  private readonly chain: RouteChain | null;
  constructor(
    private readonly p: AdditiveParams,
    private readonly P: number,
    private h: Tensor,
    private readonly trace: Trace | null,
  ) {
    this.chain = p.chain();
  }
  input(j: number): Tensor {
    const x = this.p.input(j, this.h, [...this.sources], this.trace, this.chain);
    if (opensBlock(j, this.P)) {
      this.sources.push(this.blockStart ? sub(this.h, this.blockStart) : this.h);
      this.blockStart = this.h;
    }
    return x;
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.h = add(this.h, r.out);
  }
  end(): Tensor {
    return this.h;
  }
}

/** Sources per call: h0 and the deltas of the completed blocks (and the null source); h ← h + o_j, Δ = h − h_start. */
function deltaBlockSchedule(c: ModelConfig) {
  const J = 2 * c.num_hidden_layers;
  const P = layersPerBlock(c);
  const nul = c.attnres_use_null_source ? 1 : 0;
  const routeN = new Array<number>(J).fill(0);
  const adds = new Array<number>(J).fill(0);
  let sources = 0;
  for (let j = 0; j < J; j++) {
    routeN[j] = sources + nul;
    adds[j] = 1;
    if (opensBlock(j, P)) {
      if (sources > 0) adds[j]! += 1; // Δ = h − h_block_start
      sources++;
    }
  }
  return { routeN, finalN: 0, adds, heldSources: sources };
}

export const deltaBlock: ModeDef<"delta-block", "delta_block"> = {
  name: "delta-block",
  key: "delta_block",
  configKeys: ["attnres_num_blocks", "attnres_use_null_source", "attnres_gate_type"],
  options: { blocks: true, states: false, additive: true },
  params: ROUTED_PARAMS,
  // Converted with the zero gate, the routed term is exactly zero: the standard model.
  convert: {
    exactness: "exact",
    keys: { attnres_gate_type: "learnable_alpha" },
    zeroParams: ROUTED_ZERO_PARAMS,
  },
  sourceLabel: (p, c) => outputSourceLabel(p, c.attnres_use_null_source, (q) => `Δ${q}`),
  // h0, the Δs, the block start; the last h
  memory: routedMemory(deltaBlockSchedule, "stream-plus-route", (_, k) => k.heldSources + 1, true),
  build(c, host, ctx) {
    const p = new AdditiveParams(c, host, ctx);
    const P = layersPerBlock(c);
    return { name: "delta-block", begin: (h0, trace) => new DeltaBlockRun(p, P, h0, trace) };
  },
};
