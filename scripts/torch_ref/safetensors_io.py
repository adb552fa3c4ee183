"""Minimal hand-written safetensors reader/writer (no `safetensors` package needed).

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded with
spaces to a multiple of 8), then the raw little-endian tensor data, laid out in
header order without gaps; `data_offsets` are relative to the start of the data.
"""

import json
import struct

import numpy as np
import torch

_DTYPES = {
    "F64": (torch.float64, np.dtype("<f8")),
    "F32": (torch.float32, np.dtype("<f4")),
    "I32": (torch.int32, np.dtype("<i4")),
    "I64": (torch.int64, np.dtype("<i8")),
}
_TORCH_TO_NAME = {v[0]: k for k, v in _DTYPES.items()}


def save_file(tensors, path, metadata=None):
    """Write `tensors` (an ordered dict name -> torch.Tensor) to `path`.

    Tensors are stored with their own dtype (float64, float32, int32, int64, bfloat16).
    Insertion order of the dict is the on-disk order.
    """
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # write-only: the raw 16 bits (HF checkpoints store BF16)
            dname = "BF16"
            data = t.view(torch.int16).numpy().astype("<i2", copy=False).tobytes(order="C")
        elif t.dtype not in _TORCH_TO_NAME:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        else:
            dname = _TORCH_TO_NAME[t.dtype]
            data = t.numpy().astype(_DTYPES[dname][1], copy=False).tobytes(order="C")
        header[name] = {
            "dtype": dname,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (8 - len(hjson) % 8) % 8
    hjson += b" " * pad
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def load_file(path):
    """Read a safetensors file; returns (dict name -> torch.Tensor, metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        tdt, ndt = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw[base + b : base + e], dtype=ndt).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
        assert out[name].dtype == tdt
    return out, meta
