"""Prepared datasets and batches, as the TypeScript engine reads and samples them.

A prepared folder (attnres prepare, src/data/prepared.ts): meta.json, train.bin and val.bin
(little-endian uint16 or uint32 token ids, meta.dtype), tokenizer files.
BatchSampler (src/data/batches.ts): B windows per batch at offsets rng.int(len - T), rng seeded
with seed + 1 by the trainer; ids[b, t] = tokens[o_b + t], targets[b, t] = tokens[o_b + t + 1].
eval_batches: the first `count` batches of consecutive non-overlapping windows of the val split.
Tensors: ids, targets int64 [B, T].
"""

import json
import os

import torch

from .rng import Rng

TOKENIZER_FILES = ("attnres_tokenizer.json", "tokenizer.json")


class DataError(ValueError):
    pass


def _read_tokens(path, dtype, expected):
    if not os.path.exists(path):
        raise DataError(f"{path} is missing (re-run attnres prepare)")
    width = 2 if dtype == "uint16" else 4
    size = os.path.getsize(path)
    if size != expected * width:
        raise DataError(
            f"{path} has {size} bytes, expected {expected * width} ({expected} {dtype} tokens): re-run attnres prepare"
        )
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    if dtype == "uint16":
        return torch.frombuffer(raw, dtype=torch.int16).to(torch.int64) & 0xFFFF
    return torch.frombuffer(raw, dtype=torch.int32).to(torch.int64) & 0xFFFFFFFF


def load_prepared(folder):
    """(meta dict, train tokens int64 [n], val tokens int64 [m])."""
    mf = os.path.join(folder, "meta.json")
    if not os.path.exists(mf):
        raise DataError(f"{folder} is not a prepared dataset (no meta.json); run attnres prepare first")
    with open(mf) as f:
        meta = json.load(f)
    train = _read_tokens(os.path.join(folder, "train.bin"), meta["dtype"], meta["train"]["tokens"])
    val = _read_tokens(os.path.join(folder, "val.bin"), meta["dtype"], meta["val"]["tokens"])
    return meta, train, val


def _window(tokens, offsets, T):
    idx = torch.tensor(offsets, dtype=torch.int64)[:, None] + torch.arange(T, dtype=torch.int64)[None, :]
    return tokens[idx], tokens[idx + 1]


class BatchSampler:
    def __init__(self, tokens, B, T, seed):
        if tokens.numel() < T + 2:
            raise DataError(f"the training split has {tokens.numel()} tokens, fewer than one window of {T + 1}")
        self.tokens, self.B, self.T = tokens, B, T
        self.rng = Rng(seed)

    def get_state(self):
        return self.rng.get_state()

    def set_state(self, state):
        self.rng.set_state(state)

    def next(self):
        span = self.tokens.numel() - self.T - 1
        offsets = [self.rng.int(span + 1) for _ in range(self.B)]
        return _window(self.tokens, offsets, self.T)


def eval_batches(tokens, B, T, count):
    out = []
    o = 0
    while len(out) < count and o + B * T + 1 <= tokens.numel():
        out.append(_window(tokens, [o + b * T for b in range(B)], T))
        o += B * T
    if not out:
        raise DataError(f"the validation split has {tokens.numel()} tokens, fewer than one batch of {B}×{T}")
    return out
