#!/usr/bin/python3
"""PyTorch half of the training-step benchmark (float32, CPU).

One step = forward, mean cross-entropy, backward, grad-norm clipping at --clip (1.0, as
bench/step.ts), AdamW (lr 1e-3; weight decay 0.1 on matrices, 0 on vectors). Default
backbone llama (no q/k norms), untied, as bench/step.ts. Uses the model of python/attnres_torch/model.py.
Prints ONE line of JSON to stdout.

    /usr/bin/python3 bench/torch_step.py --layers 4 --d 256 --heads 4 --seq 256 --batch 8
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attnres_torch.model import MODES, CausalLM, make_config  # noqa: E402


def openblas_core():
    """The kernel set of the OpenBLAS this torch loaded ("Haswell", "Cooperlake", ...), or ""."""
    import ctypes

    for name in ("libopenblas.so.0", "libopenblasp.so.0", "libblas.so.3"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            fn = lib.openblas_get_corename
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        return fn().decode()
    return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=None, help="default d / heads")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--ff", type=int, default=768)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=MODES, default="standard")
    ap.add_argument("--blocks", type=int, default=2, help="blocks for attnres-block / delta-block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-type", choices=("llama", "qwen3"), default="llama")
    ap.add_argument("--clip", type=float, default=1.0, help="grad-norm clip (<= 0: off)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    backbone = {
        "model_type": args.model_type,
        "vocab_size": args.vocab,
        "hidden_size": args.d,
        "intermediate_size": args.ff,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim or args.d // args.heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    blocks = args.blocks if args.mode in ("attnres-block", "delta-block") else None
    cfg = make_config(backbone, args.mode, num_blocks=blocks)
    model = CausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim >= 2 and "_res_proj" not in n:
                p.normal_(0.0, 0.02)
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    y = torch.randint(0, args.vocab, (args.batch, args.seq))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(x)["logits"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        return time.perf_counter() - t0, loss.item()

    cold, _ = step()
    for _ in range(args.warmup):
        step()
    times = [step()[0] for _ in range(args.steps)]
    med = statistics.median(times)
    print(
        json.dumps(
            {
                "framework": "pytorch",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "blas_core": openblas_core(),
                "mode": args.mode,
                "model_type": args.model_type,
                "layers": args.layers,
                "d": args.d,
                "seq": args.seq,
                "batch": args.batch,
                "cold_step_s": round(cold, 6),
                "median_step_s": round(med, 6),
                "min_step_s": round(min(times), 6),
                "tokens_per_s": round(args.batch * args.seq / med, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "params": sum(p.numel() for p in params),
            }
        )
    )


if __name__ == "__main__":
    main()
