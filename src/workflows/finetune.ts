/**
 * Fine-tuning: the training run (src/train/run.ts) that starts from a checkpoint's weights —
 * typically one written by convertCheckpoint — with defaults suited to a short fine-tune and its
 * own learning rate for the residual family's parameters.
 *
 *   finetuneRunSpec(checkpoint, data, settings)   the RunSpec: the checkpoint's config (as written
 *                                                 to config.json), `init` = the checkpoint, and the
 *                                                 training settings below (each one the caller
 *                                                 gives replaces its default)
 *   FINETUNE_DEFAULTS                             steps 200, batch 8, seq_len min(128, context),
 *                                                 lr 1e-4, routing_lr 1e-3 (routed models, or when
 *                                                 given), warmup min(10, steps/10), clip 1.0, seed 0,
 *                                                 eval_every min(50, steps)
 * Checks, before anything is trained: the checkpoint folder exists, and the prepared data was
 * tokenized with the checkpoint's tokenizer (same kind and size) when the checkpoint has one.
 */
import * as fs from "node:fs";
import { loadPrepared } from "../data/prepared.js";
import { checkpointTokenizer, configForExport, readConfig } from "../model/checkpoint.js";
import { modeName } from "../model/residual.js";
import type { RunSpec, TrainSettingsInput } from "../train/run.js";

/** The training settings a fine-tune accepts (each optional; FINETUNE_DEFAULTS fill the rest). */
export type FinetuneSettings = Partial<
  Pick<
    TrainSettingsInput,
    | "steps"
    | "batch_size"
    | "seq_len"
    | "grad_accum"
    | "lr"
    | "routing_lr"
    | "warmup"
    | "clip"
    | "seed"
    | "eval_every"
    | "checkpoint_every"
    | "freeze_base"
    | "keep_best"
    | "matmul_dtype"
  >
>;

/** The fixed defaults of a fine-tune (the ones that depend on the run are in the file comment). */
export const FINETUNE_DEFAULTS = {
  steps: 200,
  batch_size: 8,
  max_seq_len: 128,
  grad_accum: 1,
  lr: 1e-4,
  routing_lr: 1e-3,
  max_warmup: 10,
  clip: 1.0,
  seed: 0,
  max_eval_every: 50,
} as const;

/** Throws when `dir` is not there (the first check of a fine-tune, before any file is read). */
export function checkFinetuneCheckpoint(dir: string): void {
  if (!fs.existsSync(dir)) throw new Error(`checkpoint folder ${dir} does not exist`);
}

/** The run that fine-tunes the checkpoint in `checkpoint` on the prepared dataset `data`. */
export function finetuneRunSpec(checkpoint: string, data: string, s: FinetuneSettings = {}): RunSpec {
  checkFinetuneCheckpoint(checkpoint);
  const config = readConfig(checkpoint);
  const prepared = loadPrepared(data);
  const tok = checkpointTokenizer(checkpoint, config, { optional: true });
  if (tok && (tok.kind !== prepared.tokenizer.kind || tok.vocabSize !== prepared.tokenizer.vocabSize))
    throw new Error(
      `${data} was tokenized with a different tokenizer (${prepared.tokenizer.kind}, ${prepared.tokenizer.vocabSize} ids) than ${checkpoint} (${tok.kind}, ${tok.vocabSize} ids)`,
    );
  const D = FINETUNE_DEFAULTS;
  const routed = modeName(config) !== "standard";
  const steps = s.steps ?? D.steps;
  const train: Record<string, unknown> = {
    steps,
    batch_size: s.batch_size ?? D.batch_size,
    seq_len: s.seq_len ?? Math.min(D.max_seq_len, config.max_position_embeddings),
    grad_accum: s.grad_accum ?? D.grad_accum,
    lr: s.lr ?? D.lr,
    warmup: s.warmup ?? Math.min(D.max_warmup, Math.floor(steps / 10)),
    clip: s.clip ?? D.clip,
    seed: s.seed ?? D.seed,
    eval_every: s.eval_every ?? Math.max(1, Math.min(D.max_eval_every, steps)),
  };
  if (s.routing_lr !== undefined || routed) train.routing_lr = s.routing_lr ?? D.routing_lr;
  if (s.checkpoint_every !== undefined) train.checkpoint_every = s.checkpoint_every;
  if (s.freeze_base) train.freeze_base = true;
  if (s.keep_best) train.keep_best = true;
  if (s.matmul_dtype !== undefined && s.matmul_dtype !== "float32") train.matmul_dtype = s.matmul_dtype;
  return {
    model: configForExport(config),
    data,
    train: train as RunSpec["train"],
    init: checkpoint,
  };
}
