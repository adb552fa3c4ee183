/**
 * Memory estimates made before anything is allocated, so that a config with absurd sizes (a
 * million layers, a hidden size of 1e9) is refused with the estimate instead of swapping the
 * machine or running for minutes before failing.
 *
 *   parameterEstimate(c)   ≈ parameter count: embeddings (+ untied lm_head), per layer q/k/v/o,
 *                          the SwiGLU MLP, norms and a few vectors per sublayer for routing
 *   memoryEstimate(c, …)   bytes: 4 per weight (+ 12 more when training: gradient, two AdamW
 *                          moments) plus activations kept for the backward pass, per token
 *                          ≈ 4·(L·(16h + 3i + 2·Hq·d) + 3V) bytes for one micro-batch of B×T tokens
 *   checkMemoryBudget(…)   throws when the estimate exceeds the machine's total memory
 * The estimate is deliberately rough: it exists to refuse sizes that cannot fit, not to predict
 * the peak.
 */
import * as os from "node:os";
import type { ModelConfig } from "../model/config.js";

export function parameterEstimate(c: ModelConfig): number {
  const h = c.hidden_size;
  const d = c.head_dim;
  const perLayer =
    h * c.num_attention_heads * d * 2 +
    2 * h * c.num_key_value_heads * d +
    3 * h * c.intermediate_size +
    12 * h;
  return c.vocab_size * h * (c.tie_word_embeddings ? 1 : 2) + c.num_hidden_layers * perLayer + 4 * h;
}

export interface BudgetShape {
  /** Sequences per (micro-)batch and tokens per sequence. */
  batch_size: number;
  seq_len: number;
  /** Gradient, moments and saved activations too. */
  training?: boolean;
}

export function memoryEstimate(c: ModelConfig, b: BudgetShape): number {
  const P = parameterEstimate(c);
  const perToken =
    4 *
    (c.num_hidden_layers *
      (16 * c.hidden_size + 3 * c.intermediate_size + 2 * c.num_attention_heads * c.head_dim) +
      3 * c.vocab_size);
  return P * (b.training === false ? 4 : 16) + b.batch_size * b.seq_len * perToken;
}

const gib = (n: number): string => `${(n / 2 ** 30).toFixed(n < 2 ** 30 ? 2 : 1)} GiB`;

/** Throws, with the estimate, when a model of config `c` cannot fit in this machine's memory. */
export function checkMemoryBudget(c: ModelConfig, b: BudgetShape, what = "the model config"): void {
  const need = memoryEstimate(c, b);
  const have = os.totalmem();
  if (need > have)
    throw new Error(
      `${what} needs about ${gib(need)} (${parameterEstimate(c).toExponential(2)} parameters, ${c.num_hidden_layers} layers, batch ${b.batch_size}×${b.seq_len}), more than this machine's ${gib(have)} of memory; use smaller sizes`,
    );
}
