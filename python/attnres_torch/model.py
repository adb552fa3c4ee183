"""The attnres model in plain PyTorch (specification: docs/methods.md): the test fixtures' reference
and the torch engine's model.

Decoder-only Llama/Qwen3 backbone with HF parameter names, and a pluggable residual
"mode" that decides what goes into each sublayer and how the stream is updated.

Sublayers are numbered j = 0 .. 2L-1 (attention of layer i is j = 2i, MLP is j = 2i+1).
`f_j(x)` is sublayer j *including* its own pre-norm; `o_j = f_j(x_j)` its output.

Works with torch 1.13 (explicit attention; torch >= 2 uses scaled_dot_product_attention). Any float
dtype; the fixture generator uses float64, the benchmark and the engine float32.
`init_like_typescript(model, seed)` draws the TypeScript engine's initial weights (same seed, same
values): see src/nn/module.ts for the order.
"""

import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rng import Rng

# torch >= 2 has a fused attention; 1.13 runs the explicit softmax(QK^T/sqrt(d)) V below.
_SDPA = getattr(F, "scaled_dot_product_attention", None)

# --------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------

# Canonical mode names (CLI / fixture names) -> how they appear in the HF config.
MODES = (
    "standard",
    "attnres-full",
    "attnres-block",
    "delta",
    "delta-block",
    "ddl",
    "ddl-expanded",
)
_MODE_TO_CONFIG = {
    "attnres-full": "full",
    "attnres-block": "block",
    "delta": "delta",
    "delta-block": "delta_block",
    "ddl": "ddl",
    "ddl-expanded": "ddl_expanded",
}
_CONFIG_TO_MODE = {v: k for k, v in _MODE_TO_CONFIG.items()}


def mode_of(config):
    """Canonical residual mode name of an HF-style config dict (no attnres_mode: standard)."""
    m = config.get("attnres_mode")
    if m is None or m == "standard":
        return "standard"
    if m not in _CONFIG_TO_MODE:
        raise ValueError(f"unknown attnres_mode {m!r}")
    return _CONFIG_TO_MODE[m]


def make_config(
    backbone,
    mode="standard",
    num_blocks=None,
    use_null_source=False,
    gate=False,
    ddl_beta0=1.0,
    ddl_value_form="linear",
    ddl_value_channels=4,
    sources="outputs",
):
    """Return a new config dict: `backbone` (HF keys, model_type qwen3) + residual mode keys.

    mode "standard" keeps the backbone config unchanged. Other modes add the attnres
    keys and, on a Qwen3 backbone, set model_type "qwen3_attnres" (the authors' name).
    A llama backbone keeps model_type "llama" (our extension: no q/k norms).
    """
    cfg = dict(backbone)
    if mode == "standard":
        return cfg
    if backbone.get("model_type") in ("qwen3", "qwen3_attnres"):
        cfg["model_type"] = "qwen3_attnres"
    cfg["attnres_mode"] = _MODE_TO_CONFIG[mode]
    if mode in ("attnres-block", "delta-block"):
        if num_blocks is None:
            raise ValueError(f"{mode} needs num_blocks")
        cfg["attnres_num_blocks"] = int(num_blocks)
    if mode in ("delta", "delta-block"):
        cfg["attnres_use_null_source"] = bool(use_null_source)
        cfg["attnres_gate_type"] = "learnable_alpha" if gate else "bias"
    elif use_null_source or gate:
        raise ValueError("null source / gate are options of the additive modes only")
    if sources == "states":
        if mode not in ("attnres-full", "delta"):
            raise ValueError("states as sources is an option of attnres-full and delta only")
        cfg["attnres_sources"] = "states"
        cfg["attnres_gate_type"] = "learnable_alpha"
    elif sources != "outputs":
        raise ValueError(f"sources must be outputs or states, not {sources!r}")
    if mode in ("ddl", "ddl-expanded"):
        cfg["ddl_beta0"] = float(ddl_beta0)
        cfg["ddl_k_eps"] = 1e-5
        if mode == "ddl":
            if ddl_value_form not in ("linear", "sigmoid4"):
                raise ValueError("ddl_value_form must be linear or sigmoid4")
            cfg["ddl_value_form"] = ddl_value_form
        else:
            cfg["ddl_value_channels"] = int(ddl_value_channels)
    return cfg


