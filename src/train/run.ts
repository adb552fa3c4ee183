/**
 * A training run: one model, one prepared dataset, one set of settings, in one run folder.
 *
 *   <run>/run.json          the full specification (model config, data folder, settings)
 *   <run>/metrics.jsonl     one line per step ({step, loss, grad_norm, lr, tokens_per_s, val_loss?,
 *                           time, elapsed_s}) and metrics.csv, the same as CSV (src/train/metrics.ts)
 *   <run>/checkpoint/       HF layout (config.json, model.safetensors) + tokenizer files +
 *                           optimizer.safetensors (AdamW moments) + trainer_state.json (step, AdamW
 *                           step count, batch sampler state, done flag, results)
 *
 *   <run>/best/             with `keep_best`: the weights (+ config, tokenizer, best.json {step,
 *                           val_loss}) of the evaluation with the lowest validation loss so far
 *
 * Checkpoints are saved every `checkpoint_every` steps, at the end, and when the run is interrupted
 * (`signal`) by the save protocol of src/train/checkpointing.ts (temporary folder, fsync, manifest,
 * atomic rename): a crash at any instant leaves the last completed checkpoint loadable, and
 * resuming recovers it first. Resuming restores weights, moments, step and sampler state, and
 * truncates metrics.jsonl to the checkpoint's step (cutting a torn last line), so a resumed run
 * produces exactly the losses of an uninterrupted one (the kernels are deterministic for a fixed
 * thread count). Loaded weights and optimizer moments must be finite (second moments ≥ 0) and the
 * trainer state well-formed; anything else is an error naming the file and tensor. A folder that
 * holds a run is never started over without `overwrite`; `resume` needs a run to continue.
 *
 * Fine-tuning: `spec.init` names a checkpoint whose weights start the run (instead of random
 * initialisation); `train.freeze_base` trains only the residual family's parameters, leaving every
 * backbone weight bit-identical; `train.routing_lr` gives those parameters their own rate.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { defaultBackend } from "../backend/index.js";
import { BatchSampler, evalBatches } from "../data/batches.js";
import { loadPrepared, type PreparedData } from "../data/prepared.js";
import { readCheckpointWeights, readSafetensors, writeSafetensors } from "../io/safetensors.js";
import { readRegularFile, removeTempFiles, writeFileAtomic } from "../io/atomic.js";
import { optionError } from "../io/errors.js";
import { checkConfigAgainstWeights, saveCheckpoint } from "../model/checkpoint.js";
import {
  findCheckpoint,
  MetricsLog,
  recoverCheckpoint,
  RUN_FILES,
  saveCheckpointFolder,
} from "./checkpointing.js";
import { checkMemoryBudget } from "../model/budget.js";
import { parseConfig } from "../model/config.js";
import { DecoderLM } from "../model/decoder.js";
import { modeName } from "../model/residual.js";
import { loadWeights } from "../model/weights.js";
import { poolStats, resetPeak } from "../tensor/memory.js";
import { AdamW, lrMultiplier } from "./optim.js";
import { doctestScale } from "./doctest-scale.js";
import { evaluate } from "../eval/loss.js";
import { isResidualParam } from "../model/residual.js";
import { paramGroups, trainStep, TrainingDiverged } from "./trainer.js";

export const TrainSettingsSchema = z.strictObject({
  steps: z.number().int().positive(),
  batch_size: z.number().int().positive(),
  seq_len: z.number().int().positive(),
  /** Micro-batches per optimizer step (gradient accumulation). */
  grad_accum: z.number().int().positive().default(1),
  lr: z.number().positive(),
  /** Learning rate of the residual family's parameters (routing, gates, DDL); defaults to lr. */
  routing_lr: z.number().positive().optional(),
  min_lr_ratio: z.number().min(0).max(1).default(0.1),
  warmup: z.number().int().nonnegative().default(0),
  weight_decay: z.number().nonnegative().default(0.1),
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.95),
  clip: z.number().nonnegative().default(1.0),
  eval_every: z.number().int().positive().default(100),
  eval_batches: z.number().int().positive().default(8),
  checkpoint_every: z.number().int().positive().optional(),
  /** Train only the residual family's parameters (isResidualParam); the backbone stays bit-identical. */
  freeze_base: z.boolean().optional(),
  /** Keep <run>/best/: the weights of the evaluation with the lowest validation loss. */
  keep_best: z.boolean().optional(),
  seed: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).default(0),
  /**
   * Precision of the matmuls' operands (TypeScript engine, native backend): "bfloat16" rounds both
   * operands of every GEMM to bfloat16 and accumulates in float32; weights, optimizer state and
   * every other op stay float32. Absent: float32.
   */
  matmul_dtype: z.enum(["float32", "bfloat16"]).optional(),
});
export type TrainSettings = z.output<typeof TrainSettingsSchema>;
export type TrainSettingsInput = z.input<typeof TrainSettingsSchema>;

