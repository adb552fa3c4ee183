/**
 * `attnres convert`'s streaming design (src/workflows/convert.ts): the check runs layer by layer on
 * one layer's buffers (`checkLayerByLayer`) and the output is written from the source's bytes
 * (`CopyTensor`). Held against the whole-model path it replaced, on the HF fixtures: the written
 * files are byte for byte what building the float32 model and saving it gives (every mode, every
 * --dtype); the layer-by-layer check's verification equals `verifyConversion`'s on whole models;
 * a non-finite weight (in the source, or made by a forced --dtype) is one line naming it; a source
 * that changes while being written leaves nothing behind.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { defaultBackend } from "../src/backend/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { readConfig, saveCheckpoint } from "../src/model/checkpoint.js";
import {
  openCheckpointWeights,
  readCheckpointWeights,
  readSafetensors,
  writeSafetensors,
} from "../src/io/safetensors.js";
import {
  checkLayerByLayer,
  CONVERT_MODES,
  convertCheckpoint,
  convertedConfig,
  modelWithBackbone,
  sampleIds,
  STORAGE_DTYPES,
  storageDtypes,
  storedWeights,
  verifyConversion,
} from "../src/workflows/convert.js";
import { tempDir } from "./helpers.js";

const fixtures = path.join(import.meta.dirname, "fixtures");
const HF = ["hf-qwen3-untied", "hf-qwen3-tied-bf16", "hf-llama-sharded", "hf-llama3-rope"];
const blocksFor = (mode: string) => (mode.includes("block") ? 2 : undefined);

/** A copy of a fixture folder (convert records the source's path, so both paths use this one). */
function copyOf(name: string): string {
  const dir = path.join(tempDir("convert-stream"), name);
  fs.cpSync(path.join(fixtures, name), dir, { recursive: true });
  return dir;
}

/** What convert wrote before the streaming design: the whole float32 model built, then saved. */
function wholeModelOutput(from: string, to: string, mode: (typeof CONVERT_MODES)[number], storage: string) {
  const config = readConfig(from);
  const routed = convertedConfig(config, { mode, blocks: blocksFor(mode) });
  const source = readCheckpointWeights(from).tensors;
  const dtypes = storageDtypes(routed, source, storage as (typeof STORAGE_DTYPES)[number]);
  const stored = storedWeights(source, dtypes);
  const model = modelWithBackbone(routed, stored.tensors, { source: from });
  try {
    saveCheckpoint(
      to,
      model,
      { generator: "attnres convert", converted_from: path.resolve(from) },
      { dtypes },
    );
  } finally {
    model.dispose();
  }
}

