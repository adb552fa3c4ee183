/**
 * The residual strategy: how the decoder routes the stream between its 2L sublayers
 * (METHODS.md numbers them j = 0 … 2L−1: attention of layer i is j = 2i, its MLP j = 2i+1).
 *
 * The decoder loop is the same for every mode:
 *     state = begin(h0)
 *     for each sublayer j:   x = input(j, state);  {out, normed} = f_j(x);  state = update(j, state, x, normed, out)
 *     h = end(state)                      // fed to the final norm
 * `standard` is h ← h + f_j(h): it changes nothing at the call sites. The routed modes (next issue)
 * implement the same interface and may return routing statistics beside the logits.
 */
import { add } from "../tensor/ops.js";
import type { Tensor } from "../tensor/tensor.js";

export interface SublayerResult {
  /** o_j, the sublayer's output [B, T, d]. */
  out: Tensor;
  /** c = the sublayer's own pre-norm of its input (used by DDL). */
  normed: Tensor;
}

export interface ResidualStrategy<S> {
  readonly mode: string;
  begin(h0: Tensor): S;
  input(j: number, state: S): Tensor;
  update(j: number, state: S, x: Tensor, r: SublayerResult): S;
  end(state: S): Tensor;
}

export const standardResidual: ResidualStrategy<Tensor> = {
  mode: "standard",
  begin: (h0) => h0,
  input: (_j, h) => h,
  update: (_j, h, _x, r) => add(h, r.out),
  end: (h) => h,
};
