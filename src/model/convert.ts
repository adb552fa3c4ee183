/**
 * Converting a standard (Qwen3 / Llama) checkpoint to a routed one (METHODS.md "What must hold at
 * initialisation"): the routed model gets the SAME backbone weights and zero-initialised routing
 * (queries 0, key gains 1, null sources 0, gates 0), then its logits are compared with the
 * original's on a sample.
 *
 * What each mode guarantees at conversion:
 *   delta-block    + zero gate (added automatically): x = h + 0·route = h, EXACT (rounding only).
 *                  Without the gate it is not equivalent (its sources do not sum to the stream).
 *   delta, attnres-full, attnres-block: the uniform routing returns the stream scaled by 1/n, which
 *                  the next RMSNorm undoes up to its epsilon: exact at eps 0, an "eps residue" at the
 *                  model's eps. We measure both: at eps 0 the difference must be rounding only (same
 *                  tolerance as the exact modes), at the real eps within the residue tolerance.
 * Tolerances (on the max abs logit difference, float32 compute, scaled by s = 1 + max|logit|):
 *   rounding  1e-4·s   float32 re-association of the routed sums over ≤ 2L+1 sources;
 *   residue   1e-2·s   the eps term: RMSNorm(c·x) differs from RMSNorm(x) by about eps(1/c²−1)/(2·ms(x))
 *                      relatively, c ≥ 1/(2L+1), so it grows with depth and shrinks with the stream's
 *                      mean square; METHODS.md reports 1e-5…1e-4 absolute at 6 layers and eps 1e-6;
 *                      the tiny Llama fixture (eps 1e-5, ms ≈ 0.01) reaches 2e-3·s. The eps-0 check is
 *                      what proves equivalence; this bound only catches a residue too large to ignore.
 * `convertCheckpoint` writes atomically (a temporary folder renamed into place) and only when the
 * check passes, unless forced.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Backend, DType } from "../backend/backend.js";
import { defaultBackend } from "../backend/index.js";
import { loadTokenizer, type Tokenizer } from "../data/tokenizer.js";
import "../data/hf-tokenizer.js";
import "../data/bpe.js";
import { readConfig, saveCheckpoint } from "../io/checkpoint.js";
import { readCheckpointWeights, type StTensor } from "../io/safetensors.js";
import { tidy } from "../tensor/memory.js";
import { Rng } from "../tensor/random.js";
import { noGrad } from "../tensor/tensor.js";
import { isResidualParam } from "../train/trainer.js";
import { type ModelConfig, MODE_NAMES } from "./config.js";
import { DecoderLM } from "./decoder.js";
import { modeName } from "./residual.js";
import { exportWeights, loadWeights } from "./weights.js";

export const CONVERT_MODES = ["delta", "delta-block", "attnres-full", "attnres-block"] as const;
export type ConvertMode = (typeof CONVERT_MODES)[number];

export interface ConvertSettings {
  mode: ConvertMode;
  /** Blocks for the block modes (default 4, at most the number of layers). */
  blocks?: number;
  nullSource?: boolean;
  gate?: boolean;
}

export const ROUNDING_TOL = 1e-4;
export const RESIDUE_TOL = 1e-2;

/** Files beside the weights that describe the tokenizer or generation; copied verbatim. */
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "attnres_tokenizer.json",
  "vocab.json",
  "merges.txt",
  "generation_config.json",
];

/** Whether a mode is exactly equivalent at conversion, or only up to the RMSNorm epsilon. */
export function exactness(s: ConvertSettings): "exact" | "eps-residue" {
  return s.mode === "delta-block" ? "exact" : "eps-residue";
}

/** The routed config for a standard one (delta-block always gets the zero gate). */
export function convertedConfig(c: ModelConfig, s: ConvertSettings): Record<string, unknown> {
  if (!(CONVERT_MODES as readonly string[]).includes(s.mode))
    throw new Error(`cannot convert to mode ${s.mode}; expected one of ${CONVERT_MODES.join(", ")}`);
  const from = modeName(c);
  if (from !== "standard")
    throw new Error(
      `the checkpoint is already routed (mode ${from}); convert starts from a standard checkpoint`,
    );
  const additive = s.mode === "delta" || s.mode === "delta-block";
  if (!additive && (s.nullSource || s.gate))
    throw new Error(`--null-source and --gate are options of delta and delta-block, not of ${s.mode}`);
  const out: Record<string, unknown> = { ...c, attnres_mode: MODE_NAMES[s.mode] };
  delete out.architectures; // the HF class names describe the standard model, not the routed one
  if (s.mode === "attnres-block" || s.mode === "delta-block") {
    const blocks = s.blocks ?? Math.min(4, c.num_hidden_layers);
    if (blocks > c.num_hidden_layers)
      throw new Error(`--blocks ${blocks} is more than the ${c.num_hidden_layers} layers`);
    out.attnres_num_blocks = blocks;
  } else if (s.blocks !== undefined) throw new Error(`--blocks applies to the block modes, not to ${s.mode}`);
  if (s.nullSource) out.attnres_use_null_source = true;
  if (s.gate || s.mode === "delta-block") out.attnres_gate_type = "learnable_alpha";
  return out;
}

