/**
 * Model configuration: plain typed data with HF `config.json` field names, validated by zod.
 * `parseConfig` accepts an HF config (unknown keys are kept and ignored) and fills defaults;
 * errors name the field and what was expected.
 */
import { z } from "zod";
import type { ModeOptions } from "./modes/mode.js";
import { MODE_NAMES, type ModeName } from "./names.js";
import { modeByKey, modes } from "./residual.js";

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
    // ---- residual family (docs/methods.md "Settings and config keys"); absent = standard residuals
    /** A mode's config value (src/model/residual.ts: the built-in modes and any registered one). */
    attnres_mode: z
      .custom<ResidualModeKey>((v) => typeof v === "string" && modeByKey(v) !== undefined, {
        error: (i) =>
          `unknown residual mode ${JSON.stringify(i.input)}; expected one of ${modes()
            .map((m) => m.key)
            .join(", ")}`,
      })
      .default("standard"),
    attnres_num_blocks: posInt.optional(),
    attnres_use_null_source: z.boolean().default(false),
    /** Absent: "bias" (no gate), or "learnable_alpha" with attnres_sources "states" (which needs it). */
    attnres_gate_type: z.enum(["bias", "learnable_alpha"]).optional(),
    /**
     * Our key: what the per-sublayer routed modes (full, delta) route over: "outputs" (h0 and the
     * sublayer outputs, the papers' modes) or "states" (h0 and the hidden state after each
     * sublayer; starts as the standard model through the zero gate). docs/residual-modes.md.
     */
    attnres_sources: z.enum(["outputs", "states"]).default("outputs"),
    /** DDL (our keys): beta at initialisation (0, 2); official default 1. */
    ddl_beta0: z.number().gt(0).lt(2).default(1),
    ddl_k_eps: z.number().positive().default(1e-5),
    ddl_value_form: z.enum(["linear", "sigmoid4"]).default("linear"),
    ddl_value_channels: posInt.default(4),
  })
  .transform((c) => ({
    ...c,
    attnres_gate_type: c.attnres_gate_type ?? (c.attnres_sources === "states" ? "learnable_alpha" : "bias"),
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
    const options = modeByKey(c.attnres_mode)!.options; // what this mode accepts
    const keysWith = (o: keyof ModeOptions) =>
      modes()
        .filter((m) => m.options[o])
        .map((m) => m.key)
        .join(", ");
    const blocks = options.blocks;
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
    const states = c.attnres_sources === "states";
    if (states && !options.states)
      ctx.addIssue({
        code: "custom",
        path: ["attnres_sources"],
        message: `states as sources is an option of the per-sublayer routed modes (${keysWith("states")}), not of ${c.attnres_mode}`,
      });
    if (states && c.attnres_gate_type !== "learnable_alpha")
      ctx.addIssue({
        code: "custom",
        path: ["attnres_gate_type"],
        message:
          "states as sources needs the zero gate (attnres_gate_type learnable_alpha, the default with states)",
      });
    if (!options.additive && (c.attnres_use_null_source || (c.attnres_gate_type !== "bias" && !states)))
      ctx.addIssue({
        code: "custom",
        path: ["attnres_mode"],
        message: `the null source and the gate are options of the additive modes (${keysWith("additive")}) only`,
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

/**
 * What `new DecoderLM(config)` takes: HF `config.json` field names; omitted optional fields get
 * the defaults of ModelConfigSchema (model_type qwen3, rms_norm_eps 1e-6, rope_theta 10000,
 * max_position_embeddings 2048, standard residuals, …). The residual-family keys select the mode
 * (docs/residual-modes.md). A config.json read with JSON.parse is accepted as is (unknown keys are
 * ignored); every config is validated when the model is built.
 */
export interface DecoderLMConfig {
  model_type?: "llama" | "qwen3" | "qwen3_attnres";
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** Default: num_attention_heads (no grouped-query attention). */
  num_key_value_heads?: number;
  /** Default: hidden_size / num_attention_heads. */
  head_dim?: number;
  rms_norm_eps?: number;
  rope_theta?: number;
  /** null or {rope_type: "default"}: no scaling; "llama3": Llama 3's frequency scaling. */
  rope_scaling?: {
    rope_type: "default" | "llama3";
    factor?: number;
    low_freq_factor?: number;
    high_freq_factor?: number;
    original_max_position_embeddings?: number;
  } | null;
  max_position_embeddings?: number;
  tie_word_embeddings?: boolean;
  initializer_range?: number;
  /** Per-head RMSNorm of q and k (default: true except for model_type llama). */
  attention_qk_norm?: boolean;
  /** Residual mode (default standard). */
  attnres_mode?: ResidualModeKey;
  /** Blocks of the block modes (required by block and delta_block). */
  attnres_num_blocks?: number;
  /** full, delta: route over sublayer outputs (default) or hidden states (the 2×2 cells). */
  attnres_sources?: "outputs" | "states";
  /** delta, delta_block: a learnable null source. */
  attnres_use_null_source?: boolean;
  /** delta, delta_block: "learnable_alpha" gates the routed term. */
  attnres_gate_type?: "bias" | "learnable_alpha";
  /** ddl modes: β at initialisation, in (0, 2). */
  ddl_beta0?: number;
  ddl_k_eps?: number;
  ddl_value_form?: "linear" | "sigmoid4";
  ddl_value_channels?: number;
}

/** DecoderLMConfig names every field of the schema, and the schema accepts every DecoderLMConfig. */
type ConfigTypeInSync = [Exclude<keyof typeof ModelConfigSchema.in.shape, keyof DecoderLMConfig>] extends [
  never,
]
  ? DecoderLMConfig & { [k: string]: unknown } extends ModelConfigInput
    ? true
    : false
  : false;
void (true satisfies ConfigTypeInSync);
export type ModelConfig = z.output<typeof ModelConfigSchema>;
/** The built-in modes' config values (a mode added with registerMode has its own). */
export type ResidualModeKey = (typeof MODE_NAMES)[ModeName];

export { MODE_NAMES, type ModeName } from "./names.js";

/** Validates a config object; throws one readable Error listing every problem. */
export function parseConfig(raw: unknown, source = "config"): ModelConfig {
  const r = ModelConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  const parts = r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
  throw new Error(`invalid ${source}: ${parts.join("; ")}`); // one line, every problem
}

/**
 * A run's model settings (a preset's `model`, RunSpec.model), where vocab_size may be left out
 * because the data's tokenizer supplies it when the run starts (src/train/run.ts resolveSpec).
 * Every key is checked as parseConfig checks it (no check depends on vocab_size); an absent
 * vocab_size stands in as 1, so use the result only for what does not depend on the vocabulary
 * (validation, the residual mode, the shapes of the layers).
 */
export function parseModelSettings(raw: Record<string, unknown>, source = "config"): ModelConfig {
  return parseConfig({ vocab_size: 1, ...raw }, source);
}
