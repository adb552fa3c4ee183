/**
 * Checkpoints in the HF layout: a folder with config.json (HF field names; the residual family's
 * keys as the authors name them, docs/methods.md "Checkpoint layout") and model.safetensors
 * (or shards with model.safetensors.index.json when reading). Weights are written as F32 unless
 * the caller picks F16/BF16 per tensor (`SaveOptions.dtypes`; torch_dtype then names the dtype
 * holding the most values), and read from F32/F16/BF16(/F64). Writing is atomic per file, weights
 * first, so an interrupted save never leaves a config that points at missing or partial weights.
 * `saveCheckpointTensors` writes the same files from named tensors and a config instead of a model
 * (convert streams the backbone from the source's files through it).
 * `readConfig` accepts HF config.json files as transformers writes them and rejects what we do not
 * implement (src/model/hf-compat.ts). `checkpointTokenizer` finds a checkpoint's tokenizer (an
 * error when it is missing, or null with `{ optional: true }`) and checks it fits the embedding.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Backend, DType } from "../backend/backend.js";
import { type ModelConfig, parseConfig } from "./config.js";
import { checkHfConfig } from "./hf-compat.js";
import { DecoderLM } from "./decoder.js";
import { modeName, modeOf } from "./residual.js";
import { exportWeights, loadWeights } from "./weights.js";
import { loadTokenizer, TOKENIZER_META, type Tokenizer } from "../data/tokenizer.js";
import { checkMemoryBudget } from "./budget.js";
import {
  type CopyTensor,
  type FloatStDType,
  readCheckpointHeader,
  readCheckpointWeights,
  writeSafetensors,
  type WriteTensor,
} from "../io/safetensors.js";
import { readRegularFile, writeFileAtomic } from "../io/atomic.js";

/** torch_dtype names of the safetensors float dtypes. */
export const TORCH_DTYPE: Record<FloatStDType, string> = { F32: "float32", F16: "float16", BF16: "bfloat16" };

/**
 * The config as written to config.json: HF names, with model_type qwen3_attnres for routed Qwen3.
 * torch_dtype names `weights`, the dtype the weights are written in (set when the config had one
 * or when it is not F32).
 */
export function configForExport(c: ModelConfig, weights: FloatStDType = "F32"): Record<string, unknown> {
  const out: Record<string, unknown> = { ...c };
  if (out.torch_dtype !== undefined || weights !== "F32") out.torch_dtype = TORCH_DTYPE[weights];
  const mode = modeName(c);
  if (mode === "standard") {
    for (const k of Object.keys(out)) if (k.startsWith("attnres_") || k.startsWith("ddl_")) delete out[k];
    if (out.model_type === "qwen3_attnres") out.model_type = "qwen3";
  } else {
    if (out.model_type === "qwen3") out.model_type = "qwen3_attnres";
    const own = modeOf(c).configKeys; // the mode's keys stay; other modes' ddl_* and block count go
    for (const k of Object.keys(out))
      if ((k.startsWith("ddl_") || k === "attnres_num_blocks") && !own.includes(k)) delete out[k];
    if (out.attnres_sources === "outputs") delete out.attnres_sources; // the default; the authors' configs lack it
  }
  return out;
}

export interface SaveOptions {
  /** The dtype each tensor is written in, by name (default F32; F16/BF16 round, see safetensors.ts). */
  dtypes?: ReadonlyMap<string, FloatStDType>;
  /** Called after each tensor is encoded (progress): its name, its index and the tensor count. */
  onTensor?: (name: string, index: number, count: number) => void;
}

/** The dtype holding the most values among `tensors` (ties: F32, then BF16, then F16). */
export function dominantDtype(tensors: Iterable<[FloatStDType, number]>): FloatStDType {
  const values: Record<FloatStDType, number> = { F32: 0, BF16: 0, F16: 0 };
  for (const [d, n] of tensors) values[d] += n;
  return (["F32", "BF16", "F16"] as const).reduce((a, b) => (values[b] > values[a] ? b : a));
}

export function saveCheckpoint(
  dir: string,
  model: DecoderLM,
  metadata: Record<string, string> = {},
  opts: SaveOptions = {},
): void {
  const tensors = exportWeights(model).map(([n, w]): [string, WriteTensor & { dtype: FloatStDType }] => [
    n,
    { ...w, dtype: opts.dtypes?.get(n) ?? "F32" },
  ]);
  saveCheckpointTensors(dir, model.config, tensors, metadata, opts);
}

/**
 * `saveCheckpoint` from the tensors themselves (names in the model's registration order, each with
 * its dtype; `CopyTensor`s stream from another file) and the model's config: the same files.
 */
