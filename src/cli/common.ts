/**
 * Pieces shared by the subcommands: residual-mode flags, number parsing, progress bars that fall
 * back to plain lines when stdout is not a terminal, Ctrl-C as an AbortSignal, and the data
 * folder a preset names.
 *
 * The command definitions (src/cli/commands/) import this file to print help, so it loads nothing
 * heavy at import: cli-progress, data preparation and training are loaded where they are used.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import type * as cliProgressModule from "cli-progress";
import { type Command, InvalidArgumentError, Option } from "commander";
import { ADDITIVE_MODES, BLOCK_MODES, MODE_NAMES, type ModeName } from "../model/names.js";
import type { ModeDef } from "../model/residual.js";
import type { RunResult, RunSpec, TrainSettings } from "../train/run.js";
import type { TorchOptions } from "../train/torch-engine.js";
import type { DataSpec } from "./preset.js";

const require = createRequire(import.meta.url);

/** An integer flag value in [min, Number.MAX_SAFE_INTEGER]; the error states the range. */
function intIn(v: string, min: number): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isSafeInteger(n) || n < min)
    throw new InvalidArgumentError(
      `expected a ${min > 0 ? "positive" : "non-negative"} integer from ${min} to ${Number.MAX_SAFE_INTEGER}`,
    );
  return n;
}
export function positiveInt(v: string): number {
  return intIn(v, 1);
}
export function nonNegativeInt(v: string): number {
  return intIn(v, 0);
}
export function nonNegative(v: string): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n < 0)
    throw new InvalidArgumentError("expected a finite number ≥ 0");
  return n;
}
export function positive(v: string): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n <= 0)
    throw new InvalidArgumentError("expected a finite number > 0");
  return n;
}

export const MODE_LIST = Object.keys(MODE_NAMES) as ModeName[];

/** A built-in mode name (plan's --modes; other names are refused). */
export function modeArg(v: string): ModeName {
  if (!(v in MODE_NAMES)) throw new InvalidArgumentError(`expected one of ${MODE_LIST.join(", ")}`);
  return v as ModeName;
}

/**
 * Checks the mode named by option `option` (attribute name, e.g. "mode") of `cmd` before its action
 * runs: a name of `builtin` passes at once (nothing loaded, as --help needs); any other name is
 * looked up in the mode registry (src/model/residual.ts, loaded only then), so a mode added with
 * registerMode can be chosen too. A name the registry does not have, or whose mode `accepts`
 * refuses, is commander's one-line usage error listing the registry's choices.
 */
export function checkModeChoice(
  cmd: Command,
  option: string,
  builtin: readonly string[],
  accepts: (m: ModeDef) => boolean = () => true,
): Command {
  return cmd.hook("preAction", async (_, action) => {
    const v = action.getOptionValue(option) as string | undefined;
    if (v === undefined || builtin.includes(v)) return;
    const { modes } = await import("../model/residual.js");
    const allowed = modes()
      .filter(accepts)
      .map((m) => m.name);
    if (allowed.includes(v)) return;
    const flags = action.options.find((o) => o.attributeName() === option)?.flags ?? option;
    action.error(
      `error: option '${flags}' argument '${v}' is invalid. expected one of ${allowed.join(", ")}`,
      {
        code: "commander.invalidArgument",
        exitCode: 1,
      },
    );
  });
}

/** What the command line needs of a mode: a built-in name (names.ts), or the mode's own ModeDef. */
export type ModeChoice = ModeName | Pick<ModeDef, "name" | "key" | "options">;

const choiceOf = (m: ModeChoice): Pick<ModeDef, "name" | "key"> & { blocks: boolean; additive: boolean } =>
  typeof m === "string"
    ? { name: m, key: MODE_NAMES[m], blocks: BLOCK_MODES.includes(m), additive: ADDITIVE_MODES.includes(m) }
    : { name: m.name, key: m.key, ...m.options };

/**
 * Refuses mode flags that do not apply to the modes being run: --blocks needs a block mode,
 * --null-source and --gate a delta mode.
 */
export function checkModeFlags(
  modes: readonly ModeChoice[],
  o: { blocks?: number; nullSource?: boolean; gate?: boolean },
): void {
  const chosen = modes.map(choiceOf);
  const list = chosen.map((m) => m.name).join(", ");
  if (o.blocks !== undefined && !chosen.some((m) => m.blocks))
    throw new Error(`--blocks applies only to ${BLOCK_MODES.join(" and ")} (mode: ${list})`);
  for (const [flag, on] of [
    ["--null-source", o.nullSource],
    ["--gate", o.gate],
  ] as const)
    if (on && !chosen.some((m) => m.additive))
      throw new Error(`${flag} applies only to ${ADDITIVE_MODES.join(" and ")} (mode: ${list})`);
}

