#!/usr/bin/python3
"""Generate the PyTorch reference fixtures in test/fixtures/ (float64 throughout).

Run from anywhere:  /usr/bin/python3 scripts/gen_fixtures.py
(needs Debian's python3-torch; CI never runs this, it only reads the committed files).

Also runs self-checks of the reference (identity at initialisation, docs/methods.md) and
fails loudly if any of them does not hold.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import torch  # noqa: E402

from attnres_torch.model import CausalLM, make_config, config_json  # noqa: E402
from attnres_torch.safetensors_io import save_file  # noqa: E402

ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "test", "fixtures")
DT = torch.float64
SEED = 20260515
B, T = 2, 9

QWEN3_TINY = {
    "model_type": "qwen3",
    "vocab_size": 61,
    "hidden_size": 32,
    "intermediate_size": 56,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 12,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
LLAMA_TINY = {
    "model_type": "llama",
    "vocab_size": 37,
    "hidden_size": 24,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "num_key_value_heads": 3,
    "head_dim": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}

ADAMW = {
    "groups": [
        {"params": "ndim >= 2", "lr": 1e-2, "weight_decay": 0.1},
        {"params": "ndim < 2", "lr": 2e-2, "weight_decay": 0.0},
    ],
    "betas": [0.9, 0.95],
    "eps": 1e-8,
    "clip_grad_norm": 1.0,
    "clip_formula": "g *= min(1, max_norm / (total_norm + 1e-6)), total_norm = L2 over all grads",
    "steps": 3,
    "torch_class": "torch.optim.AdamW (decoupled decay: p *= 1 - lr*wd, then Adam step)",
}

MATRIX_STD = 0.1  # backbone matrices (embedding, projections, lm_head)
GAIN_STD = 0.1  # norm gains 1 + GAIN_STD * N(0,1)
QUERY_STD = 0.5  # routing queries in the mode fixtures


def init_params(model, gen, query_std=0.0):
    """Deterministic fixture init, in named_parameters order.

    matrices N(0, MATRIX_STD^2); every RMSNorm gain (incl. routing key norms)
    1 + GAIN_STD N(0,1); routing queries *_res_proj N(0, query_std^2) (zero when 0);
    null sources N(0, 0.1^2); gates *_res_alpha 0.5 + 0.1 N; ddl tensors see below.
    """
    ddl_beta_bias = None
    if "ddl_beta0" in model.config:
        b0 = model.config["ddl_beta0"]
        ddl_beta_bias = torch.log(torch.tensor(b0 / 2.0, dtype=DT) / (1.0 - b0 / 2.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=gen, dtype=DT)
            if name.endswith("_res_proj.weight"):
                p.copy_(query_std * n)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + GAIN_STD * n)
            elif name.endswith("_null_source"):
                p.copy_(0.1 * n)
            elif name.endswith("_res_alpha"):
                p.copy_(0.5 + 0.1 * n)
            elif name.endswith("_ddl_beta_proj.bias"):
                p.copy_(ddl_beta_bias + 0.1 * n)
            elif name.endswith("_ddl_v_proj.bias"):
                p.copy_(0.1 * n)
            elif name.endswith("_ddl_read"):
                p.copy_(1.0 / p.shape[-1] + 0.05 * n)
            elif "_ddl_" in name and name.endswith(".weight"):
                p.copy_((0.5 / p.shape[-1] ** 0.5) * n)
            elif p.ndim >= 2:
                p.copy_(MATRIX_STD * n)
            else:
                raise ValueError(f"no init rule for {name}")


def make_tokens(cfg, gen):
    V = cfg["vocab_size"]
    input_ids = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    flat = targets.view(-1)
    idx = torch.randperm(B * T, generator=gen)[:3]
    flat[idx] = -100
    return input_ids, targets


def build(cfg, query_std=0.0, seed=SEED):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CausalLM(cfg).to(DT)
    init_params(model, gen, query_std)
    input_ids, targets = make_tokens(cfg, gen)
    return model, input_ids, targets


def params_dict(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def grads_dict(model):
    out = {}
    for n, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        out["grad." + n] = g.detach().clone()
    return out


def forward_backward(model, input_ids, targets, collect=False):
    model.zero_grad(set_to_none=True)
    out = model(input_ids, targets, collect=collect)
    out["loss"].backward()
    return out


def adamw_run(model, input_ids, targets):
    params = list(model.parameters())
    mats = [p for p in params if p.ndim >= 2]
    vecs = [p for p in params if p.ndim < 2]
    g0, g1 = ADAMW["groups"]
    opt = torch.optim.AdamW(
        [
            {"params": mats, "lr": g0["lr"], "weight_decay": g0["weight_decay"]},
            {"params": vecs, "lr": g1["lr"], "weight_decay": g1["weight_decay"]},
        ],
        betas=tuple(ADAMW["betas"]),
        eps=ADAMW["eps"],
    )
    losses, norms = [], []
    for _ in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids, targets)["loss"]
        loss.backward()
        losses.append(loss.detach().clone())
        norms.append(torch.nn.utils.clip_grad_norm_(params, ADAMW["clip_grad_norm"]).detach().clone())
        opt.step()
    with torch.no_grad():
        losses.append(model(input_ids, targets)["loss"].detach().clone())
    return torch.stack(losses), torch.stack(norms)


def write(name, tensors, cfg, extra_meta=None):
    os.makedirs(OUT, exist_ok=True)
    meta = {"config": config_json(cfg), "generator": "scripts/gen_fixtures.py"}
    if extra_meta:
        meta.update(extra_meta)
    path = os.path.join(OUT, name + ".safetensors")
    save_file(tensors, path, meta)
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path) / 1024:.1f} KB, {len(tensors)} tensors)")


def backbone_fixture(name, cfg):
    model, input_ids, targets = build(cfg)
    tensors = params_dict(model)
    tensors["input_ids"] = input_ids.to(torch.int32)
    tensors["targets"] = targets.to(torch.int32)
    out = forward_backward(model, input_ids, targets)
    logits = out["logits"].detach()
    sd = logits.std().item()
    assert 0.3 < sd < 3.0, f"{name}: logits std {sd} not O(1)"
    tensors["logits"] = logits.clone()
    tensors["loss"] = out["loss"].detach().clone().reshape(())
    tensors.update(grads_dict(model))
    losses, norms = adamw_run(model, input_ids, targets)
    assert losses[-1] < losses[0], f"{name}: AdamW did not reduce the loss {losses.tolist()}"
    tensors["adamw.losses"] = losses
    tensors["adamw.grad_norms"] = norms
    for n, p in model.named_parameters():
        tensors["step3." + n] = p.detach().clone()
    print(
        f"  {name}: loss {out['loss'].item():.6f} logits std {sd:.3f} adamw losses {[round(x, 5) for x in losses.tolist()]}"
    )
    write(name, tensors, cfg, {"adamw": json.dumps(ADAMW)})


def naive_logits(cfg, P, ids):
    """Independent loop-based numpy re-implementation of the standard backbone (for checking)."""
    import numpy as np

    P = {k: v.numpy() for k, v in P.items()}
    eps, hd = cfg["rms_norm_eps"], cfg["head_dim"]
    Hq, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x) + eps) * w

    def rope(x, pos):
        y = np.empty_like(x)
        for c in range(hd // 2):
            ang = pos * (1.0 / cfg["rope_theta"] ** (2 * c / hd))
            a, b = x[c], x[c + hd // 2]
            y[c] = a * np.cos(ang) - b * np.sin(ang)
            y[c + hd // 2] = b * np.cos(ang) + a * np.sin(ang)
        return y

    out = []
    for seq in ids.tolist():
        Tn = len(seq)
        h = [P["model.embed_tokens.weight"][t].copy() for t in seq]
        for i in range(cfg["num_hidden_layers"]):
            pre = f"model.layers.{i}."
            xs = [rms(v, P[pre + "input_layernorm.weight"]) for v in h]
            Q, K, Vv = [], [], []
            for p, x in enumerate(xs):
                q = (P[pre + "self_attn.q_proj.weight"] @ x).reshape(Hq, hd)
                k = (P[pre + "self_attn.k_proj.weight"] @ x).reshape(Hkv, hd)
                v = (P[pre + "self_attn.v_proj.weight"] @ x).reshape(Hkv, hd)
                if cfg["model_type"] != "llama":
                    q = np.stack([rms(r, P[pre + "self_attn.q_norm.weight"]) for r in q])
                    k = np.stack([rms(r, P[pre + "self_attn.k_norm.weight"]) for r in k])
                Q.append([rope(r, p) for r in q])
                K.append([rope(r, p) for r in k])
                Vv.append(v)
            for p in range(Tn):
                heads = []
                for hh in range(Hq):
                    kv = hh // (Hq // Hkv)
                    s = np.array([Q[p][hh] @ K[t][kv] for t in range(p + 1)]) / np.sqrt(hd)
                    w = np.exp(s - s.max())
                    w /= w.sum()
                    heads.append(sum(w[t] * Vv[t][kv] for t in range(p + 1)))
                h[p] = h[p] + P[pre + "self_attn.o_proj.weight"] @ np.concatenate(heads)
            for p in range(Tn):
                x = rms(h[p], P[pre + "post_attention_layernorm.weight"])
                g = P[pre + "mlp.gate_proj.weight"] @ x
                u = P[pre + "mlp.up_proj.weight"] @ x
                h[p] = h[p] + P[pre + "mlp.down_proj.weight"] @ (g / (1 + np.exp(-g)) * u)
        head = P["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else P["lm_head.weight"]
        out.append([head @ rms(v, P["model.norm.weight"]) for v in h])
    return torch.tensor(np.array(out))


def check_backbone(cfg):
    model, ids, _ = build(cfg)
    ref = naive_logits(cfg, params_dict(model), ids)
    with torch.no_grad():
        got = model(ids)["logits"]
    err = (got - ref).abs().max().item()
    assert err < 1e-12, f"{cfg['model_type']}: reference vs naive loop max err {err}"
    print(f"  check: {cfg['model_type']} backbone matches naive loop implementation (max err {err:.1e})")


# --------------------------------------------------------------------------------------
# Residual modes: self-checks and fixtures
# --------------------------------------------------------------------------------------

MODE_BACKBONE = dict(QWEN3_TINY, num_hidden_layers=4)

# name -> (make_config kwargs, backbone overrides)
MODE_FIXTURES = [
    ("mode-attnres-full", dict(mode="attnres-full"), {}),
    ("mode-attnres-block", dict(mode="attnres-block", num_blocks=2), {}),
    ("mode-delta", dict(mode="delta"), {}),
    ("mode-delta-null-gate", dict(mode="delta", use_null_source=True, gate=True), {}),
    ("mode-delta-block", dict(mode="delta-block", num_blocks=2), {}),
    ("mode-delta-block-3", dict(mode="delta-block", num_blocks=3), {"num_hidden_layers": 5}),
    ("mode-ddl", dict(mode="ddl", ddl_beta0=1.0, ddl_value_form="linear"), {}),
    ("mode-ddl-sigmoid4", dict(mode="ddl", ddl_beta0=0.5, ddl_value_form="sigmoid4"), {}),
    ("mode-ddl-expanded", dict(mode="ddl-expanded", ddl_beta0=1.0), {}),
    ("mode-attnres-full-states", dict(mode="attnres-full", sources="states"), {}),
    ("mode-delta-states", dict(mode="delta", sources="states"), {}),
]


def with_backbone_of(cfg, src_model, query_std=0.0, seed=SEED + 1, **mode_kw):
    """A model of config `cfg` whose backbone weights are copied from `src_model`;
    routing tensors keep the reference init (zero queries, unit gains, zero null
    sources, zero gates) unless query_std > 0 (then queries N(0, query_std^2))."""
    m = CausalLM(cfg, **mode_kw).to(DT)
    missing, unexpected = m.load_state_dict(src_model.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(("_res_" in k or "_null_" in k or "_ddl_" in k or "ddl_read" in k) for k in missing), missing
    if query_std:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith("_res_proj.weight"):
                    p.copy_(query_std * torch.randn(p.shape, generator=gen, dtype=DT))
    return m


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids)["logits"]


def self_checks():
    """docs/methods.md "Initialisation identities", checked on a 6-layer float64 toy."""
    print("self-checks (docs/methods.md: initialisation identities):")
    for eps in (0.0, 1e-6):
        bb = dict(QWEN3_TINY, num_hidden_layers=6, rms_norm_eps=eps)
        std, ids, _ = build(bb)
        ref = logits_of(std, ids)
        cases = [
            ("attnres-full", dict()),
            ("attnres-block N=2", dict(mode="attnres-block", num_blocks=2)),
            ("attnres-block N=4", dict(mode="attnres-block", num_blocks=4)),
            ("delta", dict(mode="delta")),
        ]
        if eps > 0:  # a zero null source has a zero key: needs eps > 0
            cases.append(("delta + zero null source", dict(mode="delta", use_null_source=True)))
        for label, kw in cases:
            kw.setdefault("mode", label)
            m = with_backbone_of(make_config(bb, **kw), std)
            err = (logits_of(m, ids) - ref).abs().max().item()
            tol = 1e-12 if eps == 0 else 1e-3
            assert err < tol, f"{label} at eps {eps}: max |logit diff| {err} >= {tol}"
            print(f"  ok  {label:28s} eps={eps:g}: max |logits - standard| = {err:.2e} (< {tol:g})")
        # delta-block: equivalent only with a zero gate (exactly, any eps)
        m = with_backbone_of(make_config(bb, "delta-block", num_blocks=3, gate=True), std)
        err = (logits_of(m, ids) - ref).abs().max().item()
        assert err == 0.0, f"delta-block zero gate at eps {eps}: {err}"
        print(f"  ok  {'delta-block, zero gate':28s} eps={eps:g}: max |logits - standard| = {err:.2e} (exact)")
        m = with_backbone_of(make_config(bb, "delta-block", num_blocks=3), std)
        err = (logits_of(m, ids) - ref).abs().max().item()
        assert err > 1e-3, f"delta-block without gate unexpectedly equals standard ({err})"
        print(f"  ok  {'delta-block, no gate':28s} eps={eps:g}: differs from standard by {err:.2e} (as it must)")
        # hidden states as sources: the zero gate makes both cells exactly standard, even with
        # non-zero queries (the routed term is multiplied by 0).
        for mode in ("attnres-full", "delta"):
            m = with_backbone_of(make_config(bb, mode, sources="states"), std, query_std=QUERY_STD)
            err = (logits_of(m, ids) - ref).abs().max().item()
            assert err == 0.0, f"{mode} over states, zero gate, at eps {eps}: {err}"
            label = f"{mode} over states, zero gate"
            print(f"  ok  {label:28s} eps={eps:g}: max |logits - standard| = {err:.2e} (exact)")

    # The residue at eps > 0 is the epsilon's doing: it shrinks ~linearly with eps.
    res = []
    for eps in (1e-6, 1e-8):
        bb = dict(QWEN3_TINY, num_hidden_layers=6, rms_norm_eps=eps)
        std, ids, _ = build(bb)
        m = with_backbone_of(make_config(bb, "attnres-full"), std)
        res.append((logits_of(m, ids) - logits_of(std, ids)).abs().max().item())
    assert res[1] < res[0] / 30, f"attnres-full residue does not scale with eps: {res}"
    print(f"  ok  attnres-full residue scales with eps: {res[0]:.2e} at 1e-6, {res[1]:.2e} at 1e-8")

    # Non-zero queries actually change the result (routing is exercised).
    bb = dict(QWEN3_TINY, num_hidden_layers=6)
    std, ids, _ = build(bb)
    ref = logits_of(std, ids)
    for kw in (dict(mode="attnres-full"), dict(mode="delta")):
        m = with_backbone_of(make_config(bb, **kw), std, query_std=QUERY_STD)
        err = (logits_of(m, ids) - ref).abs().max().item()
        assert err > 1e-3, f"{kw}: non-zero queries do not change logits"

    # DDL: identity only as beta0 -> 0: the layers vanish, logits = head(norm(embedding)).
    for mode in ("ddl", "ddl-expanded"):
        cfg = make_config(bb, mode, ddl_beta0=1e-12)
        m = with_backbone_of(cfg, std)
        with torch.no_grad():
            h0 = std.model.embed_tokens(ids)
            emb_only = std.lm_head(std.model.norm(h0))
        err = (logits_of(m, ids) - emb_only).abs().max().item()
        assert err < 1e-9, f"{mode} beta0->0 is not the identity ({err})"
        print(f"  ok  {mode + ' beta0=1e-12':28s}: layers are the identity (max err {err:.1e})")

    # Delta Block bookkeeping: the released code's D = h - previous source agrees with the
    # correct D = h - block-start state for 2 blocks and differs from the third block on.
    for L, nb, differ in ((4, 2, False), (5, 3, True), (6, 3, True)):
        bbL = dict(QWEN3_TINY, num_hidden_layers=L)
        stdL, idsL, _ = build(bbL)
        cfg = make_config(bbL, "delta-block", num_blocks=nb)
        good = with_backbone_of(cfg, stdL, query_std=QUERY_STD)
        bad = with_backbone_of(cfg, stdL, query_std=QUERY_STD, legacy_delta=True)
        err = (logits_of(good, idsL) - logits_of(bad, idsL)).abs().max().item()
        assert (err > 1e-6) == differ, f"delta-block L={L} B={nb}: legacy diff {err}"
        print(
            f"  ok  delta-block L={L} B={nb}: released-code Delta {'differs' if differ else 'agrees'} (max diff {err:.2e})"
        )

    # Parameter counts (docs/methods.md "Parameter counts").
    d, L = bb["hidden_size"], bb["num_hidden_layers"]
    base = sum(p.numel() for p in std.parameters())
    expect = {
        ("delta", False, False): 4 * d * L,
        ("delta-block", False, False): 4 * d * L,
        ("delta", True, True): 4 * d * L + 2 * d * L + 2 * L,
        ("attnres-full", False, False): 4 * d * L + 2 * d,
        ("attnres-block", False, False): 4 * d * L + 2 * d,
    }
    for (mode, null, gate), extra in expect.items():
        kw = dict(use_null_source=null, gate=gate)
        if mode.endswith("block"):
            kw["num_blocks"] = 2
        n = sum(p.numel() for p in CausalLM(make_config(bb, mode, **kw)).parameters())
        assert n - base == extra, f"{mode}: {n - base} extra params, expected {extra}"
    print(f"  ok  parameter counts (routing adds 4dL, +2d final for Kimi, +2dL+2L null/gate)")
    for mode, extra in (("attnres-full", 4 * d * L + 2 * d + 2 * L + 1), ("delta", 4 * d * L + 2 * L)):
        n = sum(p.numel() for p in CausalLM(make_config(bb, mode, sources="states")).parameters())
        assert n - base == extra, f"{mode} over states: {n - base} extra params, expected {extra}"
    print(f"  ok  parameter counts over states (attnres-full 4dL+2d+2L+1, delta 4dL+2L)")


def mode_fixture(name, kw, overrides):
    cfg = make_config(dict(MODE_BACKBONE, **overrides), **kw)
    model, input_ids, targets = build(cfg, query_std=QUERY_STD)
    tensors = params_dict(model)
    tensors["input_ids"] = input_ids.to(torch.int32)
    tensors["targets"] = targets.to(torch.int32)
    out = forward_backward(model, input_ids, targets, collect=True)
    logits = out["logits"].detach()
    sd = logits.std().item()
    assert 0.3 < sd < 3.0, f"{name}: logits std {sd} not O(1)"
    tensors["logits"] = logits.clone()
    tensors["loss"] = out["loss"].detach().clone().reshape(())
    tensors.update(grads_dict(model))
    for j, a in out["alphas"].items():
        tensors[f"alpha.{j}"] = a.detach().clone()
    for j, b in out["betas"].items():
        tensors[f"beta.{j}"] = b.detach().clone()
    print(f"  {name}: loss {out['loss'].item():.6f} logits std {sd:.3f}")
    write(name, tensors, cfg)


CHECKPOINT_FIXTURES = [
    # (folder name, make_config kwargs): HF-layout checkpoints as a PyTorch user of the authors'
    # layout would save them (config.json + model.safetensors in float32), for the loader test.
    ("ckpt-delta-null-gate", dict(mode="delta", use_null_source=True, gate=True)),
    ("ckpt-delta-block", dict(mode="delta-block", num_blocks=2)),
    ("ckpt-attnres-full", dict(mode="attnres-full")),
]


def checkpoint_fixture(name, kw):
    """test/fixtures/<name>/{config.json, model.safetensors (F32)} + reference.safetensors
    (input_ids and the float64 logits of exactly the stored float32 weights)."""
    cfg = make_config(dict(MODE_BACKBONE), **kw)
    model, input_ids, _ = build(cfg, query_std=QUERY_STD)
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    weights = {n: p.detach().to(torch.float32).contiguous() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n].to(DT))
    save_file(weights, os.path.join(folder, "model.safetensors"), {"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with torch.no_grad():
        logits = model(input_ids)["logits"]
    save_file(
        {"input_ids": input_ids.to(torch.int32), "logits": logits.detach().clone()},
        os.path.join(OUT, name + ".reference.safetensors"),
        {"generator": "scripts/gen_fixtures.py"},
    )
    print(f"wrote {os.path.relpath(folder, ROOT)}/ (config.json, model.safetensors F32) + reference logits")


# Tiny checkpoints in the layout Hugging Face writes (config.json with the keys transformers puts
# there, F32 / BF16 weights, single file or shards + model.safetensors.index.json), for the
# loader and converter tests (test/convert.test.ts). Reference logits are float64 computations
# on exactly the stored (rounded) weights.
HF_EXTRA_COMMON = {
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 64,
    "rope_scaling": None,
    "transformers_version": "4.51.0",
    "use_cache": True,
}
HF_QWEN3 = {
    **QWEN3_TINY,
    **HF_EXTRA_COMMON,
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "max_window_layers": 2,
    "sliding_window": None,
    "use_sliding_window": False,
}
HF_LLAMA = {
    **LLAMA_TINY,
    **HF_EXTRA_COMMON,
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "num_key_value_heads": 1,  # GQA 3:1
    "tie_word_embeddings": False,
}
HF_LLAMA3_ROPE = {
    **HF_LLAMA,
    "hidden_size": 24,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "rope_theta": 10000.0,
    # wavelengths 6.3 … 19869: three high-frequency pairs kept, one interpolated (199), four scaled.
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    },
}
HF_FIXTURES = [
    # (folder, config, stored dtype, number of shards)
    ("hf-qwen3-untied", dict(HF_QWEN3, torch_dtype="float32"), torch.float32, 1),
    ("hf-qwen3-tied-bf16", dict(HF_QWEN3, tie_word_embeddings=True, torch_dtype="bfloat16"), torch.bfloat16, 1),
    ("hf-llama-sharded", dict(HF_LLAMA, torch_dtype="float32"), torch.float32, 2),
    ("hf-llama3-rope", dict(HF_LLAMA3_ROPE, torch_dtype="float32"), torch.float32, 1),
]


def hf_fixture(name, cfg, dtype, shards):
    """test/fixtures/<name>/ as transformers' save_pretrained lays it out, + <name>.reference.safetensors."""
    model, input_ids, _ = build(cfg)
    stored = {n: p.detach().to(dtype).contiguous() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(stored[n].to(DT))  # the reference runs on exactly the rounded weights
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f))
    names = list(stored)
    if shards == 1:
        save_file(stored, os.path.join(folder, "model.safetensors"), {"format": "pt"})
    else:
        per = (len(names) + shards - 1) // shards
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: stored[n] for n in names[s * per : (s + 1) * per]}
            save_file(part, os.path.join(folder, fname), {"format": "pt"})
            weight_map.update({n: fname for n in part})
        total = sum(t.numel() * t.element_size() for t in stored.values())
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            f.write("\n")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with torch.no_grad():
        logits = model(input_ids)["logits"]
    save_file(
        {"input_ids": input_ids.to(torch.int32), "logits": logits.detach().clone()},
        os.path.join(OUT, name + ".reference.safetensors"),
        {"generator": "scripts/gen_fixtures.py"},
    )
    print(f"wrote {os.path.relpath(folder, ROOT)}/ ({dtype}, {shards} shard(s)) + reference logits")


def main():
    torch.set_default_dtype(DT)
    check_backbone(QWEN3_TINY)
    check_backbone(LLAMA_TINY)
    self_checks()
    backbone_fixture("qwen3-tiny", QWEN3_TINY)
    backbone_fixture("llama-tiny", LLAMA_TINY)
    for name, kw, overrides in MODE_FIXTURES:
        mode_fixture(name, kw, overrides)
    for name, kw in CHECKPOINT_FIXTURES:
        checkpoint_fixture(name, kw)
    for name, cfg, dtype, shards in HF_FIXTURES:
        hf_fixture(name, cfg, dtype, shards)


if __name__ == "__main__":
    main()