export interface RunSpec {
  /** Model config (HF names; residual-family keys included). vocab_size defaults to the tokenizer's. */
  model: Record<string, unknown>;
  /** A prepared dataset folder (attnres prepare). */
  data: string;
  train: TrainSettings;
  /**
   * A checkpoint folder whose weights start the run (fine-tuning). Its tensors must match the
   * model config exactly. Used only when the run starts; a resumed run continues from its own
   * checkpoint.
   */
  init?: string;
}

export interface RunResult {
  dir: string;
  mode: string;
  steps: number;
  done: boolean;
  interrupted: boolean;
  finalTrainLoss: number;
  valLoss: number;
  valPerplexity: number;
  valBpb: number;
  params: number;
  tokensPerSecond: number;
  peakTensorMB: number;
  seconds: number;
}

export interface TrainerState {
  step: number;
  adam_t: number;
  sampler: number[];
  done: boolean;
  seconds: number;
  result?: Omit<RunResult, "dir" | "interrupted">;
}

const TrainerStateSchema = z.object({
  step: z.number().int().nonnegative(),
  adam_t: z.number().int().nonnegative(),
  sampler: z.array(z.unknown()),
  done: z.boolean(),
  seconds: z.number().nonnegative(),
  result: z.record(z.string(), z.unknown()).optional(),
});

export interface RunOptions {
  /**
   * Continue the run in <dir> (a finished run is returned as it is); true needs a run there,
   * "auto" starts one when there is none.
   */
  resume?: boolean | "auto";
  /** Checked between steps: when it is aborted, the run checkpoints and returns (Ctrl-C). */
  signal?: AbortSignal;
  /** Stop (with a checkpoint, as if interrupted) after this many steps in this call (tests). */
  stopAfter?: number;
  /** Progress callback after every step. */
  onStep?: (step: number, total: number, loss: number, tokensPerSecond: number) => void;
  /** One line of text per evaluation / checkpoint / notice. */
  log?: (line: string) => void;
  /** Start over in a folder that holds a run (its checkpoints and metrics are deleted). */
  overwrite?: boolean;
  /** Verify checksums of the checkpoint being resumed (default true). */
  verify?: boolean;
  /** Called after each checkpoint save completes, with its step (tests). */
  onSave?: (step: number) => void;
}

/** Fills defaults and checks a run specification against its data. */
export function resolveSpec(
  raw: { model: Record<string, unknown>; data: string; train: TrainSettingsInput; init?: string },
  data?: PreparedData,
): RunSpec {
  const parsed = TrainSettingsSchema.safeParse(raw.train);
  if (!parsed.success)
    throw new Error(
      `invalid training settings: ${parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")}`,
    );
  const train = doctestScale(parsed.data); // ATTNRES_DOCTEST: tiny runs
  const vocab = data?.tokenizer.vocabSize;
  const model = { ...raw.model };
  if (model.vocab_size === undefined && vocab !== undefined) model.vocab_size = vocab;
  if (vocab !== undefined && Number(model.vocab_size) < vocab)
    throw new Error(
      `the model's vocab_size ${String(model.vocab_size)} is smaller than the tokenizer's ${vocab} ids`,
    );
  const mpe = Number(model.max_position_embeddings ?? 0);
  if (mpe < train.seq_len) model.max_position_embeddings = train.seq_len;
  const config = parseConfig(model, "model config");
  checkMemoryBudget(config, train);
  return { model, data: raw.data, train, ...(raw.init !== undefined ? { init: raw.init } : {}) };
}

