"""Model configuration with the TypeScript engine's defaults (src/model/config.ts), HF key names.

parse_config(raw) -> a new dict with every default filled (num_key_value_heads, head_dim,
attention_qk_norm, rms_norm_eps, rope_theta, …); errors name the field, as the TypeScript engine's.
config_for_export(cfg) -> config.json as the TypeScript engine writes it (model_type qwen3_attnres
for routed Qwen3; keys of other modes dropped).
"""

MODE_KEYS = ("standard", "full", "block", "delta", "delta_block", "ddl", "ddl_expanded")
_NAME = {
    "standard": "standard",
    "full": "attnres-full",
    "block": "attnres-block",
    "delta": "delta",
    "delta_block": "delta-block",
    "ddl": "ddl",
    "ddl_expanded": "ddl-expanded",
}

_DEFAULTS = (
    ("model_type", "qwen3"),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10000),
    ("max_position_embeddings", 2048),
    ("tie_word_embeddings", False),
    ("initializer_range", 0.02),
    ("attnres_mode", "standard"),
    ("attnres_use_null_source", False),
    ("attnres_gate_type", "bias"),
    ("ddl_beta0", 1),
    ("ddl_k_eps", 1e-5),
    ("ddl_value_form", "linear"),
    ("ddl_value_channels", 4),
)


class ConfigError(ValueError):
    pass


def parse_config(raw, source="config"):
    c = dict(raw)
    for k, v in _DEFAULTS:
        if c.get(k) is None:
            c[k] = v
    problems = []
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        v = c.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            problems.append(f"{k}: expected a positive integer")
    if c["model_type"] not in ("llama", "qwen3", "qwen3_attnres"):
        problems.append(f"model_type: unsupported {c['model_type']!r}")
    if c["attnres_mode"] not in MODE_KEYS:
        problems.append(f"attnres_mode: unknown residual mode {c['attnres_mode']!r}")
    if problems:
        raise ConfigError(f"invalid {source}:\n" + "\n".join("  " + p for p in problems))
    if c.get("num_key_value_heads") is None:
        c["num_key_value_heads"] = c["num_attention_heads"]
    if c.get("head_dim") is None:
        c["head_dim"] = c["hidden_size"] // c["num_attention_heads"]
    if c.get("attention_qk_norm") is None:
        c["attention_qk_norm"] = c["model_type"] != "llama"
    m = c["attnres_mode"]
    if c["num_attention_heads"] % c["num_key_value_heads"]:
        problems.append("num_key_value_heads: num_attention_heads must be a multiple of it")
    if m in ("block", "delta_block"):
        nb = c.get("attnres_num_blocks")
        if nb is None:
            problems.append(f"attnres_num_blocks: mode {m} needs attnres_num_blocks")
        elif nb > c["num_hidden_layers"]:
            problems.append(f"attnres_num_blocks: {nb} blocks is more than the {c['num_hidden_layers']} layers")
    if m not in ("delta", "delta_block") and (c["attnres_use_null_source"] or c["attnres_gate_type"] != "bias"):
        problems.append(
            "attnres_mode: the null source and the gate are options of the additive modes (delta, delta_block) only"
        )
    if c["head_dim"] % 2 or c["head_dim"] == 0:
        problems.append(f"head_dim: head_dim must be even and positive (RoPE), got {c['head_dim']}")
    rs = c.get("rope_scaling")
    if rs is not None and rs.get("rope_type", "default") not in ("default", "llama3"):
        problems.append(f"rope_scaling: type {rs.get('rope_type')!r} is not implemented (default, llama3)")
    if problems:
        raise ConfigError(f"invalid {source}:\n" + "\n".join("  " + p for p in problems))
    return c


def mode_name(c):
    return _NAME[c.get("attnres_mode") or "standard"]


def config_for_export(c):
    out = dict(c)
    mode = mode_name(c)
    if mode == "standard":
        for k in list(out):
            if k.startswith("attnres_") or k.startswith("ddl_"):
                del out[k]
        if out.get("model_type") == "qwen3_attnres":
            out["model_type"] = "qwen3"
    else:
        if out.get("model_type") == "qwen3":
            out["model_type"] = "qwen3_attnres"
        if not mode.startswith("ddl"):
            for k in list(out):
                if k.startswith("ddl_"):
                    del out[k]
        if mode not in ("attnres-block", "delta-block"):
            out.pop("attnres_num_blocks", None)
    return out


def model_kwargs_config(c):
    """The dict the model classes read (mode keys only when the mode is routed)."""
    out = dict(c)
    if out.get("attnres_mode") == "standard":
        out.pop("attnres_mode")
    rs = out.get("rope_scaling")
    if rs is not None and rs.get("rope_type", "default") == "default":
        out["rope_scaling"] = None
    return out
