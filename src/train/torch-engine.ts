/**
 * The torch engine (python/attnres_torch) driven from TypeScript: the same run specification,
 * run folder and result as runTraining (src/train/run.ts), trained by PyTorch workers.
 *
 *   findTorch()          the Python interpreter to use: $ATTNRES_PYTHON, else the first of
 *                        `python3` on PATH and /usr/bin/python3 that imports torch; its probe
 *                        (torch version, whether torchrun works, FSDP, torch.compile, CUDA devices)
 *   torchrunArgv()       the torchrun command line for a run (printed so it can go into a SLURM script)
 *   runTorchTraining()   resolves and checks the spec exactly as runTraining does, writes run.json,
 *                        starts torchrun — or, where torchrun is broken (torch 1.13 under Python
 *                        3.11), the local workers itself with torchrun's environment (RANK,
 *                        WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) —
 *                        relays progress (rank 0 prints `@attnres {json}` lines), and returns the
 *                        RunResult. A worker that fails stops the whole job; the error names its
 *                        rank and message; the last checkpoint stays as it was (rank 0 replaces it
 *                        atomically). Ctrl-C (the signal) asks the workers to checkpoint and stop.
 *                        A new run (the folder held no run, or overwrite removed it) that fails
 *                        before its first trained step — the workers' own checks (freeze_base on
 *                        a standard model, an init checkpoint that does not fit, …) or any other
 *                        failure — leaves the folder as it found it: its run.json and step-less
 *                        metrics files go, and so do the folders this call made. A run with a
 *                        logged step or a checkpoint, a resumed run and a diverged run keep all.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { loadPrepared } from "../data/prepared.js";
import { packageRoot } from "../io/paths.js";
import { writeFileAtomic } from "../io/atomic.js";
import { optionError } from "../io/errors.js";
import { findCheckpoint } from "./checkpointing.js";
import {
  readState,
  resolveSpec,
  checkRunFolderOptions,
  removeRun,
  sameSpec,
  trainInRunFolder,
  type RunOptions,
  type RunResult,
  type RunSpec,
} from "./run.js";
import { TrainingDiverged } from "./trainer.js";

/** Where the Python package lives (PYTHONPATH for the workers). */
export const PYTHON_DIR = path.join(packageRoot(), "python");
export const TORCH_INSTALL = "bash scripts/setup.sh --with-torch";

export interface TorchOptions {
  nprocPerNode?: number;
  nnodes?: number;
  nodeRank?: number;
  masterAddr?: string;
  masterPort?: number;
  device?: "cpu" | "cuda";
  dtype?: "float32" | "bfloat16";
  fsdp?: boolean;
  compile?: boolean;
}

export interface TorchProbe {
  /** The interpreter (path or command) that imports torch. */
  python: string;
  pythonVersion: string;
  torch: string;
  /** false where torchrun fails before starting a worker (torch 1.13 under Python 3.11). */
  torchrun: boolean;
  fsdp: boolean;
  compile: boolean;
  cuda: number;
  cpus: number;
}

interface RawProbe {
  python: string;
  torch: string | null;
  error: string | null;
  torchrun: boolean;
  fsdp: boolean;
  compile: boolean;
  cuda: number;
  cpus: number;
}

function probeWith(python: string): RawProbe | null {
  const r = spawnSync(python, ["-m", "attnres_torch.probe"], {
    env: { ...process.env, PYTHONPATH: pythonPath() },
    encoding: "utf8",
    timeout: 120_000,
  });
  if (r.status !== 0 || !r.stdout) return null;
  try {
    return JSON.parse(r.stdout.trim().split("\n").pop()!) as RawProbe;
  } catch {
    return null;
  }
}

let cached: { key: string; probe: TorchProbe | string } | null = null;

/** The interpreter with torch and what it offers; throws one line naming the install command. */
export function findTorch(): TorchProbe {
  const env = process.env.ATTNRES_PYTHON;
  const candidates = env ? [env] : ["python3", "/usr/bin/python3"];
  const key = candidates.join("\0");
  if (cached?.key !== key) {
    let found: TorchProbe | string = "";
    const tried: string[] = [];
    for (const py of candidates) {
      const p = probeWith(py);
      tried.push(p ? `${py}: ${p.error ?? "no torch"}` : `${py}: does not run`);
      if (p?.torch) {
        found = {
          python: py,
          pythonVersion: p.python,
          torch: p.torch,
          torchrun: p.torchrun,
          fsdp: p.fsdp,
          compile: p.compile,
          cuda: p.cuda,
          cpus: p.cpus,
        };
        break;
      }
    }
    cached = {
      key,
      probe:
        found ||
        `the torch engine needs PyTorch, and no Python here imports it (${tried.join("; ")}); install it with \`${TORCH_INSTALL}\` or set ATTNRES_PYTHON`,
    };
  }
  if (typeof cached.probe === "string") throw new Error(cached.probe);
  return cached.probe;
}

