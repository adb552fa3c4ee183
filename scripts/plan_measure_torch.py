"""Measured peak memory of one PyTorch training step, for `attnres plan`'s test.

Reads JSON on stdin: {"configs": [<HF config dict>, ...], "batch": B, "seq": T} and prints one
JSON line: {"torch": "<version>", "results": [{"peak_bytes": n, "persistent_bytes": n}, ...]}.

Each config becomes the reference PyTorch model (python/attnres_torch/model.py, float32, CPU) with
AdamW (decay on matrices only) and gradient clipping at 1.0, and takes two training steps on
synthetic tokens [B, T]. Memory is measured with torch.profiler's memory events (profile_memory),
which report every allocation and free of the CPU allocator while profiling is on: profiling
starts before the model is built, so the running sum of the events is the live tensor bytes of
this process (parameters, gradients, moments, activations, temporaries). peak_bytes is its
maximum during the second step (when gradients and moments already exist); persistent_bytes its
value between the steps. Gradients are zeroed in place (set_to_none=False), so they stay
allocated across steps as in the TypeScript engine.
"""

import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
from attnres_torch.model import CausalLM  # noqa: E402


def train_step(model, opt, ids, targets):
    model.zero_grad(set_to_none=False)
    loss = model(ids, targets)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def measure(cfg, B, T):
    torch.manual_seed(0)
    V = cfg["vocab_size"]
    i = torch.arange(B * T)
    ids = (i * 7 + i // 4).remainder(V).reshape(B, T)
    targets = (i * 5 + 3).remainder(V).reshape(B, T)
    marks = []
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = CausalLM(cfg)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": 0.1},
            {"params": other, "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=1e-3)
        train_step(model, opt, ids, targets)
        with torch.profiler.record_function("attnres_plan_step2"):
            train_step(model, opt, ids, targets)
        del model, opt
    events = prof.profiler.kineto_results.events()
    for e in events:
        if e.name() == "attnres_plan_step2":
            marks = [e.start_us(), e.start_us() + e.duration_us()]
    mem = []
    for i, e in enumerate(events):
        if e.name() == "[memory]":
            mem.append((e.start_us(), i, e.nbytes()))
    mem.sort()
    live = 0
    peak = 0
    persistent = None
    for t, _, nbytes in mem:
        if persistent is None and t >= marks[0]:
            persistent = live
        live += nbytes
        if marks[0] <= t <= marks[1]:
            peak = max(peak, live)
    return {"peak_bytes": peak, "persistent_bytes": persistent}


def main():
    req = json.load(sys.stdin)
    torch.set_num_threads(1)
    out = [measure(c, req["batch"], req["seq"]) for c in req["configs"]]
    print(json.dumps({"torch": torch.__version__, "results": out}))


if __name__ == "__main__":
    main()
