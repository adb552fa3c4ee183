/** Shared test helpers: random tensors, comparisons, finite-difference gradient checks. */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Preset } from "../src/cli/preset.js";
import type { PreparedMeta } from "../src/data/prepared.js";
import { ByteTokenizer } from "../src/data/tokenizer.js";
import type { Backend, DType } from "../src/backend/backend.js";
import { nativeBackend } from "../src/backend/index.js";
import { referenceBackend } from "../src/backend/reference/index.js";
import { readSafetensors, type StTensor } from "../src/io/safetensors.js";
import { mul, sum } from "../src/tensor/ops.js";
import { Rng } from "../src/tensor/random.js";
import { noGrad, type Tensor, tensor } from "../src/tensor/tensor.js";
import { tidy } from "../src/tensor/memory.js";
import { type ModelConfig, parseConfig } from "../src/model/config.js";
import { type RunSpec, type TrainSettingsInput, TrainSettingsSchema } from "../src/train/run.js";

export function randTensor(
  rng: Rng,
  shape: number[],
  backend: Backend,
  dtype: DType = "float64",
  opts: { lo?: number; hi?: number; requiresGrad?: boolean } = {},
): Tensor {
  const n = shape.reduce((p, s) => p * s, 1);
  const lo = opts.lo ?? -1;
  const hi = opts.hi ?? 1;
  const v = Array.from({ length: n }, () => lo + (hi - lo) * rng.uniform());
  const t = tensor(v, shape, { backend, dtype }).keep();
  if (opts.requiresGrad ?? true) t.requiresGrad = true;
  return t;
}

/** max |a - b| / (atol + rtol-scale), asserting elementwise closeness with a useful message. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { rtol?: number; atol?: number },
  what: string,
): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs ${expected.length}`);
  const rtol = tol.rtol ?? 0;
  const atol = tol.atol ?? 0;
  let worst = 0;
  let at = -1;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    if (!Number.isFinite(a) && !(Number.isNaN(a) && Number.isNaN(e)) && a !== e) {
      assert.fail(`${what}: element ${i} is ${a}, expected ${e}`);
    }
    const err = Math.abs(a - e) / (atol + rtol * Math.abs(e) || 1e-300);
    if (err > worst) {
      worst = err;
      at = i;
    }
  }
  assert.ok(
    worst <= 1,
    `${what}: element ${at} is ${actual[at]}, expected ${expected[at]} (error ${worst.toFixed(2)}× tolerance rtol=${rtol} atol=${atol})`,
  );
}

/**
 * Checks analytic gradients of L = sum(f(inputs) * R) (R fixed random) against central
 * differences, for every element of every input (or `maxElems` sampled ones).
 */
export function gradcheck(
  name: string,
  inputs: Tensor[],
  f: (...xs: Tensor[]) => Tensor,
  opts: { eps?: number; rtol?: number; atol?: number; seed?: number; maxElems?: number } = {},
): void {
  const eps = opts.eps ?? 1e-6;
  const rng = new Rng(opts.seed ?? 1234);
  const probe = noGrad(() => tidy(() => f(...inputs).shape.slice()));
  const R = randTensor(rng, probe, inputs[0]!.backend, inputs[0]!.dtype, { requiresGrad: false });
  const L = (): number => tidy(() => sum(mul(f(...inputs), R)).item());
  for (const x of inputs) x.grad = null;
  tidy(() => sum(mul(f(...inputs), R)).backward());
  inputs.forEach((x, k) => {
    if (!x.requiresGrad) return;
    assert.ok(x.grad, `${name}: input ${k} got no gradient`);
    const analytic = x.grad!.toArray();
    const d = x.data;
    const idx = [...Array(x.size).keys()];
    const pick =
      opts.maxElems && idx.length > opts.maxElems
        ? idx.filter(() => rng.uniform() < opts.maxElems! / idx.length)
        : idx;
    const numeric: number[] = [];
    const got: number[] = [];
    for (const i of pick) {
      const orig = d[i]!;
      d[i] = orig + eps;
      const lp = noGrad(L);
      d[i] = orig - eps;
      const lm = noGrad(L);
      d[i] = orig;
      numeric.push((lp - lm) / (2 * eps));
      got.push(analytic[i]!);
    }
    assertClose(
      got,
      numeric,
      { rtol: opts.rtol ?? 1e-6, atol: opts.atol ?? 1e-7 },
      `${name}: d/d input ${k}`,
    );
    x.grad!.dispose();
    x.grad = null;
  });
  R.dispose();
}

/** Elementwise closeness with the absolute tolerance scaled by the largest |expected| (rtol·max). */
export function scaledClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol: number,
  what: string,
): void {
  let mx = 0;
  for (let i = 0; i < expected.length; i++) mx = Math.max(mx, Math.abs(expected[i]!));
  assertClose(actual, expected, { rtol, atol: rtol * Math.max(mx, 1e-12) }, what);
}

export interface Fixture {
  /** A tensor of the fixture (an assertion error when missing). */
  get(name: string): StTensor;
  has(name: string): boolean;
  names(): string[];
  config: ModelConfig;
  ids: Int32Array;
  targets: Int32Array;
  B: number;
  T: number;
  /** The model weights (HF names) it holds. */
  weights: Map<string, StTensor>;
}