/** Config keys for a residual mode chosen on the command line (block modes need `blocks`). */
export function modeKeys(
  mode: ModeChoice,
  o: { blocks?: number; nullSource?: boolean; gate?: boolean; sources?: "outputs" | "states" } = {},
): Record<string, unknown> {
  const m = choiceOf(mode);
  const keys: Record<string, unknown> = { attnres_mode: m.key };
  if (m.blocks) keys.attnres_num_blocks = o.blocks ?? 4;
  if (o.nullSource) keys.attnres_use_null_source = true;
  if (o.gate) keys.attnres_gate_type = "learnable_alpha";
  if (o.sources === "states") keys.attnres_sources = "states";
  return keys;
}

/**
 * A required option that also has an older name kept as a hidden alias (--checkpoint/--from,
 * --out/--to): the value given under either name; an error when neither or two different ones.
 */
export function aliased(
  value: string | undefined,
  alias: string | undefined,
  flag: string,
  aliasFlag: string,
): string {
  if (value !== undefined && alias !== undefined && value !== alias)
    throw new Error(`${flag} ${value} and its alias ${aliasFlag} ${alias} disagree; give one of them`);
  const v = value ?? alias;
  if (v === undefined) throw new Error(`required option '${flag}' not specified`);
  return v;
}

/** The prepared folder a preset's data names (prepared now if needed; instant when it exists). */
export async function dataDir(spec: DataSpec, quiet = false): Promise<string> {
  if (typeof spec === "string") return spec;
  const { prepareDataset } = await import("../data/prepare.js");
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

/**
 * A cli-progress bar on a terminal; elsewhere (logs, CI, nohup), a plain line every ~10 % of the
 * work with the elapsed time and an ETA (progressLine).
 */
export function progress(label: string, quiet = false): Progress {
  if (quiet) return { update() {}, log() {}, stop() {} };
  if (process.stdout.isTTY) {
    const cliProgress = require("cli-progress") as typeof cliProgressModule;
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
  let first: { step: number; at: number } | null = null;
  return {
    update(step, total, fields) {
      const now = performance.now();
      first ??= { step, at: now };
      const tenth = Math.floor((10 * step) / total);
      if (tenth !== lastTenth || step === total) {
        lastTenth = tenth;
        const info = Object.entries(fields)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ");
        process.stdout.write(`  ${progressLine(label, step, total, info, first, now)}\n`);
      }
    },
    log(line) {
      process.stdout.write(`  ${line}\n`);
    },
    stop() {},
  };
}

/** "1h02m", "3m07s", "12s". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/**
 * The plain progress line (no terminal): `label step/total: info (pct %, elapsed 1m02s, ETA 3m10s)`;
 * the ETA extrapolates the rate since the first update (`first`, at performance.now() ms), and is
 * left out until a step has been timed.
 */
export function progressLine(
  label: string,
  step: number,
  total: number,
  info: string,
  first: { step: number; at: number },
  now: number,
): string {
  const secs = (now - first.at) / 1000;
  const done = step - first.step;
  const pct = total > 0 ? Math.floor((100 * step) / total) : 100;
  const timing = [`elapsed ${formatDuration(secs)}`];
  if (step >= total) timing.push("done");
  else if (done > 0 && secs > 0) timing.push(`ETA ${formatDuration(((total - step) * secs) / done)}`);
  return `${label} ${step}/${total}${info ? `: ${info}` : ""} (${pct} %, ${timing.join(", ")})`;
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
  cmd
    .option("-d, --data <dir>", "a prepared dataset folder (overrides the preset's data)")
    .option("--blocks <n>", "blocks for attnres-block / delta-block (default 4)", positiveInt)
    .option("--null-source", "delta modes: add a learnable null source")
    .option("--gate", "delta modes: gate the routed term (zero at start)")
    .addOption(
      new Option(
        "--sources <set>",
        "attnres-full, delta: route over sublayer outputs or hidden states",
      ).choices(["outputs", "states"]),
    )
    .option("--steps <n>", "optimizer steps", positiveInt);
  return runFlagOptions(cmd);
}

/** The flags of a run's schedule and batches (RUN_FLAG_KEYS; seed and steps are declared by each command). */
const RUN_FLAGS: [flags: string, help: string, parse?: (v: string) => number][] = [
  ["--batch-size <n>", "sequences per micro-batch", positiveInt],
  ["--seq-len <n>", "tokens per sequence", positiveInt],
  ["--grad-accum <n>", "micro-batches per step", positiveInt],
  ["--lr <x>", "peak learning rate", positive],
  ["--routing-lr <x>", "learning rate of routing/gate/DDL parameters", positive],
  ["--warmup <n>", "warmup steps", nonNegativeInt],
  ["--clip <x>", "gradient-norm clipping (0 = off)", nonNegative],
  ["--eval-every <n>", "validate every n steps", positiveInt],
  ["--checkpoint-every <n>", "checkpoint every n steps (default: eval-every)", positiveInt],
  ["--keep-best", "keep <out>/best: the weights with the lowest validation loss so far"],
];

/**
 * Adds the run flags train and finetune share (one definition); `more` appends a command's own
 * words to a flag's help, by flag name ("--lr": " of the backbone (default 1e-4)").
 */
export function runFlagOptions(cmd: Command, more: Record<string, string> = {}): Command {
  for (const [flags, help, parse] of RUN_FLAGS) {
    const text = help + (more[flags.split(" ")[0]!] ?? "");
    if (parse) cmd.option(flags, text, parse);
    else cmd.option(flags, text);
  }
  cmd.addOption(
    new Option(
      "--matmul-dtype <dtype>",
      "ts engine, native backend: bfloat16 rounds every matmul's operands to bfloat16 (float32 accumulation and weights; CPUs with AVX-512 BF16)",
    ).choices(["float32", "bfloat16"]),
  );
  return cmd;
}

/** The evaluation-window flags shared by eval and analyze (batches undefined: no limit by default). */
export function windowOptions(cmd: Command, batches: number | undefined): Command {
  return cmd
    .option(
      "--batches <n>",
      `batches of consecutive validation windows${batches === undefined ? " (default: the whole split)" : ""}`,
      positiveInt,
      batches,
    )
    .option("--batch-size <n>", "sequences per batch", positiveInt, 8)
    .option("--seq-len <n>", "tokens per sequence (at most the model's context)", positiveInt, 256);
}

/** Refuses a run folder (`flag` names it) that exists as something other than a folder. */
export function checkRunFolder(dir: string, flag = "--out"): void {
  if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory())
    throw new Error(`${flag} ${dir} exists and is not a folder`);
}

/**
 * Runs (or resumes) a training run at the terminal: progress bar, evaluation lines, Ctrl-C as a
 * checkpoint-and-stop (exit status 130). The caller prints its own summary.
 */
export async function runInTerminal(
  spec: RunSpec,
  out: string,
  o: { resume?: boolean; overwrite?: boolean; quiet?: boolean; torch?: TorchOptions },
): Promise<RunResult> {
  const { runTraining } = await import("../train/run.js");
  const { runTorchTraining } = await import("../train/torch-engine.js");
  checkRunFolder(out);
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
      overwrite: o.overwrite,
      signal,
      log: (l) => bar.log(l),
      onStep: (step, total, loss, tps) =>
        bar.update(step, total, { loss: loss.toFixed(3), "tok/s": tps.toFixed(0) }),
    });
    if (r.interrupted) {
      process.exitCode = 130;
      bar.log("resume with --resume");
    }
    return r;
  } catch (e) {
    throw (await import("./errors.js")).cliError(e);
  } finally {
    bar.stop();
    dispose();
  }
}

