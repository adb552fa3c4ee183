/**
 * The delta mode's one-token path: a ModeRun for a single row (B · T = 1) under noGrad without a
 * trace — batch-1 decoding — computing what DeltaRun / DeltaStatesRun compute, to float32
 * rounding, in fewer and cheaper calls.
 *
 *   sources  one buffer [S, d]: row 0 the sublayer's null source (when the model has them), then
 *            h0, o_0, o_1 … (outputs) or h_0, h_1 … (states: the stream after each sublayer),
 *            appended as the sublayers finish
 *   input j  x_j = h + a_j · route(rows) in one decodeRoute call (a_j = 1 without gates), where
 *            the general path makes a route over S separate tensors (one buffer each to hand
 *            over), a multiply and an add
 *   update   h ← h + o_j, then o_j (or h) copied into the next row
 *
 * Inference only: nothing here records a gradient (decodeRoute has no backward). The row count S
 * is at most 2 · layers + 2, a few hundred KB at the sizes attnres runs.
 */
import { add } from "../../tensor/ops.js";
import { empty, isGradEnabled, type Tensor } from "../../tensor/tensor.js";
import type { ModeRun, SublayerResult, Trace } from "./mode.js";
import type { AdditiveParams } from "./routing.js";

/** Whether a forward on h0 [B, T, d] can take DeltaDecodeRun: one row, no gradient, no trace. */
export function isDecodeRow(h0: Tensor, trace: Trace | null): boolean {
  return trace === null && !isGradEnabled() && h0.size === h0.shape[h0.rank - 1];
}

export class DeltaDecodeRun implements ModeRun {
  private readonly rows: Tensor;
  private readonly d: number;
  private readonly first: number; // row of h0 (1 when row 0 holds the null source)
  private n: number; // rows written after the null row
  constructor(
    private readonly p: AdditiveParams,
    private h: Tensor,
    private readonly states: boolean,
    sublayers: number,
  ) {
    this.d = h.shape[h.rank - 1]!;
    this.first = p.nulls.length ? 1 : 0;
    this.rows = empty([this.first + sublayers + 1, this.d], { backend: h.backend, dtype: h.dtype });
    this.rows.data.set(h.data.subarray(0, this.d), this.first * this.d);
    this.n = 1;
  }
  input(j: number): Tensor {
    const p = this.p;
    if (p.nulls.length) this.rows.data.set(p.nulls[j]!.data.subarray(0, this.d), 0);
    // Sublayer 0 routes nothing but its null source (if any); later ones every row written so far.
    const N = this.first + (j === 0 ? 0 : this.n);
    if (N === 0) return this.h;
    const r = p.routers[j]!;
    const out = empty(this.h.shape, { backend: this.h.backend, dtype: this.h.dtype });
    const gate = p.gates.length ? p.gates[j]!.data[0]! : 1;
    this.h.backend.decodeRoute(
      this.rows.data,
      N,
      r.w.data,
      r.g.data,
      this.h.data,
      gate,
      out.data,
      this.d,
      p.eps,
    );
    return out;
  }
  update(_j: number, _x: Tensor, r: SublayerResult): void {
    this.h = add(this.h, r.out);
    const row = this.states ? this.h : r.out;
    this.rows.data.set(row.data.subarray(0, this.d), (this.first + this.n) * this.d);
    this.n++;
  }
  end(): Tensor {
    return this.h;
  }
}
