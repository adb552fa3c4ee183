/**
 * `attnres eval`: validation loss, perplexity and bits per byte of a checkpoint on a split of a
 * prepared dataset: consecutive windows [batch_size, seq_len] over the whole split by default
 * (every complete batch; --batches limits it), the same every time. The output states how many
 * batches and tokens were scored, out of the split's tokens.
 */
import { evalBatches } from "../data/batches.js";
import { loadPrepared } from "../data/prepared.js";
import { loadCheckpoint } from "../model/checkpoint.js";
import { evaluate } from "../train/trainer.js";

export { registerEval } from "./commands/eval.js";

export interface EvalResult {
  split: "train" | "val";
  loss: number;
  perplexity: number;
  bitsPerByte: number;
  /** Tokens scored: batches × batch_size × seq_len. */
  tokens: number;
  batches: number;
  batchSize: number;
  seqLen: number;
  /** Tokens in the split; every complete batch was scored when `batches` was not limited. */
  splitTokens: number;
  wholeSplit: boolean;
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
    const B = o.batchSize ?? 8;
    const batches = evalBatches(data[split], B, T, o.batches ?? Infinity);
    const complete = Math.floor((data[split].length - 1) / (B * T));
    const loss = evaluate(model, batches);
    const bytesPerToken = data.meta[split].bytes / data.meta[split].tokens;
    return {
      split,
      loss,
      perplexity: Math.exp(loss),
      bitsPerByte: loss / bytesPerToken / Math.LN2,
      tokens: batches.length * B * T,
      batches: batches.length,
      batchSize: B,
      seqLen: T,
      splitTokens: data[split].length,
      wholeSplit: batches.length === complete,
    };
  } finally {
    model.dispose();
  }
}
