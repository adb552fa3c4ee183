"""Hand-written safetensors reader/writer (no `safetensors` package, no numpy).

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to a
multiple of 8), then the raw little-endian tensor data in header order without gaps;
`data_offsets` are relative to the start of the data.
Integrity: save_file(..., crc32=True) stores in `__metadata__` the key `attnres.crc32`, a JSON
string mapping each tensor name to the CRC-32 (zlib) of its raw bytes as 8 lowercase hex digits;
load_file verifies it when present (files without it load as before).
"""

import ctypes
import json
import os
import struct
import sys
import zlib

import torch

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "I64": torch.int64,
}
_TORCH_TO_NAME = {v: k for k, v in _DTYPES.items()}
CRC_KEY = "attnres.crc32"

if sys.byteorder != "little":  # raw tensor bytes are the file's bytes only on a little-endian host
    raise ImportError("attnres_torch.safetensors_io needs a little-endian host")


def tensor_bytes(t):
    """The raw bytes of a tensor (CPU, contiguous copy)."""
    t = t.detach().cpu().contiguous()
    n = t.numel() * t.element_size()
    return ctypes.string_at(t.data_ptr(), n) if n else b""


def crc32_hex(data):
    return format(zlib.crc32(data) & 0xFFFFFFFF, "08x")


def save_file(tensors, path, metadata=None, crc32=False):
    """Write `tensors` (an ordered dict name -> torch.Tensor) to `path`, in dict order.

    Tensors are stored with their own dtype (float64, float32, float16, bfloat16, int32, int64).
    """
    header = {}
    blobs = []
    offset = 0
    crcs = {}
    for name, t in tensors.items():
        if t.dtype not in _TORCH_TO_NAME:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        data = tensor_bytes(t)
        header[name] = {
            "dtype": _TORCH_TO_NAME[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        if crc32:
            crcs[name] = crc32_hex(data)
        blobs.append(data)
        offset += len(data)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if crc32:
        meta[CRC_KEY] = json.dumps(crcs, separators=(",", ":"))
    if meta:
        header["__metadata__"] = meta
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())


def load_file(path, verify=True):
    """Read a safetensors file; returns (dict name -> torch.Tensor, metadata dict).

    Errors (ValueError) name the file: truncated data, offsets outside the file, CRC mismatch."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path} is truncated (header of {n} bytes)")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    crcs = json.loads(meta[CRC_KEY]) if verify and CRC_KEY in meta else None
    base = 8 + n
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        dt = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        if not 0 <= b <= e <= len(raw) - base:
            raise ValueError(f"{path}: tensor {name} lies outside the file (truncated?)")
        chunk = raw[base + b : base + e]
        if crcs is not None and name in crcs and crc32_hex(chunk) != crcs[name]:
            raise ValueError(f"{path}: tensor {name} fails its CRC-32 check (the file is damaged)")
        t = torch.frombuffer(bytearray(chunk), dtype=dt) if chunk else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out, meta


def load_checkpoint_weights(folder):
    """All tensors of a checkpoint folder: model.safetensors or shards listed in
    model.safetensors.index.json."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)[0]
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        raise ValueError(f"{folder} has no model.safetensors (nor model.safetensors.index.json)")
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for s in shards:
        out.update(load_file(os.path.join(folder, s))[0])
    return out
