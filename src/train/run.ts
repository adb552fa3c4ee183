/**
 * A training run: one model, one prepared dataset, one set of settings, in one run folder.
 *
 *   <run>/run.json          the full specification (model config, data folder, settings)
 *   <run>/metrics.jsonl     one line per step ({step, loss, grad_norm, lr, tokens_per_s, val_loss?…})
 *   <run>/checkpoint/       HF layout (config.json, model.safetensors) + tokenizer files +
 *                           optimizer.safetensors (AdamW moments) + trainer_state.json (step, AdamW
 *                           step count, batch sampler state, done flag, results)
 *
 * The checkpoint folder is replaced atomically (written beside it, then renamed), every
 * `checkpoint_every` steps, at the end, and when the run is interrupted (`signal`): a crash never
 * leaves a checkpoint that mixes two steps. Resuming restores weights, moments, step and sampler
 * state, and truncates metrics.jsonl to the checkpoint's step, so a resumed run produces exactly
 * the losses of an uninterrupted one (the kernels are deterministic for a fixed thread count).
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
import {
  readCheckpointWeights,
  readSafetensors,
  writeFileAtomic,
  writeSafetensors,
} from "../io/safetensors.js";
import { saveCheckpoint } from "../io/checkpoint.js";
import { parseConfig } from "../model/config.js";
import { DecoderLM } from "../model/decoder.js";
import { modeName } from "../model/residual.js";
import { loadWeights } from "../model/weights.js";
import { poolStats, resetPeak } from "../tensor/memory.js";
import { AdamW, lrMultiplier } from "./optim.js";
import { evaluate, isResidualParam, paramGroups, trainStep } from "./trainer.js";

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
  seed: z.number().int().nonnegative().default(0),
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

export interface RunOptions {
  /** Continue from <dir>/checkpoint if there is one (a finished run is returned as it is). */
  resume?: boolean;
  /** Checked between steps: when it is aborted, the run checkpoints and returns (Ctrl-C). */
  signal?: AbortSignal;
  /** Stop (with a checkpoint, as if interrupted) after this many steps in this call (tests). */
  stopAfter?: number;
  /** Progress callback after every step. */
  onStep?: (step: number, total: number, loss: number, tokensPerSecond: number) => void;
  /** One line of text per evaluation / checkpoint / notice. */
  log?: (line: string) => void;
}

/** Fills defaults and checks a run specification against its data. */
export function resolveSpec(
  raw: { model: Record<string, unknown>; data: string; train: TrainSettingsInput; init?: string },
  data?: PreparedData,
): RunSpec {
  const train = TrainSettingsSchema.parse(raw.train);
  const vocab = data?.tokenizer.vocabSize;
  const model = { ...raw.model };
  if (model.vocab_size === undefined && vocab !== undefined) model.vocab_size = vocab;
  if (vocab !== undefined && Number(model.vocab_size) < vocab)
    throw new Error(
      `the model's vocab_size ${String(model.vocab_size)} is smaller than the tokenizer's ${vocab} ids`,
    );
  const mpe = Number(model.max_position_embeddings ?? 0);
  if (mpe < train.seq_len) model.max_position_embeddings = train.seq_len;
  parseConfig(model, "model config");
  return { model, data: raw.data, train, ...(raw.init !== undefined ? { init: raw.init } : {}) };
}

const ckptDir = (dir: string) => path.join(dir, "checkpoint");

export function readState(dir: string): TrainerState | null {
  let c = ckptDir(dir);
  if (!fs.existsSync(c) && fs.existsSync(`${c}.old`)) c = `${c}.old`; // crashed mid-replace
  const f = path.join(c, "trainer_state.json");
  if (!fs.existsSync(f)) return null;
  try {
    return JSON.parse(fs.readFileSync(f, "utf8")) as TrainerState;
  } catch (e) {
    throw new Error(`${f} is damaged (${(e as Error).message}); delete the run folder to start over`, {
      cause: e,
    });
  }
}