/** True when the probe's torch is at least major.minor. */
export function torchAtLeast(version: string, major: number, minor = 0): boolean {
  const [a = 0, b = 0] = (version.match(/\d+/g) ?? []).map(Number);
  return a > major || (a === major && b >= minor);
}

function pythonPath(): string {
  return [PYTHON_DIR, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter);
}

/** Fills defaults and checks the options against the interpreter; warnings go to `warn`. */
export function checkTorchOptions(
  o: TorchOptions,
  probe: TorchProbe,
  batchSize: number,
  warn: (line: string) => void,
): Required<Omit<TorchOptions, "masterAddr" | "masterPort">> & { masterAddr?: string; masterPort?: number } {
  const r = {
    nprocPerNode: o.nprocPerNode ?? 1,
    nnodes: o.nnodes ?? 1,
    nodeRank: o.nodeRank ?? 0,
    device: o.device ?? "cpu",
    dtype: o.dtype ?? "float32",
    fsdp: o.fsdp ?? false,
    compile: o.compile ?? false,
    masterAddr: o.masterAddr,
    masterPort: o.masterPort,
  };
  if (r.nodeRank >= r.nnodes)
    throw optionError((n) => `${n("nodeRank", r.nodeRank)} must be below ${n("nnodes", r.nnodes)}`);
  if (r.nnodes > 1 && (r.masterAddr === undefined || r.masterPort === undefined))
    throw optionError(
      (n) => `${n("nnodes")} > 1 needs ${n("masterAddr")} and ${n("masterPort")} (the address of node 0)`,
    );
  if (r.fsdp && !torchAtLeast(probe.torch, 2))
    throw optionError(
      (n) =>
        `${n("fsdp")} needs torch >= 2.0; ${probe.python} has torch ${probe.torch} (install a newer torch, e.g. pip install 'torch>=2', and set ATTNRES_PYTHON)`,
    );
  if (r.fsdp && !probe.fsdp)
    throw optionError(
      (n) =>
        `${n("fsdp")}: torch.distributed.fsdp does not import under ${probe.python} (torch ${probe.torch})`,
    );
  if (r.compile && !probe.compile)
    throw optionError(
      (n) => `${n("compile")} needs torch >= 2.0 (torch.compile); ${probe.python} has torch ${probe.torch}`,
    );
  if (r.device === "cuda" && probe.cuda === 0)
    throw optionError(
      (n) => `${n("device", "cuda")}: torch ${probe.torch} under ${probe.python} sees no CUDA device`,
    );
  if (r.device === "cuda" && r.nprocPerNode > probe.cuda)
    throw optionError(
      (n) => `${n("nprocPerNode", r.nprocPerNode)} is more than the ${probe.cuda} CUDA devices here`,
    );
  const world = r.nprocPerNode * r.nnodes;
  if (batchSize % world !== 0)
    throw new Error(
      `batch size ${batchSize} is not a multiple of the ${world} processes (every process trains on an equal share of each batch)`,
    );
  if (r.device === "cpu" && r.nprocPerNode > probe.cpus)
    warn(
      `warning: ${r.nprocPerNode} processes on ${probe.cpus} CPU cores; they will compete for cores (slower, same results)`,
    );
  return r;
}

