/**
 * `attnres eval`: validation loss, perplexity and bits per byte of a checkpoint on a split of a
 * prepared dataset: consecutive windows [batch_size, seq_len] over the whole split by default
 * (every complete batch; --batches limits it), the same every time. The output states how many
 * batches and tokens were scored, out of the split's tokens. The evaluation is src/eval/loss.ts.
 */
import { loadPrepared } from "../data/prepared.js";
import { type EvalResult, evaluateSplit } from "../eval/loss.js";
import { loadCheckpoint } from "../model/checkpoint.js";

export { registerEval } from "./commands/eval.js";
export type { EvalResult } from "../eval/loss.js";

export function evalCommand(o: {
  checkpoint: string;
  data: string;
  split?: string;
  batches?: number;
  batchSize?: number;
  seqLen?: number;
}): EvalResult {
  const split = (o.split ?? "val") as "train" | "val";
  if (split !== "train" && split !== "val") throw new Error(`--split must be train or val, not ${o.split}`);
  const data = loadPrepared(o.data);
  const model = loadCheckpoint(o.checkpoint);
  try {
    return evaluateSplit(model, data, split, o);
  } finally {
    model.dispose();
  }
}