/** The saved result of a finished run in `dir`, or null. */
export function finishedRun(dir: string): RunResult | null {
  const s = fs.existsSync(dir) ? readState(dir) : null;
  return s?.done && s.result ? { ...s.result, dir, interrupted: false } : null;
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
  fs.mkdirSync(dir, { recursive: true });
  const specFile = path.join(dir, "run.json");
  const state = readState(dir);
  if (state && !opts.resume)
    throw new Error(
      `${dir} already holds a run (step ${state.step}); pass --resume to continue it, or choose another --out`,
    );
  if (state && fs.existsSync(specFile)) {
    const saved = JSON.parse(fs.readFileSync(specFile, "utf8")) as RunSpec;
    if (!sameSpec(saved, spec))
      throw new Error(`${dir} holds a run with different settings; choose another --out`);
  }
  if (state?.done && state.result) return { ...state.result, dir, interrupted: false };
  writeFileAtomic(specFile, JSON.stringify(spec, null, 2) + "\n");

  const backend = defaultBackend();
  const model = new DecoderLM(spec.model, { backend, seed: s.seed });
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
  const opt = new AdamW(groups, { beta1: s.beta1, beta2: s.beta2 });
  const sampler = new BatchSampler(data.train, s.batch_size, s.seq_len, s.seed + 1);
  const evals = evalBatches(data.val, s.batch_size, s.seq_len, s.eval_batches);
  const bytesPerToken = data.meta.val.bytes / data.meta.val.tokens;
  const metricsFile = path.join(dir, "metrics.jsonl");
  let step = 0;
  let seconds = 0;
  try {
    if (state) {
      const c = fs.existsSync(ckptDir(dir)) ? ckptDir(dir) : `${ckptDir(dir)}.old`;
      loadWeights(model, readSafetensors(path.join(c, "model.safetensors")).tensors, { source: c });
      const moments = readSafetensors(path.join(c, "optimizer.safetensors")).tensors;
      opt.loadState(model.namedParameters(), moments, state.adam_t);
      sampler.setState(state.sampler);
      step = state.step;
      seconds = state.seconds;
      const kept = fs.existsSync(metricsFile)
        ? fs
            .readFileSync(metricsFile, "utf8")
            .split("\n")
            .filter((l) => l && (JSON.parse(l) as { step: number }).step <= step)
        : [];
      fs.writeFileSync(metricsFile, kept.map((l) => l + "\n").join(""));
      log(`resuming ${dir} at step ${step}/${s.steps}`);
    } else {
      if (spec.init !== undefined) {
        loadWeights(model, readCheckpointWeights(spec.init).tensors, {
          source: spec.init,
          allowUnexpected: (n) => model.config.tie_word_embeddings && n === "lm_head.weight",
        });
        log(`starting from the weights of ${spec.init}`);
      }
      fs.writeFileSync(metricsFile, "");
    }

    const save = (done: boolean, result?: TrainerState["result"]) => {
      const tmp = `${ckptDir(dir)}.tmp`;
      fs.rmSync(tmp, { recursive: true, force: true });
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
      writeFileAtomic(path.join(tmp, "trainer_state.json"), JSON.stringify(st, null, 2) + "\n");
      const cur = ckptDir(dir);
      fs.rmSync(`${cur}.old`, { recursive: true, force: true });
      if (fs.existsSync(cur)) fs.renameSync(cur, `${cur}.old`);
      fs.renameSync(tmp, cur);
      fs.rmSync(`${cur}.old`, { recursive: true, force: true });
    };

    resetPeak(backend);
    const sched = { warmup: s.warmup, total: s.steps, minRatio: s.min_lr_ratio };
    const tokensPerStep = s.batch_size * s.seq_len * s.grad_accum;
    const ckEvery = s.checkpoint_every ?? s.eval_every;
    let lastLoss = NaN;
    let valLoss = NaN;
    let sessionSteps = 0;
    let sessionStart = performance.now();
    let interrupted = false;
    while (step < s.steps) {
      if (opts.signal?.aborted || (opts.stopAfter !== undefined && sessionSteps >= opts.stopAfter)) {
        interrupted = true;
        break;
      }
      const batches = Array.from({ length: s.grad_accum }, () => sampler.next());
      const t0 = performance.now();
      const mult = lrMultiplier(step, sched);
      const { loss, gradNorm } = trainStep(model, opt, batches, step + 1, mult, s.clip, trainable);
      const dt = (performance.now() - t0) / 1000;
      seconds += dt;
      step++;
      sessionSteps++;
      lastLoss = loss;
      const tps = (sessionSteps * tokensPerStep) / ((performance.now() - sessionStart) / 1000);
      const rec: Record<string, number> = {
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
      fs.appendFileSync(metricsFile, JSON.stringify(rec) + "\n");
      opts.onStep?.(step, s.steps, loss, tps);
      if (step % ckEvery === 0 && step < s.steps) save(false);
      // Let signal handlers (Ctrl-C) run between steps.
      await new Promise((r) => setImmediate(r));
      if (sessionSteps === 1) sessionStart = performance.now(); // exclude the cold first step from tokens/s
    }
    const tokensPerSecond =
      sessionSteps > 1
        ? ((sessionSteps - 1) * tokensPerStep) / ((performance.now() - sessionStart) / 1000)
        : NaN;
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
        `interrupted at step ${step}/${s.steps}; checkpoint saved in ${ckptDir(dir)} (resume with --resume)`,
      );
      return { ...base, dir, done: false, interrupted: true };
    }
    const result = { ...base, done: true };
    save(true, result);
    return { ...result, dir, interrupted: false };
  } finally {
    model.dispose();
    opt.dispose();
  }
}