const ckptDir = (dir: string) => path.join(dir, "checkpoint");

/**
 * Why a run folder cannot be used as asked:
 *   no-run              resuming, but the folder holds no run
 *   exists              starting, but the folder holds a run (`step`: its checkpoint's, or null)
 *   different-settings  resuming a run whose run.json differs from the specification
 *   damaged-spec        run.json does not parse (`path` is the file)
 *   damaged-state       a checkpoint's trainer_state.json does not parse (`path` is the file)
 * `problem` states what is wrong; `message` adds what to do in terms of RunOptions. Front ends
 * (the CLI) compose their own advice from `reason` and `problem`.
 */
export type RunFolderReason = "no-run" | "exists" | "different-settings" | "damaged-spec" | "damaged-state";

/**
 * A run-folder problem is a plain Error (callers and tests tell errors of attnres from bugs by
 * `constructor === Error`) carrying these fields; `isRunFolderError` recognises it.
 */
export interface RunFolderError extends Error {
  readonly reason: RunFolderReason;
  /** The run folder, or the damaged file for the damaged-* reasons. */
  readonly path: string;
  readonly problem: string;
  /** The step of the run the folder holds (reason exists; null when it has no checkpoint yet). */
  readonly step: number | null;
}

const RUN_FOLDER_ERROR: unique symbol = Symbol("attnres.RunFolderError");

/** The error for a run-folder problem: message `${problem}; ${advice}`, with the fields above. */
export function runFolderError(
  reason: RunFolderReason,
  path: string,
  problem: string,
  advice: string,
  step: number | null = null,
  options?: ErrorOptions,
): RunFolderError {
  return Object.assign(new Error(`${problem}; ${advice}`, options), {
    reason,
    path,
    problem,
    step,
    [RUN_FOLDER_ERROR]: true,
  });
}

/** Whether `e` was made by runFolderError. */
export function isRunFolderError(e: unknown): e is RunFolderError {
  return (
    e instanceof Error && (e as Partial<Record<typeof RUN_FOLDER_ERROR, boolean>>)[RUN_FOLDER_ERROR] === true
  );
}

/** The trainer state of checkpoint folder `c`, checked (an error naming the file otherwise). */
export function readState(c: string, totalSteps?: number): TrainerState {
  const f = path.join(c, "trainer_state.json");
  let raw: unknown;
  try {
    raw = JSON.parse(readRegularFile(f).toString("utf8"));
  } catch (e) {
    throw runFolderError(
      "damaged-state",
      f,
      `${f} is damaged (${(e as Error).message})`,
      "resume from another copy of the run, or start it over (RunOptions.overwrite)",
      null,
      { cause: e },
    );
  }
  const r = TrainerStateSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new Error(
      `${f} is not a valid trainer state: ${i.path.length ? i.path.join(".") + ": " : ""}${i.message}`,
    );
  }
  const st = r.data as TrainerState;
  if (totalSteps !== undefined && st.step > totalSteps)
    throw new Error(`${f}: step ${st.step} is beyond the run's ${totalSteps} steps`);
  if (st.done && !st.result) throw new Error(`${f}: a finished run without its result`);
  return st;
}

/** The saved result of a finished run in `dir`, or null. */
export function finishedRun(dir: string): RunResult | null {
  if (!fs.existsSync(dir)) return null;
  const c = findCheckpoint(dir, "checkpoint", false);
  if (!c) return null;
  const s = readState(c.dir);
  return s.done && s.result ? { ...s.result, dir, interrupted: false } : null;
}

/** Entries of a run folder that belong to a run (what RunOptions.overwrite removes). */
const RUN_ENTRY = /^(run\.json|metrics\.(jsonl|csv)|(checkpoint|best)(\.tmp|\.old)?)$/;

/** The entries of run folder `dir` that belong to a run (none when it does not exist). */
export function runEntries(dir: string): string[] {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => RUN_ENTRY.test(n)) : [];
}

