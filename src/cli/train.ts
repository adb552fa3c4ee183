/**
 * `attnres train`: trains a model from a preset on a built-in corpus, with periodic validation,
 * a progress bar (loss, tokens/s, ETA), metrics as JSONL and an atomically written final
 * checkpoint (HF layout: config.json + model.safetensors) in the run folder.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import cliProgress from "cli-progress";
import { defaultBackend } from "../backend/index.js";
import { BatchSampler, evalBatches } from "../data/batches.js";
import { byteTokens, loadSotu } from "../data/corpus.js";
import { saveCheckpoint } from "../io/checkpoint.js";
import { DecoderLM } from "../model/decoder.js";
import { AdamW, lrMultiplier } from "../train/optim.js";
import { evaluate, paramGroups, trainStep } from "../train/trainer.js";
import type { Preset, TrainSettings } from "./preset.js";

export interface TrainRunOptions {
  preset: Preset;
  overrides: Partial<TrainSettings>;
  out: string;
  quiet?: boolean;
}

export interface TrainRunResult {
  finalTrainLoss: number;
  valLoss: number;
  valBpb: number;
  tokensPerSecond: number;
  seconds: number;
  params: number;
  runDir: string;
}

export function runTraining(o: TrainRunOptions): TrainRunResult {
  const s: TrainSettings = { ...o.preset.train, ...o.overrides };
  const corpus = loadSotu();
  const train = byteTokens(corpus.train);
  const val = byteTokens(corpus.val);
  const backend = defaultBackend();
  const model = new DecoderLM(
    {
      ...o.preset.model,
      max_position_embeddings: Math.max(s.seq_len, Number(o.preset.model.max_position_embeddings ?? 0)),
    },
    { backend, seed: s.seed },
  );
  if (model.config.vocab_size < 256)
    throw new Error(`the byte tokenizer needs vocab_size >= 256, the preset has ${model.config.vocab_size}`);
  const opt = new AdamW(paramGroups(model, s.lr, s.weight_decay), { beta1: s.beta1, beta2: s.beta2 });
  const sampler = new BatchSampler(train, s.batch_size, s.seq_len, s.seed + 1);
  const evals = evalBatches(val, s.batch_size, s.seq_len, s.eval_batches);
  fs.mkdirSync(o.out, { recursive: true });
  const metricsFile = path.join(o.out, "metrics.jsonl");
  fs.writeFileSync(metricsFile, "");
  const say = (line: string) => {
    if (!o.quiet) process.stdout.write(line + "\n");
  };
  say(
    `attnres train: ${model.numParameters().toLocaleString()} parameters, ${backend.name} backend (${backend.threads()} threads); ` +
      `corpus ${corpus.name}: ${train.length.toLocaleString()} train / ${val.length.toLocaleString()} val bytes (${corpus.split})`,
  );
  const bar = o.quiet
    ? null
    : new cliProgress.SingleBar(
        {
          format: "  step {value}/{total} [{bar}] loss {loss} | {tps} tok/s | ETA {eta_formatted}",
          hideCursor: true,
          etaBuffer: 20,
        },
        cliProgress.Presets.shades_classic,
      );
  bar?.start(s.steps, 0, { loss: "-", tps: "-" });
  const sched = { warmup: s.warmup, total: s.steps, minRatio: s.min_lr_ratio };
  const t0 = performance.now();
  let lastLoss = NaN;
  let valLoss = NaN;
  for (let step = 0; step < s.steps; step++) {
    const { loss, gradNorm } = trainStep(model, opt, sampler.next(), step, lrMultiplier(step, sched), s.clip);
    lastLoss = loss;
    const elapsed = (performance.now() - t0) / 1000;
    const tps = ((step + 1) * s.batch_size * s.seq_len) / elapsed;
    const rec: Record<string, number> = {
      step: step + 1,
      loss,
      grad_norm: gradNorm,
      lr: s.lr * lrMultiplier(step, sched),
      tokens_per_s: tps,
      elapsed_s: elapsed,
    };
    if ((step + 1) % s.eval_every === 0 || step + 1 === s.steps) {
      valLoss = evaluate(model, evals);
      rec.val_loss = valLoss;
      bar?.stop();
      say(
        `  step ${step + 1}: train loss ${loss.toFixed(4)}, val loss ${valLoss.toFixed(4)} (${(valLoss / Math.LN2).toFixed(3)} bits/byte)`,
      );
      if (step + 1 < s.steps) bar?.start(s.steps, step + 1, { loss: loss.toFixed(3), tps: tps.toFixed(0) });
    } else bar?.update(step + 1, { loss: loss.toFixed(3), tps: tps.toFixed(0) });
    fs.appendFileSync(metricsFile, JSON.stringify(rec) + "\n");
  }
  bar?.stop();
  const seconds = (performance.now() - t0) / 1000;
  saveCheckpoint(o.out, model, { generator: "attnres train" });
  const result: TrainRunResult = {
    finalTrainLoss: lastLoss,
    valLoss,
    valBpb: valLoss / Math.LN2,
    tokensPerSecond: (s.steps * s.batch_size * s.seq_len) / seconds,
    seconds,
    params: model.numParameters(),
    runDir: o.out,
  };
  say(
    `done in ${seconds.toFixed(0)} s: val loss ${valLoss.toFixed(4)} nats/byte = ${result.valBpb.toFixed(3)} bits/byte; checkpoint in ${o.out}`,
  );
  model.dispose();
  opt.dispose();
  return result;
}