/** The training setting (RunSpec.train key) each training flag sets. */
const RUN_FLAG_KEYS = [
  ["steps", "steps"],
  ["batchSize", "batch_size"],
  ["seqLen", "seq_len"],
  ["gradAccum", "grad_accum"],
  ["lr", "lr"],
  ["routingLr", "routing_lr"],
  ["warmup", "warmup"],
  ["clip", "clip"],
  ["seed", "seed"],
  ["evalEvery", "eval_every"],
  ["checkpointEvery", "checkpoint_every"],
  ["keepBest", "keep_best"],
  ["matmulDtype", "matmul_dtype"],
] as const;

type RunFlagKey = (typeof RUN_FLAG_KEYS)[number][1];

/** The training settings the flags give (only those passed). */
export function trainSettingsFrom(f: RunFlags): Partial<Pick<TrainSettings, RunFlagKey>> {
  const out: Record<string, unknown> = {};
  for (const [flag, key] of RUN_FLAG_KEYS) if (f[flag] !== undefined) out[key] = f[flag];
  return out as Partial<Pick<TrainSettings, RunFlagKey>>;
}

/** Flags every training command accepts (each overrides one training setting). */
export interface RunFlags {
  out?: string;
  resume?: boolean;
  overwrite?: boolean;
  keepBest?: boolean;
  steps?: number;
  batchSize?: number;
  seqLen?: number;
  gradAccum?: number;
  lr?: number;
  routingLr?: number;
  matmulDtype?: "float32" | "bfloat16";
  warmup?: number;
  clip?: number;
  seed?: number;
  evalEvery?: number;
  checkpointEvery?: number;
  quiet?: boolean;
}
