/**
 * Model configuration: plain typed data with HF `config.json` field names, validated by zod.
 * `parseConfig` accepts an HF config (unknown keys are kept and ignored) and fills defaults;
 * errors name the field and what was expected.
 */
import { z } from "zod";

const posInt = z.number().int().positive();

export const ModelConfigSchema = z
  .looseObject({
    model_type: z.enum(["llama", "qwen3", "qwen3_attnres"]).default("qwen3"),
    vocab_size: posInt,
    hidden_size: posInt,
    intermediate_size: posInt,
    num_hidden_layers: posInt,
    num_attention_heads: posInt,
    num_key_value_heads: posInt.optional(),
    head_dim: posInt.optional(),
    rms_norm_eps: z.number().nonnegative().default(1e-6),
    rope_theta: z.number().positive().default(10000),
    max_position_embeddings: posInt.default(2048),
    tie_word_embeddings: z.boolean().default(false),
    initializer_range: z.number().positive().default(0.02),
    /** Qwen3 normalises q and k per head; Llama does not. Defaults from model_type. */
    attention_qk_norm: z.boolean().optional(),
  })
  .transform((c) => ({
    ...c,
    num_key_value_heads: c.num_key_value_heads ?? c.num_attention_heads,
    head_dim: c.head_dim ?? Math.floor(c.hidden_size / c.num_attention_heads),
    attention_qk_norm: c.attention_qk_norm ?? c.model_type !== "llama",
  }))
  .superRefine((c, ctx) => {
    if (c.num_attention_heads % c.num_key_value_heads !== 0)
      ctx.addIssue({
        code: "custom",
        path: ["num_key_value_heads"],
        message: `num_attention_heads (${c.num_attention_heads}) must be a multiple of num_key_value_heads (${c.num_key_value_heads})`,
      });
    if (c.head_dim % 2 !== 0 || c.head_dim === 0)
      ctx.addIssue({
        code: "custom",
        path: ["head_dim"],
        message: `head_dim must be even and positive (RoPE), got ${c.head_dim}`,
      });
  });

export type ModelConfigInput = z.input<typeof ModelConfigSchema>;
export type ModelConfig = z.output<typeof ModelConfigSchema>;

/** Validates a config object; throws one readable Error listing every problem. */
export function parseConfig(raw: unknown, source = "config"): ModelConfig {
  const r = ModelConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => `  ${i.path.join(".") || "(root)"}: ${i.message}`);
  throw new Error(`invalid ${source}:\n${lines.join("\n")}`);
}
