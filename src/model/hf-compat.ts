/**
 * What of a Hugging Face `config.json` (Qwen3 / Llama families, as transformers writes it) this
 * project implements. `checkHfConfig` accepts the keys we implement or that do not change the
 * forward pass (architectures, torch_dtype, bos/eos ids, use_cache, transformers_version, …) and
 * rejects, in one line naming the key, everything that would silently compute something else:
 * another model family, an activation other than SiLU, attention/MLP biases, RoPE scaling other
 * than Llama 3's (rope_type "llama3", implemented in src/tensor/ops.ts),
 * partial rotary embeddings, sliding-window attention. Called before zod validation.
 */

const MODEL_TYPES = ["qwen3", "llama", "qwen3_attnres"];
/** Architectures whose forward pass is the backbone of docs/methods.md (plus routing). */
const ARCHITECTURE = /^(Qwen3|Llama)\w*ForCausalLM$/;

function fail(source: string, msg: string): never {
  throw new Error(`${source}: ${msg}`);
}

export function checkHfConfig(raw: unknown, source = "config.json"): void {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) fail(source, "is not a JSON object");
  const c = raw as Record<string, unknown>;
  const mt = c.model_type;
  if (mt !== undefined && !MODEL_TYPES.includes(String(mt)))
    fail(
      source,
      `unsupported model_type ${JSON.stringify(mt)}; attnres loads the qwen3 and llama families (and qwen3_attnres)`,
    );
  if (c.architectures !== undefined) {
    const arch = c.architectures;
    if (!Array.isArray(arch) || arch.some((a) => typeof a !== "string" || !ARCHITECTURE.test(a)))
      fail(
        source,
        `unsupported architectures ${JSON.stringify(arch)}; expected Qwen3ForCausalLM or LlamaForCausalLM`,
      );
  }
  if (c.hidden_act !== undefined && c.hidden_act !== "silu")
    fail(source, `hidden_act ${JSON.stringify(c.hidden_act)} is not implemented (only "silu", SwiGLU)`);
  if (c.attention_bias === true)
    fail(source, "attention_bias: true is not implemented (projections have no bias)");
  if (c.mlp_bias === true) fail(source, "mlp_bias: true is not implemented (the MLP has no bias)");
  if (c.rope_scaling !== undefined && c.rope_scaling !== null) {
    const rs = c.rope_scaling as Record<string, unknown>;
    const type = rs.rope_type ?? rs.type;
    if (type !== "default" && type !== "llama3")
      fail(
        source,
        `rope_scaling of type ${JSON.stringify(type)} is not implemented (only none/"default" and "llama3"); ` +
          `this checkpoint would give wrong logits`,
      );
    if (rs.rope_type === undefined)
      fail(
        source,
        `rope_scaling: write the type as "rope_type": ${JSON.stringify(type)} (the legacy "type" key is not read)`,
      );
    const need = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"];
    const bad = need.filter((k) => typeof rs[k] !== "number" || !((rs[k] as number) > 0));
    if (type === "llama3" && bad.length) fail(source, `rope_scaling llama3 needs positive ${bad.join(", ")}`);
    if (type === "llama3" && (rs.high_freq_factor as number) <= (rs.low_freq_factor as number))
      fail(source, "rope_scaling llama3 needs low_freq_factor < high_freq_factor");
  }
  if (c.partial_rotary_factor !== undefined && c.partial_rotary_factor !== 1)
    fail(source, `partial_rotary_factor ${String(c.partial_rotary_factor)} is not implemented (only 1)`);
  if (c.use_sliding_window === true)
    fail(source, "use_sliding_window: true is not implemented (attention is full causal)");
  const capped = (v: unknown) => v !== undefined && v !== null;
  if (capped(c.attn_logit_softcapping) || capped(c.final_logit_softcapping))
    fail(source, "logit soft-capping is not implemented");
}