/**
 * Both engines' run: creates run folder `dir` and runs `train` in it. When `train` fails (for any
 * reason but a divergence) on a new run (`isNew`: the folder held no run, or overwrite removed it;
 * never a resumed one) before `trained()` says a step was trained, the run is undone
 * (removeUntrainedRun): its run.json alone would make the corrected call meet "already holds a run".
 * Rethrows the run's error.
 */
export async function trainInRunFolder<T>(
  dir: string,
  isNew: boolean,
  trained: () => boolean,
  train: () => Promise<T>,
): Promise<T> {
  const made = fs.mkdirSync(dir, { recursive: true });
  try {
    return await train();
  } catch (e) {
    if (isNew && !trained() && !(e instanceof TrainingDiverged))
      try {
        removeUntrainedRun(dir, made);
      } catch {
        // the run's own error is the one to report
      }
    throw e;
  }
}

/**
 * Undoes a new run that failed before anything was trained: when no step was logged
 * (metrics.jsonl absent or empty) and no checkpoint begun, removes run.json and the metrics files,
 * then the folders from `dir` up to `made` (mkdirSync's first created folder) that are empty.
 */
function removeUntrainedRun(dir: string, made: string | undefined): void {
  const left = runEntries(dir);
  const jsonl = path.join(dir, "metrics.jsonl");
  if (!left.every((n) => /^(run\.json|metrics\.(jsonl|csv))$/.test(n))) return;
  if (fs.existsSync(jsonl) && fs.statSync(jsonl).size > 0) return;
  for (const n of left) fs.rmSync(path.join(dir, n), { force: true });
  if (made === undefined) return;
  const top = path.resolve(made);
  for (let d = path.resolve(dir); fs.readdirSync(d).length === 0; d = path.dirname(d)) {
    fs.rmdirSync(d);
    if (d === top || d === path.dirname(d)) break;
  }
}

/**
 * The run-folder rules both engines apply before anything else: resume needs a run to continue
 * (unless "auto"); a folder holding a run needs resume or overwrite. Returns the run's entries,
 * which overwrite removes (`removeRun`) only once every other check has passed.
 */
export function checkRunFolderOptions(dir: string, opts: Pick<RunOptions, "resume" | "overwrite">): string[] {
  const held = runEntries(dir);
  if (opts.resume && !opts.overwrite) {
    if (!held.length && opts.resume !== "auto")
      throw runFolderError(
        "no-run",
        dir,
        `${dir} holds no run to resume (no run.json or checkpoint)`,
        "start a new run instead (RunOptions.resume off)",
      );
  } else if (held.length && !opts.overwrite) {
    const c = findCheckpoint(dir, "checkpoint", false);
    throw runFolderError(
      "exists",
      dir,
      `${dir} already holds a run (${c ? `step ${c.step}` : "no checkpoint yet"})`,
      "continue it (RunOptions.resume), start over (RunOptions.overwrite), or choose another folder",
      c ? c.step : null,
    );
  }
  return held;
}

/** Removes the entries `held` of a run (overwrite), saying so when there were any. */
export function removeRun(dir: string, held: readonly string[], log: (line: string) => void): void {
  if (!held.length) return;
  for (const n of held) fs.rmSync(path.join(dir, n), { recursive: true, force: true });
  log(`overwrite: removed the previous run in ${dir}`);
}

function readSpecFile(file: string): RunSpec {
  try {
    const s = JSON.parse(readRegularFile(file).toString("utf8")) as RunSpec | null;
    if (!s || typeof s !== "object" || typeof s.model !== "object" || typeof s.train !== "object")
      throw new Error("not a run specification");
    return s;
  } catch (e) {
    throw runFolderError(
      "damaged-spec",
      file,
      `${file} is damaged (${(e as Error).message})`,
      "start the run over (RunOptions.overwrite)",
      null,
      { cause: e },
    );
  }
}

