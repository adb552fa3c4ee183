/**
 * The tiny training run of the crash tests: 4 steps of a 1-layer model, checkpoints at steps 2
 * and 4 (the final one), so that one process run performs two complete saves.
 */
import type { RunSpec } from "../../src/train/run.js";

export const crashSpec = (data: string): RunSpec => ({
  model: {
    model_type: "qwen3",
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    attnres_mode: "delta",
  },
  data,
  train: {
    steps: 4,
    batch_size: 2,
    seq_len: 8,
    grad_accum: 1,
    lr: 3e-3,
    min_lr_ratio: 0.1,
    warmup: 1,
    weight_decay: 0.1,
    beta1: 0.9,
    beta2: 0.95,
    clip: 1,
    eval_every: 2,
    eval_batches: 1,
    checkpoint_every: 2,
    seed: 7,
  },
});
