/**
 * The docs-test scale: when the environment variable ATTNRES_DOCTEST is set (to anything but "" or
 * "0"), every training run — `attnres train`, `compare`, `finetune`, `npm start`, the study — is
 * shrunk to a few tiny steps so that the commands of the docs can all run, as written, in a test
 * (test/docs.test.ts). Applied where a run's settings are resolved (src/train/run.ts resolveSpec),
 * so resuming and comparing see the same capped settings. Caps (never raises a value):
 *
 *   steps ≤ 4, batch_size ≤ 4, seq_len ≤ 32, grad_accum 1, warmup ≤ 1,
 *   eval_every ≤ steps, eval_batches ≤ 2, checkpoint_every ≤ steps
 *
 * The model config is untouched (its context follows seq_len as usual). Not for real training:
 * the numbers such runs print mean nothing.
 */
import type { TrainSettings } from "./run.js";

export const DOCTEST_ENV = "ATTNRES_DOCTEST";

export const DOCTEST_CAPS = { steps: 4, batch_size: 4, seq_len: 32, warmup: 1, eval_batches: 2 } as const;

export function doctestScaleActive(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env[DOCTEST_ENV];
  return v !== undefined && v !== "" && v !== "0";
}

let announced = false;

/** The settings capped to the docs-test scale when ATTNRES_DOCTEST is set; else unchanged. */
export function doctestScale(t: TrainSettings, env: NodeJS.ProcessEnv = process.env): TrainSettings {
  if (!doctestScaleActive(env)) return t;
  const steps = Math.min(t.steps, DOCTEST_CAPS.steps);
  const out: TrainSettings = {
    ...t,
    steps,
    batch_size: Math.min(t.batch_size, DOCTEST_CAPS.batch_size),
    seq_len: Math.min(t.seq_len, DOCTEST_CAPS.seq_len),
    grad_accum: 1,
    warmup: Math.min(t.warmup, DOCTEST_CAPS.warmup),
    eval_every: Math.min(t.eval_every, steps),
    eval_batches: Math.min(t.eval_batches, DOCTEST_CAPS.eval_batches),
    ...(t.checkpoint_every !== undefined ? { checkpoint_every: Math.min(t.checkpoint_every, steps) } : {}),
  };
  if (!announced) {
    announced = true;
    process.stderr.write(
      `attnres: ${DOCTEST_ENV} is set: training shrunk to ${out.steps} steps of ${out.batch_size}×${out.seq_len} tokens (docs-test scale)\n`,
    );
  }
  return out;
}
