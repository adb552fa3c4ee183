/**
 * Checkpoints: safetensors format details (dtypes, bounds checks, shards), the HF-layout round trip
 * of every residual mode, loading checkpoints written by the PyTorch reference in the authors'
 * layout, and clear errors for mismatched or damaged checkpoints.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { loadCheckpoint, readConfig, saveCheckpoint } from "../src/model/checkpoint.js";
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  parseSafetensors,
  readCheckpointHeader,
  readCheckpointWeights,
  readSafetensors,
  readSafetensorsHeader,
  serializeSafetensors,
  storedValue,
  writeSafetensors,
} from "../src/io/safetensors.js";
import { DecoderLM } from "../src/model/decoder.js";
import { tidy } from "../src/tensor/memory.js";
import { Rng } from "../src/tensor/random.js";
import { assertClose, tempDir } from "./helpers.js";
import type { DecoderLMConfig } from "../src/model/config.js";

const tmp = () => tempDir("ckpt");
const fixtures = path.join(import.meta.dirname, "fixtures");

describe("safetensors", () => {
  test("round trip F32/F64/I32 with metadata is exact", () => {
    const f32 = Float32Array.from([1.5, -2.25, 3e-8, 1e30]);
    const f64 = Float64Array.from([Math.PI, -1e-300]);
    const i32 = Int32Array.from([-5, 2147483647]);
    const buf = serializeSafetensors(
      [
        ["a", { shape: [2, 2], data: f32 }],
        ["b", { dtype: "F64", shape: [2], data: f64 }],
        ["c", { dtype: "I32", shape: [2], data: i32 }],
        ["s", { shape: [], data: [7] }],
      ],
      { note: "x" },
    );
    assert.equal((8 + Number(buf.readBigUInt64LE(0))) % 8, 0, "header padded to 8 bytes");
    const r = parseSafetensors(buf, "mem", { keepF64: true });
    assert.deepEqual(Array.from(r.tensors.get("a")!.data), Array.from(f32));
    assert.deepEqual(Array.from(r.tensors.get("b")!.data), Array.from(f64));
    assert.deepEqual(Array.from(r.tensors.get("c")!.data), Array.from(i32));
    assert.deepEqual(r.tensors.get("s")!.shape, []);
    assert.equal(r.metadata.note, "x");
  });
  test("F16 and BF16 decode", () => {
    const header = JSON.stringify({
      h: { dtype: "F16", shape: [3], data_offsets: [0, 6] },
      b: { dtype: "BF16", shape: [2], data_offsets: [6, 10] },
    });
    const hb = Buffer.from(header.padEnd(Math.ceil(header.length / 8) * 8, " "));
    const data = Buffer.alloc(10);
    data.writeUInt16LE(0x3c00, 0); // 1.0
    data.writeUInt16LE(0xc000, 2); // -2.0
    data.writeUInt16LE(0x0001, 4); // smallest subnormal 2^-24
    data.writeUInt16LE(0x3f80, 6); // bf16 1.0
    data.writeUInt16LE(0x4049, 8); // bf16 3.140625
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(hb.length));
    const r = parseSafetensors(Buffer.concat([len, hb, data]));
    assert.deepEqual(Array.from(r.tensors.get("h")!.data), [1, -2, 2 ** -24]);
    assert.deepEqual(Array.from(r.tensors.get("b")!.data), [1, 3.140625]);
  });
  test("BF16 and F16 encoders: known bit patterns, overflow, subnormals, ties to even, NaN", () => {
    const cases: [number, number, number][] = [
      // [value, BF16 bits, F16 bits]
      [1, 0x3f80, 0x3c00],
      [-2, 0xc000, 0xc000],
      [0, 0x0000, 0x0000],
      [-0, 0x8000, 0x8000],
      [65504, 0x4780, 0x7bff], // the largest finite F16
      [65519, 0x4780, 0x7bff], // just below the halfway point to 2^16: stays finite
      [65520, 0x4780, 0x7c00], // halfway, ties to even → 2^16 = Inf in F16
      [-65520, 0xc780, 0xfc00],
      [Infinity, 0x7f80, 0x7c00],
      [-Infinity, 0xff80, 0xfc00],
      [3.4028234663852886e38, 0x7f80, 0x7c00], // float32 max rounds up to Inf in BF16
      [2 ** -14, 0x3880, 0x0400], // the smallest normal F16
      [2 ** -24, 0x3380, 0x0001], // the smallest subnormal F16
      [2 ** -25, 0x3300, 0x0000], // halfway between 0 and 2^-24: ties to even → 0
      [1.5 * 2 ** -25, 0x3340, 0x0001], // above halfway → 2^-24
      [3 * 2 ** -25, 0x33c0, 0x0002], // halfway between 1 and 2 ulps → 2 (even)
      [1023.5 * 2 ** -24, 0x3880, 0x0400], // halfway between the largest subnormal and 2^-14
      [1 + 2 ** -11, 0x3f80, 0x3c00], // F16 tie between 1 and 1 + 2^-10 → 1 (even)
      [1 + 3 * 2 ** -11, 0x3f80, 0x3c02], // F16 tie between 0x3c01 and 0x3c02 → 0x3c02 (even)
      [1 + 2 ** -8, 0x3f80, 0x3c04], // BF16 tie between 1 and 1 + 2^-7 → 1 (even)
      [1 + 3 * 2 ** -8, 0x3f82, 0x3c0c], // BF16 tie between 0x3f81 and 0x3f82 → 0x3f82 (even)
      [1 + 2 ** -8 + 2 ** -20, 0x3f81, 0x3c04], // just above the BF16 tie → rounds up
      [1e-10, 0x2edc, 0x0000],
    ];
    for (const [x, bf, h] of cases) {
      assert.equal(f32ToBf16Bits(x), bf, `BF16 of ${x}`);
      assert.equal(f32ToF16Bits(x), h, `F16 of ${x}`);
      assert.ok(Object.is(storedValue(x, "BF16"), bf16ToF32(bf)), `stored BF16 of ${x}`);
      assert.ok(Object.is(storedValue(x, "F16"), f16ToF32(h)), `stored F16 of ${x}`);
    }
    assert.equal(f16ToF32(0x7bff), 65504);
    assert.equal(f16ToF32(0x0001), 2 ** -24);
    // NaN stays NaN, including a float32 NaN whose payload lies only in the bits BF16 drops.
    for (const bits of [0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fa00000]) {
      const x = new Float32Array(new Uint32Array([bits]).buffer);
      const buf = serializeSafetensors([
        ["b", { dtype: "BF16", shape: [1], data: x }],
        ["h", { dtype: "F16", shape: [1], data: x }],
      ]);
      const r = parseSafetensors(buf);
      assert.ok(Number.isNaN(r.tensors.get("b")!.data[0]), `BF16 of NaN 0x${bits.toString(16)}`);
      assert.ok(Number.isNaN(r.tensors.get("h")!.data[0]), `F16 of NaN 0x${bits.toString(16)}`);
    }
    assert.ok(Number.isNaN(bf16ToF32(f32ToBf16Bits(NaN))) && Number.isNaN(f16ToF32(f32ToF16Bits(NaN))));
  });

  test("BF16 and F16 encoders round to nearest even on random float32 values (against a float64 model)", () => {
    // The nearest value on each format's grid, computed in float64 (exact here): ulp 2^(e − m) with
    // e the float32 exponent clamped to the format's smallest normal exponent, ties to even.
    const nearest = (x: number, e: number, mbits: number, emin: number, max: number): number => {
      const ulp = 2 ** (Math.max(e, emin) - mbits);
      const q = x / ulp;
      const f = Math.floor(q);
      const r = q - f > 0.5 || (q - f === 0.5 && f % 2 !== 0) ? f + 1 : f;
      const v = r * ulp;
      return Math.abs(v) >= max ? Math.sign(x) * Infinity : v === 0 ? (x < 0 ? -0 : 0) : v;
    };
    const rng = new Rng(11);
    const bits = new Uint32Array(1);
    const f = new Float32Array(bits.buffer);
    for (let n = 0; n < 100_000; n++) {
      // Uniform exponents in the interesting range (F16 subnormals to BF16-only magnitudes).
      const exp = 90 + rng.int(60);
      bits[0] = ((rng.int(2) << 31) | (exp << 23) | rng.int(0x800000)) >>> 0;
      const x = f[0]!;
      const e = exp - 127;
      assert.ok(Object.is(storedValue(x, "BF16"), nearest(x, e, 7, -126, 2 ** 128)), `BF16 of ${x}`);
      assert.ok(Object.is(storedValue(x, "F16"), nearest(x, e, 10, -14, 65536)), `F16 of ${x}`);
    }
    // Every finite F16 / BF16 value is written back to its own bits.
    for (let b = 0; b < 0x10000; b++) {
      if ((b & 0x7c00) !== 0x7c00) assert.equal(f32ToF16Bits(f16ToF32(b)), b);
      if ((b & 0x7f80) !== 0x7f80) assert.equal(f32ToBf16Bits(bf16ToF32(b)), b);
    }
  });

  test("F16/BF16 tensors round trip: re-reading gives the stored values, re-writing the same bytes", () => {
    const rng = new Rng(3);
    const x = Float32Array.from({ length: 257 }, () => rng.normal() * 100);
    x[0] = 1e6; // beyond F16: Inf
    x[1] = 1e-9; // below F16's subnormals: 0
    const buf = serializeSafetensors([
      ["b", { dtype: "BF16", shape: [257], data: x }],
      ["h", { dtype: "F16", shape: [257], data: Array.from(x) }], // a plain array takes the same path
      ["f", { shape: [1], data: [0.5] }],
    ]);
    const r = parseSafetensors(buf);
    assert.equal(r.tensors.get("b")!.dtype, "BF16");
    assert.equal(r.tensors.get("h")!.dtype, "F16");
    assert.deepEqual(
      Array.from(r.tensors.get("b")!.data),
      Array.from(x, (v) => storedValue(v, "BF16")),
    );
    assert.deepEqual(
      Array.from(r.tensors.get("h")!.data),
      Array.from(x, (v) => storedValue(v, "F16")),
    );
    assert.equal(r.tensors.get("h")!.data[0], Infinity);
    assert.equal(r.tensors.get("h")!.data[1], 0);
    assert.deepEqual(r.tensors.get("f")!.data, Float32Array.from([0.5]), "an F32 after an odd-length F16");
    const again = serializeSafetensors(
      [...r.tensors].map(([n, t]) => [
        n,
        { dtype: t.dtype as "BF16" | "F16" | "F32", shape: t.shape, data: t.data },
      ]),
    );
    assert.ok(again.equals(buf), "decode then encode is the identity");
  });
  test("readCheckpointHeader lists what readCheckpointWeights reads (single file and shards)", () => {
    for (const name of ["hf-qwen3-tied-bf16", "hf-llama-sharded"]) {
      const dir = path.join(fixtures, name);
      const full = readCheckpointWeights(dir).tensors;
      const head = readCheckpointHeader(dir);
      assert.deepEqual(
        [...head].map(([n, t]) => [n, t.dtype, t.shape]),
        [...full].map(([n, t]) => [n, t.dtype, t.shape]),
        name,
      );
    }
    assert.throws(
      () => readSafetensorsHeader(path.join(fixtures, "hf-qwen3-tied-bf16", "config.json")),
      /not a valid safetensors file: header length \d+ exceeds the file size/,
    );
  });
  test("truncated, oversized and malformed files are errors, not garbage", () => {
    const good = serializeSafetensors([["w", { shape: [4], data: [1, 2, 3, 4] }]]);
    assert.throws(() => parseSafetensors(good.subarray(0, good.length - 3), "t.st"), /t.st: .*truncated/);
    assert.throws(() => parseSafetensors(good.subarray(0, 5), "t.st"), /too short/);
    const huge = Buffer.from(good);
    huge.writeBigUInt64LE(1n << 40n, 0);
    assert.throws(() => parseSafetensors(huge, "t.st"), /header length .* exceeds the file size/);
    const bad = Buffer.from(good);
    bad.write("]", 8);
    assert.throws(() => parseSafetensors(bad, "t.st"), /header is not JSON/);
  });
  test("sharded checkpoints via model.safetensors.index.json", () => {
    const dir = tmp();
    writeSafetensors(path.join(dir, "a.safetensors"), [["x", { shape: [2], data: [1, 2] }]]);
    writeSafetensors(path.join(dir, "b.safetensors"), [["y", { shape: [1], data: [3] }]]);
    const index = { weight_map: { x: "a.safetensors", y: "b.safetensors" } };
    fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify(index));
    const r = readCheckpointWeights(dir);
    assert.deepEqual(Array.from(r.tensors.get("y")!.data), [3]);
    fs.writeFileSync(
      path.join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { ...index.weight_map, z: "c.safetensors" } }),
    );
    assert.throws(() => readCheckpointWeights(dir), /points at c.safetensors, which does not exist/);
  });
});

const small: DecoderLMConfig = {
  model_type: "qwen3",
  vocab_size: 29,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 4,
  num_attention_heads: 2,
  max_position_embeddings: 16,
};
const modes: Record<string, unknown>[] = [
  {},
  { attnres_mode: "full" },
  { attnres_mode: "block", attnres_num_blocks: 2 },
  { attnres_mode: "delta", attnres_use_null_source: true, attnres_gate_type: "learnable_alpha" },
  { attnres_mode: "delta_block", attnres_num_blocks: 3 },
  { attnres_mode: "ddl", ddl_beta0: 0.5, ddl_value_form: "sigmoid4" },
  { attnres_mode: "ddl_expanded" },
  { model_type: "llama", tie_word_embeddings: true, attnres_mode: "delta" },
];

describe("HF-layout round trip", () => {
  const rng = new Rng(2);
  const ids = Int32Array.from({ length: 10 }, () => rng.int(29));
  for (const extra of modes)
    test(`mode ${JSON.stringify(extra)}: same weights, same logits, authors' keys`, () => {
      const model = new DecoderLM({ ...small, ...extra }, { backend: ref, dtype: "float32", seed: 1 });
      // Make routing non-trivial so the round trip of every tensor matters.
      for (const [, p] of model.namedParameters())
        for (let i = 0; i < p.size; i++) p.data[i] = p.data[i]! + 0.01 * rng.normal();
      const dir = tmp();
      saveCheckpoint(dir, model);
      const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as Record<
        string,
        unknown
      >;
      if (extra.attnres_mode) assert.equal(cfg.attnres_mode, extra.attnres_mode);
      else assert.equal(cfg.attnres_mode, undefined, "a standard checkpoint carries no attnres keys");
      if (extra.attnres_mode && !extra.model_type) assert.equal(cfg.model_type, "qwen3_attnres");
      const back = loadCheckpoint(dir, { backend: ref, dtype: "float32" });
      const a = new Map(model.namedParameters());
      for (const [n, p] of back.namedParameters()) assert.deepEqual(p.toArray(), a.get(n)!.toArray(), n);
      const [l1, l2] = tidy(() => [model.forward(ids, 2, 5).toArray(), back.forward(ids, 2, 5).toArray()]);
      assert.deepEqual(l1, l2);
      model.dispose();
      back.dispose();
    });
});

test("randomInit false: nothing drawn, constants set, the same parameters (for models loaded right after)", () => {
  for (const extra of modes) {
    const a = new DecoderLM({ ...small, ...extra }, { backend: ref, dtype: "float32", seed: 1 });
    const b = new DecoderLM({ ...small, ...extra }, { backend: ref, dtype: "float32", randomInit: false });
    const pa = a.namedParameters();
    const pb = b.namedParameters();
    assert.deepEqual(
      pb.map(([n, p]) => [n, p.shape]),
      pa.map(([n, p]) => [n, p.shape]),
    );
    for (const [i, [n, p]] of pb.entries()) {
      const va = pa[i]![1].toArray();
      const random = va.some((x) => x !== va[0]); // constant inits fill every element alike
      const want = random ? Array<number>(p.size).fill(0) : va;
      assert.deepEqual(p.toArray(), want, `${JSON.stringify(extra)} ${n}`);
    }
    a.dispose();
    b.dispose();
  }
});

describe("checkpoints written by the PyTorch reference (authors' layout)", () => {
  for (const name of ["ckpt-delta-null-gate", "ckpt-delta-block", "ckpt-attnres-full"])
    test(name, () => {
      const dir = path.join(fixtures, name);
      const ref64 = readSafetensors(path.join(fixtures, `${name}.reference.safetensors`), { keepF64: true });
      const ids = ref64.tensors.get("input_ids")!;
      const [B, T] = ids.shape as [number, number];
      const model = loadCheckpoint(dir, { backend: ref, dtype: "float64" });
      const logits = tidy(() => model.forward(ids.data as Int32Array, B, T).toArray());
      assertClose(logits, ref64.tensors.get("logits")!.data, { rtol: 1e-9, atol: 1e-9 }, `${name} logits`);
      model.dispose();
    });
});

describe("bad checkpoints", () => {
  function saved(): string {
    const dir = tmp();
    const model = new DecoderLM({ ...small, attnres_mode: "delta" }, { backend: ref, dtype: "float32" });
    saveCheckpoint(dir, model);
    model.dispose();
    return dir;
  }
  test("a config that does not match the weights names the tensor and the expected shape", () => {
    const dir = saved();
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...cfg, intermediate_size: 20 }));
    assert.throws(
      () => loadCheckpoint(dir, { backend: ref }),
      /model.layers.0.mlp.gate_proj.weight has shape \[24, 16\], expected \[20, 16\]/,
    );
  });
  test("missing tensors (a delta checkpoint read as attnres-full lacks the final routing)", () => {
    const dir = saved();
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...cfg, attnres_mode: "full" }));
    assert.throws(
      () => loadCheckpoint(dir, { backend: ref }),
      /does not match the model: missing tensor model.final_res_proj.weight \(expected shape \[1, 16\]\); missing tensor model.final_res_norm.weight \(expected shape \[16\]\)$/,
    );
  });
  test("truncated weights", () => {
    const dir = saved();
    const f = path.join(dir, "model.safetensors");
    fs.truncateSync(f, fs.statSync(f).size - 100);
    assert.throws(
      () => loadCheckpoint(dir, { backend: ref }),
      /model.safetensors: not a valid safetensors file: .*truncated/,
    );
  });
  test("an unknown mode in config.json", () => {
    const dir = saved();
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...small, attnres_mode: "diagonal" }));
    assert.throws(() => readConfig(dir), /unknown residual mode "diagonal"/);
  });
  test("a folder without config.json", () => {
    assert.throws(() => loadCheckpoint(tmp()), /config.json is missing/);
  });
});
