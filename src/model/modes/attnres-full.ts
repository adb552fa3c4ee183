/**
 * attnres-full (config attnres_mode "full"): every sublayer reads a routing over h0 and every
 * earlier sublayer output, x_j = route([h0, o_0 … o_{j−1}]) [B, T, d]; a final routing over all of
 * them replaces the stream before the final norm. Parameters: a router per sublayer
 * (model.layers.{i}.{attn,mlp}_res_proj.weight [1, d], …_res_norm.weight [d]) and the final one
 * (model.final_res_proj.weight, model.final_res_norm.weight).
 *
 * With attnres_sources "states" it routes over hidden states instead, each routed term behind a
 * zero-initialised scalar gate ({attn,mlp}_res_alpha [], final_res_alpha []), so the model starts
 * as exactly the standard one: x_j = s_j + a_j (route([s_0 … s_j]) − s_j), s_{j+1} = x_j + o_j,
 * final s_2L + a_F (route([s_0 … s_2L]) − s_2L).
 */
import type { InitContext } from "../../nn/module.js";
import { add, mul, sub } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { ModelConfig } from "../config.js";
import {
  type ModeDef,
  type ModeHost,
  type ModeRun,
  type ResidualMode,
  routedMemory,
  type SublayerResult,
  type Trace,
} from "./mode.js";
import {
  addRouter,
  ROUTED_PARAMS,
  ROUTED_ZERO_PARAMS,
  RouteChain,
  routeTraced,
  type Router,
  sublayerRouters,
  sublayerScalars,
  sublayerSourceLabel,
} from "./routing.js";

/** Routers per sublayer and the final router (shared with attnres-block). */
export class FullRouters {
  readonly routers: Router[];
  readonly final: Router;
  readonly eps: number;
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    this.eps = c.rms_norm_eps;
    this.routers = sublayerRouters(c, host, ctx);
    this.final = addRouter(host.body, "final", c, ctx);
  }
  /** Routes sources with call j's router (j = J: the final one), as call j of chain. */
  route(j: number, sources: Tensor[], trace: Trace | null, chain: RouteChain, base: Tensor | null = null) {
    const J = this.routers.length;
    const r = j < J ? this.routers[j]! : this.final;
    const next = j < J - 1 ? this.routers[j + 1]! : j === J - 1 ? this.final : null;
    return routeTraced(j < J ? j : "final", sources, r, this.eps, trace, base, { chain, k: j, next });
  }
  /** The chain of one forward pass's J + 1 routed calls. */
  chain(): RouteChain {
    return new RouteChain(this.routers.length + 1);
  }
}

class FullRun implements ModeRun {
  private readonly sources: Tensor[];
  private readonly chain: RouteChain;
  constructor(
    private readonly p: FullRouters,
    h0: Tensor,
    private readonly trace: Trace | null,
  ) {
    this.sources = [h0];
    this.chain = p.chain();
  }
  input(j: number): Tensor {
    return this.p.route(j, this.sources, this.trace, this.chain);
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.sources.push(r.out);
  }
  end(): Tensor {
    return this.p.route(this.p.routers.length, this.sources, this.trace, this.chain);
  }
}

class StatesParams extends FullRouters {
  readonly gates: Tensor[];
  readonly finalGate: Tensor;
  constructor(c: ModelConfig, host: ModeHost, ctx: InitContext) {
    super(c, host, ctx);
    this.gates = sublayerScalars(host, "res_alpha", 0, ctx);
    this.finalGate = host.body.param("final_res_alpha", [], { kind: "const", value: 0 }, ctx);
  }
}

class StatesRun implements ModeRun {
  private readonly states: Tensor[];
  private readonly chain: RouteChain;
  constructor(
    private readonly p: StatesParams,
    h0: Tensor,
    private readonly trace: Trace | null,
  ) {
    this.states = [h0];
    this.chain = p.chain();
  }
  /** s + a (route(states) − s), s the latest state; call j (J: the final one). */
  private gated(j: number, a: Tensor): Tensor {
    const s = this.states[this.states.length - 1]!;
    return add(s, mul(sub(this.p.route(j, [...this.states], this.trace, this.chain), s), a));
  }
  input(j: number): Tensor {
    this.trace?.streams.set(j, this.states[this.states.length - 1]!);
    return this.gated(j, this.p.gates[j]!);
  }
  update(_j: number, x: Tensor, r: SublayerResult): void {
    this.states.push(add(x, r.out));
  }
  end(): Tensor {
    return this.gated(this.p.routers.length, this.p.finalGate);
  }
}

export const attnresFull: ModeDef<"attnres-full", "full"> = {
  name: "attnres-full",
  key: "full",
  configKeys: ["attnres_sources"],
  options: { blocks: false, states: true, additive: false },
  params: ROUTED_PARAMS,
  convert: { exactness: "eps-residue", zeroParams: ROUTED_ZERO_PARAMS },
  sourceLabel: sublayerSourceLabel,
  memory: {
    ...routedMemory(
      (c) => {
        // Sublayer j routes h0 and o_0 … o_{j−1}; the final routing all 2L + 1 of them.
        const J = 2 * c.num_hidden_layers;
        return {
          routeN: Array.from({ length: J }, (_, j) => j + 1),
          finalN: J + 1,
          adds: new Array<number>(J).fill(0),
          heldSources: J + 1,
        };
      },
      "route",
      (s) => 2 * s.L + 1, // h0 and every o_j
      false,
    ),
    boundary: () => 0, // no stream: a layer's input is the source list, kept anyway
  },
  build(c, host, ctx): ResidualMode {
    const name = "attnres-full";
    if (c.attnres_sources === "states") {
      const p = new StatesParams(c, host, ctx);
      return { name, begin: (h0, trace) => new StatesRun(p, h0, trace) };
    }
    const p = new FullRouters(c, host, ctx);
    return { name, begin: (h0, trace) => new FullRun(p, h0, trace) };
  },
};
