/**
 * Language-modelling evaluation: the mean next-token loss of a model over batches, and over a split
 * of a prepared dataset with perplexity and bits per byte. Training validates with `evaluate`
 * (src/train/run.ts), `attnres eval` reports `evaluateSplit`; multiple-choice scoring is in
 * src/eval/mc.ts.
 *
 *   evaluate(model, batches)                     mean over batches of model.loss (nats per token),
 *                                                under noGrad, one tidy scope per batch
 *   evaluateSplit(model, data, split, windows)   consecutive windows [batchSize, seqLen] over the
 *                                                split (every complete batch unless `batches`
 *                                                limits it; seqLen capped at the model's context):
 *                                                loss, perplexity e^loss, bits per byte
 *                                                loss · tokens / (bytes · ln 2), and what was scored
 */
import { type Batch, evalBatches } from "../data/batches.js";
import type { PreparedData } from "../data/prepared.js";
import type { DecoderLM } from "../model/decoder.js";
import { tidy } from "../tensor/memory.js";
import { noGrad } from "../tensor/tensor.js";

/** Mean loss over the batches, without building a graph. */
export function evaluate(model: DecoderLM, batches: readonly Batch[]): number {
  let total = 0;
  for (const b of batches) total += noGrad(() => tidy(() => model.loss(b.ids, b.targets, b.B, b.T).item()));
  return total / batches.length;
}

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

/** The windows evaluateSplit scores (defaults: batches of 8 × 256 tokens over the whole split). */
export interface EvalWindows {
  batchSize?: number;
  seqLen?: number;
  batches?: number;
}

/** Loss, perplexity and bits per byte of `model` on one split of `data`. */
export function evaluateSplit(
  model: DecoderLM,
  data: PreparedData,
  split: "train" | "val",
  w: EvalWindows = {},
): EvalResult {
  if (data.tokenizer.vocabSize > model.config.vocab_size)
    throw new Error(
      `the dataset's tokenizer has ${data.tokenizer.vocabSize} ids but the model embeds only ${model.config.vocab_size}`,
    );
  const T = Math.min(w.seqLen ?? 256, model.config.max_position_embeddings);
  const B = w.batchSize ?? 8;
  const batches = evalBatches(data[split], B, T, w.batches ?? Infinity);
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
}