export function sameSpec(a: RunSpec, b: RunSpec): boolean {
  return (
    JSON.stringify(a.model) === JSON.stringify(b.model) &&
    JSON.stringify(a.train) === JSON.stringify(b.train) &&
    path.resolve(a.data) === path.resolve(b.data) &&
    (a.init === undefined) === (b.init === undefined) &&
    (a.init === undefined || path.resolve(a.init) === path.resolve(b.init!))
  );
}

/** Runs (or resumes) a training run in `dir`. */
export async function runTraining(rawSpec: RunSpec, dir: string, opts: RunOptions = {}): Promise<RunResult> {
  const log = opts.log ?? (() => {});
  const data = loadPrepared(rawSpec.data);
  const spec = resolveSpec(rawSpec, data);
  const s = spec.train;
  const specFile = path.join(dir, "run.json");
  const backend = defaultBackend();
  const matmulDtype = s.matmul_dtype ?? "float32";
  if (matmulDtype !== "float32") {
    if (!backend.setMatmulDtype)
      throw optionError(
        (n) =>
          `${n("matmul_dtype", matmulDtype)} needs the native backend (the ${backend.name} backend has none)`,
      );
    // Throws on a CPU without it, before the folder is touched; the run's own try below sets it
    // for the training and puts float32 back whatever happens (errors before it leave float32).
    backend.setMatmulDtype(matmulDtype);
    backend.setMatmulDtype("float32");
  }
  const held = checkRunFolderOptions(dir, opts);
  const resuming = held.length > 0 && !opts.overwrite;
  if (resuming && fs.existsSync(specFile) && !sameSpec(readSpecFile(specFile), spec))
    throw runFolderError(
      "different-settings",
      dir,
      `${dir} holds a run with different settings`,
      "choose another folder",
    );
  let state: TrainerState | null = null;
  if (resuming) {
    const rec = recoverCheckpoint(dir, "checkpoint", opts.verify ?? true);
    for (const n of rec.notes) log(`recovery: ${n}`);
    if (rec.checkpoint) {
      state = readState(rec.checkpoint.dir, s.steps);
      if (state.step !== rec.checkpoint.step && fs.existsSync(path.join(rec.checkpoint.dir, "manifest.json")))
        throw new Error(
          `${path.join(rec.checkpoint.dir, "trainer_state.json")}: step ${state.step} disagrees with the manifest's ${rec.checkpoint.step}`,
        );
    } else log(`no complete checkpoint in ${dir}: starting from step 0`);
    if (s.keep_best)
      for (const n of recoverCheckpoint(dir, "best", opts.verify ?? true).notes) log(`recovery: ${n}`);
  }
  if (state?.done && state.result) return { ...state.result, dir, interrupted: false };

  // Every check that can refuse the run comes before the folder is touched: a refused command
  // leaves no run.json behind (the corrected command would meet "already holds a run") and, with
  // overwrite, the previous run intact.
  if (spec.init !== undefined && !state)
    checkConfigAgainstWeights(spec.init, parseConfig(spec.model, "model config"));
  const sampler = new BatchSampler(data.train, s.batch_size, s.seq_len, s.seed + 1);
  const evals = evalBatches(data.val, s.batch_size, s.seq_len, s.eval_batches);
  const model = new DecoderLM(parseConfig(spec.model), { backend, seed: s.seed });
  const mode = modeName(model.config);
  const extra =
    s.routing_lr !== undefined
      ? [{ name: "routing", match: isResidualParam, lr: s.routing_lr, weightDecay: 0 }]
      : [];
  let groups = paramGroups(model, s.lr, s.weight_decay, extra);
  let trainable = model.parameters();
  if (s.freeze_base) {
    const routing = new Set(
      model
        .namedParameters()
        .filter(([n]) => isResidualParam(n))
        .map(([, p]) => p),
    );
    if (routing.size === 0) {
      model.dispose();
      throw new Error(`freeze_base needs a routed model, but mode ${mode} has no routing parameters`);
    }
    groups = groups
      .map((g) => ({ ...g, params: g.params.filter((p) => routing.has(p)) }))
      .filter((g) => g.params.length);
    trainable = [...routing];
    for (const p of model.parameters()) if (!routing.has(p)) p.requiresGrad = false;
  }
  if (spec.init !== undefined && !state) {
    // The whole init checkpoint (every tensor, its checksums, finite values) before the folder is
    // touched, like the checks above.
    try {
      loadWeights(model, readCheckpointWeights(spec.init).tensors, {
        source: spec.init,
        allowUnexpected: (n) => model.config.tie_word_embeddings && n === "lm_head.weight",
      });
    } catch (e) {
      model.dispose();
      throw e;
    }
    log(`starting from the weights of ${spec.init}`);
  }
  const opt = new AdamW(groups, { beta1: s.beta1, beta2: s.beta2 });
  const bytesPerToken = data.meta.val.bytes / data.meta.val.tokens;
  if (opts.overwrite) removeRun(dir, held, log);
  for (const f of removeTempFiles(dir, RUN_FILES)) log(`removed the leftover ${f}`);
  // A new run that fails before its first step (out of memory, a full disk) is undone.
  let step = 0;
  return trainInRunFolder(dir, !resuming && !state, () => step > 0, trainRun);

  async function trainRun(): Promise<RunResult> {
    writeFileAtomic(specFile, JSON.stringify(spec, null, 2) + "\n");
    const metrics = new MetricsLog(path.join(dir, "metrics.jsonl"));
    const verify = opts.verify ?? true;
    let seconds = 0;
    let bestVal = Infinity;
    try {
      if (matmulDtype !== "float32") backend.setMatmulDtype?.(matmulDtype);
      if (state) {
        const c = ckptDir(dir);
        const wf = path.join(c, "model.safetensors");
        loadWeights(model, readSafetensors(wf, { verify }).tensors, { source: wf });
        const of = path.join(c, "optimizer.safetensors");
        const moments = readSafetensors(of, { verify }).tensors;
        opt.loadState(model.namedParameters(), moments, state.adam_t, of);
        try {
          const raw = state.sampler as unknown[];
          if (raw.length !== 5 || !raw.every((v) => v === null || typeof v === "number")) throw new Error();
          sampler.setState(raw.map((v) => (v as number | null) ?? NaN));
        } catch {
          throw new Error(`${path.join(c, "trainer_state.json")}: sampler is not a saved generator state`);
        }
        step = state.step;
        seconds = state.seconds;
        for (const n of metrics.recover(step)) log(`recovery: ${n}`);
        if (s.keep_best) bestVal = readBest(dir);
        log(`resuming ${dir} at step ${step}/${s.steps}`);
      } else if (resuming) {
        for (const n of metrics.recover(0)) log(`recovery: ${n}`);
        fs.rmSync(path.join(dir, "best"), { recursive: true, force: true });
      }
      if (!state && !resuming) metrics.reset();

      const save = (done: boolean, result?: TrainerState["result"]) => {
        metrics.sync();
        saveCheckpointFolder(dir, "checkpoint", step, (tmp) => {
          saveCheckpoint(tmp, model, { generator: "attnres train" });
          data.tokenizer.save(tmp);
          writeSafetensors(path.join(tmp, "optimizer.safetensors"), opt.exportState(model.namedParameters()));
          const st: TrainerState = {
            step,
            adam_t: opt.t,
            sampler: sampler.getState(),
            done,
            seconds,
            ...(result ? { result } : {}),
          };
          fs.writeFileSync(path.join(tmp, "trainer_state.json"), JSON.stringify(st, null, 2) + "\n");
        });
        opts.onSave?.(step);
      };
      const saveBest = (val: number) => {
        saveCheckpointFolder(dir, "best", step, (tmp) => {
          saveCheckpoint(tmp, model, { generator: "attnres train (best validation loss)" });
          data.tokenizer.save(tmp);
          fs.writeFileSync(path.join(tmp, "best.json"), JSON.stringify({ step, val_loss: val }) + "\n");
        });
      };

      resetPeak(backend);
      const sched = { warmup: s.warmup, total: s.steps, minRatio: s.min_lr_ratio };
      const tokensPerStep = s.batch_size * s.seq_len * s.grad_accum;
      const ckEvery = s.checkpoint_every ?? s.eval_every;
      let lastLoss = NaN;
      let valLoss = NaN;
      let sessionSteps = 0;
      let sessionStart = performance.now();
      let firstDt = 0;
      let interrupted = false;
      while (step < s.steps) {
        if (opts.signal?.aborted || (opts.stopAfter !== undefined && sessionSteps >= opts.stopAfter)) {
          interrupted = true;
          break;
        }
        const t0 = performance.now();
        const mult = lrMultiplier(step, sched);
        const micro = { count: s.grad_accum, next: () => sampler.next() }; // streamed: one at a time
        const { loss, gradNorm } = trainStep(model, opt, micro, step + 1, mult, s.clip, trainable);
        const dt = (performance.now() - t0) / 1000;
        const ended = new Date();
        seconds += dt;
        if (sessionSteps === 0) firstDt = dt;
        step++;
        sessionSteps++;
        lastLoss = loss;
        const tps = (sessionSteps * tokensPerStep) / ((performance.now() - sessionStart) / 1000);
        const rec: Record<string, number> & { step: number } = {
          step,
          loss,
          grad_norm: gradNorm,
          lr: s.lr * mult,
          tokens_per_s: tokensPerStep / dt,
        };
        if (step % s.eval_every === 0 || step === s.steps) {
          valLoss = evaluate(model, evals);
          rec.val_loss = valLoss;
          log(
            `step ${step}/${s.steps}: train loss ${loss.toFixed(4)}, val loss ${valLoss.toFixed(4)} (${(valLoss / bytesPerToken / Math.LN2).toFixed(3)} bits/byte)`,
          );
        }
        metrics.append({ ...rec, time: ended.toISOString(), elapsed_s: seconds });
        if (s.keep_best && rec.val_loss !== undefined && rec.val_loss < bestVal) {
          bestVal = rec.val_loss;
          saveBest(bestVal);
        }
        opts.onStep?.(step, s.steps, loss, tps);
        if (step % ckEvery === 0 && step < s.steps) save(false);
        // Let signal handlers (Ctrl-C) run between steps.
        await new Promise((r) => setImmediate(r));
        if (sessionSteps === 1) sessionStart = performance.now(); // exclude the cold first step from tokens/s
      }
      const tokensPerSecond =
        sessionSteps > 1
          ? ((sessionSteps - 1) * tokensPerStep) / ((performance.now() - sessionStart) / 1000)
          : sessionSteps === 1
            ? tokensPerStep / firstDt
            : 0;
      if (Number.isNaN(valLoss) && !interrupted) valLoss = evaluate(model, evals);
      const base = {
        mode,
        steps: step,
        finalTrainLoss: lastLoss,
        valLoss,
        valPerplexity: Math.exp(valLoss),
        valBpb: valLoss / bytesPerToken / Math.LN2,
        params: model.numParameters(),
        tokensPerSecond,
        peakTensorMB: poolStats(backend).peakLiveBytes / 2 ** 20,
        seconds,
      };
      if (interrupted) {
        save(false);
        log(
          `interrupted at step ${step}/${s.steps}; checkpoint saved in ${ckptDir(dir)} (resume the run to continue)`,
        );
        return { ...base, dir, done: false, interrupted: true };
      }
      const result = { ...base, done: true };
      save(true, result);
      return { ...result, dir, interrupted: false };
    } finally {
      metrics.close();
      model.dispose();
      opt.dispose();
      if (matmulDtype !== "float32") backend.setMatmulDtype?.("float32");
    }
  }
}

/** The validation loss of <run>/best (Infinity when there is none yet). */
function readBest(dir: string): number {
  const f = path.join(dir, "best", "best.json");
  if (!fs.existsSync(f)) return Infinity;
  try {
    const v = (JSON.parse(fs.readFileSync(f, "utf8")) as { val_loss?: unknown }).val_loss;
    if (typeof v !== "number" || !Number.isFinite(v)) throw new Error("val_loss is not a finite number");
    return v;
  } catch (e) {
    throw new Error(`${f} is damaged (${(e as Error).message}); delete the best folder to start it over`, {
      cause: e,
    });
  }
}
