/**
 * standard: the plain residual stream, h ← h + o_j (h [B, T, d]). No parameters; records the
 * stream entering each sublayer in the trace (the only statistics it has).
 */
import { add } from "../../tensor/ops.js";
import type { Tensor } from "../../tensor/tensor.js";
import {
  type ModeDef,
  type ModeRun,
  NO_MEMORY,
  NO_OPTIONS,
  type SublayerResult,
  type Trace,
  unroutedSchedule,
} from "./mode.js";
import { sublayerSourceLabel } from "./routing.js";

class StandardRun implements ModeRun {
  constructor(
    private h: Tensor,
    private readonly trace: Trace | null,
  ) {}
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

export const standard: ModeDef<"standard", "standard"> = {
  name: "standard",
  key: "standard",
  configKeys: [],
  options: NO_OPTIONS,
  params: /(?!)/,
  convert: null,
  sourceLabel: sublayerSourceLabel, // (no routed calls)
  memory: {
    ...NO_MEMORY,
    schedule: (c) => unroutedSchedule(c, 1), // h ← h + o_j
    torchHeld: (s) => 2 * s.L + 1, // every h is the next norm's saved input
  },
  build: () => ({ name: "standard", begin: (h0, trace) => new StandardRun(h0, trace) }),
};
