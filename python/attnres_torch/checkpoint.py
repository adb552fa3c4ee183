"""Run-folder checkpoints, exactly as the TypeScript engine lays them out.

<run>/checkpoint/  config.json (HF keys), model.safetensors (F32), tokenizer files,
                   optimizer.safetensors (AdamW moments m.<param>, v.<param>),
                   trainer_state.json {step, adam_t, sampler, done, seconds, result?},
                   manifest.json {"step": n, "files": {name: {"bytes": n, "crc32": "hex8"}}}
Every safetensors file carries `attnres.crc32` in its metadata.
Save protocol: write every file into <run>/checkpoint.tmp/ (fsync each), manifest.json last,
fsync the folder; rename checkpoint -> checkpoint.old, checkpoint.tmp -> checkpoint; fsync <run>/;
remove checkpoint.old. Recovery: among checkpoint, checkpoint.old, checkpoint.tmp the complete
one (manifest present, every file matching it) with the highest step; folders written before
manifests existed (no manifest in any of them) are read as before: checkpoint, else .old.
"""

import json
import math
import os
import shutil
import zlib

import torch

from .config import config_for_export
from .data import TOKENIZER_FILES
from .safetensors_io import load_checkpoint_weights, load_file, save_file

NAMES = ("checkpoint", "checkpoint.old", "checkpoint.tmp")


class CheckpointError(ValueError):
    pass


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _file_crc(path):
    crc = 0
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            crc = zlib.crc32(b, crc)
            n += len(b)
    return n, format(crc & 0xFFFFFFFF, "08x")


def json_safe(v):
    """NaN/Inf -> None (JSON null), as JSON.stringify writes them."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def save(run_dir, step, weights, config, data_dir, moments, state):
    """Writes a checkpoint of `step` by the save protocol. weights/moments: ordered dicts name -> tensor."""
    tmp = os.path.join(run_dir, "checkpoint.tmp")
    cur = os.path.join(run_dir, "checkpoint")
    old = os.path.join(run_dir, "checkpoint.old")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    meta = {"format": "pt", "generator": "attnres train --engine torch"}
    save_file(
        {k: v.detach().float().cpu() for k, v in weights.items()},
        os.path.join(tmp, "model.safetensors"),
        meta,
        crc32=True,
    )
    _write_text(os.path.join(tmp, "config.json"), json.dumps(config_for_export(config), indent=2) + "\n")
    for name in TOKENIZER_FILES:
        src = os.path.join(data_dir, name)
        if os.path.exists(src):
            with open(src, "rb") as f:
                blob = f.read()
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
    save_file(
        {k: v.detach().float().cpu() for k, v in moments.items()},
        os.path.join(tmp, "optimizer.safetensors"),
        crc32=True,
    )
    _write_text(os.path.join(tmp, "trainer_state.json"), json.dumps(json_safe(state), indent=2) + "\n")
    files = {}
    for name in sorted(os.listdir(tmp)):
        n, crc = _file_crc(os.path.join(tmp, name))
        files[name] = {"bytes": n, "crc32": crc}
    _write_text(os.path.join(tmp, "manifest.json"), json.dumps({"step": step, "files": files}, indent=2) + "\n")
    _fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(cur):
        os.rename(cur, old)
    os.rename(tmp, cur)
    _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def _complete_step(folder):
    """The manifest's step if `folder` is a complete checkpoint, else None."""
    mf = os.path.join(folder, "manifest.json")
    if not os.path.exists(mf):
        return None
    try:
        with open(mf) as f:
            man = json.load(f)
        for name, info in man["files"].items():
            p = os.path.join(folder, name)
            if not os.path.exists(p) or _file_crc(p) != (info["bytes"], info["crc32"]):
                return None
        return int(man["step"])
    except (ValueError, KeyError, TypeError, OSError):
        return None


def find(run_dir):
    """The checkpoint folder to resume from, or None."""
    best, best_step = None, -1
    any_manifest = False
    for name in NAMES:
        d = os.path.join(run_dir, name)
        if os.path.exists(os.path.join(d, "manifest.json")):
            any_manifest = True
        s = _complete_step(d)
        if s is not None and s > best_step:
            best, best_step = d, s
    if best is not None or any_manifest:
        return best
    for name in NAMES[:2]:
        d = os.path.join(run_dir, name)
        if os.path.exists(os.path.join(d, "trainer_state.json")):
            return d
    return None


def recover(run_dir):
    """Recovery, run once before anything is saved again: the complete copy with the highest step
    (find) becomes `checkpoint` and the other candidates are removed, so the next save can never
    destroy the only complete copy (it starts by clearing checkpoint.tmp and ends by removing
    checkpoint.old). Interrupted at any point, the chosen copy is still found next time. Returns the
    folder to resume from, or None."""
    best = find(run_dir)
    if best is None:
        return None
    cur = os.path.join(run_dir, "checkpoint")
    for name in NAMES:
        d = os.path.join(run_dir, name)
        if d not in (best, cur) and os.path.exists(d):
            shutil.rmtree(d, ignore_errors=True)
    if best != cur:
        shutil.rmtree(cur, ignore_errors=True)
        os.rename(best, cur)
    _fsync_dir(run_dir)
    return cur


def read_state(folder):
    f = os.path.join(folder, "trainer_state.json")
    try:
        with open(f) as fh:
            return json.load(fh)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{f} is damaged ({e}); delete the run folder to start over") from e


def check_weights(named_shapes, tensors, source, allow_unexpected=lambda n: False):
    """The TypeScript engine's loadWeights checks: missing, misshapen, unexpected tensors."""
    fmt = lambda s: "[" + ", ".join(str(int(x)) for x in s) + "]"  # noqa: E731
    problems = []
    for name, shape in named_shapes:
        t = tensors.get(name)
        if t is None:
            problems.append(f"missing tensor {name} (expected shape {fmt(shape)})")
        elif list(t.shape) != list(shape):
            problems.append(f"tensor {name} has shape {fmt(t.shape)}, expected {fmt(shape)}")
    names = {n for n, _ in named_shapes}
    for name in tensors:
        if name not in names and not allow_unexpected(name):
            problems.append(f"unexpected tensor {name} (not part of this model's configuration)")
    if problems:
        more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems[:3]) + more)


def load_weights_into(model, folder, source=None, tied=False):
    """Copies a checkpoint folder's weights into model (every tensor, exact shapes)."""
    tensors = load_checkpoint_weights(folder)
    named = list(model.named_parameters())
    check_weights(
        [(n, p.shape) for n, p in named],
        tensors,
        source or folder,
        allow_unexpected=lambda n: tied and n == "lm_head.weight",
    )
    with torch.no_grad():
        for n, p in named:
            p.copy_(tensors[n].to(p.dtype))


def load_moments(folder):
    return load_file(os.path.join(folder, "optimizer.safetensors"))[0]
