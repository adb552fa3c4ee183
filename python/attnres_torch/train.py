"""The torch engine's training worker: one process per rank, torchrun's environment contract.

    python -m attnres_torch train --run DIR [--resume] [--device cpu|cuda] [--dtype float32|bfloat16]
                                  [--fsdp] [--compile]
Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (absent: one process).
<DIR>/run.json is the resolved run specification attnres wrote ({model, data, train, init?}).

The loop is the TypeScript engine's (src/train/run.ts, trainer.ts): the same initial weights from
the seed, BatchSampler(train, batch_size, seq_len, seed + 1), lr multiplier (linear warmup, cosine
to min_lr_ratio), AdamW groups [routing (routing_lr, no decay)], matrices (decay), vectors (no
decay), global-norm clipping of the trainable parameters, grad_accum micro-batches each scaled 1/k,
validation every eval_every steps and at the end on the first eval_batches consecutive windows.
Data parallel: every rank draws the same global batch [batch_size, seq_len] and trains on its rows
[r * B/W, (r+1) * B/W); DDP (gloo on CPU, NCCL on CUDA) or FSDP averages the gradients, so the step
equals the one-process step on the whole batch. Rank 0 writes metrics.jsonl / metrics.csv and the
checkpoints (checkpoint.py); it prints progress as lines `@attnres {json}` on stdout.
Ctrl-C (SIGINT): the ranks agree to stop after the current step, save a checkpoint and exit 0.
A non-finite loss: event "diverged", exit code 3, weights not updated.
"""

import argparse
import csv
import importlib
import io
import json
import math
import os
import re
import resource
import signal
import sys
import time
from datetime import datetime, timezone

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import mode_name, model_kwargs_config, parse_config
from .data import BatchSampler, eval_batches, load_prepared
from .model import CausalLM, init_like_typescript

RESIDUAL = re.compile(r"_res_proj\.|_res_norm\.|_null_source$|_res_alpha$|_ddl_|final_ddl_read$|final_res_")
CSV_COLUMNS = ("step", "loss", "grad_norm", "lr", "tokens_per_s", "val_loss", "time", "elapsed_s")
DIVERGED_EXIT = 3


class UserError(Exception):
    """A problem with the input: one line, no traceback."""


def torch_version():
    return tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])


def lr_multiplier(it, warmup, total, min_ratio):
    if it < warmup:
        return (it + 1) / warmup
    if it >= total:
        return min_ratio
    ratio = (it - warmup) / max(1, total - warmup)
    return min_ratio + 0.5 * (1 + math.cos(math.pi * ratio)) * (1 - min_ratio)


def is_residual_param(name):
    return RESIDUAL.search(name) is not None


def event(**kw):
    print("@attnres " + json.dumps(ckpt.json_safe(kw)), flush=True)


def iso_now():
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def num(v):
    """A number as JavaScript's String(v) writes it (for metrics.csv)."""
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    s = repr(v)
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("+" if m.group(1) == "+" else "-") + m.group(2), s)


def write_csv(path, records):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        w.writerow([r.get(c) if c == "time" else num(r.get(c)) for c in CSV_COLUMNS])
    with open(path, "w") as f:
        f.write(buf.getvalue())


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m attnres_torch train")
    ap.add_argument(
        "--run", required=True, action="append", help="run folder (repeatable: one process trains each in turn)"
    )
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--compile", action="store_true")
    return ap.parse_args(argv)


def check_capabilities(a):
    v = torch_version()
    if a.fsdp:
        if v < (2, 0):
            raise UserError(f"--fsdp needs torch >= 2.0 (this is torch {torch.__version__})")
        try:
            # importlib: an `import torch.…` statement here would make `torch` local to this function
            importlib.import_module("torch.distributed.fsdp")
        except Exception as e:  # noqa: BLE001
            raise UserError(f"--fsdp: torch.distributed.fsdp does not import here ({type(e).__name__}: {e})") from e
    if a.compile and not hasattr(torch, "compile"):
        raise UserError(f"--compile needs torch >= 2.0 (torch.compile; this is torch {torch.__version__})")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device here")


