/**
 * Named model sizes for planning runs at the papers' scales (`attnres plan --size 8b`).
 *
 * Plain typed data: HF config fields of a Qwen3-style backbone (q/k norms, grouped-query
 * attention, SwiGLU, RoPE) with Qwen3's 151,936-token vocabulary. The papers report results at
 * 220M, 533M, 1B and 8B parameters without listing every shape, so each entry is a shape chosen
 * here to land on that parameter count with standard Qwen3/Llama proportions (docs/scale-out.md
 * lists where each comes from); `8b` is exactly the published Qwen3-8B shape (d 4096, 36 layers,
 * 32 query / 8 key-value heads of 128, MLP 12288, untied embeddings). The counts in the comments
 * are of the standard backbone (countParameters); routing modes add O(d·L) on top.
 */
import type { ModelConfigInput } from "../model/config.js";

export interface NamedSize {
  /** What the shape is and where it comes from (printed by `attnres plan --list-sizes`). */
  source: string;
  config: ModelConfigInput;
}

const qwen3 = {
  model_type: "qwen3",
  vocab_size: 151936,
  rms_norm_eps: 1e-6,
  rope_theta: 1_000_000,
  max_position_embeddings: 4096,
} as const;

export const NAMED_SIZES = {
  /** 220.5M: 12 layers of d 768, tied embeddings (GPT-2-small depth and width). */
  "220m": {
    source: "GPT-2-small depth/width (12 × 768) on the Qwen3 vocabulary, tied embeddings: 220.5M",
    config: {
      ...qwen3,
      hidden_size: 768,
      intermediate_size: 3072,
      num_hidden_layers: 12,
      num_attention_heads: 12,
      num_key_value_heads: 4,
      head_dim: 64,
      tie_word_embeddings: true,
    },
  },
  /** 533.1M: Qwen3-0.6B's width and heads at 24 layers instead of 28. */
  "533m": {
    source: "Qwen3-0.6B's layer shape (d 1024, 16/8 heads of 128, MLP 3072) at 24 layers, tied: 533.1M",
    config: {
      ...qwen3,
      hidden_size: 1024,
      intermediate_size: 3072,
      num_hidden_layers: 24,
      num_attention_heads: 16,
      num_key_value_heads: 8,
      head_dim: 128,
      tie_word_embeddings: true,
    },
  },
  /** 1.015B: Llama-3.2-1B's depth and width (16 × 2048) on the Qwen3 vocabulary. */
  "1b": {
    source: "Llama-3.2-1B's depth/width (16 × 2048, 16/8 heads of 128) with MLP 5120, tied: 1.015B",
    config: {
      ...qwen3,
      hidden_size: 2048,
      intermediate_size: 5120,
      num_hidden_layers: 16,
      num_attention_heads: 16,
      num_key_value_heads: 8,
      head_dim: 128,
      tie_word_embeddings: true,
    },
  },
  /** 8.19B: the Qwen3-8B shape. */
  "8b": {
    source: "Qwen3-8B (d 4096, 36 layers, 32/8 heads of 128, MLP 12288, untied): 8.19B",
    config: {
      ...qwen3,
      hidden_size: 4096,
      intermediate_size: 12288,
      num_hidden_layers: 36,
      num_attention_heads: 32,
      num_key_value_heads: 8,
      head_dim: 128,
      tie_word_embeddings: false,
    },
  },
} as const satisfies Record<string, NamedSize>;

export type SizeName = keyof typeof NAMED_SIZES;
export const SIZE_NAMES = Object.keys(NAMED_SIZES) as SizeName[];
