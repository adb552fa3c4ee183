"""What this interpreter offers the torch engine, as one line of JSON on stdout:
{"python": "3.11.2", "torch": "1.13.0" | null, "error": str | null, "torchrun": bool,
 "fsdp": bool, "compile": bool, "cuda": int, "cpus": int}.
`torchrun` is false where the launcher is known to fail before starting a worker (torch 1.13 under
Python 3.11: its Std.from_str returns None); `fsdp` is whether torch.distributed.fsdp imports.
"""

import json
import os
import platform


def probe():
    out = {"python": platform.python_version(), "torch": None, "error": None, "torchrun": False}
    out.update({"fsdp": False, "compile": False, "cuda": 0, "cpus": os.cpu_count() or 1})
    try:
        import torch
    except Exception as e:  # noqa: BLE001 (any import failure means: no usable torch)
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["torch"] = torch.__version__.split("+")[0]
    out["compile"] = hasattr(torch, "compile")
    try:
        out["cuda"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        out["cuda"] = 0
    try:
        from torch.distributed.elastic.multiprocessing import Std

        out["torchrun"] = Std.from_str("0") is not None
    except Exception:  # noqa: BLE001
        out["torchrun"] = False
    try:
        import torch.distributed.fsdp  # noqa: F401

        out["fsdp"] = True
    except Exception:  # noqa: BLE001
        out["fsdp"] = False
    return out


if __name__ == "__main__":
    print(json.dumps(probe()))