TRAIN_KEYS = (
    "steps",
    "batch_size",
    "seq_len",
    "grad_accum",
    "lr",
    "min_lr_ratio",
    "warmup",
    "weight_decay",
    "beta1",
    "beta2",
    "clip",
    "eval_every",
    "eval_batches",
    "seed",
)
SPEC_FIELDS = (("model", dict), ("data", str), ("train", dict))
TS_ONLY = (
    ("keep_best", "the torch engine keeps only the last checkpoint"),
    ("matmul_dtype", "the torch engine's compute dtype is --dtype bfloat16 (autocast)"),
)


def read_spec(spec_file):
    """<run>/run.json, checked: the resolved specification attnres writes (UserError otherwise)."""
    try:
        with open(spec_file) as f:
            spec = json.load(f)
    except ValueError as e:
        raise UserError(f"{spec_file} is not valid JSON ({e})") from e
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), t) for k, t in SPEC_FIELDS):
        raise UserError(f"{spec_file} is not a run specification (expected {{model: {{}}, data: str, train: {{}}}})")
    missing = [k for k in TRAIN_KEYS if spec["train"].get(k) is None]
    if missing:
        raise UserError(f"{spec_file}: train lacks {', '.join(missing)} (attnres writes every setting)")
    for key, why in TS_ONLY:
        if spec["train"].get(key) not in (None, False, "float32"):
            raise UserError(f"{spec_file}: train.{key} is a setting of the TypeScript engine; {why}")
    return spec


