"""attnres_torch: the PyTorch engine of attnres (depends on torch alone).

Modules: model (the decoder and every residual mode, the TypeScript engine's initialisation),
config (defaults and export of HF configs), rng (the TypeScript engine's generator), data
(prepared datasets, batch sampler, evaluation windows), safetensors_io, checkpoint (save protocol,
recovery, weights and optimizer state), train (the worker: `python -m attnres_torch train --run DIR`,
started by torchrun or by attnres with torchrun's environment), probe (what this Python offers).
Importing the package imports nothing heavy; torch is imported by the modules that need it.
"""