# --------------------------------------------------------------------------------------
# Backbone pieces
# --------------------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    """x * rsqrt(mean(x^2, last dim) + eps) * w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def llama3_inv_freq(inv_freq, rs):
    """Llama 3 RoPE frequency scaling (transformers' _compute_llama3_parameters, written out):
    wavelengths above old_ctx/low_freq_factor are divided by `factor`, below old_ctx/high_freq_factor
    kept, and interpolated smoothly in between."""
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(seq_len, head_dim, theta, dtype, rope_scaling=None):
    """HF rotate_half RoPE tables, angles computed in float64. Returns cos, sin [T, hd]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rope_scaling is not None:
        assert rope_scaling.get("rope_type") == "llama3", rope_scaling
        inv_freq = llama3_inv_freq(inv_freq, rope_scaling)
    pos = torch.arange(seq_len, dtype=torch.float64)
    ang = pos[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat([ang, ang], dim=-1)  # [T, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    # x: [B, H, T, hd]; cos/sin: [T, hd]
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.hq = cfg["num_attention_heads"]
        self.hkv = cfg["num_key_value_heads"]
        self.hd = cfg["head_dim"]
        assert self.hq % self.hkv == 0
        self.q_proj = nn.Linear(d, self.hq * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.hkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.hkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.hq * self.hd, d, bias=False)
        self.qk_norm = cfg.get("attention_qk_norm", cfg["model_type"] in ("qwen3", "qwen3_attnres"))
        if self.qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg["rms_norm_eps"])
            self.k_norm = RMSNorm(self.hd, cfg["rms_norm_eps"])

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.hq, self.hd)
        k = self.k_proj(x).view(B, T, self.hkv, self.hd)
        v = self.v_proj(x).view(B, T, self.hkv, self.hd)
        if self.qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        rep = self.hq // self.hkv
        if rep > 1:  # query head h uses kv head h // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if _SDPA is not None and q.dtype != torch.float64:
            y = _SDPA(q, k, v, is_causal=True)  # [B, Hq, T, hd]
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
            p = torch.softmax(scores, dim=-1)
            y = torch.matmul(p, v)  # [B, Hq, T, hd]
        y = y.transpose(1, 2).reshape(B, T, self.hq * self.hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, ff = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Backbone layer; routing / ddl parameters are attached by the residual mode."""

    def __init__(self, cfg):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.mlp = MLP(cfg)


class Sublayer:
    """Sublayer j as a callable: f_j(x) = core(norm(x)). `kind` is "attn" or "mlp"."""

    def __init__(self, layer, kind, index, j, cos, sin):
        self.layer, self.kind, self.index, self.j = layer, kind, index, j
        self._cos, self._sin = cos, sin

    def norm(self, x):
        ln = self.layer.input_layernorm if self.kind == "attn" else self.layer.post_attention_layernorm
        return ln(x)

    def core(self, c):
        if self.kind == "attn":
            return self.layer.self_attn(c, self._cos, self._sin)
        return self.layer.mlp(c)

    def __call__(self, x):
        return self.core(self.norm(x))

    def param(self, suffix):
        """The routing/ddl module or parameter `{kind}_{suffix}` of this sublayer's layer."""
        return getattr(self.layer, f"{self.kind}_{suffix}")


# --------------------------------------------------------------------------------------
# Routing over depth
# --------------------------------------------------------------------------------------


