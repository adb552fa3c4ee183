"""Entry point: `python -m attnres_torch train --run DIR [options]` (see train.py) or
`python -m attnres_torch probe` (see probe.py)."""

import os
import sys


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "train":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            print(
                f"attnres_torch rank {os.environ.get('RANK', '0')}: {sys.executable} cannot import torch ({e}); "
                "install it with `bash scripts/setup.sh --with-torch` or use a Python that has it",
                file=sys.stderr,
            )
            sys.exit(1)
        from .train import main as train_main

        sys.exit(train_main(sys.argv[2:]))
    if cmd == "probe":
        import json

        from .probe import probe

        print(json.dumps(probe()))
        return
    print(
        "usage: python -m attnres_torch train --run DIR [--resume] [--device cpu|cuda] "
        "[--dtype float32|bfloat16] [--fsdp] [--compile] | probe",
        file=sys.stderr,
    )
    sys.exit(2)


main()
