/**
 * Converting a standard (Qwen3 / Llama) checkpoint to a routed one (docs/methods.md "Initialisation identities",
 * "What conversion preserves"): the routed model gets the SAME backbone weights and zero-initialised routing
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
 *                      mean square; test/residual.test.ts measures it on a 6-layer toy (docs/methods.md);
 *                      the tiny Llama fixture (eps 1e-5, ms ≈ 0.01) reaches 2e-3·s. The eps-0 check is
 *                      what proves equivalence; this bound only catches a residue too large to ignore.
 * Storage dtype (`--dtype`, `storageDtypes`): auto writes each backbone tensor in the dtype it had
 * in the source (F32/F16/BF16; F64 as F32, the compute dtype) and the routing tensors in the source's
 * dominant float dtype (the one holding the most backbone values); f32/bf16/f16 write everything in
 * that dtype. The check compares both models built from the weights as they will be stored (what
 * reading the written file gives back, `storedWeights`): routing queries 0 and gains 1 are exact
 * in every dtype, so auto changes nothing and the exactness results hold for the written file. When
 * a forced dtype rounds backbone values, the difference to the unrounded original is reported too.
 * `convertCheckpoint` writes atomically (a temporary folder renamed into place) and only when the
 * check passes, unless forced. Progress (`onPhase`) advances per tensor read (during the check),
 * once for the logits, per tensor written, and once for saving the files.
 * Memory and time (`convertCheckpoint`; docs/benchmarks.md has the numbers for Qwen3-0.6B): the
 * float32 model never exists whole, and the source is opened header-only (`openCheckpointWeights`).
 *   check   `checkLayerByLayer`: one buffer per backbone tensor of ONE layer, which every layer of
 *           every model of the check adopts (`adoptParams`), plus the embedding (also the tied head;
 *           an untied lm_head is read into the same buffer at the end) and the final norm. Each
 *           layer's tensors are decoded from the files into those buffers, then every model of the
 *           check (converted, original, their eps-0 variants) runs that layer on its own stream of
 *           the sample; then the next layer overwrites them. Same models, same operations, same
 *           verification as `verifyConversion` on whole models (test/convert-stream.test.ts).
 *           When a forced --dtype may round, each layer runs first as read (the unrounded original,
 *           for maxAbsDiffFromSource), then rounded in place (`storedValue`) for the others.
 *   write   `writeConverted`: each backbone tensor is streamed from the source file to the output
 *           (`CopyTensor`): its bytes as they are when the dtype is kept (--dtype auto, the usual
 *           case: no decoding), else decoded and re-encoded chunk by chunk; the routing tensors are
 *           the converted model's zero initialisation. The bytes are those of saving the built
 *           model (test/convert-stream.test.ts compares them with that path).
 * Peak memory is about one layer plus the embedding in the compute dtype (for Qwen3-0.6B in
 * float32: 0.6 GB, half the BF16 source), the sample's activations and 16 MiB I/O buffers; the
 * source is read twice (check, write), which the page cache usually serves.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Backend, DType } from "../backend/backend.js";
import { defaultBackend } from "../backend/index.js";
import type { Tokenizer } from "../data/tokenizer.js";
import {
  checkConfigAgainstWeights,
  checkpointTokenizer,
  dominantDtype,
  readConfig,
  saveCheckpointTensors,
} from "../model/checkpoint.js";
import {
  type CopyTensor,
  type FileTensor,
  type FloatStDType,
  openCheckpointWeights,
  type StDType,
  storedValue,
  type StTensor,
  type WriteTensor,
} from "../io/safetensors.js";
import { tidy } from "../tensor/memory.js";
import { optionError } from "../io/errors.js";
import { matmul } from "../tensor/ops.js";
import { Rng } from "../tensor/random.js";
import { empty, noGrad, type Tensor } from "../tensor/tensor.js";
import { type ModelConfig, parseConfig } from "../model/config.js";
import { DecoderLM } from "../model/decoder.js";
import { type ConvertMode, STORAGE_DTYPES, type StorageDtype } from "../model/names.js";
import {
  type ConvertSpec,
  isResidualParam,
  type ModeDef,
  modeByName,
  modeName,
  modeOf,
  type ModeRun,
  modes,
} from "../model/residual.js";
import { checkFinite, checkWeightShapes, exportWeights, loadWeights } from "../model/weights.js";

export { CONVERT_MODES, type ConvertMode } from "../model/names.js";

export interface ConvertSettings {
  mode: ConvertMode;
  /** Blocks for the block modes (default 4, at most the number of layers). */
  blocks?: number;
  nullSource?: boolean;
  gate?: boolean;
}