def route(sources, proj_weight, norm_weight, eps):
    """k_i = RMSNorm(s_i; g), logit_i = w.k_i, a = softmax_i, out = sum_i a_i s_i.

    sources: list of [B, T, d] (broadcastable); proj_weight [1, d]; norm_weight [d].
    Returns (out [B, T, d], alpha [B, T, N]).
    """
    V = torch.stack(torch.broadcast_tensors(*sources), dim=0)  # [N, B, T, d]
    K = rms_norm(V, norm_weight, eps)
    logits = torch.matmul(K, proj_weight.reshape(-1))  # [N, B, T]
    a = torch.softmax(logits, dim=0)
    out = (a.unsqueeze(-1) * V).sum(0)
    return out, a.permute(1, 2, 0)


def _add_routing_params(module, prefix, d, eps):
    """Attach `{prefix}_res_proj` (Linear d->1, zero) and `{prefix}_res_norm` (ones)."""
    proj = nn.Linear(d, 1, bias=False)
    nn.init.zeros_(proj.weight)
    setattr(module, f"{prefix}_res_proj", proj)
    setattr(module, f"{prefix}_res_norm", RMSNorm(d, eps))


# --------------------------------------------------------------------------------------
# Residual modes. Protocol: attach(model) once (adds parameters); then per forward
# start(h0, collect); step(j, sub) for j = 0..2L-1; final() -> vector fed to model.norm.
# The default step is:  x = input(j, sub); o = sub(x); update(j, sub, o).
# --------------------------------------------------------------------------------------


class ResidualMode:
    name = "base"

    def __init__(self, cfg):
        self.cfg = cfg
        self.eps = cfg["rms_norm_eps"]
        self.L = cfg["num_hidden_layers"]
        self.d = cfg["hidden_size"]

    def attach(self, model):
        pass

    def start(self, model, h0, collect):
        self.model = model
        self.collect = collect
        self.alphas = {}  # j (int) or "final" -> [B, T, N]
        self.betas = {}  # ddl only: j -> [B, T]

    def input(self, j, sub):
        raise NotImplementedError

    def update(self, j, sub, o):
        raise NotImplementedError

    def step(self, j, sub):
        x = self.input(j, sub)
        o = sub(x)
        self.update(j, sub, o)

    def final(self):
        raise NotImplementedError

    def _route(self, key, sources, proj, norm):
        out, a = route(sources, proj.weight, norm.weight, self.eps)
        if self.collect:
            self.alphas[key] = a
        return out


class Standard(ResidualMode):
    """h <- h + f_j(h)."""

    name = "standard"

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.h = h0

    def input(self, j, sub):
        return self.h

    def update(self, j, sub, o):
        self.h = self.h + o

    def final(self):
        return self.h


class AttnResFull(ResidualMode):
    """Kimi Full AttnRes (replacement): x_j = route([h0, o_0..o_{j-1}]); final routing."""

    name = "attnres-full"

    def attach(self, model):
        for layer in model.model.layers:
            _add_routing_params(layer, "attn", self.d, self.eps)
            _add_routing_params(layer, "mlp", self.d, self.eps)
        _add_routing_params(model.model, "final", self.d, self.eps)

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.sources = [h0]

    def input(self, j, sub):
        return self._route(j, self.sources, sub.param("res_proj"), sub.param("res_norm"))

    def update(self, j, sub, o):
        self.sources.append(o)

    def final(self):
        m = self.model.model
        return self._route("final", self.sources, m.final_res_proj, m.final_res_norm)


