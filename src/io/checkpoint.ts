/**
 * Checkpoints in the HF layout: a folder with config.json (HF field names; the residual family's
 * keys as the authors name them, METHODS.md "Checkpoint interchange") and model.safetensors
 * (or shards with model.safetensors.index.json when reading). Weights are written as F32 and
 * read from F32/F16/BF16(/F64). Writing is atomic per file, weights first, so an interrupted save
 * never leaves a config that points at missing or partial weights. `readConfig` accepts HF
 * config.json files as transformers writes them and rejects what we do not implement
 * (src/model/hf-compat.ts).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Backend, DType } from "../backend/backend.js";
import { type ModelConfig, parseConfig } from "../model/config.js";
import { checkHfConfig } from "../model/hf-compat.js";
import { DecoderLM } from "../model/decoder.js";
import { modeName } from "../model/residual.js";
import { exportWeights, loadWeights } from "../model/weights.js";
import "../data/bpe.js";
import "../data/hf-tokenizer.js";
import { loadTokenizer, TOKENIZER_META, type Tokenizer } from "../data/tokenizer.js";
import { readCheckpointWeights, writeFileAtomic, writeSafetensors } from "./safetensors.js";

/** The config as written to config.json: HF names, with model_type qwen3_attnres for routed Qwen3. */
export function configForExport(c: ModelConfig): Record<string, unknown> {
  const out: Record<string, unknown> = { ...c };
  if (out.torch_dtype !== undefined) out.torch_dtype = "float32"; // weights are always written as F32
  const mode = modeName(c);
  if (mode === "standard") {
    for (const k of Object.keys(out)) if (k.startsWith("attnres_") || k.startsWith("ddl_")) delete out[k];
    if (out.model_type === "qwen3_attnres") out.model_type = "qwen3";
  } else {
    if (out.model_type === "qwen3") out.model_type = "qwen3_attnres";
    if (!mode.startsWith("ddl")) for (const k of Object.keys(out)) if (k.startsWith("ddl_")) delete out[k];
    if (mode !== "attnres-block" && mode !== "delta-block") delete out.attnres_num_blocks;
  }
  return out;
}

export function saveCheckpoint(dir: string, model: DecoderLM, metadata: Record<string, string> = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(path.join(dir, "model.safetensors"), exportWeights(model), { format: "pt", ...metadata });
  writeFileAtomic(
    path.join(dir, "config.json"),
    JSON.stringify(configForExport(model.config), null, 2) + "\n",
  );
}

export function readConfig(dir: string): ModelConfig {
  const file = path.join(dir, "config.json");
  if (!fs.existsSync(file)) throw new Error(`${dir} is not a checkpoint folder: config.json is missing`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  checkHfConfig(raw, file);
  return parseConfig(raw, file);
}

export interface LoadCheckpointOptions {
  backend?: Backend;
  dtype?: DType;
}

/** Builds the model that config.json describes and loads its weights (every tensor, exact shapes). */
export function loadCheckpoint(dir: string, opts: LoadCheckpointOptions = {}): DecoderLM {
  const config = readConfig(dir);
  const weights = readCheckpointWeights(dir, { keepF64: opts.dtype === "float64" });
  const model = new DecoderLM(config, opts);
  try {
    // HF sometimes stores lm_head.weight beside tied embeddings; the tied model ignores it.
    loadWeights(model, weights.tensors, {
      source: dir,
      allowUnexpected: (n) => config.tie_word_embeddings && n === "lm_head.weight",
    });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/**
 * The tokenizer saved with a checkpoint (attnres_tokenizer.json or tokenizer.json), checked to fit
 * the model's embedding. Errors say what is missing and what to do.
 */
export function checkpointTokenizer(dir: string, config: ModelConfig): Tokenizer {
  if (!fs.existsSync(path.join(dir, TOKENIZER_META)) && !fs.existsSync(path.join(dir, "tokenizer.json")))
    throw new Error(
      `the checkpoint ${dir} has no tokenizer (${TOKENIZER_META} or tokenizer.json); copy the one it was trained with into the folder`,
    );
  const tok = loadTokenizer(dir);
  if (tok.vocabSize > config.vocab_size)
    throw new Error(
      `the checkpoint's tokenizer has ${tok.vocabSize} ids but the model embeds only ${config.vocab_size}`,
    );
  return tok;
}