/** `--dtype`: the dtype the converted weights are written in (see the file comment). */
export { STORAGE_DTYPES, type StorageDtype } from "../model/names.js";
const FORCED: Record<Exclude<StorageDtype, "auto">, FloatStDType> = { f32: "F32", bf16: "BF16", f16: "F16" };

function checkStorageDtype(v: string): StorageDtype {
  if (!(STORAGE_DTYPES as readonly string[]).includes(v))
    throw optionError((n) => `${n("storage", v)} is not one of ${STORAGE_DTYPES.join(", ")}`);
  return v as StorageDtype;
}

/** A source tensor's dtype as auto keeps it: F32/F16/BF16 as they are, anything else (F64) as F32. */
function keptDtype(d: StDType | undefined): FloatStDType {
  return d === "F16" || d === "BF16" ? d : "F32";
}

/**
 * The dtype each tensor of the model `routed` describes is written in, by name (registration
 * order), given the source tensors' dtypes and shapes (a header is enough; tensors without a dtype
 * count as F32). See the file comment for what each choice means.
 */
export function storageDtypes(
  routed: Record<string, unknown>,
  source: ReadonlyMap<string, { dtype?: StDType; shape: readonly number[] }>,
  choice: StorageDtype = "auto",
): Map<string, FloatStDType> {
  checkStorageDtype(choice);
  const names = new DecoderLM(parseConfig(routed), { meta: true }).namedParameters().map(([n]) => n);
  if (choice !== "auto") return new Map(names.map((n) => [n, FORCED[choice]]));
  const dominant = dominantDtype(
    names
      .filter((n) => !isResidualParam(n))
      .map((n): [FloatStDType, number] => {
        const t = source.get(n);
        return [keptDtype(t?.dtype), t ? t.shape.reduce((p, q) => p * q, 1) : 0];
      }),
  );
  return new Map(names.map((n) => [n, isResidualParam(n) ? dominant : keptDtype(source.get(n)?.dtype)]));
}

type Weights = ReadonlyMap<string, StTensor | { shape: readonly number[]; data: ArrayLike<number> }>;

export interface StoredWeights {
  /** The backbone as reading the written file gives it back; other tensors as given. */
  tensors: Map<string, { shape: readonly number[]; data: ArrayLike<number> }>;
  /** Tensors whose values storing changes (rounding); empty when the source is kept as it is. */
  rounded: string[];
}

/**
 * The backbone tensors of `tensors` as they are after writing them in the dtypes of `storage` and
 * reading them back. A Float32Array written as F32, or as the F16/BF16 it was read from, is passed
 * through (no copy); other tensors are rounded into a copy, or in place with `inPlace`. Routing
 * tensors are not touched (they come from the model's zero initialisation, exact in every dtype).
 */