/** Reads a PyTorch fixture written by scripts/gen_fixtures.py (float64 kept). */
export function loadFixture(file: string): Fixture {
  const fx = readSafetensors(file, { keepF64: true });
  const get = (k: string): StTensor => {
    const t = fx.tensors.get(k);
    assert.ok(t, `fixture ${file} lacks ${k}`);
    return t!;
  };
  const [B, T] = get("input_ids").shape as [number, number];
  return {
    get,
    has: (k) => fx.tensors.has(k),
    names: () => [...fx.tensors.keys()],
    config: parseConfig(JSON.parse(fx.metadata.config!), "fixture config"),
    ids: get("input_ids").data as Int32Array,
    targets: get("targets").data as Int32Array,
    B,
    T,
    weights: new Map([...fx.tensors].filter(([k]) => k.startsWith("model.") || k.startsWith("lm_head."))),
  };
}

/** The backends every fixture test runs on, with the relative tolerance each is held to. */
export function fixtureBackends(nativeRtol: number): [string, Backend | null, DType, number][] {
  return [
    ["reference float64", referenceBackend, "float64", 1e-9],
    ["native float32", nativeBackend(), "float32", nativeRtol],
  ];
}

/**
 * Writes a small prepared dataset (the `attnres prepare` folder format) with the byte tokenizer:
 * the first 90 % of `text` is the training split, the rest validation.
 */
export function writePreparedBytes(dir: string, text: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const bytes = Buffer.from(text, "utf8");
  const cut = Math.floor(bytes.length * 0.9);
  const split = (b: Buffer) => {
    const out = Buffer.alloc(b.length * 2);
    for (let i = 0; i < b.length; i++) out.writeUInt16LE(b[i]!, 2 * i);
    return out;
  };
  fs.writeFileSync(path.join(dir, "train.bin"), split(bytes.subarray(0, cut)));
  fs.writeFileSync(path.join(dir, "val.bin"), split(bytes.subarray(cut)));
  const meta: PreparedMeta = {
    format: 1,
    corpus: "test",
    split: "last 10 % of the bytes",
    tokenizer: { kind: "byte", vocab_size: 256 },
    dtype: "uint16",
    train: { tokens: cut, bytes: cut, documents: 1 },
    val: { tokens: bytes.length - cut, bytes: bytes.length - cut, documents: 1 },
    fingerprint: "test",
  };
  fs.writeFileSync(path.join(dir, "meta.json"), JSON.stringify(meta));
  new ByteTokenizer().save(dir);
}

/** Deterministic English-like text of about n bytes (a tiny corpus for tests). */
export function sampleText(n: number, seed = 1): string {
  const words =
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they".split(
      " ",
    );
  const rng = new Rng(seed);
  let s = "";
  while (s.length < n) s += words[rng.int(words.length)]! + (rng.uniform() < 0.1 ? ".\n" : " ");
  return s;
}

/** A run's metrics.jsonl as rows of the chosen fields (missing fields as null). */
export function readMetrics(dir: string, fields: readonly string[]): (number | null)[][] {
  return fs
    .readFileSync(path.join(dir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => {
      const r = JSON.parse(l) as Record<string, number>;
      return fields.map((f) => r[f] ?? null);
    });
}

const tempDirs: string[] = [];
/** A fresh directory under the OS temp folder, removed when the test process exits. */
export function tempDir(name: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `attnres-${name}-`));
  if (tempDirs.length === 0)
    process.on("exit", () => {
      for (const x of tempDirs) fs.rmSync(x, { recursive: true, force: true });
    });
  tempDirs.push(d);
  return d;
}

/** What {@link tinySpec} and {@link writeTinyPreset} change of the tiny run's defaults. */
export interface TinySpecOverrides {
  /** Model config keys merged over the tiny model's (e.g. `attnres_mode`, `num_hidden_layers`). */
  model?: Record<string, unknown>;
  /** Training settings merged over the tiny run's (e.g. `steps`, `seq_len`, `seed`). */
  train?: Partial<TrainSettingsInput>;
}

/**
 * A run spec that trains in seconds on the prepared dataset `data`: a qwen3 of 2 layers, width
 * 32, 2 heads, for 4 steps of batch 4 × seq_len 32 (lr 3e-3, warmup 1, an evaluation on 2 batches
 * every 2 steps, seed 1), with `o` merged over it. The training settings come back complete (the
 * schema's defaults filled in), as a run records them.
 */
export function tinySpec(data: string, o: TinySpecOverrides = {}): RunSpec {
  return {
    data,
    model: {
      model_type: "qwen3",
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      ...o.model,
    },
    train: TrainSettingsSchema.parse({
      steps: 4,
      batch_size: 4,
      seq_len: 32,
      lr: 3e-3,
      warmup: 1,
      eval_every: 2,
      eval_batches: 2,
      seed: 1,
      ...o.train,
    }),
  };
}

/**
 * Writes {@link tinySpec} to `file` as a preset (`--preset file`), with `o.compare`'s modes and
 * seeds when given; returns `file`.
 */
export function writeTinyPreset(
  file: string,
  data: string,
  o: TinySpecOverrides & { compare?: Preset["compare"] } = {},
): string {
  const { compare, ...spec } = o;
  fs.writeFileSync(file, JSON.stringify({ ...tinySpec(data, spec), ...(compare && { compare }) }));
  return file;
}
