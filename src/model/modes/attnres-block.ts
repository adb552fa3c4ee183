/**
 * attnres-block (config attnres_mode "block", needs attnres_num_blocks): like attnres-full, but the
 * sources are the completed block sums (b_0 = h0, b_k = Σ of the outputs of block k's sublayers,
 * blocks of P = ceil(L / attnres_num_blocks) layers) plus the running sum of the current block.
 * Same parameters as attnres-full (a router per sublayer and the final router).
 */
import { add } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import { FullRouters } from "./attnres-full.js";
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
import { outputSourceLabel, ROUTED_PARAMS, ROUTED_ZERO_PARAMS, routeTraced } from "./routing.js";

class BlockRun implements ModeRun {
  private readonly blocks: Tensor[];
  private partial: Tensor | null = null;
  constructor(
    private readonly p: FullRouters,
    private readonly P: number,
    h0: Tensor,
    private readonly trace: Trace | null,
  ) {
    this.blocks = [h0];
  }
  private current(): Tensor[] {
    return this.partial ? [...this.blocks, this.partial] : this.blocks;
  }
  input(j: number): Tensor {
    const x = routeTraced(j, this.current(), this.p.routers[j]!, this.p.eps, this.trace);
    // The first attention sublayer of a new block saw the block that just ended; store it.
    if (j > 0 && opensBlock(j, this.P) && this.partial) {
      this.blocks.push(this.partial);
      this.partial = null;
    }
    return x;
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.partial = this.partial ? add(this.partial, r.out) : r.out;
  }
  end(): Tensor {
    return routeTraced("final", this.current(), this.p.final, this.p.eps, this.trace);
  }
}

/** Sources per call: the completed block sums (b_0 = h0) and, once a block has begun, its running sum. */
function blockSchedule(c: ModelConfig) {
  const J = 2 * c.num_hidden_layers;
  const P = layersPerBlock(c);
  const routeN = new Array<number>(J).fill(0);
  const adds = new Array<number>(J).fill(0);
  let blocks = 1;
  let partial = false;
  for (let j = 0; j < J; j++) {
    routeN[j] = blocks + (partial ? 1 : 0);
    if (j > 0 && opensBlock(j, P) && partial) {
      blocks++;
      partial = false;
    }
    if (partial) adds[j] = 1; // partial ← partial + o_j
    partial = true;
  }
  return { routeN, finalN: blocks + 1, adds, heldSources: blocks + 1 };
}

export const attnresBlock: ModeDef<"attnres-block", "block"> = {
  name: "attnres-block",
  key: "block",
  configKeys: ["attnres_num_blocks"],
  options: { blocks: true, states: false, additive: false },
  params: ROUTED_PARAMS,
  convert: { exactness: "eps-residue", zeroParams: ROUTED_ZERO_PARAMS },
  sourceLabel: (p, c) => outputSourceLabel(p, c.attnres_use_null_source, (q) => `B${q}`),
  memory: routedMemory(blockSchedule, "route", (_, k) => k.heldSources, false), // completed blocks + running sum
  build(c, host, ctx) {
    const p = new FullRouters(c, host, ctx);
    const P = layersPerBlock(c);
    return { name: "attnres-block", begin: (h0, trace) => new BlockRun(p, P, h0, trace) };
  },
};