class AttnResBlock(ResidualMode):
    """Kimi Block AttnRes (replacement) with N blocks of P = ceil(L/N) layers.

    Sources: completed blocks [b_0 = h0, b_1, ...] plus the running sum of the current
    block (absent while it is empty). At the attention sublayer of a boundary layer
    i (i > 0, i % P == 0) the routing sees the previous blocks plus the block that just
    ended (as the running sum); then that sum is stored as a block and the running
    sum restarts from zero (empty). Final routing over all blocks + last running sum.
    """

    name = "attnres-block"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.N = cfg["attnres_num_blocks"]
        self.P = max(1, -(-self.L // self.N))

    def attach(self, model):
        AttnResFull.attach(self, model)

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.blocks = [h0]
        self.partial = None

    def _sources(self):
        return self.blocks + ([] if self.partial is None else [self.partial])

    def input(self, j, sub):
        x = self._route(j, self._sources(), sub.param("res_proj"), sub.param("res_norm"))
        i = j // 2
        if j % 2 == 0 and i > 0 and i % self.P == 0 and self.partial is not None:
            self.blocks.append(self.partial)
            self.partial = None
        return x

    def update(self, j, sub, o):
        self.partial = o if self.partial is None else self.partial + o

    def final(self):
        m = self.model.model
        return self._route("final", self._sources(), m.final_res_proj, m.final_res_norm)


class _Additive(ResidualMode):
    """Shared machinery of delta / delta-block: x_j = h + [a_j *] route([null] + S_j)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.null = bool(cfg.get("attnres_use_null_source", False))
        gate = cfg.get("attnres_gate_type", "bias")
        if gate not in ("bias", "learnable_alpha"):
            raise ValueError(f"unsupported attnres_gate_type {gate!r}")
        self.gate = gate == "learnable_alpha"

    def attach(self, model):
        for layer in model.model.layers:
            for p in ("attn", "mlp"):
                _add_routing_params(layer, p, self.d, self.eps)
                if self.null:
                    setattr(layer, f"{p}_null_source", nn.Parameter(torch.zeros(self.d)))
                if self.gate:
                    setattr(layer, f"{p}_res_alpha", nn.Parameter(torch.zeros(())))

    def _additive_input(self, j, sub, S):
        if self.null:
            S = [sub.param("null_source").expand_as(self.h)] + S
        if not S:
            return self.h
        r = self._route(j, S, sub.param("res_proj"), sub.param("res_norm"))
        if self.gate:
            r = sub.param("res_alpha") * r
        return self.h + r

    def final(self):
        return self.h


class Delta(_Additive):
    """Delta AttnRes: S_j = [h0, o_0..o_{j-1}] for j >= 1, none for j = 0; h <- h + f_j(x_j)."""

    name = "delta"

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.h = h0
        self.h0 = h0
        self.outs = []

    def input(self, j, sub):
        S = [] if j == 0 else [self.h0] + self.outs
        return self._additive_input(j, sub, S)

    def update(self, j, sub, o):
        self.outs.append(o)
        self.h = self.h + o


class AttnResStates(ResidualMode):
    """AttnRes (replacement) over hidden states s_0 = h0, s_{j+1} = x_j + o_j, each routed
    term behind a zero-initialised scalar gate: x_j = s_j + a_j (route([s_0..s_j]) - s_j);
    final s_2L + a_F (route([s_0..s_2L]) - s_2L). Zero gates: exactly the standard model."""

    name = "attnres-full"

    def attach(self, model):
        AttnResFull.attach(self, model)
        for layer in model.model.layers:
            for p in ("attn", "mlp"):
                setattr(layer, f"{p}_res_alpha", nn.Parameter(torch.zeros(())))
        model.model.final_res_alpha = nn.Parameter(torch.zeros(()))

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.states = [h0]

    def _gated(self, key, proj, norm, alpha):
        s = self.states[-1]
        return s + (self._route(key, self.states, proj, norm) - s) * alpha

    def input(self, j, sub):
        self.x = self._gated(j, sub.param("res_proj"), sub.param("res_norm"), sub.param("res_alpha"))
        return self.x

    def update(self, j, sub, o):
        self.states.append(self.x + o)

    def final(self):
        m = self.model.model
        return self._gated("final", m.final_res_proj, m.final_res_norm, m.final_res_alpha)


class DeltaStates(_Additive):
    """Delta (additive) over hidden states: x_j = h_j + a_j route([h_0..h_j]) for j >= 1,
    x_0 = h_0; h <- h + f_j(x_j). Needs the zero gate (uniform routing over states is not
    the identity)."""

    name = "delta"

    def __init__(self, cfg):
        super().__init__(cfg)
        if not self.gate:
            raise ValueError("states as sources needs attnres_gate_type learnable_alpha")

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.h = h0
        self.states = [h0]

    def input(self, j, sub):
        S = [] if j == 0 else list(self.states)
        return self._additive_input(j, sub, S)

    def update(self, j, sub, o):
        self.h = self.h + o
        self.states.append(self.h)


class DeltaBlock(_Additive):
    """Delta Block with B blocks of P = ceil(L/B) layers, CORRECT Delta bookkeeping.

    Sources [h0, D_1, .., D_k], D_b = h at the end of block b minus h at its start.
    A boundary layer is i % P == 0 (layer 0 included). At a boundary layer the new
    source is appended after that layer's attention routing and before its residual
    add, so the layer's MLP already sees it: at layer 0 the appended source is h0,
    later it is h - h_block_start (and the block start moves to the current h).
    Hence sublayer 0 has no sources (x_0 = h, as in delta) unless a null source is on.

    `legacy_delta=True` reproduces the released code (D = h - previous *source*),
    which differs from the third block on. For comparison only.
    """

    name = "delta-block"

    def __init__(self, cfg, legacy_delta=False):
        super().__init__(cfg)
        self.B = cfg["attnres_num_blocks"]
        self.P = max(1, -(-self.L // self.B))
        self.legacy_delta = legacy_delta

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.h = h0
        self.sources = []
        self.block_start = None

    def input(self, j, sub):
        x = self._additive_input(j, sub, list(self.sources))
        i = j // 2
        if j % 2 == 0 and i % self.P == 0:
            if not self.sources:
                self.sources.append(self.h)  # h0 (layer 0)
            elif self.legacy_delta:
                self.sources.append(self.h - self.sources[-1])
            else:
                self.sources.append(self.h - self.block_start)
            self.block_start = self.h
        return x

    def update(self, j, sub, o):
        self.h = self.h + o


def _logit(p):
    return math.log(p / (1.0 - p))


def ddl_key(u, k_eps):
    """k = u / sqrt(||u||^2 + eps^2)."""
    return u * torch.rsqrt(u.pow(2).sum(-1, keepdim=True) + k_eps * k_eps)


class DDL(ResidualMode):
    """Deep Delta Learning, scalar value (d_v = 1); replaces both residual adds.

    c = RMSNorm(x) (sublayer pre-norm), u = core(c), k = u / sqrt(|u|^2 + eps^2),
    beta = 2 sigmoid(w_b.c + b_b), b_b = logit(beta0 / 2),
    v = w_v.c + b_v ("linear") or 4 sigmoid(w_v.x + b_v) ("sigmoid4"),
    x <- x + beta (v - k.x) k.
    Parameters per sublayer: {attn,mlp}_ddl_beta_proj (Linear d->1 with bias),
    {attn,mlp}_ddl_v_proj (Linear d->1 with bias).
    """

    name = "ddl"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.beta0 = float(cfg.get("ddl_beta0", 1.0))
        if not 0.0 < self.beta0 < 2.0:
            raise ValueError("ddl_beta0 must be in (0, 2)")
        self.k_eps = float(cfg.get("ddl_k_eps", 1e-5))
        self.value_form = cfg.get("ddl_value_form", "linear")

    def _init_proj(self, out_dim, bias_value):
        lin = nn.Linear(self.d, out_dim, bias=bias_value is not None)
        nn.init.normal_(lin.weight, 0.0, 0.5 / math.sqrt(self.d))
        if bias_value is not None:
            nn.init.constant_(lin.bias, bias_value)
        return lin

    def attach(self, model):
        for layer in model.model.layers:
            for p in ("attn", "mlp"):
                setattr(layer, f"{p}_ddl_beta_proj", self._init_proj(1, _logit(self.beta0 / 2.0)))
                setattr(layer, f"{p}_ddl_v_proj", self._init_proj(1, 0.0))

    def start(self, model, h0, collect):
        super().start(model, h0, collect)
        self.h = h0

    def _beta(self, j, sub, c):
        beta = 2.0 * torch.sigmoid(sub.param("ddl_beta_proj")(c))  # [B, T, 1]
        if self.collect:
            self.betas[j] = beta.squeeze(-1)
        return beta

    def step(self, j, sub):
        x = self.h
        c = sub.norm(x)
        k = ddl_key(sub.core(c), self.k_eps)
        beta = self._beta(j, sub, c)
        vp = sub.param("ddl_v_proj")
        v = vp(c) if self.value_form == "linear" else 4.0 * torch.sigmoid(vp(x))
        kx = (k * x).sum(-1, keepdim=True)
        self.h = x + beta * (v - kx) * k

    def final(self):
        return self.h


class DDLExpanded(DDL):
    """DDL with expanded state X in R^{d x dv} per token (dv = ddl_value_channels, 4).

    X_0 = h0 copied into the dv columns. Per sublayer: x_in = sum_c C[:, c] * X[:, c]
    ({attn,mlp}_ddl_read [d, dv], init 1/dv), c = RMSNorm(x_in), k and beta as in ddl,
    v = W_v x_in in R^dv ({attn,mlp}_ddl_v_proj.weight [dv, d], no bias),
    X <- X + beta k (v^T - k^T X). Readout model.final_ddl_read [d, dv] (init 1/dv).
    """

    name = "ddl-expanded"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.dv = int(cfg.get("ddl_value_channels", 4))

    def attach(self, model):
        for layer in model.model.layers:
            for p in ("attn", "mlp"):
                setattr(layer, f"{p}_ddl_beta_proj", self._init_proj(1, _logit(self.beta0 / 2.0)))
                setattr(layer, f"{p}_ddl_v_proj", self._init_proj(self.dv, None))
                setattr(layer, f"{p}_ddl_read", nn.Parameter(torch.full((self.d, self.dv), 1.0 / self.dv)))
        model.model.final_ddl_read = nn.Parameter(torch.full((self.d, self.dv), 1.0 / self.dv))

    def start(self, model, h0, collect):
        ResidualMode.start(self, model, h0, collect)
        self.X = h0.unsqueeze(-1).expand(*h0.shape, self.dv)  # [B, T, d, dv]

    def step(self, j, sub):
        X = self.X
        x_in = (X * sub.param("ddl_read")).sum(-1)  # [B, T, d]
        c = sub.norm(x_in)
        k = ddl_key(sub.core(c), self.k_eps)  # [B, T, d]
        beta = self._beta(j, sub, c)  # [B, T, 1]
        v = sub.param("ddl_v_proj")(x_in)  # [B, T, dv]
        kX = (k.unsqueeze(-1) * X).sum(-2)  # [B, T, dv]
        self.X = X + beta.unsqueeze(-1) * k.unsqueeze(-1) * (v - kX).unsqueeze(-2)

    def final(self):
        return (self.X * self.model.model.final_ddl_read).sum(-1)


def make_mode(cfg, **kw):
    m = mode_of(cfg)
    if cfg.get("attnres_sources", "outputs") == "states":
        return {"attnres-full": AttnResStates, "delta": DeltaStates}[m](cfg, **kw)
    cls = {
        "standard": Standard,
        "attnres-full": AttnResFull,
        "attnres-block": AttnResBlock,
        "delta": Delta,
        "delta-block": DeltaBlock,
        "ddl": DDL,
        "ddl-expanded": DDLExpanded,
    }[m]
    return cls(cfg, **kw)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """HF `model.*` submodule: embed_tokens, layers, norm (+ final routing params)."""

    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class CausalLM(nn.Module):
    """Top-level module; state_dict keys are the HF names (model.*, lm_head.weight)."""

    def __init__(self, cfg, **mode_kw):
        super().__init__()
        self.config = dict(cfg)
        self.model = Backbone(cfg)
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        self.mode = make_mode(cfg, **mode_kw)
        self.mode.attach(self)

    def forward(self, input_ids, targets=None, collect=False):
        """Returns dict: logits [B,T,V]; loss (if targets; mean CE over targets != -100,
        targets aligned with positions, no shift); alphas {j | "final": [B,T,N]} and
        betas {j: [B,T]} (ddl) when collect=True."""
        cfg = self.config
        T = input_ids.shape[1]
        h0 = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(T, cfg["head_dim"], cfg["rope_theta"], h0.dtype, cfg.get("rope_scaling"))
        mode = self.mode
        mode.start(self, h0, collect)
        for i, layer in enumerate(self.model.layers):
            mode.step(2 * i, Sublayer(layer, "attn", i, 2 * i, cos, sin))
            mode.step(2 * i + 1, Sublayer(layer, "mlp", i, 2 * i + 1, cos, sin))
        h = self.model.norm(mode.final())
        if self.tied:
            logits = torch.matmul(h, self.model.embed_tokens.weight.t())
        else:
            logits = self.lm_head(h)
        out = {"logits": logits}
        if targets is not None:
            out["loss"] = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=-100
            )
        if collect:
            out["alphas"] = dict(mode.alphas)
            out["betas"] = dict(mode.betas)
        mode.model = None  # drop references held for the pass
        return out


def config_json(cfg):
    return json.dumps(cfg, sort_keys=True)


# --------------------------------------------------------------------------------------
# The TypeScript engine's initialisation
# --------------------------------------------------------------------------------------


def ts_init_order(cfg):
    """(name, std) of every randomly drawn tensor, in the order the TypeScript engine draws them:
    embed_tokens, then per layer q/k/v/o and gate/up/down, then lm_head (untied), then the DDL
    projections per layer and sublayer (beta_proj, v_proj). Norms, routers, null sources, gates,
    biases and reads are constants and draw nothing."""
    std = cfg.get("initializer_range", 0.02)
    out = [("model.embed_tokens.weight", std)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + f"self_attn.{n}.weight", std) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        out += [(p + f"mlp.{n}.weight", std) for n in ("gate_proj", "up_proj", "down_proj")]
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", std))
    if mode_of(cfg) in ("ddl", "ddl-expanded"):
        dstd = 0.5 / math.sqrt(cfg["hidden_size"])
        for i in range(cfg["num_hidden_layers"]):
            for kind in ("attn", "mlp"):
                out.append((f"model.layers.{i}.{kind}_ddl_beta_proj.weight", dstd))
                out.append((f"model.layers.{i}.{kind}_ddl_v_proj.weight", dstd))
    return out


@torch.no_grad()
def init_like_typescript(model, seed, draw=True):
    """Sets every parameter as the TypeScript engine initialises it from `seed`.

    Random tensors: N(0, std^2) from the seeded generator (values drawn in float64, rounded to the
    parameter dtype). Constants: norm gains 1, routing queries 0, null sources 0, gates 0, DDL beta
    bias logit(beta0/2), value bias 0, reads 1/dv. draw=False zero-fills the random tensors instead
    (ranks > 0 of a distributed job: they receive rank 0's weights)."""
    cfg = model.config
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith("_ddl_beta_proj.bias"):
            p.fill_(_logit(float(cfg.get("ddl_beta0", 1.0)) / 2.0))
        elif name.endswith("_ddl_read"):
            p.fill_(1.0 / int(cfg.get("ddl_value_channels", 4)))
        else:
            p.zero_()
    rng = Rng(seed)
    for name, std in ts_init_order(cfg):
        p = params[name]
        if draw:
            vals = rng.normals(p.numel(), std)
            p.copy_(torch.tensor(vals, dtype=torch.float64).reshape(p.shape).to(p.dtype))
