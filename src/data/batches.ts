/**
 * Batches of next-token prediction windows from a token array.
 *   ids[b, t] = tokens[o_b + t], targets[b, t] = tokens[o_b + t + 1]   (B*T row-major Int32Arrays)
 * Training windows start at seeded random offsets; evaluation windows are the first `count`
 * consecutive non-overlapping ones, so every evaluation sees the same text.
 */
import { Rng } from "../tensor/random.js";

export interface Batch {
  ids: Int32Array;
  targets: Int32Array;
  B: number;
  T: number;
}

function window(tokens: Int32Array, offsets: number[], T: number): Batch {
  const B = offsets.length;
  const ids = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  offsets.forEach((o, b) => {
    ids.set(tokens.subarray(o, o + T), b * T);
    targets.set(tokens.subarray(o + 1, o + T + 1), b * T);
  });
  return { ids, targets, B, T };
}

export class BatchSampler {
  private rng: Rng;
  constructor(
    private readonly tokens: Int32Array,
    readonly B: number,
    readonly T: number,
    seed: number,
  ) {
    if (tokens.length < T + 2)
      throw new Error(`the training split has ${tokens.length} tokens, fewer than one window of ${T + 1}`);
    this.rng = new Rng(seed);
  }
  /** The sampler's position in its stream (for checkpoints). */
  getState(): number[] {
    return this.rng.getState();
  }
  setState(state: readonly number[]): void {
    this.rng.setState(state);
  }
  next(): Batch {
    const span = this.tokens.length - this.T - 1;
    const offsets = Array.from({ length: this.B }, () => this.rng.int(span + 1));
    return window(this.tokens, offsets, this.T);
  }
}

/** Up to `count` evaluation batches of consecutive windows (fewer if the split is short). */
export function evalBatches(tokens: Int32Array, B: number, T: number, count: number): Batch[] {
  const out: Batch[] = [];
  let o = 0;
  while (out.length < count && o + B * T + 1 <= tokens.length) {
    out.push(
      window(
        tokens,
        Array.from({ length: B }, (_, b) => o + b * T),
        T,
      ),
    );
    o += B * T;
  }
  if (out.length === 0)
    throw new Error(`the validation split has ${tokens.length} tokens, fewer than one batch of ${B}×${T}`);
  return out;
}
