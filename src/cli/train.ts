/**
 * `attnres train`: a preset (configs/*.json) plus flag overrides → a resumable training run
 * (src/train/run.ts) with a progress bar, periodic validation, atomic checkpoints, metrics as
 * JSONL, Ctrl-C that saves and exits cleanly, and --resume that continues bit-exactly.
 */
import * as path from "node:path";
import { defaultBackend } from "../backend/index.js";
import { modeByName, modeOf } from "../model/residual.js";
import { type ModeName, parseModelSettings } from "../model/config.js";
import { type RunResult, type RunSpec } from "../train/run.js";
import {
  checkModeFlags,
  dataDir,
  modeKeys,
  runInTerminal,
  type RunFlags,
  trainSettingsFrom,
} from "./common.js";
import { loadPreset, type Preset } from "./preset.js";

export { registerTrain } from "./commands/train.js";
import { type EngineFlags, torchOptionsFrom } from "./engine.js";

export interface TrainFlags extends RunFlags, EngineFlags {
  preset: string;
  data?: string;
  /** A mode's name: built in, or added with registerMode (checked by the command's parser). */
  mode?: ModeName;
  blocks?: number;
  nullSource?: boolean;
  gate?: boolean;
  sources?: "outputs" | "states";
}

/** The run a preset and flags describe. */
export async function specFrom(preset: Preset, f: TrainFlags): Promise<RunSpec> {
  const train = { ...preset.train, ...trainSettingsFrom(f) };
  const model = { ...preset.model, ...(f.mode ? modeKeys(modeByName(f.mode) ?? f.mode, f) : {}) };
  return { model, data: f.data ?? (await dataDir(preset.data, f.quiet)), train };
}

/** Runs training as the CLI does: progress bar, Ctrl-C, a summary line. */
export async function trainCommand(f: TrainFlags): Promise<RunResult> {
  const preset = loadPreset(f.preset);
  const torch = torchOptionsFrom(f);
  const spec = await specFrom(preset, f);
  const def = modeOf(parseModelSettings(spec.model, `preset ${f.preset}`));
  const mode = def.name;
  checkModeFlags([def], f);
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
