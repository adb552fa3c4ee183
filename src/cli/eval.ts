/**
 * `attnres eval`: validation loss, perplexity and bits per byte of a checkpoint on a split of a
 * prepared dataset (consecutive windows, the same every time).
 */
import { evalBatches } from "../data/batches.js";
import { loadPrepared } from "../data/prepared.js";
import { loadCheckpoint } from "../io/checkpoint.js";
import { evaluate } from "../train/trainer.js";

export { registerEval } from "./commands/eval.js";

export interface EvalResult {
  split: "train" | "val";
  loss: number;
  perplexity: number;
  bitsPerByte: number;
  tokens: number;
}

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
    if (data.tokenizer.vocabSize > model.config.vocab_size)
      throw new Error(
        `the dataset's tokenizer has ${data.tokenizer.vocabSize} ids but the model embeds only ${model.config.vocab_size}`,
      );
    const T = Math.min(o.seqLen ?? 256, model.config.max_position_embeddings);
    const batches = evalBatches(data[split], o.batchSize ?? 8, T, o.batches ?? 16);
    const loss = evaluate(model, batches);
    const bytesPerToken = data.meta[split].bytes / data.meta[split].tokens;
    return {
      split,
      loss,
      perplexity: Math.exp(loss),
      bitsPerByte: loss / bytesPerToken / Math.LN2,
      tokens: batches.length * batches[0]!.B * T,
    };
  } finally {
    model.dispose();
  }
}
