/** The residual modes the benchmarks run (block modes with 4 blocks) and the reference-step model. */
import type { DecoderLMConfig } from "../src/model/config.js";

export const MODES: Record<string, Partial<DecoderLMConfig>> = {
  standard: {},
  "attnres-full": { attnres_mode: "full" },
  "attnres-block": { attnres_mode: "block", attnres_num_blocks: 4 },
  delta: { attnres_mode: "delta" },
  "delta-block": { attnres_mode: "delta_block", attnres_num_blocks: 4 },
  ddl: { attnres_mode: "ddl" },
  "ddl-expanded": { attnres_mode: "ddl_expanded" },
};

/** The compute-core issue's reference step model (d 256, 4 heads, SwiGLU 768, vocab 256, seq 256). */
export function referenceStepConfig(layers: number, mode = "standard"): DecoderLMConfig {
  const extra = MODES[mode];
  if (!extra) throw new Error(`unknown mode ${mode}; expected one of ${Object.keys(MODES).join(", ")}`);
  return {
    model_type: "llama",
    vocab_size: 256,
    hidden_size: 256,
    intermediate_size: 768,
    num_hidden_layers: layers,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    max_position_embeddings: 256,
    ...extra,
  };
}