class Engine:
    def __init__(self, a):
        self.a = a
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.run_dir = a.run
        self.stop_requested = False
        fault = os.environ.get("ATTNRES_TORCH_FAULT", "")  # tests: "rank:step[:kill]"
        self.fault = None
        if fault:
            parts = fault.split(":")
            self.fault = (int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else "raise")

    # ---------------------------------------------------------------- setup
    def setup(self):
        a = self.a
        check_capabilities(a)
        spec_file = os.path.join(self.run_dir, "run.json")
        if not os.path.exists(spec_file):
            raise UserError(f"{spec_file} is missing: attnres writes it before starting the torch engine")
        self.spec = read_spec(spec_file)
        s = self.train = self.spec["train"]
        if s["batch_size"] % self.world:
            raise UserError(
                f"batch_size {s['batch_size']} is not a multiple of the {self.world} processes "
                "(every process trains on an equal share of each batch)"
            )
        self.device = torch.device(f"cuda:{self.local_rank}" if a.device == "cuda" else "cpu")
        if a.device == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1:
            dist.init_process_group("nccl" if a.device == "cuda" else "gloo", init_method="env://")
        self.cfg = parse_config(self.spec["model"], "model config")
        self.mode = mode_name(self.cfg)
        self.meta, self.train_tokens, self.val_tokens = load_prepared(self.spec["data"])
        torch.manual_seed(s["seed"])

    def build(self):
        s, cfg = self.train, self.cfg
        model = CausalLM(model_kwargs_config(cfg))
        self.model = model
        if self.rank == 0:
            ckpt.recover(self.run_dir)  # the chosen copy becomes checkpoint/ before any save
        self.barrier()
        self.ckpt_dir = ckpt.find(self.run_dir)
        cur = os.path.join(self.run_dir, "checkpoint")
        if self.ckpt_dir is None and os.path.exists(os.path.join(cur, "manifest.json")):
            # checkpoint/ is only ever a complete folder renamed into place: never delete the only
            # copy of a run's progress and start over silently
            raise UserError(
                f"{cur} is damaged (its files do not match manifest.json) and no complete copy of it is left: "
                "restore it from a backup, or move it away to start the run over from step 0"
            )
        self.state = ckpt.read_state(self.ckpt_dir) if self.ckpt_dir else None
        if self.state and not self.a.resume:
            raise UserError(
                f"{self.run_dir} already holds a run (step {self.state['step']}); pass --resume to continue it, or choose another --out"
            )
        if self.state:
            ckpt.load_weights_into(model, self.ckpt_dir, self.ckpt_dir, cfg["tie_word_embeddings"])
        elif self.spec.get("init") is not None:
            ckpt.load_weights_into(model, self.spec["init"], self.spec["init"], cfg["tie_word_embeddings"])
        else:
            init_like_typescript(model, s["seed"], draw=self.rank == 0 or self.world == 1)
        model.to(self.device)
        named = list(model.named_parameters())
        self.named = named
        trainable = [(n, p) for n, p in named]
        if s.get("freeze_base"):
            trainable = [(n, p) for n, p in named if is_residual_param(n)]
            if not trainable:
                raise UserError(f"freeze_base needs a routed model, but mode {self.mode} has no routing parameters")
            keep = {id(p) for _, p in trainable}
            for _, p in named:
                if id(p) not in keep:
                    p.requires_grad_(False)
        self.trainable = [p for _, p in trainable]
        groups = []
        if s.get("routing_lr") is not None:
            groups.append({"name": "routing", "params": [], "lr": s["routing_lr"], "weight_decay": 0.0})
        groups.append({"name": "matrices", "params": [], "lr": s["lr"], "weight_decay": s["weight_decay"]})
        groups.append({"name": "vectors", "params": [], "lr": s["lr"], "weight_decay": 0.0})
        routing = s.get("routing_lr") is not None
        for n, p in trainable:
            if routing and is_residual_param(n):
                groups[0]["params"].append(p)
            else:
                groups[int(routing) + (0 if p.dim() >= 2 else 1)]["params"].append(p)
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["base_lr"] = g["lr"]
        self.wrapped = self.wrap(model)
        opt_kw = {"betas": (s["beta1"], s["beta2"]), "eps": 1e-8}
        if torch_version() >= (2, 0):
            opt_kw["foreach"] = False
        self.opt = torch.optim.AdamW(groups, **opt_kw)
        self.adam_t = 0
        self.step = 0
        self.seconds = 0.0
        self.sampler = BatchSampler(self.train_tokens, s["batch_size"], s["seq_len"], s["seed"] + 1)
        if self.state:
            self.load_optimizer(ckpt.load_moments(self.ckpt_dir), int(self.state["adam_t"]))
            self.sampler.set_state(self.state["sampler"])
            self.step = int(self.state["step"])
            self.seconds = float(self.state.get("seconds") or 0.0)
        self.evals = eval_batches(self.val_tokens, s["batch_size"], s["seq_len"], s["eval_batches"])
        self.metrics_file = os.path.join(self.run_dir, "metrics.jsonl")
        self.csv_file = os.path.join(self.run_dir, "metrics.csv")
        if self.rank == 0:
            if self.state:
                kept = []
                if os.path.exists(self.metrics_file):
                    with open(self.metrics_file) as f:
                        for line in f:
                            if line.strip() and json.loads(line)["step"] <= self.step:
                                kept.append(line.rstrip("\n"))
                with open(self.metrics_file, "w") as f:
                    f.write("".join(k + "\n" for k in kept))
                self.records = [json.loads(k) for k in kept]
                event(log=f"resuming {self.run_dir} at step {self.step}/{s['steps']}")
            else:
                open(self.metrics_file, "w").close()
                self.records = []
                if self.spec.get("init") is not None:
                    event(log=f"starting from the weights of {self.spec['init']}")
            write_csv(self.csv_file, self.records)

    def wrap(self, model):
        a = self.a
        if self.world > 1 or a.fsdp:
            if a.fsdp:
                from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

                wrapped = FSDP(
                    model,
                    use_orig_params=True,
                    sync_module_states=True,
                    device_id=self.device if a.device == "cuda" else None,
                )
            else:
                from torch.nn.parallel import DistributedDataParallel as DDP

                # Sublayer 0 of delta / delta-block without a null source routes nothing: its
                # router gets no gradient, which DDP must be told about.
                unused = self.mode in ("delta", "delta-block") and not self.cfg["attnres_use_null_source"]
                wrapped = DDP(
                    model, device_ids=[self.local_rank] if a.device == "cuda" else None, find_unused_parameters=unused
                )
        else:
            wrapped = model
        if a.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # ---------------------------------------------------------------- optimizer state
    def param_names(self):
        return {id(p): n for n, p in self.named}

    def load_optimizer(self, tensors, t):
        for n, p in self.named:
            m, v = tensors.get(f"m.{n}"), tensors.get(f"v.{n}")
            if m is None and v is None:
                continue
            if m is None or v is None or m.numel() != p.numel() or v.numel() != p.numel():
                raise UserError(f"optimizer state for {n} is incomplete or has the wrong size")
            self.opt.state[p] = {
                "step": torch.tensor(float(t)),
                "exp_avg": m.reshape(p.shape).to(self.device, p.dtype).clone(),
                "exp_avg_sq": v.reshape(p.shape).to(self.device, p.dtype).clone(),
            }
        self.adam_t = t

    def export_optimizer(self):
        out = {}
        for n, p in self.named:
            st = self.opt.state.get(p)
            if not st or "exp_avg" not in st:
                continue
            out[f"m.{n}"] = st["exp_avg"].reshape(p.shape)
            out[f"v.{n}"] = st["exp_avg_sq"].reshape(p.shape)
        return out

    # ---------------------------------------------------------------- collectives
    def all_mean(self, x):
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def any_rank(self, flag):
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item() > 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    # ---------------------------------------------------------------- steps
    def rows(self, ids, targets):
        share = ids.shape[0] // self.world
        sl = slice(self.rank * share, (self.rank + 1) * share)
        return ids[sl].to(self.device), targets[sl].to(self.device)

    def autocast(self):
        if self.a.dtype == "bfloat16":
            return torch.autocast(device_type=self.a.device, dtype=torch.bfloat16)
        return _NullContext()

    def train_step(self, batches, mult):
        s = self.train
        k = len(batches)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for i, (ids, targets) in enumerate(batches):
            x, y = self.rows(ids, targets)
            sync = i == k - 1 or self.world == 1 or not hasattr(self.wrapped, "no_sync")
            ctx = _NullContext() if sync else self.wrapped.no_sync()
            with ctx:
                with self.autocast():
                    loss = self.wrapped(x, y)["loss"]
                (loss / k if k > 1 else loss).backward()
            total += loss.item()
        loss = self.all_mean(total / k)
        if not math.isfinite(loss):
            return loss, None
        if s["clip"] > 0:
            if self.a.fsdp:
                norm = float(self.wrapped.clip_grad_norm_(s["clip"]))
            else:
                norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, s["clip"]))
        else:
            norm = float("nan")
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * mult
        self.opt.step()
        self.adam_t += 1
        return loss, norm

    @torch.no_grad()
    def evaluate(self):
        total = 0.0
        for ids, targets in self.evals:
            x, y = self.rows(ids, targets)
            with self.autocast():
                total += self.wrapped(x, y)["loss"].item()
        return self.all_mean(total / len(self.evals))

    # ---------------------------------------------------------------- checkpoints
    def full_weights(self):
        if self.a.fsdp:
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
            with FSDP.state_dict_type(self.wrapped, StateDictType.FULL_STATE_DICT, cfg):
                sd = self.wrapped.state_dict()
            osd = FSDP.full_optim_state_dict(self.wrapped, self.opt)
            moments = {}
            for n, st in (osd.get("state") or {}).items():
                moments[f"m.{n}"] = st["exp_avg"]
                moments[f"v.{n}"] = st["exp_avg_sq"]
            return {n: sd[n] for n, _ in self.named if n in sd}, moments
        return {n: p for n, p in self.named}, self.export_optimizer()

    def save(self, done, result=None):
        weights, moments = self.full_weights()
        if self.rank == 0:
            state = {
                "step": self.step,
                "adam_t": self.adam_t,
                "sampler": self.sampler.get_state(),
                "done": done,
                "seconds": self.seconds,
            }
            if result is not None:
                state["result"] = result
            ckpt.save(self.run_dir, self.step, weights, self.cfg, self.spec["data"], moments, state)
        self.barrier()

    # ---------------------------------------------------------------- the loop
    def run(self):
        s = self.train
        if self.state and self.state.get("done") and self.state.get("result"):
            if self.rank == 0:
                event(end=True, done=True, interrupted=False, result=self.state["result"])
            return 0
        total_steps = s["steps"]
        tokens_per_step = s["batch_size"] * s["seq_len"] * s["grad_accum"]
        ck_every = s.get("checkpoint_every") or s["eval_every"]
        bytes_per_token = self.meta["val"]["bytes"] / self.meta["val"]["tokens"]
        last_loss = float("nan")
        val_loss = float("nan")
        session_steps = 0
        session_start = time.perf_counter()
        interrupted = False
        params = sum(p.numel() for _, p in self.named)
        while self.step < total_steps:
            if self.any_rank(self.stop_requested):
                interrupted = True
                break
            if self.fault and self.fault[0] == self.rank and self.fault[1] == self.step + 1:
                if self.fault[2] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected fault at step {self.step + 1}")
            batches = [self.sampler.next() for _ in range(s["grad_accum"])]
            t0 = time.perf_counter()
            mult = lr_multiplier(self.step, s["warmup"], total_steps, s["min_lr_ratio"])
            loss, norm = self.train_step(batches, mult)
            if norm is None:
                if self.rank == 0:
                    event(diverged=True, step=self.step + 1, loss=str(loss))
                    print(
                        f"training diverged at step {self.step + 1}: the loss is {loss}. The weights were not updated with it. "
                        "Try a lower learning rate (--lr), a longer warmup (--warmup), or gradient clipping (--clip 1.0).",
                        file=sys.stderr,
                        flush=True,
                    )
                return DIVERGED_EXIT
            dt = time.perf_counter() - t0
            self.seconds += dt
            self.step += 1
            session_steps += 1
            last_loss = loss
            rec = {
                "step": self.step,
                "loss": loss,
                "grad_norm": norm,
                "lr": s["lr"] * mult,
                "tokens_per_s": tokens_per_step / dt,
            }
            if self.step % s["eval_every"] == 0 or self.step == total_steps:
                val_loss = self.evaluate()
                rec["val_loss"] = val_loss
                if self.rank == 0:
                    event(
                        log=f"step {self.step}/{total_steps}: train loss {loss:.4f}, val loss {val_loss:.4f} "
                        f"({val_loss / bytes_per_token / math.log(2):.3f} bits/byte)"
                    )
            rec["time"] = iso_now()
            rec["elapsed_s"] = self.seconds
            if self.rank == 0:
                rec = ckpt.json_safe(rec)
                with open(self.metrics_file, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                self.records.append(rec)
                write_csv(self.csv_file, self.records)
                tps = session_steps * tokens_per_step / (time.perf_counter() - session_start)
                event(step=self.step, total=total_steps, loss=loss, tokens_per_s=tps)
            if self.step % ck_every == 0 and self.step < total_steps:
                self.save(False)
            if session_steps == 1:
                session_start = time.perf_counter()
        tps = (
            (session_steps - 1) * tokens_per_step / (time.perf_counter() - session_start)
            if session_steps > 1
            else float("nan")
        )
        if self.a.device == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:  # CPU: the process's peak resident memory (torch has no CPU allocator statistics)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        base = {
            "mode": self.mode,
            "steps": self.step,
            "finalTrainLoss": last_loss,
            "valLoss": val_loss,
            "valPerplexity": math.exp(val_loss) if math.isfinite(val_loss) else float("nan"),
            "valBpb": val_loss / bytes_per_token / math.log(2),
            "params": params,
            "tokensPerSecond": tps,
            "peakTensorMB": peak,
            "seconds": self.seconds,
        }
        if interrupted:
            self.save(False)
            if self.rank == 0:
                event(
                    log=f"interrupted at step {self.step}/{total_steps}; checkpoint saved in "
                    f"{os.path.join(self.run_dir, 'checkpoint')} (resume with --resume)"
                )
                event(end=True, done=False, interrupted=True, result=base)
            return 0
        self.save(True, {**base, "done": True})
        if self.rank == 0:
            event(end=True, done=True, interrupted=False, result=base)
        return 0


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv):
    a = parse_args(argv)
    runs = a.run
    if len(runs) > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("attnres_torch rank 0: several --run folders are for one process only", file=sys.stderr)
        return 2
    for run in runs:  # one after the other in this process (tests: torch is imported once)
        a.run = run
        code = train_one(a)
        if code:
            return code
    return 0


def train_one(a):
    rank = os.environ.get("RANK", "0")
    eng = Engine(a)

    def on_int(*_):
        eng.stop_requested = True

    signal.signal(signal.SIGINT, on_int)
    try:
        eng.setup()
        eng.build()
        code = eng.run()
    except (UserError, ckpt.CheckpointError, ValueError) as e:
        if os.environ.get("ATTNRES_DEBUG"):
            raise
        print(f"attnres_torch rank {rank}: {e}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # noqa: BLE001
        if os.environ.get("ATTNRES_DEBUG"):
            raise
        print(f"attnres_torch rank {rank}: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass
    return code