describe("streaming conversion", () => {
  test("writes byte for byte what the whole-model path wrote: every fixture, mode and --dtype", () => {
    for (const name of HF) {
      const from = copyOf(name);
      for (const mode of CONVERT_MODES)
        for (const storage of STORAGE_DTYPES) {
          const out = tempDir("convert-stream");
          const to = path.join(out, "new");
          const res = convertCheckpoint({ from, to, mode, blocks: blocksFor(mode), storage });
          assert.ok(res.written, `${name} → ${mode} --dtype ${storage}`);
          const old = path.join(out, "old");
          wholeModelOutput(from, old, mode, storage);
          for (const f of ["model.safetensors", "config.json"])
            assert.ok(
              fs.readFileSync(path.join(to, f)).equals(fs.readFileSync(path.join(old, f))),
              `${name} → ${mode} --dtype ${storage}: ${f} differs`,
            );
        }
    }
  });

  test("the layer-by-layer check equals verifyConversion on whole models (float64 reference, float32 native)", () => {
    for (const [backend, dtype, storages] of [
      [ref, "float64", STORAGE_DTYPES],
      [defaultBackend(), "float32", STORAGE_DTYPES],
    ] as const)
      for (const name of HF) {
        const dir = path.join(fixtures, name);
        const config = readConfig(dir);
        const whole = readCheckpointWeights(dir).tensors;
        const source = openCheckpointWeights(dir);
        const ids = sampleIds(config.vocab_size, null);
        for (const mode of CONVERT_MODES)
          for (const storage of storages) {
            const settings = { mode, blocks: blocksFor(mode) };
            const routed = convertedConfig(config, settings);
            const dtypes = storageDtypes(routed, source, storage);
            const reads: string[] = [];
            const got = checkLayerByLayer({
              config,
              settings,
              ids,
              source,
              dtypes,
              storage,
              backend,
              dtype,
              sourceName: dir,
              onRead: (n) => reads.push(n),
            });
            const want = verifyConversion(config, whole, settings, ids, { backend, dtype, storage });
            const what = `${dtype} ${name} → ${mode} --dtype ${storage}`;
            assert.deepEqual(got.verification, want, what);
            assert.ok(got.verification.ok, what);
            // Every backbone tensor is read once; the routing tensors are the zero initialisation.
            assert.deepEqual(
              [...reads].sort(),
              [...whole.keys()].filter((n) => !(config.tie_word_embeddings && n === "lm_head.weight")).sort(),
              what,
            );
            assert.ok(got.routing.size > 0, what);
          }
      }
  });

  test("a non-finite source weight is one line naming it and its index; nothing written", () => {
    const from = copyOf("hf-qwen3-untied");
    const f = path.join(from, "model.safetensors");
    const t = readSafetensors(f).tensors;
    t.get("model.layers.1.mlp.up_proj.weight")!.data[3] = NaN;
    writeSafetensors(
      f,
      [...t].map(([n, v]) => [n, { shape: v.shape, data: v.data }]),
    );
    const to = path.join(tempDir("convert-stream"), "out");
    assert.throws(
      () => convertCheckpoint({ from, to, mode: "delta" }),
      (e: Error) =>
        /: tensor model\.layers\.1\.mlp\.up_proj\.weight holds NaN at index 3$/.test(e.message) &&
        !e.message.includes("\n"),
    );
    assert.deepEqual(fs.readdirSync(path.dirname(to)), []);
  });

  test("a forced --dtype that overflows a weight is an error naming it; nothing written", () => {
    const from = copyOf("hf-llama-sharded");
    const src = readCheckpointWeights(from).tensors;
    const shard = JSON.parse(fs.readFileSync(path.join(from, "model.safetensors.index.json"), "utf8")) as {
      weight_map: Record<string, string>;
    };
    const name = "model.layers.0.self_attn.o_proj.weight";
    const file = path.join(from, shard.weight_map[name]!);
    const part = readSafetensors(file).tensors;
    part.get(name)!.data[5] = 1e6; // above F16's largest finite value
    writeSafetensors(
      file,
      [...part].map(([n, v]) => [n, { shape: v.shape, data: v.data }]),
    );
    assert.ok(src.size > 0);
    const to = path.join(tempDir("convert-stream"), "out");
    assert.throws(
      () => convertCheckpoint({ from, to, mode: "delta", storage: "f16" }),
      /: tensor model\.layers\.0\.self_attn\.o_proj\.weight holds Infinity at index 5$/,
    );
    assert.deepEqual(fs.readdirSync(path.dirname(to)), []);
    // As F32 (or auto) the same weight is fine.
    assert.ok(convertCheckpoint({ from, to, mode: "delta" }).written);
  });

  test("a source that changes while the output is written: an error, and no output or temporary folder", () => {
    const from = copyOf("hf-qwen3-tied-bf16");
    const to = path.join(tempDir("convert-stream"), "out");
    let cut = false;
    assert.throws(
      () =>
        convertCheckpoint({
          from,
          to,
          mode: "delta-block",
          onPhase: (_d, _t, what) => {
            if (!cut && what.startsWith("writing ")) {
              cut = true;
              const f = path.join(from, "model.safetensors");
              fs.truncateSync(f, fs.statSync(f).size - 64);
            }
          },
        }),
      /the file ended early/,
    );
    assert.ok(cut);
    assert.deepEqual(fs.readdirSync(path.dirname(to)), []);
  });
});