/**
 * Builds a model of `config` whose backbone weights come from `tensors` (every backbone tensor
 * must be there with its exact shape) and whose residual-family parameters keep their zero
 * initialisation (checked).
 */
export function modelWithBackbone(
  config: Record<string, unknown>,
  tensors: ReadonlyMap<string, { shape: readonly number[]; data: ArrayLike<number> }>,
  opts: { backend?: Backend; dtype?: DType; source?: string } = {},
): DecoderLM {
  const model = new DecoderLM(config, { backend: opts.backend, dtype: opts.dtype });
  try {
    const all = new Map(tensors);
    for (const [name, w] of exportWeights(model))
      if (isResidualParam(name)) {
        if (tensors.has(name))
          throw new Error(`${opts.source ?? "checkpoint"} already has routing tensor ${name}`);
        const zero = /_res_proj\.|_null_source$|_res_alpha$/.test(name);
        for (let i = 0; i < w.data.length; i++)
          if (w.data[i] !== (zero ? 0 : 1)) throw new Error(`internal: ${name} is not zero-initialised`);
        all.set(name, w);
      }
    loadWeights(model, all, {
      source: opts.source,
      allowUnexpected: (n) => model.config.tie_word_embeddings && n === "lm_head.weight",
    });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/** Logits [B·T·V] as a plain array (inference, nothing retained). */
export function logitsOf(model: DecoderLM, ids: Int32Array, B: number, T: number): Float64Array {
  return Float64Array.from(noGrad(() => tidy(() => model.forward(ids, B, T).toArray())));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d; // NaN propagates
  }
  return m;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

export const SAMPLE_TEXT =
  "The quick brown fox jumps over the lazy dog. Residual streams carry what every layer wrote; " +
  "routing over depth lets each layer choose what it reads.";

/** Sample ids: the tokenizer's encoding of SAMPLE_TEXT, or seeded random ids without one. */
export function sampleIds(vocab: number, tokenizer: Tokenizer | null, maxLen = 32): Int32Array {
  if (tokenizer) {
    const ids = tokenizer.encode(SAMPLE_TEXT).subarray(0, maxLen);
    if (ids.length > 0) return Int32Array.from(ids);
  }
  const rng = new Rng(7);
  return Int32Array.from({ length: Math.min(maxLen, 16) }, () => rng.int(vocab));
}

/** The tokenizer saved in `dir`, or null; an error when its ids do not fit the embedding. */
export function checkpointTokenizer(dir: string, config: ModelConfig): Tokenizer | null {
  const has = ["tokenizer.json", "attnres_tokenizer.json"].some((f) => fs.existsSync(path.join(dir, f)));
  if (!has) return null;
  const tok = loadTokenizer(dir);
  if (tok.vocabSize > config.vocab_size)
    throw new Error(
      `${dir}: the tokenizer has ${tok.vocabSize} ids but the embedding has only vocab_size ${config.vocab_size} rows`,
    );
  return tok;
}

export interface Verification {
  exactness: "exact" | "eps-residue";
  /** Max |converted − original| over the sample's logits at the model's eps. */
  maxAbsDiff: number;
  /** The same with every RMSNorm eps set to 0 (eps-residue modes without a null source), else null. */
  maxAbsDiffEps0: number | null;
  /** Tolerance on maxAbsDiff (absolute), and on maxAbsDiffEps0 (rounding). */
  tolerance: number;
  roundingTolerance: number;
  ok: boolean;
  tokens: number;
}

export interface VerifyOptions {
  backend?: Backend;
  dtype?: DType;
  source?: string;
}

/** Original vs converted logits on `ids` (one sequence); see the file comment for tolerances. */
export function verifyConversion(
  config: ModelConfig,
  tensors: ReadonlyMap<string, StTensor | { shape: readonly number[]; data: ArrayLike<number> }>,
  settings: ConvertSettings,
  ids: Int32Array,
  opts: VerifyOptions = {},
): Verification {
  const routed = convertedConfig(config, settings);
  const T = ids.length;
  const pair = (eps?: number) => {
    const over = eps === undefined ? {} : { rms_norm_eps: eps };
    const std = modelWithBackbone({ ...config, ...over }, tensors, opts);
    let a: Float64Array;
    try {
      a = logitsOf(std, ids, 1, T);
    } finally {
      std.dispose();
    }
    const conv = modelWithBackbone({ ...routed, ...over }, tensors, opts);
    try {
      return { diff: maxAbsDiff(logitsOf(conv, ids, 1, T), a), scale: 1 + maxAbs(a) };
    } finally {
      conv.dispose();
    }
  };
  const kind = exactness(settings);
  const real = pair();
  const eps0 = kind === "eps-residue" && !settings.nullSource ? pair(0) : null;
  const roundingTolerance = ROUNDING_TOL * real.scale;
  const tolerance = (kind === "exact" ? ROUNDING_TOL : RESIDUE_TOL) * real.scale;
  const ok = real.diff <= tolerance && (eps0 === null || eps0.diff <= ROUNDING_TOL * eps0.scale);
  return {
    exactness: kind,
    maxAbsDiff: real.diff,
    maxAbsDiffEps0: eps0?.diff ?? null,
    tolerance,
    roundingTolerance,
    ok,
    tokens: T,
  };
}

export interface ConvertOptions extends ConvertSettings {
  from: string;
  to: string;
  /** Write even when the check fails. */
  force?: boolean;
  backend?: Backend;
  dtype?: DType;
  /** Phase callback (CLI progress): done phases out of total. */
  onPhase?: (done: number, total: number, what: string) => void;
}

export interface ConvertResult {
  from: string;
  to: string;
  mode: ConvertMode;
  config: Record<string, unknown>;
  gateAdded: boolean;
  verification: Verification;
  written: boolean;
  addedParameters: number;
  tokenizerCopied: string[];
}

/** Loads, converts, verifies and (when the check passes, or forced) writes; see the file comment. */
export function convertCheckpoint(o: ConvertOptions): ConvertResult {
  const phase = o.onPhase ?? (() => {});
  const total = 4;
  if (fs.existsSync(o.to) && fs.readdirSync(o.to).length > 0)
    throw new Error(`${o.to} already exists and is not empty; choose another --to`);
  phase(0, total, "reading the checkpoint");
  const config = readConfig(o.from);
  const routed = convertedConfig(config, o);
  const tokenizer = checkpointTokenizer(o.from, config);
  const weights = readCheckpointWeights(o.from);
  phase(1, total, "checking the logits");
  const backend = o.backend ?? defaultBackend();
  const dtype = o.dtype ?? "float32";
  const ids = sampleIds(config.vocab_size, tokenizer);
  const verification = verifyConversion(config, weights.tensors, o, ids, { backend, dtype, source: o.from });
  const result: ConvertResult = {
    from: o.from,
    to: o.to,
    mode: o.mode,
    config: routed,
    gateAdded: o.mode === "delta-block" && !o.gate,
    verification,
    written: false,
    addedParameters: 0,
    tokenizerCopied: [],
  };
  if (!verification.ok && !o.force) return result;
  phase(2, total, "building the converted model");
  const model = modelWithBackbone(routed, weights.tensors, { backend, dtype, source: o.from });
  const tmp = `${o.to.replace(/[/\\]+$/, "")}.tmp-${process.pid}`;
  try {
    result.addedParameters = model
      .namedParameters()
      .filter(([n]) => isResidualParam(n))
      .reduce((s, [, p]) => s + p.size, 0);
    phase(3, total, "writing");
    fs.rmSync(tmp, { recursive: true, force: true });
    saveCheckpoint(tmp, model, { generator: "attnres convert", converted_from: path.resolve(o.from) });
    for (const f of TOKENIZER_FILES)
      if (fs.existsSync(path.join(o.from, f))) {
        fs.copyFileSync(path.join(o.from, f), path.join(tmp, f));
        result.tokenizerCopied.push(f);
      }
    if (fs.existsSync(o.to)) fs.rmdirSync(o.to); // empty (checked above)
    fs.mkdirSync(path.dirname(path.resolve(o.to)), { recursive: true });
    fs.renameSync(tmp, o.to);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    model.dispose();
  }
  phase(4, total, "done");
  result.written = true;
  return result;
}
