"""Greedy generation in plain PyTorch with a hand-written KV cache: the baseline of
`npm run bench:generate` (bench/generate.ts), which starts this script once per round.

The model is the standard decoder (Llama / Qwen3 backbone) written out with torch ops only:
    ids -> embed_tokens -> per layer: x += o_proj(attn(rope(q_norm(q_proj(n))), rope(k_norm(k_proj(n))),
    v_proj(n))), n = input_layernorm(x);  x += down(silu(gate(m)) * up(m)), m = post_attention_layernorm(x)
    -> norm -> lm_head (or the tied embedding)
Weights come from an attnres checkpoint folder (config.json + model.safetensors, float32), read by a
small safetensors reader below. The KV cache holds k, v [Hkv, maxLen, D] per layer (after k_norm and
RoPE). Prefill runs the prompt [1, P] once and computes the LM head for the last position only;
each decode step feeds the last token alone. Greedy: argmax of the logits (lowest id on ties).

Prints one JSON line: prefill and decode seconds and tokens/s, the generated ids, peak RSS, threads.
    /usr/bin/python3 bench/torch_generate.py --checkpoint DIR --prompt 128 --new 128 --threads 2
"""

import argparse
import json
import math
import os
import resource
import struct
import time

import torch


def read_safetensors(path):
    """name -> float32 tensor (views into one buffer holding the file)."""
    data = bytearray(os.path.getsize(path))
    with open(path, "rb") as f:
        f.readinto(data)
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n].decode("utf8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"torch_generate: {name} is {info['dtype']}, only F32 is read")
        start, end = info["data_offsets"]
        count = (end - start) // 4
        t = torch.frombuffer(data, dtype=torch.float32, count=count, offset=base + start)
        out[name] = t.reshape(info["shape"])
    return out


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Decoder:
    def __init__(self, cfg, w, max_len):
        self.cfg = cfg
        self.L = cfg["num_hidden_layers"]
        self.H = cfg["num_attention_heads"]
        self.Hkv = cfg.get("num_key_value_heads") or self.H
        self.D = cfg.get("head_dim") or cfg["hidden_size"] // self.H
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        qk = cfg.get("attention_qk_norm")
        self.qk_norm = qk if qk is not None else cfg.get("model_type", "qwen3") != "llama"
        self.w = w
        self.embed = w["model.embed_tokens.weight"]
        self.lm_head = self.embed if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
        theta = cfg.get("rope_theta", 10000.0)
        h = self.D // 2
        inv = 1.0 / torch.pow(
            torch.tensor(theta, dtype=torch.float64), torch.arange(h, dtype=torch.float64) * 2 / self.D
        )
        ang = torch.arange(max_len, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos = torch.cat((ang.cos(), ang.cos()), -1).float()  # [maxLen, D]
        self.sin = torch.cat((ang.sin(), ang.sin()), -1).float()
        self.k_cache = [torch.zeros(self.Hkv, max_len, self.D) for _ in range(self.L)]
        self.v_cache = [torch.zeros(self.Hkv, max_len, self.D) for _ in range(self.L)]
        self.scale = 1.0 / math.sqrt(self.D)

    def forward(self, ids, pos):
        """ids [T] at positions pos ... pos + T - 1 -> logits [vocab] of the last position."""
        T = ids.shape[0]
        H, Hkv, D, G = self.H, self.Hkv, self.D, self.H // self.Hkv
        cos = self.cos[pos : pos + T][None]  # [1, T, D]
        sin = self.sin[pos : pos + T][None]
        x = self.embed[ids]  # [T, d]
        mask = None
        if T > 1:
            mask = torch.full((T, pos + T), float("-inf")).triu(pos + 1)
        for i in range(self.L):
            p = f"model.layers.{i}."
            w = self.w
            n = rmsnorm(x, w[p + "input_layernorm.weight"], self.eps)
            q = (n @ w[p + "self_attn.q_proj.weight"].t()).view(T, H, D).transpose(0, 1)
            k = (n @ w[p + "self_attn.k_proj.weight"].t()).view(T, Hkv, D).transpose(0, 1)
            v = (n @ w[p + "self_attn.v_proj.weight"].t()).view(T, Hkv, D).transpose(0, 1)
            if self.qk_norm:
                q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], self.eps)
                k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], self.eps)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            self.k_cache[i][:, pos : pos + T] = k
            self.v_cache[i][:, pos : pos + T] = v
            kk = self.k_cache[i][:, : pos + T]  # [Hkv, Tk, D]
            vv = self.v_cache[i][:, : pos + T]
            if G > 1:
                kk = kk.repeat_interleave(G, dim=0)
                vv = vv.repeat_interleave(G, dim=0)
            s = (q @ kk.transpose(1, 2)) * self.scale  # [H, T, Tk]
            if mask is not None:
                s = s + mask
            o = (torch.softmax(s, dim=-1) @ vv).transpose(0, 1).reshape(T, H * D)
            x = x + o @ w[p + "self_attn.o_proj.weight"].t()
            m = rmsnorm(x, w[p + "post_attention_layernorm.weight"], self.eps)
            g = m @ w[p + "mlp.gate_proj.weight"].t()
            u = m @ w[p + "mlp.up_proj.weight"].t()
            x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].t()
        last = rmsnorm(x[-1], self.w["model.norm.weight"], self.eps)
        return self.lm_head @ last


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(f"{args.checkpoint}/config.json") as f:
        cfg = json.load(f)
    w = read_safetensors(f"{args.checkpoint}/model.safetensors")
    V = cfg["vocab_size"]
    prompt = torch.tensor([(i * 7919 + 13) % V for i in range(args.prompt)], dtype=torch.long)
    model = Decoder(cfg, w, args.prompt + args.new)

    def run(new):
        t0 = time.perf_counter()
        tok = int(torch.argmax(model.forward(prompt, 0)))
        t1 = time.perf_counter()
        out = [tok]
        for s in range(new - 1):
            tok = int(torch.argmax(model.forward(torch.tensor([tok]), args.prompt + s)))
            out.append(tok)
        return t1 - t0, time.perf_counter() - t1, out

    with torch.inference_mode():
        for _ in range(args.warmup):
            run(min(args.new, 8))
        prefill, decode, ids = run(args.new)
    print(
        json.dumps(
            {
                "framework": "pytorch",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "prefill_s": prefill,
                "decode_s": decode,
                "prefill_tok_s": args.prompt / prefill,
                "decode_tok_s": (args.new - 1) / decode if args.new > 1 else 0.0,
                "ids": ids,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
