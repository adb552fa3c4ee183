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
import { loadCheckpoint, readConfig, saveCheckpoint } from "../src/io/checkpoint.js";
import {
  parseSafetensors,
  readCheckpointWeights,
  readSafetensors,
  serializeSafetensors,
  writeSafetensors,
} from "../src/io/safetensors.js";
import { DecoderLM } from "../src/model/decoder.js";
import { tidy } from "../src/tensor/memory.js";
import { Rng } from "../src/tensor/random.js";
import { assertClose, tempDir } from "./helpers.js";

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

const small = {
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
