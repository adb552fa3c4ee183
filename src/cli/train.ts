/**
 * `attnres train`: a preset (configs/*.json) plus flag overrides → a resumable training run
 * (src/train/run.ts) with a progress bar, periodic validation, atomic checkpoints, metrics as
 * JSONL, Ctrl-C that saves and exits cleanly, and --resume that continues bit-exactly.
 */
import * as path from "node:path";
import type { Command } from "commander";
import { defaultBackend } from "../backend/index.js";
import { modeName } from "../model/residual.js";
import { parseConfig, type ModeName } from "../model/config.js";
import { type RunResult, type RunSpec } from "../train/run.js";
import {
  dataDir,
  modeArg,
  modeKeys,
  MODE_LIST,
  nonNegativeInt,
  trainingOptions,
  runInTerminal,
  type RunFlags,
} from "./common.js";
import { listPresets, loadPreset, type Preset } from "./preset.js";
import { engineOptions, type EngineFlags, torchOptionsFrom } from "./engine.js";

export interface TrainFlags extends RunFlags, EngineFlags {
  preset: string;
  data?: string;
  mode?: ModeName;
  blocks?: number;
  nullSource?: boolean;
  gate?: boolean;
}

const OVERRIDES = [
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
] as const;

/** The run a preset and flags describe. */
export async function specFrom(preset: Preset, f: TrainFlags): Promise<RunSpec> {
  const train = { ...preset.train };
  for (const [flag, key] of OVERRIDES)
    if (f[flag] !== undefined) (train as Record<string, unknown>)[key] = f[flag];
  const model = { ...preset.model, ...(f.mode ? modeKeys(f.mode, f) : {}) };
  return { model, data: f.data ?? (await dataDir(preset.data, f.quiet)), train };
}

/** Runs training as the CLI does: progress bar, Ctrl-C, a summary line. */
export async function trainCommand(f: TrainFlags): Promise<RunResult> {
  const preset = loadPreset(f.preset);
  const torch = torchOptionsFrom(f);
  const spec = await specFrom(preset, f);
  const mode = modeName(parseConfig({ vocab_size: 1, ...spec.model }));
  const out =
    f.out ||
    path.join("runs", `${path.basename(f.preset).replace(/\.json$/, "")}-${mode}-s${spec.train.seed}`);
  const backend = defaultBackend();
  if (!f.quiet)
    process.stdout.write(
      `attnres train: ${mode} on ${spec.data}, ${spec.train.steps} steps of ${spec.train.batch_size}×${spec.train.seq_len} tokens; ${torch ? "torch engine" : `${backend.name} backend (${backend.threads()} threads)`}; run folder ${out}\n`,
    );
  const r = await runInTerminal(spec, out, { ...f, torch });
  if (!f.quiet && r.done)
    process.stdout.write(
      `done: val loss ${r.valLoss.toFixed(4)}, perplexity ${r.valPerplexity.toFixed(2)}, ${r.valBpb.toFixed(3)} bits/byte; ` +
        `${r.params.toLocaleString()} parameters, ${r.tokensPerSecond.toFixed(0)} tokens/s; checkpoint in ${path.join(out, "checkpoint")}\n`,
    );
  return r;
}

export function registerTrain(program: Command): void {
  const cmd = program
    .command("train")
    .description("train a model from a preset (resumable; Ctrl-C saves a checkpoint)")
    .option("-p, --preset <name|file.json>", `preset (${listPresets().join(", ")})`, "sotu-tiny")
    .option("-o, --out <dir>", "run folder (default runs/<preset>-<mode>-s<seed>)")
    .option("--resume", "continue the run in --out from its checkpoint")
    .option("--mode <mode>", `residual mode: ${MODE_LIST.join(", ")}`, modeArg)
    .option("--seed <n>", "seed for initialisation and batches", nonNegativeInt);
  engineOptions(trainingOptions(cmd))
    .addHelpText(
      "after",
      `
Examples:
  attnres train                                   # the sotu-tiny preset, standard residuals
  attnres train --mode delta --steps 600          # Delta AttnRes, longer
  attnres train --mode delta-block --blocks 2 --out runs/db2
  attnres train --out runs/db2 --resume           # continue after Ctrl-C
  attnres train --mode delta --engine torch --nproc-per-node 2   # PyTorch, DDP over 2 processes`,
    )
    .action(async (o: TrainFlags) => {
      await trainCommand(o);
    });
}