export function saveCheckpointTensors(
  dir: string,
  config: ModelConfig,
  tensors: readonly [string, (WriteTensor | CopyTensor) & { dtype: FloatStDType }][],
  metadata: Record<string, string> = {},
  opts: Pick<SaveOptions, "onTensor"> = {},
): void {
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(
    path.join(dir, "model.safetensors"),
    tensors,
    { format: "pt", ...metadata },
    { onTensor: opts.onTensor },
  );
  const weights = dominantDtype(tensors.map(([, t]) => [t.dtype, t.shape.reduce((p, q) => p * q, 1)]));
  writeFileAtomic(
    path.join(dir, "config.json"),
    JSON.stringify(configForExport(config, weights), null, 2) + "\n",
  );
}

export function readConfig(dir: string): ModelConfig {
  const file = path.join(dir, "config.json");
  if (!fs.existsSync(file)) throw new Error(`${dir} is not a checkpoint folder: config.json is missing`);
  let raw: unknown;
  try {
    raw = JSON.parse(readRegularFile(file).toString("utf8"));
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

/**
 * Compares the sizes config.json gives with the shapes in the weights' header(s), before any model
 * is built: the embedding [vocab_size, hidden_size], the number of layers, and layer 0's q/k
 * projections and MLP. A config that disagrees (e.g. num_hidden_layers: 1000000 beside a 2-layer
 * file) is an error naming config.json, not minutes of allocation. Also refuses a model whose
 * memory estimate exceeds the machine's memory.
 */
export function checkConfigAgainstWeights(dir: string, config: ModelConfig): void {
  const header = readCheckpointHeader(dir);
  const file = path.join(dir, "config.json");
  const shape = (n: string) => header.get(n)?.shape;
  const want = (n: string, s: number[], fields: string) => {
    const got = shape(n);
    if (got && (got.length !== s.length || got.some((v, i) => v !== s[i])))
      throw new Error(
        `${dir} does not match its config.json (${fields}): tensor ${n} has shape [${got.join(", ")}], expected [${s.join(", ")}]`,
      );
  };
  const h = config.hidden_size;
  want(
    "model.embed_tokens.weight",
    [config.vocab_size, h],
    `vocab_size ${config.vocab_size}, hidden_size ${h}`,
  );
  let layers = 0;
  for (const n of header.keys()) {
    const m = /^model\.layers\.(\d+)\./.exec(n);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (layers !== config.num_hidden_layers)
    throw new Error(
      `${file} says num_hidden_layers ${config.num_hidden_layers}, but the weights hold ${layers} layers`,
    );
  const d = config.head_dim;
  const a = "model.layers.0.self_attn";
  want(`${a}.q_proj.weight`, [config.num_attention_heads * d, h], "num_attention_heads × head_dim");
  want(`${a}.k_proj.weight`, [config.num_key_value_heads * d, h], "num_key_value_heads × head_dim");
  want("model.layers.0.mlp.gate_proj.weight", [config.intermediate_size, h], "intermediate_size");
  checkMemoryBudget(config, { batch_size: 1, seq_len: 1, training: false }, file);
}

/** Builds the model that config.json describes and loads its weights (every tensor, exact shapes). */
export function loadCheckpoint(dir: string, opts: LoadCheckpointOptions = {}): DecoderLM {
  const config = readConfig(dir);
  checkConfigAgainstWeights(dir, config);
  const weights = readCheckpointWeights(dir, { keepF64: opts.dtype === "float64" });
  const model = new DecoderLM(config, { ...opts, randomInit: false }); // every weight is loaded below
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
 * the model's embedding. Without one: an error saying what to do, or null with `{ optional: true }`.
 */
export function checkpointTokenizer(dir: string, config: ModelConfig): Tokenizer;
export function checkpointTokenizer(
  dir: string,
  config: ModelConfig,
  opts: { optional: true },
): Tokenizer | null;
export function checkpointTokenizer(
  dir: string,
  config: ModelConfig,
  opts: { optional?: boolean } = {},
): Tokenizer | null {
  if (!fs.existsSync(path.join(dir, TOKENIZER_META)) && !fs.existsSync(path.join(dir, "tokenizer.json"))) {
    if (opts.optional) return null;
    throw new Error(
      `the checkpoint ${dir} has no tokenizer (${TOKENIZER_META} or tokenizer.json); copy the one it was trained with into the folder`,
    );
  }
  const tok = loadTokenizer(dir);
  if (tok.vocabSize > config.vocab_size)
    throw new Error(
      `${dir}: the checkpoint's tokenizer has ${tok.vocabSize} ids but the model embeds only ${config.vocab_size} (vocab_size in config.json)`,
    );
  return tok;
}
