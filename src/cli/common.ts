/**
 * Pieces shared by the subcommands: residual-mode flags, number parsing, progress bars that fall
 * back to plain lines when stdout is not a terminal, Ctrl-C as an AbortSignal, and the data
 * folder a preset names.
 */
import cliProgress from "cli-progress";
import { type Command, InvalidArgumentError } from "commander";
import { MODE_NAMES, type ModeName } from "../model/config.js";
import { prepareDataset } from "../data/prepare.js";
import { runTraining, type RunResult, type RunSpec } from "../train/run.js";
import { runTorchTraining, type TorchOptions } from "../train/torch-engine.js";
import type { DataSpec } from "./preset.js";

export function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError("expected a positive integer");
  return n;
}
export function nonNegativeInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a non-negative integer");
  return n;
}
export function nonNegative(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a non-negative number");
  return n;
}
export function positive(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError("expected a positive number");
  return n;
}

export const MODE_LIST = Object.keys(MODE_NAMES) as ModeName[];

export function modeArg(v: string): ModeName {
  if (!(v in MODE_NAMES)) throw new InvalidArgumentError(`expected one of ${MODE_LIST.join(", ")}`);
  return v as ModeName;
}

/** Config keys for a residual mode chosen on the command line (block modes need `blocks`). */
export function modeKeys(
  mode: ModeName,
  o: { blocks?: number; nullSource?: boolean; gate?: boolean } = {},
): Record<string, unknown> {
  const keys: Record<string, unknown> = { attnres_mode: MODE_NAMES[mode] };
  if (mode === "attnres-block" || mode === "delta-block") keys.attnres_num_blocks = o.blocks ?? 4;
  if (o.nullSource) keys.attnres_use_null_source = true;
  if (o.gate) keys.attnres_gate_type = "learnable_alpha";
  return keys;
}

/** The prepared folder a preset's data names (prepared now if needed; instant when it exists). */
export async function dataDir(spec: DataSpec, quiet = false): Promise<string> {
  if (typeof spec === "string") return spec;
  return prepareDataset({
    corpus: spec.corpus,
    tokenizer: spec.tokenizer,
    vocabSize: spec.vocab_size,
    quiet,
  });
}

export interface Progress {
  update(step: number, total: number, fields: Record<string, string>): void;
  log(line: string): void;
  stop(): void;
}

/** A cli-progress bar on a terminal; elsewhere, a plain line every ~10 % of the work. */
export function progress(label: string, quiet = false): Progress {
  if (quiet) return { update() {}, log() {}, stop() {} };
  if (process.stdout.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: `  ${label} {value}/{total} [{bar}] {info} | ETA {eta_formatted}`,
        hideCursor: true,
        etaBuffer: 20,
        clearOnComplete: true,
      },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(step, total, fields) {
        const info = Object.entries(fields)
          .map(([k, v]) => `${k} ${v}`)
          .join(" | ");
        if (!started) {
          bar.start(total, step, { info });
          started = true;
        } else bar.update(step, { info });
      },
      log(line) {
        if (started) bar.stop();
        process.stdout.write(`  ${line}\n`);
        started = false;
      },
      stop() {
        if (started) bar.stop();
      },
    };
  }
  let lastTenth = -1;
  return {
    update(step, total, fields) {
      const tenth = Math.floor((10 * step) / total);
      if (tenth !== lastTenth || step === total) {
        lastTenth = tenth;
        const info = Object.entries(fields)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ");
        process.stdout.write(`  ${label} ${step}/${total}: ${info}\n`);
      }
    },
    log(line) {
      process.stdout.write(`  ${line}\n`);
    },
    stop() {},
  };
}

/** An AbortSignal fired by the first Ctrl-C (SIGINT); a second Ctrl-C exits at once. */
export function interruptSignal(): { signal: AbortSignal; dispose: () => void } {
  const ctl = new AbortController();
  const onInt = () => {
    if (ctl.signal.aborted) process.exit(130);
    process.stderr.write("\nattnres: interrupted — saving a checkpoint (Ctrl-C again to quit at once)\n");
    ctl.abort();
  };
  process.on("SIGINT", onInt);
  return { signal: ctl.signal, dispose: () => process.off("SIGINT", onInt) };
}

/** The training-setting flags shared by train and compare (each overrides one preset field). */
export function trainingOptions(cmd: Command): Command {
  return cmd
    .option("--data <dir>", "a prepared dataset folder (overrides the preset's data)")
    .option("--blocks <n>", "blocks for attnres-block / delta-block (default 4)", positiveInt)
    .option("--null-source", "delta modes: add a learnable null source")
    .option("--gate", "delta modes: gate the routed term (zero at start)")
    .option("--steps <n>", "optimizer steps", positiveInt)
    .option("--batch-size <n>", "sequences per micro-batch", positiveInt)
    .option("--seq-len <n>", "tokens per sequence", positiveInt)
    .option("--grad-accum <n>", "micro-batches per step", positiveInt)
    .option("--lr <x>", "peak learning rate", positive)
    .option("--routing-lr <x>", "learning rate of routing/gate/DDL parameters", positive)
    .option("--warmup <n>", "warmup steps", nonNegativeInt)
    .option("--clip <x>", "gradient-norm clipping (0 = off)", nonNegative)
    .option("--eval-every <n>", "validate every n steps", positiveInt)
    .option("--checkpoint-every <n>", "checkpoint every n steps (default: eval-every)", positiveInt);
}

/** The evaluation-window flags shared by eval and analyze. */
export function windowOptions(cmd: Command, batches: number): Command {
  return cmd
    .option("--batches <n>", "batches of consecutive validation windows", positiveInt, batches)
    .option("--batch-size <n>", "sequences per batch", positiveInt, 8)
    .option("--seq-len <n>", "tokens per sequence (at most the model's context)", positiveInt, 256);
}

/**
 * Runs (or resumes) a training run at the terminal: progress bar, evaluation lines, Ctrl-C as a
 * checkpoint-and-stop (exit status 130). The caller prints its own summary.
 */
export async function runInTerminal(
  spec: RunSpec,
  out: string,
  o: { resume?: boolean; quiet?: boolean; torch?: TorchOptions },
): Promise<RunResult> {
  const bar = progress("step", o.quiet);
  const { signal, dispose } = interruptSignal();
  try {
    const torch = o.torch;
    const run = torch
      ? (s: RunSpec, d: string, ro: Parameters<typeof runTraining>[2]) =>
          runTorchTraining(s, d, { ...ro, torch })
      : runTraining;
    const r = await run(spec, out, {
      resume: o.resume,
      signal,
      log: (l) => bar.log(l),
      onStep: (step, total, loss, tps) =>
        bar.update(step, total, { loss: loss.toFixed(3), "tok/s": tps.toFixed(0) }),
    });
    if (r.interrupted) process.exitCode = 130;
    return r;
  } finally {
    bar.stop();
    dispose();
  }
}

/** Flags every training command accepts (each overrides one training setting). */
export interface RunFlags {
  out?: string;
  resume?: boolean;
  steps?: number;
  batchSize?: number;
  seqLen?: number;
  gradAccum?: number;
  lr?: number;
  routingLr?: number;
  warmup?: number;
  clip?: number;
  seed?: number;
  evalEvery?: number;
  checkpointEvery?: number;
  quiet?: boolean;
}