export function storedWeights(
  tensors: Weights,
  storage: ReadonlyMap<string, FloatStDType>,
  opts: { inPlace?: boolean } = {},
): StoredWeights {
  const out = new Map<string, { shape: readonly number[]; data: ArrayLike<number> }>();
  const rounded: string[] = [];
  for (const [name, t] of tensors) {
    const dt = storage.get(name);
    // A file tensor that decodes to float32 exactly (F32, BF16, F16) and is stored as it is or as
    // F32 is kept without reading its data.
    const widened = "dtype" in t && (t.dtype === "F32" || t.dtype === "BF16" || t.dtype === "F16");
    if (widened && (dt === "F32" || t.dtype === dt)) {
      out.set(name, t);
      continue;
    }
    const src = t.data;
    const kept = src instanceof Float32Array && (dt === "F32" || ("dtype" in t && t.dtype === dt));
    if (dt === undefined || isResidualParam(name) || kept) {
      out.set(name, t);
      continue;
    }
    const dst =
      opts.inPlace && (src instanceof Float32Array || src instanceof Float64Array)
        ? src
        : new (src instanceof Float64Array ? Float64Array : Float32Array)(src.length);
    let changed = false;
    for (let i = 0; i < src.length; i++) {
      const x = src[i]!;
      const v = storedValue(x, dt);
      if (v !== x && !(Number.isNaN(v) && Number.isNaN(x))) changed = true;
      dst[i] = v;
    }
    if (changed) rounded.push(name);
    out.set(name, { shape: t.shape, data: dst });
  }
  return { tensors: out, rounded };
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

/** The mode a conversion targets, with how it converts (its ConvertSpec); an error if it does not. */
function convertTarget(mode: string): ModeDef & { convert: ConvertSpec } {
  const m = modeByName(mode);
  if (!m?.convert) {
    const names = modes()
      .filter((d) => d.convert)
      .map((d) => d.name);
    throw new Error(`cannot convert to mode ${mode}; expected one of ${names.join(", ")}`);
  }
  return m as ModeDef & { convert: ConvertSpec };
}

/** Whether a mode is exactly equivalent at conversion, or only up to the RMSNorm epsilon. */
export function exactness(s: ConvertSettings): "exact" | "eps-residue" {
  return convertTarget(s.mode).convert.exactness;
}

/** The routed config for a standard one (with the keys its mode's conversion always sets, e.g. delta-block's zero gate). */
export function convertedConfig(c: ModelConfig, s: ConvertSettings): Record<string, unknown> {
  const target = convertTarget(s.mode);
  const from = modeName(c);
  if (from !== "standard")
    throw new Error(
      `the checkpoint is already routed (mode ${from}); convert starts from a standard checkpoint`,
    );
  if (!target.options.additive && (s.nullSource || s.gate))
    throw optionError(
      (n) => `${n("nullSource")} and ${n("gate")} are options of delta and delta-block, not of ${s.mode}`,
    );
  const out: Record<string, unknown> = { ...c, attnres_mode: target.key };
  delete out.architectures; // the HF class names describe the standard model, not the routed one
  if (target.options.blocks) {
    const blocks = s.blocks ?? Math.min(4, c.num_hidden_layers);
    if (blocks > c.num_hidden_layers)
      throw optionError((n) => `${n("blocks", blocks)} is more than the ${c.num_hidden_layers} layers`);
    out.attnres_num_blocks = blocks;
  } else if (s.blocks !== undefined)
    throw optionError((n) => `${n("blocks")} applies to the block modes, not to ${s.mode}`);
  if (s.nullSource) out.attnres_use_null_source = true;
  if (s.gate) out.attnres_gate_type = "learnable_alpha";
  Object.assign(out, target.convert.keys);
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
  // Every weight is loaded below (the backbone from the source, routing at its constant init).
  const model = new DecoderLM(parseConfig(config), {
    backend: opts.backend,
    dtype: opts.dtype,
    randomInit: false,
  });
  try {
    const all = new Map(tensors);
    for (const [name, w] of exportWeights(model))
      if (isResidualParam(name)) {
        if (tensors.has(name))
          throw new Error(`${opts.source ?? "checkpoint"} already has routing tensor ${name}`);
        const spec = modeOf(model.config).convert;
        if (!spec)
          throw new Error(`mode ${modeName(model.config)} does not convert from a standard checkpoint`);
        const zero = spec.zeroParams.test(name);
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
  /** The storage dtype the models were built for (null: the weights as given). */
  storage: StorageDtype | null;
  /** Backbone tensors whose values storing rounds (0 unless a forced dtype narrows the source). */
  roundedTensors: number;
  /**
   * When storing rounds: max |converted as stored − original as given| at the model's eps, the
   * effect of the narrower dtype (reported, not part of `ok`). Else null.
   */
  maxAbsDiffFromSource: number | null;
}

export interface VerifyOptions {
  backend?: Backend;
  dtype?: DType;
  source?: string;
  /** Build both models from the weights as they will be stored in this dtype (default: as given). */
  storage?: StorageDtype;
}

/**
 * Original vs converted logits on `ids` (one sequence), both built from the weights as they will
 * be stored when `opts.storage` is given; see the file comment for tolerances.
 */
export function verifyConversion(
  config: ModelConfig,
  tensors: Weights,
  settings: ConvertSettings,
  ids: Int32Array,
  opts: VerifyOptions = {},
): Verification {
  const routed = convertedConfig(config, settings);
  const stored =
    opts.storage === undefined
      ? { tensors, rounded: [] }
      : storedWeights(tensors, storageDtypes(routed, tensors, opts.storage));
  const build = { backend: opts.backend, dtype: opts.dtype, source: opts.source };
  const model = modelWithBackbone(routed, stored.tensors, build);
  try {
    return verifyModel(config, model, settings, ids, opts.storage ?? null, stored.rounded.length, () =>
      modelWithBackbone(config, tensors, build),
    );
  } finally {
    model.dispose();
  }
}

/**
 * The check of `verifyConversion` on an already built converted model `routed` (config
 * `convertedConfig(config, settings)`): the original and the eps-0 variants run on its weights
 * (`shareWeightsOf`: one copy of the backbone in memory, read from the files once). When a forced
 * --dtype rounded some tensors (roundedTensors > 0), maxAbsDiffFromSource compares the converted
 * logits with the unrounded original's, which `readOriginal` builds (read once more); else null.
 */
function verifyModel(
  config: ModelConfig,
  routed: DecoderLM,
  settings: ConvertSettings,
  ids: Int32Array,
  storage: StorageDtype | null,
  roundedTensors: number,
  readOriginal: () => DecoderLM,
): Verification {
  const T = ids.length;
  const logits = (cfg: Record<string, unknown> | null): Float64Array => {
    if (!cfg) return logitsOf(routed, ids, 1, T);
    const p0 = routed.parameters()[0]!;
    const m = new DecoderLM(parseConfig(cfg), {
      backend: p0.backend,
      dtype: p0.dtype,
      shareWeightsOf: routed,
    });
    try {
      return logitsOf(m, ids, 1, T);
    } finally {
      m.dispose();
    }
  };
  const pair = (eps?: number) => {
    const a = logits(eps === undefined ? { ...config } : { ...config, rms_norm_eps: eps });
    const b = logits(eps === undefined ? null : { ...routed.config, rms_norm_eps: eps });
    return { diff: maxAbsDiff(b, a), scale: 1 + maxAbs(a), converted: b };
  };
  const kind = exactness(settings);
  const real = pair();
  const eps0 = kind === "eps-residue" && !settings.nullSource ? pair(0) : null;
  const roundingTolerance = ROUNDING_TOL * real.scale;
  const tolerance = (kind === "exact" ? ROUNDING_TOL : RESIDUE_TOL) * real.scale;
  const ok = real.diff <= tolerance && (eps0 === null || eps0.diff <= ROUNDING_TOL * eps0.scale);
  let fromSource: number | null = null;
  if (roundedTensors > 0) {
    const original = readOriginal();
    try {
      fromSource = maxAbsDiff(real.converted, logitsOf(original, ids, 1, T));
    } finally {
      original.dispose();
    }
  }
  return {
    exactness: kind,
    maxAbsDiff: real.diff,
    maxAbsDiffEps0: eps0?.diff ?? null,
    tolerance,
    roundingTolerance,
    ok,
    tokens: T,
    storage,
    roundedTensors,
    maxAbsDiffFromSource: fromSource,
  };
}

export interface ConvertOptions extends ConvertSettings {
  from: string;
  to: string;
  /** Write even when the check fails. */
  force?: boolean;
  backend?: Backend;
  /** Compute dtype of the check (default float32). */
  dtype?: DType;
  /** The dtype the weights are written in (default auto: as in the source). */
  storage?: StorageDtype;
  /**
   * Progress (CLI): `done` of `total` steps, one per tensor read (by the check, layer by layer),
   * one for the check's logits, one to start writing, one per tensor written and one for saving
   * the files; `what` names the last step done or the one under way.
   */
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
  /** The --dtype choice and how many tensors are (or would be) written in each dtype. */
  storage: { choice: StorageDtype; tensors: Partial<Record<FloatStDType, number>> };
}

/** Loads, converts, verifies and (when the check passes, or forced) writes; see the file comment. */
export function convertCheckpoint(o: ConvertOptions): ConvertResult {
  const phase = o.onPhase ?? (() => {});
  const storage = checkStorageDtype(o.storage ?? "auto");
  if (fs.existsSync(o.to) && fs.readdirSync(o.to).length > 0)
    throw optionError(
      (n) => `${o.to} already exists and is not empty; choose another output folder (${n("to")})`,
    );
  const config = readConfig(o.from);
  checkConfigAgainstWeights(o.from, config); // before any model is built
  const routed = convertedConfig(config, o);
  const tokenizer = checkpointTokenizer(o.from, config, { optional: true });
  const source = openCheckpointWeights(o.from); // headers only: see the file comment
  const dtypes = storageDtypes(routed, source, storage);
  const nRead = source.size;
  const total = nRead + 2 + dtypes.size + 1; // read each, the check, start writing, write each, the files
  phase(0, total, "reading the checkpoint");
  let read = 0;
  const check = checkLayerByLayer({
    config,
    settings: o,
    ids: sampleIds(config.vocab_size, tokenizer),
    source,
    dtypes,
    storage,
    backend: o.backend ?? defaultBackend(),
    dtype: o.dtype ?? "float32",
    sourceName: o.from,
    onRead: (name) => phase(Math.min(++read, nRead), total, `reading ${name}`),
    onHead: () => phase(nRead, total, "checking the logits"),
  });
  const verification = check.verification;
  const counts: Partial<Record<FloatStDType, number>> = {};
  for (const d of dtypes.values()) counts[d] = (counts[d] ?? 0) + 1;
  const result: ConvertResult = {
    from: o.from,
    to: o.to,
    mode: o.mode,
    config: routed,
    gateAdded: !o.gate && convertTarget(o.mode).convert.keys?.attnres_gate_type === "learnable_alpha",
    verification,
    written: false,
    addedParameters: 0,
    tokenizerCopied: [],
    storage: { choice: storage, tensors: counts },
  };
  phase(nRead + 1, total, verification.ok ? "checked" : "check failed");
  if (!verification.ok && !o.force) return result;
  writeConverted(o, routed, source, check.routing, dtypes, result, (i, what) => phase(i, total, what), nRead);
  phase(total, total, "done");
  result.written = true;
  return result;
}

/**
 * Writes the converted checkpoint into o.to, through a temporary folder renamed into place: the
 * backbone streamed from the source files (`CopyTensor`: the source's bytes when the dtype is
 * kept, else re-encoded chunk by chunk), the routing tensors from `routing`, then the tokenizer
 * files.
 */
function writeConverted(
  o: ConvertOptions,
  routed: Record<string, unknown>,
  source: ReadonlyMap<string, FileTensor>,
  routing: ReadonlyMap<string, { shape: readonly number[]; data: ArrayLike<number> }>,
  dtypes: ReadonlyMap<string, FloatStDType>,
  result: ConvertResult,
  phase: (done: number, what: string) => void,
  nRead: number,
): void {
  const cfg = parseConfig(routed);
  const tensors = new DecoderLM(cfg, { meta: true })
    .namedParameters()
    .map(([name, p]): [string, (WriteTensor | CopyTensor) & { dtype: FloatStDType }] => {
      const dtype = dtypes.get(name)!;
      const r = routing.get(name);
      if (r) return [name, { dtype, shape: p.shape, data: r.data }];
      if (isResidualParam(name)) throw new Error(`internal: no value for routing tensor ${name}`);
      return [name, { dtype, shape: p.shape, from: source.get(name)! }];
    });
  result.addedParameters = [...routing.values()].reduce((s, t) => s + t.data.length, 0);
  const tmp = `${o.to.replace(/[/\\]+$/, "")}.tmp-${process.pid}`;
  try {
    phase(nRead + 2, "writing");
    fs.rmSync(tmp, { recursive: true, force: true });
    saveCheckpointTensors(
      tmp,
      cfg,
      tensors,
      { generator: "attnres convert", converted_from: path.resolve(o.from) },
      { onTensor: (name, i) => phase(nRead + 3 + i, `writing ${name}`) },
    );
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
  }
}

/** What `checkLayerByLayer` needs: the source opened header-only and the storage dtypes. */
interface LayerCheckInput {
  config: ModelConfig;
  settings: ConvertSettings;
  ids: Int32Array;
  source: ReadonlyMap<string, FileTensor>;
  dtypes: ReadonlyMap<string, FloatStDType>;
  storage: StorageDtype;
  backend: Backend;
  dtype: DType;
  sourceName: string;
  /** Called after a source tensor is read for the first time (progress). */
  onRead?: (name: string) => void;
  /** Called before the final norm and the output head run (progress). */
  onHead?: () => void;
}

/** A model of the check and the state of its forward pass. */
interface Pass {
  model: DecoderLM;
  /** Runs on the weights as read from the source (before a forced --dtype rounds them). */
  unrounded: boolean;
  run?: ModeRun;
  logits?: Float64Array;
}

/**
 * The check of `verifyConversion` (same models, same verification) computed layer by layer, so
 * that the float32 model never exists whole: one layer's backbone tensors are decoded from the
 * files into buffers that every layer of every model of the check adopts (`adoptParams`), then
 * all the models (converted, original, their eps-0 variants, and the unrounded original when a
 * forced --dtype may round) run that layer on their own stream; then the next layer is decoded
 * over it. The embedding (and the output head: the tied embedding, or lm_head read into the same
 * buffer) is held once. Memory: one layer + the embedding + the sample's activations. When a
 * forced --dtype may round, each stage's tensors are read as the source holds them, the unrounded
 * original runs on them, then they are rounded in place for the other models. Also returns the
 * converted model's routing tensors (its zero initialisation, checked), which are what is written.
 */
export function checkLayerByLayer(a: LayerCheckInput): {
  verification: Verification;
  routing: Map<string, { shape: readonly number[]; data: Float32Array | Float64Array }>;
} {
  const { config, settings, ids, source, dtypes } = a;
  const T = ids.length;
  const routedCfg = parseConfig(convertedConfig(config, settings));
  const meta = new DecoderLM(config, { meta: true });
  for (const [name] of new DecoderLM(routedCfg, { meta: true }).namedParameters())
    if (isResidualParam(name) && source.has(name))
      throw new Error(`${a.sourceName} already has routing tensor ${name}`);
  checkWeightShapes(meta, source, {
    source: a.sourceName,
    allowUnexpected: (n) => config.tie_word_embeddings && n === "lm_head.weight",
  });
  // One buffer per backbone tensor of one layer, one for the embedding and the head, one for the
  // final norm; every layer's parameters are views of the layer's buffers.
  const EMBED = "model.embed_tokens.weight";
  const slotKey = (name: string) =>
    name === "lm_head.weight" ? EMBED : name.replace(/^model\.layers\.\d+\./, "");
  const slots = new Map<string, Tensor>();
  const adopt: Tensor[] = [];
  let pass: Pass[] = [];
  try {
    for (const p of meta.createdParams) {
      const key = slotKey(p.name);
      let t = slots.get(key);
      if (!t) {
        t = empty(p.shape, { backend: a.backend, dtype: a.dtype }).keep();
        slots.set(key, t);
      }
      adopt.push(t);
    }
    // The check's models know positions up to T only (when the model has that many): their
    // rotary tables hold the same values as the full ones for those positions, without computing
    // max_position_embeddings of them.
    const upToT = (cfg: Record<string, unknown>) =>
      parseConfig({ ...cfg, max_position_embeddings: Math.min(T, config.max_position_embeddings) });
    const conv = new DecoderLM(upToT(routedCfg), {
      backend: a.backend,
      dtype: a.dtype,
      randomInit: false,
      adoptParams: adopt,
    });
    pass.push({ model: conv, unrounded: false });
    const spec = modeOf(routedCfg).convert!;
    const routing = new Map<string, { shape: readonly number[]; data: Float32Array | Float64Array }>();
    for (const [name, p] of conv.namedParameters())
      if (isResidualParam(name)) {
        const d = p.data.slice(0, p.size) as Float32Array | Float64Array;
        const zero = spec.zeroParams.test(name);
        for (let i = 0; i < d.length; i++)
          if (d[i] !== (zero ? 0 : 1)) throw new Error(`internal: ${name} is not zero-initialised`);
        routing.set(name, { shape: p.shape, data: d });
      }
    const share = (cfg: Record<string, unknown>, unrounded = false): Pass => {
      const model = new DecoderLM(upToT(cfg), {
        backend: a.backend,
        dtype: a.dtype,
        shareWeightsOf: conv,
      });
      const p = { model, unrounded };
      pass.push(p);
      return p;
    };
    const orig = share({ ...config });
    const kind = exactness(settings);
    const eps0 =
      kind === "eps-residue" && !settings.nullSource
        ? { orig: share({ ...config, rms_norm_eps: 0 }), conv: share({ ...routedCfg, rms_norm_eps: 0 }) }
        : null;
    // A tensor may change when stored unless it decodes to float32 exactly and is kept as it is or as F32.
    const mayRound = (name: string): boolean => {
      const t = source.get(name)!;
      const dt = dtypes.get(name);
      const exact = t.dtype === "F32" || t.dtype === "BF16" || t.dtype === "F16";
      return dt !== undefined && !(exact && (dt === "F32" || t.dtype === dt));
    };
    const rounding = [...source.keys()].some((n) => dtypes.has(n) && !isResidualParam(n) && mayRound(n));
    const raw = rounding ? share({ ...config }, true) : null;
    const rounded = new Set<string>();
    const seen = new Set<string>();
    // The backend's sum of squares (in float64: no float32 value overflows it) is finite exactly
    // when every value is; only then is the value-by-value search for the culprit needed.
    const finite = (name: string, t: Tensor): void => {
      if (!Number.isFinite(t.backend.sumSquares(t.data, t.size)))
        checkFinite(a.sourceName, name, t.data, t.size);
    };
    const holds = new Map<Tensor, string>(); // slot → the source tensor it holds, as stored
    /** Reads the stage's tensors into their buffers, runs fn on each model (unrounded ones first, then the stored values). */
    const stage = (tensors: [string, Tensor][], fn: (p: Pass) => void, loaded?: () => void): void => {
      for (const [name, slot] of tensors) {
        if (holds.get(slot) === name && !rounding) continue; // the tied head: still the embedding
        const d = slot.data;
        if (!source.get(name)!.readInto(d as Float32Array | Float64Array)) finite(name, slot);
        holds.set(slot, name);
        if (!seen.has(name)) {
          seen.add(name);
          a.onRead?.(name);
        }
      }
      loaded?.();
      for (const p of pass) if (p.unrounded) fn(p);
      if (rounding)
        for (const [name, slot] of tensors) {
          if (!mayRound(name)) continue;
          const dt = dtypes.get(name)!;
          const d = slot.data;
          let changed = false;
          for (let i = 0; i < slot.size; i++) {
            const x = d[i]!;
            const v = storedValue(x, dt);
            if (v !== x) changed = true;
            d[i] = v;
          }
          finite(name, slot);
          if (changed) rounded.add(name);
        }
      for (const p of pass) if (!p.unrounded) fn(p);
    };
    noGrad(() =>
      tidy(() => {
        stage([[EMBED, slots.get(EMBED)!]], (p) => {
          p.run = p.model.residual.begin(p.model.model.embed_tokens.forward(ids, [1, T]), null);
        });
        for (let i = 0; i < config.num_hidden_layers; i++) {
          const prefix = `model.layers.${i}.`;
          const tensors = meta.createdParams
            .filter((t) => t.name.startsWith(prefix))
            .map((t): [string, Tensor] => [t.name, slots.get(slotKey(t.name))!]);
          stage(tensors, (p) => {
            // DecoderLM.run's layer step (decoder.ts), for one layer of one model.
            const layer = p.model.model.layers[i]!;
            const res = p.run!;
            const xa = res.input(2 * i);
            res.update(2 * i, xa, layer.attnSublayer(xa, p.model.rope, 0));
            const xm = res.input(2 * i + 1);
            res.update(2 * i + 1, xm, layer.mlpSublayer(xm));
          });
        }
        const head = config.tie_word_embeddings ? EMBED : "lm_head.weight";
        const norm = "model.norm.weight";
        stage(
          [
            [norm, slots.get(norm)!],
            [head, slots.get(EMBED)!],
          ],
          (p) => {
            const m = p.model;
            const h = m.model.norm.forward(p.run!.end());
            const logits = m.lm_head
              ? m.lm_head.forward(h)
              : matmul(h, m.model.embed_tokens.weight, { transB: true });
            p.logits = new Float64Array(logits.data.subarray(0, logits.size));
          },
          a.onHead,
        );
      }),
    );
    const diff = (x: Pass, y: Pass) => ({
      diff: maxAbsDiff(x.logits!, y.logits!),
      scale: 1 + maxAbs(y.logits!),
    });
    const real = diff(pass[0]!, orig);
    const zero = eps0 ? diff(eps0.conv, eps0.orig) : null;
    const roundingTolerance = ROUNDING_TOL * real.scale;
    const tolerance = (kind === "exact" ? ROUNDING_TOL : RESIDUE_TOL) * real.scale;
    const ok = real.diff <= tolerance && (zero === null || zero.diff <= ROUNDING_TOL * zero.scale);
    const verification: Verification = {
      exactness: kind,
      maxAbsDiff: real.diff,
      maxAbsDiffEps0: zero?.diff ?? null,
      tolerance,
      roundingTolerance,
      ok,
      tokens: T,
      storage: a.storage,
      roundedTensors: rounded.size,
      maxAbsDiffFromSource: raw && rounded.size > 0 ? maxAbsDiff(pass[0]!.logits!, raw.logits!) : null,
    };
    return { verification, routing };
  } finally {
    for (const p of pass.reverse()) p.model.dispose();
    pass = [];
    for (const t of slots.values()) t.dispose();
  }
}
