/**
 * Run presets: plain JSON files in configs/ (model config with HF field names + data + training
 * settings), validated by zod. CLI flags override individual training fields.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { packageRoot } from "../io/paths.js";
import { parseConfig } from "../model/config.js";

export const TrainSettingsSchema = z.strictObject({
  steps: z.number().int().positive(),
  batch_size: z.number().int().positive(),
  seq_len: z.number().int().positive(),
  lr: z.number().positive(),
  min_lr_ratio: z.number().min(0).max(1).default(0.1),
  warmup: z.number().int().nonnegative().default(0),
  weight_decay: z.number().nonnegative().default(0.1),
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.95),
  clip: z.number().nonnegative().default(1.0),
  eval_every: z.number().int().positive().default(100),
  eval_batches: z.number().int().positive().default(8),
  seed: z.number().int().nonnegative().default(0),
});

export const PresetSchema = z.strictObject({
  description: z.string().optional(),
  model: z.record(z.string(), z.unknown()),
  data: z.strictObject({ corpus: z.enum(["sotu"]), tokenizer: z.enum(["byte"]) }),
  train: TrainSettingsSchema,
});

export type Preset = z.output<typeof PresetSchema>;
export type TrainSettings = z.output<typeof TrainSettingsSchema>;

const configDir = (): string => path.join(packageRoot(), "configs");

export function listPresets(): string[] {
  return fs
    .readdirSync(configDir())
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.replace(/\.json$/, ""));
}

/** Loads a preset by name (configs/<name>.json) or by path to a JSON file. */
export function loadPreset(nameOrPath: string): Preset {
  const file = nameOrPath.endsWith(".json") ? nameOrPath : path.join(configDir(), `${nameOrPath}.json`);
  if (!fs.existsSync(file))
    throw new Error(
      `unknown preset "${nameOrPath}" (available: ${listPresets().join(", ")}; or pass a path to a .json file)`,
    );
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const r = PresetSchema.safeParse(raw);
  if (!r.success)
    throw new Error(
      `invalid preset ${file}:\n${r.error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`).join("\n")}`,
    );
  parseConfig(r.data.model, `model config in ${file}`);
  return r.data;
}
