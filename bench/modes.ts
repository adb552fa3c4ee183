/**
 * The residual modes the benchmarks run — every mode of the registry (src/model/residual.ts),
 * block modes with 4 blocks — and the reference-step model.
 */
import type { DecoderLMConfig } from "../src/model/config.js";
import { modes } from "../src/model/residual.js";

export const MODES: Record<string, Partial<DecoderLMConfig>> = Object.fromEntries(
  modes().map((m) => [
    m.name,
    m.key === "standard"
      ? {}
      : {
          attnres_mode: m.key as DecoderLMConfig["attnres_mode"],
          ...(m.options.blocks ? { attnres_num_blocks: 4 } : {}),
        },
  ]),
);

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
