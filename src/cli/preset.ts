/**
 * Run presets: plain JSON files in configs/ (or any path): the data to train on (a corpus and a
 * tokenizer, prepared on first use, or a prepared folder), the model config (HF field names,
 * residual-family keys included; vocab_size defaults to the tokenizer's) and the training
 * settings (src/train/run.ts). Validated by zod; CLI flags override single fields.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { parseModelSettings } from "../model/config.js";
import { TrainSettingsSchema } from "../train/run.js";
import { configDir, listPresets } from "./preset-names.js";

export { listPresets };

export const DataSpecSchema = z.union([
  z.string().describe("a prepared dataset folder"),
  z.strictObject({
    corpus: z.string(),
    tokenizer: z.string().default("byte"),
    vocab_size: z.number().int().positive().optional(),
  }),
]);
export type DataSpec = z.output<typeof DataSpecSchema>;

export const PresetSchema = z.strictObject({
  description: z.string().optional(),
  data: DataSpecSchema,
  model: z.record(z.string(), z.unknown()),
  train: TrainSettingsSchema,
  /** compare presets: the modes and seeds to run. */
  compare: z
    .strictObject({
      modes: z.array(z.string()).min(1),
      seeds: z.array(z.number().int().nonnegative()).min(1),
    })
    .optional(),
});

export type Preset = z.output<typeof PresetSchema>;

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
      `invalid preset ${file}: ${r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`,
    );
  parseModelSettings(r.data.model, `model config in ${file}`);
  return r.data;
}
