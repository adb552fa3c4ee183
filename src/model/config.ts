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
    /** HF rope_scaling: null / {rope_type: "default"} (none) or Llama 3's frequency scaling. */
    rope_scaling: z
      .looseObject({
        rope_type: z.enum(["default", "llama3"], {
          error: (i) => `rope_scaling type ${JSON.stringify(i.input)} is not implemented (default, llama3)`,
        }),
        factor: z.number().positive().optional(),
        low_freq_factor: z.number().positive().optional(),
        high_freq_factor: z.number().positive().optional(),
        original_max_position_embeddings: posInt.optional(),
      })
      .nullable()
      .optional(),
    max_position_embeddings: posInt.default(2048),
    tie_word_embeddings: z.boolean().default(false),
    initializer_range: z.number().positive().default(0.02),
    /** Qwen3 normalises q and k per head; Llama does not. Defaults from model_type. */
    attention_qk_norm: z.boolean().optional(),
    // ---- residual family (METHODS.md "Checkpoint interchange"); absent = standard residuals
    attnres_mode: z
      .enum(["standard", "full", "block", "delta", "delta_block", "ddl", "ddl_expanded"], {
        error: (i) =>
          `unknown residual mode ${JSON.stringify(i.input)}; expected one of standard, full, block, delta, delta_block, ddl, ddl_expanded`,
      })
      .default("standard"),
    attnres_num_blocks: posInt.optional(),
    attnres_use_null_source: z.boolean().default(false),
    attnres_gate_type: z.enum(["bias", "learnable_alpha"]).default("bias"),
    /** DDL (our keys): beta at initialisation (0, 2); official default 1. */
    ddl_beta0: z.number().gt(0).lt(2).default(1),
    ddl_k_eps: z.number().positive().default(1e-5),
    ddl_value_form: z.enum(["linear", "sigmoid4"]).default("linear"),
    ddl_value_channels: posInt.default(4),
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
    const blocks = c.attnres_mode === "block" || c.attnres_mode === "delta_block";
    if (blocks && c.attnres_num_blocks === undefined)
      ctx.addIssue({
        code: "custom",
        path: ["attnres_num_blocks"],
        message: `mode ${c.attnres_mode} needs attnres_num_blocks`,
      });
    if (blocks && c.attnres_num_blocks !== undefined && c.attnres_num_blocks > c.num_hidden_layers)
      ctx.addIssue({
        code: "custom",
        path: ["attnres_num_blocks"],
        message: `${c.attnres_num_blocks} blocks is more than the ${c.num_hidden_layers} layers`,
      });
    const additive = c.attnres_mode === "delta" || c.attnres_mode === "delta_block";
    if (!additive && (c.attnres_use_null_source || c.attnres_gate_type !== "bias"))
      ctx.addIssue({
        code: "custom",
        path: ["attnres_mode"],
        message: "the null source and the gate are options of the additive modes (delta, delta_block) only",
      });
    const rs = c.rope_scaling;
    if (
      rs?.rope_type === "llama3" &&
      (rs.factor === undefined ||
        rs.low_freq_factor === undefined ||
        rs.high_freq_factor === undefined ||
        rs.original_max_position_embeddings === undefined ||
        rs.high_freq_factor <= rs.low_freq_factor)
    )
      ctx.addIssue({
        code: "custom",
        path: ["rope_scaling"],
        message:
          "llama3 rope_scaling needs factor, low_freq_factor < high_freq_factor and original_max_position_embeddings",
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
export type ResidualModeKey = ModelConfig["attnres_mode"];

/** User-facing mode names (CLI, docs) ↔ config values (the authors' keys). */
export const MODE_NAMES = {
  standard: "standard",
  "attnres-full": "full",
  "attnres-block": "block",
  delta: "delta",
  "delta-block": "delta_block",
  ddl: "ddl",
  "ddl-expanded": "ddl_expanded",
} as const satisfies Record<string, ResidualModeKey>;
export type ModeName = keyof typeof MODE_NAMES;

/** Validates a config object; throws one readable Error listing every problem. */
export function parseConfig(raw: unknown, source = "config"): ModelConfig {
  const r = ModelConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  const parts = r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
  throw new Error(`invalid ${source}: ${parts.join("; ")}`); // one line, every problem
}
