/**
 * The Qwen3-0.6B shape the convert and generation benchmarks share: the model keys of its
 * config.json (28 layers, d 1024, 16/8 heads of 128, SwiGLU 3072, vocab 151936, tied embeddings).
 */
import type { DecoderLMConfig } from "../src/model/config.js";

export const QWEN3_0_6B_MODEL = {
  model_type: "qwen3",
  vocab_size: 151936,
  hidden_size: 1024,
  intermediate_size: 3072,
  num_hidden_layers: 28,
  num_attention_heads: 16,
  num_key_value_heads: 8,
  head_dim: 128,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  max_position_embeddings: 40960,
  tie_word_embeddings: true,
} satisfies DecoderLMConfig;