/** Quotes one argument for a POSIX shell when needed. */
function shq(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

/** The worker's own arguments (after `-m attnres_torch`). */
function workerArgs(dir: string, o: ReturnType<typeof checkTorchOptions>, resume: boolean): string[] {
  return [
    "train",
    "--run",
    dir,
    ...(resume ? ["--resume"] : []),
    "--device",
    o.device,
    "--dtype",
    o.dtype,
    ...(o.fsdp ? ["--fsdp"] : []),
    ...(o.compile ? ["--compile"] : []),
  ];
}

/** torchrun's arguments (torch.distributed.run, underscore spellings that every torch accepts). */
export function torchrunArgv(
  dir: string,
  o: ReturnType<typeof checkTorchOptions>,
  resume: boolean,
  port: number,
): string[] {
  return [
    `--nproc_per_node=${o.nprocPerNode}`,
    `--nnodes=${o.nnodes}`,
    `--node_rank=${o.nodeRank}`,
    `--master_addr=${o.masterAddr ?? "127.0.0.1"}`,
    `--master_port=${o.masterPort ?? port}`,
    "-m",
    "attnres_torch",
    ...workerArgs(dir, o, resume),
  ];
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

interface WorkerEvent {
  step?: number;
  total?: number;
  loss?: number | string;
  tokens_per_s?: number;
  log?: string;
  diverged?: boolean;
  end?: boolean;
  done?: boolean;
  interrupted?: boolean;
}

/** Calls onLine for each complete line of a stream. */
function lines(stream: NodeJS.ReadableStream | null, onLine: (l: string) => void): void {
  if (!stream) return;
  let buf = "";
  stream.setEncoding("utf8");
  stream.on("data", (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  stream.on("end", () => {
    if (buf) onLine(buf);
  });
}

const ERROR_LINE = /^attnres_torch rank (\d+): (.*)$/;

/** Runs (or resumes) a training run in `dir` on the torch engine. */
export async function runTorchTraining(
  rawSpec: RunSpec,
  dir: string,
  opts: RunOptions & { torch?: TorchOptions } = {},
): Promise<RunResult> {
  const log = opts.log ?? (() => {});
  const data = loadPrepared(rawSpec.data);
  const spec = resolveSpec(rawSpec, data);
  if (spec.train.matmul_dtype !== undefined)
    throw optionError(
      (n) =>
        `${n("matmul_dtype", spec.train.matmul_dtype)} is a setting of the TypeScript engine; the torch engine's compute dtype is ${n("dtype", "bfloat16")} (autocast)`,
    );
  if (spec.train.keep_best)
    throw optionError(
      (n) =>
        `${n("keep_best")} is a setting of the TypeScript engine; the torch engine keeps only the last checkpoint`,
    );
  const specFile = path.join(dir, "run.json");
  // The run folder as runTraining treats it: a run is never started over without overwrite (which
  // deletes it only once every check below has passed); resume needs a run to continue.
  const held = checkRunFolderOptions(dir, opts);
  const found = held.length && !opts.overwrite ? findCheckpoint(dir, "checkpoint", false) : null;
  const state = found ? readState(found.dir) : null;
  if (state && fs.existsSync(specFile)) {
    const saved = JSON.parse(fs.readFileSync(specFile, "utf8")) as RunSpec;
    if (!sameSpec(saved, spec))
      throw optionError(
        (n) => `${dir} holds a run with different settings; choose another run folder (${n("dir")})`,
      );
  }
  if (state?.done && state.result) return { ...state.result, dir, interrupted: false };
  const probe = findTorch();
  const o = checkTorchOptions(opts.torch ?? {}, probe, spec.train.batch_size, (l) =>
    process.stderr.write(`attnres: ${l}\n`),
  );
  if (opts.overwrite) removeRun(dir, held, log);
  // A new run that fails before its first trained step is undone; what the workers trained shows in
  // metrics.jsonl, which removeUntrainedRun reads.
  const isNew = held.length === 0 || opts.overwrite === true;
  return trainInRunFolder(
    dir,
    isNew,
    () => false,
    async () => {
      writeFileAtomic(specFile, JSON.stringify(spec, null, 2) + "\n");
      return await runWorkers(dir, probe, o, !!state, opts);
    },
  );
}

/** Starts the workers on the run in `dir` (its run.json written), relays them, returns the result. */
async function runWorkers(
  dir: string,
  probe: TorchProbe,
  o: ReturnType<typeof checkTorchOptions>,
  resume: boolean,
  opts: RunOptions,
): Promise<RunResult> {
  const log = opts.log ?? (() => {});
  const say = log;
  const port = o.masterPort ?? (o.nnodes === 1 ? await freePort() : 29500);
  const trArgs = torchrunArgv(dir, o, resume, port);
  say(`torchrun command: PYTHONPATH=${shq(PYTHON_DIR)} torchrun ${trArgs.map(shq).join(" ")}`);
  const env = { ...process.env, PYTHONPATH: pythonPath() };

  let result: (RunResult & { done: boolean }) | null = null;
  let diverged: { step: number; loss: string } | null = null;
  const onStdout = (l: string) => {
    if (!l.startsWith("@attnres ")) {
      process.stdout.write(l + "\n");
      return;
    }
    const e = JSON.parse(l.slice(9)) as WorkerEvent & { result?: Omit<RunResult, "dir" | "interrupted"> };
    if (e.log !== undefined) log(e.log);
    if (e.diverged) diverged = { step: e.step!, loss: String(e.loss) };
    else if (e.step !== undefined && e.total !== undefined)
      opts.onStep?.(e.step, e.total, Number(e.loss), e.tokens_per_s ?? NaN);
    if (e.end && e.result)
      result = { ...e.result, dir, done: !!e.done, interrupted: !!e.interrupted } as RunResult;
  };

  const children: { rank: number; proc: ChildProcess; errors: string[] }[] = [];
  const onAbort = () => {
    for (const c of children) if (c.proc.exitCode === null) c.proc.kill("SIGINT");
  };
  opts.signal?.addEventListener("abort", onAbort);
  let failure: string | null;
  try {
    if (probe.torchrun) {
      say(`starting ${o.nprocPerNode} worker(s) with torchrun (${probe.python}, torch ${probe.torch})`);
      const proc = spawn(probe.python, ["-m", "torch.distributed.run", ...trArgs], {
        env,
        stdio: ["ignore", "pipe", "pipe"],
      });
      children.push({ rank: -1, proc, errors: [] });
    } else {
      say(
        `torchrun does not work with torch ${probe.torch} under Python ${probe.pythonVersion}; starting the ${o.nprocPerNode} local worker(s) directly with torchrun's environment`,
      );
      const world = o.nprocPerNode * o.nnodes;
      const threads = o.nprocPerNode > 1 ? Math.max(1, Math.floor(probe.cpus / o.nprocPerNode)) : undefined;
      for (let lr = 0; lr < o.nprocPerNode; lr++) {
        const rank = o.nodeRank * o.nprocPerNode + lr;
        const proc = spawn(probe.python, ["-m", "attnres_torch", ...workerArgs(dir, o, resume)], {
          env: {
            ...env,
            RANK: String(rank),
            LOCAL_RANK: String(lr),
            WORLD_SIZE: String(world),
            LOCAL_WORLD_SIZE: String(o.nprocPerNode),
            GROUP_RANK: String(o.nodeRank),
            MASTER_ADDR: o.masterAddr ?? "127.0.0.1",
            MASTER_PORT: String(port),
            ...(threads !== undefined && !process.env.OMP_NUM_THREADS
              ? { OMP_NUM_THREADS: String(threads) }
              : {}),
          },
          stdio: ["ignore", "pipe", "pipe"],
        });
        children.push({ rank, proc, errors: [] });
      }
    }
    failure = await new Promise<string | null>((resolve) => {
      let left = children.length;
      let first: string | null = null;
      for (const c of children) {
        if (c.rank <= 0) lines(c.proc.stdout, onStdout);
        else lines(c.proc.stdout, (l) => process.stdout.write(l + "\n"));
        lines(c.proc.stderr, (l) => {
          const m = ERROR_LINE.exec(l);
          if (m) c.errors.push(l);
          else if (l.trim()) process.stderr.write(l + "\n");
        });
        c.proc.on("error", (e) => {
          first ??= `could not start ${probe.python}: ${e.message}`;
        });
        c.proc.on("close", (code, sig) => {
          if ((code !== 0 || sig) && first === null) {
            const who = c.rank < 0 ? "torchrun" : `rank ${c.rank}`;
            const how = sig ? `was killed by ${sig}` : `exited with status ${code}`;
            // A rank's own message; a killed rank has none (the others' are consequences of it),
            // and torchrun reports for its workers.
            const msg = c.rank < 0 ? children.flatMap((x) => x.errors).at(-1) : c.errors.at(-1);
            first =
              code === 3
                ? "diverged"
                : `torch engine: ${who} ${how}${msg ? `: ${msg.replace(ERROR_LINE, "rank $1: $2")}` : ""}`;
            for (const other of children)
              if (other !== c && other.proc.exitCode === null && other.proc.signalCode === null)
                other.proc.kill("SIGTERM");
          }
          if (--left === 0) resolve(first);
        });
      }
    });
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
  }
  if (failure === "diverged" || diverged) {
    const d = diverged as { step: number; loss: string } | null;
    throw new TrainingDiverged(d?.step ?? NaN, Number(d?.loss ?? NaN));
  }
  if (failure) throw new Error(failure);
  if (!result) throw new Error(`torch engine: the workers ended without reporting a result (${dir})`);
  return result;
}
