/**
 * Loading HF checkpoints (Qwen3 / Llama as transformers writes them: extra config keys, F32 / BF16,
 * single file / shards, tied / untied, GQA, q/k norms) against PyTorch float64 logits; converting
 * them to routed modes (exact where docs/methods.md says so, eps residue explained elsewhere), writing
 * and reloading; the storage dtype (--dtype: auto keeps the source's dtypes bit for bit, forced
 * dtypes are checked at the stored precision); per-tensor progress; refusing bad inputs with one
 * clear line and nothing written; fine-tuning a converted checkpoint (loss goes down;
 * --freeze-base leaves the backbone bit-identical; resume).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { convertCommand } from "../src/cli/convert.js";
import { finetuneSpec } from "../src/cli/finetune.js";
import { evalBatches } from "../src/data/batches.js";
import { resolveHfTokenizerFile } from "../src/data/hf-tokenizer.js";
import { loadPrepared } from "../src/data/prepared.js";
import { loadCheckpoint, readConfig, saveCheckpoint } from "../src/model/checkpoint.js";
import {
  readCheckpointHeader,
  readCheckpointWeights,
  readSafetensors,
  storedValue,
  type StTensor,
  writeSafetensors,
} from "../src/io/safetensors.js";
import {
  CONVERT_MODES,
  convertCheckpoint,
  convertedConfig,
  logitsOf,
  maxAbsDiff,
  modelWithBackbone,
  ROUNDING_TOL,
  type StorageDtype,
  storageDtypes,
  storedWeights,
  verifyConversion,
} from "../src/workflows/convert.js";
import { DecoderLM } from "../src/model/decoder.js";
import { runTraining } from "../src/train/run.js";
import { evaluate } from "../src/eval/loss.js";
import { isResidualParam } from "../src/model/residual.js";
import { assertClose, sampleText, writePreparedBytes, tempDir } from "./helpers.js";
import type { DecoderLMConfig } from "../src/model/config.js";

const fixtures = path.join(import.meta.dirname, "fixtures");
const tmp = () => tempDir("convert");
const HF = ["hf-qwen3-untied", "hf-qwen3-tied-bf16", "hf-llama-sharded", "hf-llama3-rope"];
const blocksFor = (mode: string) => (mode.includes("block") ? 2 : undefined);

function reference(name: string) {
  const r = readSafetensors(path.join(fixtures, `${name}.reference.safetensors`), { keepF64: true });
  const ids = r.tensors.get("input_ids")!;
  const [B, T] = ids.shape as [number, number];
  return { ids: Int32Array.from(ids.data as Int32Array), B, T, logits: r.tensors.get("logits")!.data };
}

/** A copy of a fixture folder whose config.json is edited by `edit`. */
function copyWith(name: string, edit: (c: Record<string, unknown>) => void = () => {}): string {
  const dir = path.join(tmp(), name);
  fs.cpSync(path.join(fixtures, name), dir, { recursive: true });
  const f = path.join(dir, "config.json");
  const c = JSON.parse(fs.readFileSync(f, "utf8")) as Record<string, unknown>;
  edit(c);
  fs.writeFileSync(f, JSON.stringify(c));
  return dir;
}

describe("HF checkpoints load and match PyTorch", () => {
  for (const name of HF)
    test(name, () => {
      const r = reference(name);
      const dir = path.join(fixtures, name);
      const m64 = loadCheckpoint(dir, { backend: ref, dtype: "float64" });
      assertClose(logitsOf(m64, r.ids, r.B, r.T), r.logits, { rtol: 1e-9, atol: 1e-9 }, `${name} float64`);
      m64.dispose();
      const m32 = loadCheckpoint(dir);
      assertClose(logitsOf(m32, r.ids, r.B, r.T), r.logits, { rtol: 1e-4, atol: 1e-4 }, `${name} float32`);
      m32.dispose();
    });
  test("Llama 3 rope scaling matters: without it the hf-llama3-rope logits are wrong", () => {
    const r = reference("hf-llama3-rope");
    const dir = copyWith("hf-llama3-rope", (c) => (c.rope_scaling = null));
    const m = loadCheckpoint(dir, { backend: ref, dtype: "float64" });
    const d = maxAbsDiff(logitsOf(m, r.ids, r.B, r.T), r.logits);
    m.dispose();
    assert.ok(d > 1e-3, `unscaled RoPE differs by only ${d}`);
  });
  test("the fixtures really are BF16, sharded, tied, GQA with q/k norms", () => {
    const bf = fs.readFileSync(path.join(fixtures, "hf-qwen3-tied-bf16", "model.safetensors"));
    const header = JSON.parse(bf.subarray(8, 8 + Number(bf.readBigUInt64LE(0))).toString()) as Record<
      string,
      { dtype?: string }
    >;
    assert.ok(Object.entries(header).every(([k, v]) => k === "__metadata__" || v.dtype === "BF16"));
    assert.ok(!("lm_head.weight" in header), "tied: no lm_head");
    assert.ok("model.layers.0.self_attn.q_norm.weight" in header);
    const idx = path.join(fixtures, "hf-llama-sharded", "model.safetensors.index.json");
    assert.equal(new Set(Object.values(JSON.parse(fs.readFileSync(idx, "utf8")).weight_map)).size, 2);
    const c = readConfig(path.join(fixtures, "hf-llama-sharded"));
    assert.equal(c.num_key_value_heads, 1);
    assert.equal(c.attention_qk_norm, false);
  });
});

describe("conversion", () => {
  for (const name of HF)
    for (const mode of CONVERT_MODES)
      test(`${name} → ${mode}: same logits (float64)`, () => {
        const c = readConfig(path.join(fixtures, name));
        const w = readCheckpointWeights(path.join(fixtures, name), { keepF64: true });
        const r = reference(name);
        const v = verifyConversion(c, w.tensors, { mode, blocks: blocksFor(mode) }, r.ids.subarray(0, r.T), {
          backend: ref,
          dtype: "float64",
        });
        assert.ok(v.ok, JSON.stringify(v));
        if (mode === "delta-block") {
          assert.equal(v.exactness, "exact");
          assert.ok(v.maxAbsDiff <= 1e-12, `delta-block with zero gate: ${v.maxAbsDiff}`);
        } else {
          assert.equal(v.exactness, "eps-residue");
          assert.ok(v.maxAbsDiffEps0! <= 1e-12, `${mode} at eps 0: ${v.maxAbsDiffEps0}`);
          assert.ok(v.maxAbsDiff > v.maxAbsDiffEps0!, "the residue comes from eps");
        }
      });

  test("the check's models run on the converted model's weights (shareWeightsOf): same logits, no copy", () => {
    const name = HF[0]!;
    const c = readConfig(path.join(fixtures, name));
    const w = readCheckpointWeights(path.join(fixtures, name), { keepF64: true });
    const ids = reference(name).ids.subarray(0, 8);
    const build = { backend: ref, dtype: "float64" as const };
    const routed = modelWithBackbone(convertedConfig(c, { mode: "delta" }), w.tensors, build);
    const own = modelWithBackbone({ ...c }, w.tensors, build);
    const shell = new DecoderLM({ ...c }, { ...build, shareWeightsOf: routed });
    const routedParams = new Map(routed.namedParameters());
    for (const [n, p] of shell.namedParameters()) assert.equal(p.data, routedParams.get(n)!.data, n);
    assert.equal(shell.rope, routed.rope);
    assert.deepEqual(logitsOf(shell, ids, 1, ids.length), logitsOf(own, ids, 1, ids.length));
    // Disposing the shell releases only its views: the converted model still runs.
    const before = logitsOf(routed, ids, 1, ids.length);
    shell.dispose();
    assert.deepEqual(logitsOf(routed, ids, 1, ids.length), before);
    // A model whose backbone does not start like the weights' owner cannot adopt them.
    assert.throws(
      () => new DecoderLM({ ...c, hidden_size: c.hidden_size * 2 }, { ...build, shareWeightsOf: routed }),
      /cannot adopt/,
    );
    routed.dispose();
    own.dispose();
  });

  test("delta-block without the zero gate would NOT be exact", () => {
    const name = "hf-qwen3-untied";
    const c = readConfig(path.join(fixtures, name));
    const w = readCheckpointWeights(path.join(fixtures, name), { keepF64: true });
    const r = reference(name);
    const cfg = { ...convertedConfig(c, { mode: "delta-block", blocks: 2 }), attnres_gate_type: "bias" };
    const m = modelWithBackbone(cfg, w.tensors, { backend: ref, dtype: "float64" });
    const d = maxAbsDiff(logitsOf(m, r.ids, r.B, r.T), r.logits);
    m.dispose();
    assert.ok(d > 100 * ROUNDING_TOL, `ungated delta-block differs by only ${d}`);
  });

  for (const [name, mode, extra] of [
    ["hf-qwen3-tied-bf16", "delta-block", {}],
    ["hf-llama-sharded", "attnres-full", {}],
    ["hf-qwen3-untied", "delta", { nullSource: true, gate: true }],
    ["hf-qwen3-untied", "attnres-block", { blocks: 2 }],
  ] as const)
    test(`convert ${name} → ${mode} ${JSON.stringify(extra)} writes a checkpoint that reloads to the same logits`, () => {
      const to = path.join(tmp(), "out");
      const from = copyWith(name);
      fs.writeFileSync(path.join(from, "generation_config.json"), "{}");
      const res = convertCheckpoint({ from, to, mode, ...extra });
      assert.ok(res.written && res.verification.ok);
      assert.deepEqual(fs.readdirSync(path.dirname(to)), ["out"], "no temporary folder left");
      assert.ok(fs.existsSync(path.join(to, "generation_config.json")));
      const cfg = JSON.parse(fs.readFileSync(path.join(to, "config.json"), "utf8")) as Record<
        string,
        unknown
      >;
      assert.equal(cfg.attnres_mode, mode.replace("attnres-", "").replace("-", "_"));
      if (mode === "delta-block") assert.equal(cfg.attnres_gate_type, "learnable_alpha");
      if (name.startsWith("hf-qwen3")) assert.equal(cfg.model_type, "qwen3_attnres");
      const r = reference(name);
      const m = loadCheckpoint(to, { backend: ref, dtype: "float64" });
      const names = m.namedParameters().map(([n]) => n);
      assert.ok(names.some((n) => /_res_proj\.weight$/.test(n)));
      const d = maxAbsDiff(logitsOf(m, r.ids, r.B, r.T), r.logits);
      m.dispose();
      assert.ok(d <= res.verification.tolerance, `reloaded logits differ by ${d}`);
      if (mode === "delta-block") assert.ok(d <= 1e-6, `exact mode reloaded: ${d}`);
    });

  test("the CLI refuses to write when the check fails, unless --force", () => {
    // A huge eps makes the eps residue of attnres-full large: the check must fail.
    const from = copyWith("hf-llama-sharded", (c) => (c.rms_norm_eps = 0.5));
    const to = path.join(tmp(), "out");
    assert.throws(
      () => convertCommand({ from, to, mode: "attnres-full", quiet: true }),
      /differ from the original's by more than the tolerance; nothing was written \(pass --force/,
    );
    assert.ok(!fs.existsSync(to));
    assert.deepEqual(fs.readdirSync(path.dirname(to)), []);
    const r = convertCommand({ from, to, mode: "attnres-full", force: true, quiet: true });
    assert.ok(r.written && !r.verification.ok && fs.existsSync(path.join(to, "model.safetensors")));
  });

  const bad: [string, () => string, RegExp][] = [
    [
      "unsupported architecture",
      () => copyWith(HF[0]!, (c) => (c.architectures = ["MistralForCausalLM"])),
      /unsupported architectures \["MistralForCausalLM"\]/,
    ],
    [
      "unsupported model_type",
      () => copyWith(HF[0]!, (c) => (c.model_type = "gemma2")),
      /unsupported model_type "gemma2"/,
    ],
    [
      "hidden_act gelu",
      () => copyWith(HF[0]!, (c) => (c.hidden_act = "gelu")),
      /hidden_act "gelu" is not implemented/,
    ],
    [
      "attention_bias",
      () => copyWith(HF[2]!, (c) => (c.attention_bias = true)),
      /attention_bias: true is not implemented/,
    ],
    [
      "rope_scaling yarn",
      () => copyWith(HF[2]!, (c) => (c.rope_scaling = { rope_type: "yarn", factor: 8 })),
      /rope_scaling of type "yarn" is not implemented/,
    ],
    [
      "rope_scaling llama3 without its parameters",
      () => copyWith(HF[2]!, (c) => (c.rope_scaling = { rope_type: "llama3", factor: 8 })),
      /rope_scaling llama3 needs positive low_freq_factor, high_freq_factor, original_max_position_embeddings/,
    ],
    [
      "shapes disagreeing with config",
      () => copyWith(HF[0]!, (c) => (c.intermediate_size = 50)),
      /gate_proj.weight has shape \[56, 32\], expected \[50, 32\]/,
    ],
    [
      "missing tensor",
      () => {
        const dir = copyWith(HF[0]!);
        const f = path.join(dir, "model.safetensors");
        const t = readSafetensors(f).tensors;
        t.delete("model.norm.weight");
        writeSafetensors(
          f,
          [...t].map(([n, v]) => [n, { shape: v.shape, data: v.data }]),
        );
        return dir;
      },
      /missing tensor model.norm.weight/,
    ],
    [
      "shard index pointing at a missing file",
      () => {
        const dir = copyWith(HF[2]!);
        fs.rmSync(path.join(dir, "model-00002-of-00002.safetensors"));
        return dir;
      },
      /points at model-00002-of-00002.safetensors, which does not exist/,
    ],
    [
      "tokenizer vocabulary larger than the embedding",
      () => {
        const dir = copyWith(HF[0]!);
        fs.copyFileSync(resolveHfTokenizerFile("qwen3"), path.join(dir, "tokenizer.json"));
        return dir;
      },
      /: the checkpoint's tokenizer has 151669 ids but the model embeds only 61 \(vocab_size in config.json\)/,
    ],
  ];
  for (const [what, make, re] of bad)
    test(`bad input: ${what} → one clear error, nothing written`, () => {
      const from = make();
      const to = path.join(tmp(), "out");
      let msg = "";
      try {
        convertCheckpoint({ from, to, mode: "delta" });
      } catch (e) {
        msg = (e as Error).message;
      }
      assert.match(msg, re);
      assert.ok(!msg.includes("\n"), `one line: ${msg}`);
      assert.deepEqual(fs.readdirSync(path.dirname(to)), []);
    });

  for (const [tok, vocab] of [
    ["qwen3", 151669],
    ["llama3", 128256],
  ] as const)
    test(`the real ${tok} tokenizer whose vocabulary fits: sample from its ids, tokenizer copied`, () => {
      const tokFile = resolveHfTokenizerFile(tok);
      const from = tmp();
      const model = new DecoderLM(
        {
          model_type: "qwen3",
          vocab_size: vocab,
          hidden_size: 8,
          intermediate_size: 8,
          num_hidden_layers: 2,
          num_attention_heads: 2,
          num_key_value_heads: 1,
          tie_word_embeddings: true,
        },
        { seed: 3 },
      );
      saveCheckpoint(from, model);
      model.dispose();
      fs.copyFileSync(tokFile, path.join(from, "tokenizer.json"));
      const to = path.join(tmp(), "out");
      const r = convertCheckpoint({ from, to, mode: "delta-block", blocks: 1 });
      assert.ok(r.written && r.verification.maxAbsDiff === 0);
      assert.ok(r.verification.tokens > 10 && r.verification.tokens <= 32);
      assert.ok(r.tokenizerCopied.includes("tokenizer.json"));
      assert.equal(fs.statSync(path.join(to, "tokenizer.json")).size, fs.statSync(tokFile).size);
    });
});

describe("storage dtype (--dtype)", () => {
  /** The float32 bits of a decoded tensor (BF16/F16 decode exactly, so equal bits = equal stored bits). */
  const bitsOf = (t: StTensor) => Array.from(new Uint32Array(Float32Array.from(t.data).buffer));
  const configOf = (dir: string) =>
    JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as Record<string, unknown>;

  test("auto: a BF16 checkpoint converts to BF16, backbone bit for bit, routing zeros/ones in BF16", () => {
    const from = copyWith("hf-qwen3-tied-bf16");
    const to = path.join(tmp(), "out");
    const res = convertCheckpoint({ from, to, mode: "delta-block", blocks: 2 });
    assert.ok(res.written);
    assert.equal(res.verification.exactness, "exact");
    assert.equal(res.verification.maxAbsDiff, 0, "still exact");
    assert.equal(res.verification.storage, "auto");
    assert.equal(res.verification.roundedTensors, 0);
    assert.equal(res.verification.maxAbsDiffFromSource, null);
    const src = readCheckpointWeights(from).tensors;
    const out = readCheckpointWeights(to).tensors;
    assert.deepEqual(res.storage, { choice: "auto", tensors: { BF16: out.size } });
    let routing = 0;
    let values = 0;
    for (const [n, t] of out) {
      assert.equal(t.dtype, "BF16", n);
      values += t.data.length;
      if (isResidualParam(n)) {
        routing++;
        const init = /_res_norm\./.test(n) ? 1 : 0;
        assert.ok(
          Array.from(t.data).every((x) => x === init),
          `${n} is ${init}`,
        );
      } else assert.deepEqual(bitsOf(t), bitsOf(src.get(n)!), `${n} bit for bit`);
    }
    assert.ok(routing > 0);
    for (const n of src.keys()) assert.ok(out.has(n), `${n} written`);
    const file = fs.readFileSync(path.join(to, "model.safetensors"));
    assert.equal(file.length - 8 - Number(file.readBigUInt64LE(0)), 2 * values, "2 bytes per value");
    assert.equal(configOf(to).torch_dtype, "bfloat16");
  });

  test("auto: exactness results are unchanged for every fixture and mode (float64)", () => {
    for (const name of HF)
      for (const mode of CONVERT_MODES) {
        const c = readConfig(path.join(fixtures, name));
        const w = readCheckpointWeights(path.join(fixtures, name), { keepF64: true });
        const ids = reference(name).ids.subarray(0, 12);
        const opts = { backend: ref, dtype: "float64" as const };
        const settings = { mode, blocks: blocksFor(mode) };
        const plain = verifyConversion(c, w.tensors, settings, ids, opts);
        const stored = verifyConversion(c, w.tensors, settings, ids, { ...opts, storage: "auto" });
        assert.deepEqual({ ...stored, storage: null }, plain, `${name} → ${mode}`);
        assert.ok(stored.ok && stored.roundedTensors === 0, `${name} → ${mode}`);
      }
  });

  for (const storage of ["bf16", "f16"] as const)
    test(`--dtype ${storage} on an F32 checkpoint: the check runs at the stored precision, so exactness holds`, () => {
      const name = "hf-llama-sharded";
      const c = readConfig(path.join(fixtures, name));
      const w = readCheckpointWeights(path.join(fixtures, name), { keepF64: true });
      const ids = reference(name).ids.subarray(0, 12);
      for (const mode of CONVERT_MODES) {
        const v = verifyConversion(c, w.tensors, { mode, blocks: blocksFor(mode) }, ids, {
          backend: ref,
          dtype: "float64",
          storage,
        });
        assert.ok(v.ok, JSON.stringify(v));
        if (mode === "delta-block") assert.ok(v.maxAbsDiff <= 1e-12, `${mode}: ${v.maxAbsDiff}`);
        else assert.ok(v.maxAbsDiffEps0! <= 1e-12, `${mode} at eps 0: ${v.maxAbsDiffEps0}`);
        assert.ok(v.roundedTensors > 0, "the random F32 weights are rounded");
        assert.ok(v.maxAbsDiffFromSource! > 0 && Number.isFinite(v.maxAbsDiffFromSource), "rounding shows");
      }
    });

  test("--dtype bf16 writes exactly the weights that were checked: the reloaded model equals the original at BF16", () => {
    const name = "hf-qwen3-untied";
    const from = copyWith(name);
    const to = path.join(tmp(), "out");
    const res = convertCheckpoint({ from, to, mode: "delta-block", blocks: 2, storage: "bf16" });
    assert.ok(res.written && res.verification.ok);
    assert.equal(res.verification.maxAbsDiff, 0, "exact at the stored precision");
    assert.ok(res.verification.roundedTensors > 0);
    const src = readCheckpointWeights(from).tensors;
    const out = readCheckpointWeights(to).tensors;
    for (const [n, t] of out) {
      assert.equal(t.dtype, "BF16", n);
      if (!isResidualParam(n))
        assert.deepEqual(
          Array.from(t.data),
          Array.from(src.get(n)!.data, (x) => storedValue(x, "BF16")),
          n,
        );
    }
    assert.equal(configOf(to).torch_dtype, "bfloat16");
    // The original model built from the BF16-rounded weights gives the reloaded model's logits.
    const c = readConfig(from);
    const rounded = storedWeights(src, storageDtypes(c, src, "bf16")).tensors;
    const r = reference(name);
    const orig = modelWithBackbone(c, rounded, { backend: ref, dtype: "float64" });
    const conv = loadCheckpoint(to, { backend: ref, dtype: "float64" });
    const d = maxAbsDiff(logitsOf(conv, r.ids, r.B, r.T), logitsOf(orig, r.ids, r.B, r.T));
    orig.dispose();
    conv.dispose();
    assert.ok(d <= 1e-12, `reloaded vs original at BF16: ${d}`);
  });

  test("--dtype f32 writes F32 (and so does auto for an F32 checkpoint)", () => {
    const from = copyWith("hf-qwen3-tied-bf16");
    const to = path.join(tmp(), "out");
    const res = convertCommand({ from, to, mode: "delta", dtype: "f32", quiet: true });
    assert.ok(res.written);
    const src = readCheckpointWeights(from).tensors;
    const out = readCheckpointWeights(to).tensors;
    assert.deepEqual(res.storage, { choice: "f32", tensors: { F32: out.size } });
    for (const [n, t] of out) {
      assert.equal(t.dtype, "F32", n);
      if (!isResidualParam(n)) assert.deepEqual(bitsOf(t), bitsOf(src.get(n)!), n);
    }
    assert.equal(configOf(to).torch_dtype, "float32");
    const to2 = path.join(tmp(), "out");
    convertCheckpoint({ from: copyWith("hf-llama-sharded"), to: to2, mode: "attnres-full" });
    assert.ok([...readCheckpointHeader(to2).values()].every((t) => t.dtype === "F32"));
  });

  test("a bad --dtype is one line, a non-zero exit, nothing written", () => {
    const from = copyWith("hf-qwen3-untied");
    const to = path.join(tmp(), "out");
    assert.throws(
      () => convertCheckpoint({ from, to, mode: "delta", storage: "f8" as StorageDtype }),
      /^Error: storage f8 is not one of auto, f32, bf16, f16$/,
    );
    assert.ok(!fs.existsSync(to));
    const bin = path.join(path.dirname(import.meta.dirname), "scripts", "attnres-dev.mjs");
    const r = spawnSync(
      process.execPath,
      [bin, "convert", "--from", from, "--to", to, "--mode", "delta", "--dtype", "f8"],
      { encoding: "utf8", env: { ...process.env, ATTNRES_THREADS: "1" } },
    );
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /--dtype.*'f8' is invalid\. expected one of auto, f32, bf16, f16/);
    assert.deepEqual(fs.readdirSync(path.dirname(to)), [], "nothing written");
  });
});

describe("convert progress", () => {
  test("advances once per tensor read and per tensor written", () => {
    const from = copyWith("hf-llama-sharded");
    const to = path.join(tmp(), "out");
    const calls: [number, number, string][] = [];
    convertCheckpoint({ from, to, mode: "delta", onPhase: (d, t, w) => calls.push([d, t, w]) });
    const nRead = readCheckpointHeader(from).size;
    const nWrite = readCheckpointHeader(to).size;
    const total = nRead + nWrite + 3;
    assert.ok(
      calls.every(([, t]) => t === total),
      "one total throughout",
    );
    assert.ok(
      calls.every(([d], i) => i === 0 || d >= calls[i - 1]![0]),
      "never goes back",
    );
    assert.deepEqual(calls[0], [0, total, "reading the checkpoint"]);
    assert.deepEqual(calls.at(-1), [total, total, "done"]);
    const reads = calls.filter(([, , w]) => w.startsWith("reading ") && w !== "reading the checkpoint");
    const writes = calls.filter(([, , w]) => w.startsWith("writing "));
    assert.equal(reads.length, nRead);
    assert.equal(writes.length, nWrite);
    assert.deepEqual(
      reads.map(([d]) => d),
      Array.from({ length: nRead }, (_, i) => i + 1),
    );
    assert.ok(
      writes.some(([, , w]) => /_res_proj/.test(w)),
      "routing tensors are written too",
    );
  });

  test("quiet prints nothing; otherwise progress lines and a summary naming the dtype", () => {
    const capture = (fn: () => void): string => {
      let out = "";
      const write = process.stdout.write.bind(process.stdout);
      process.stdout.write = ((chunk: string | Uint8Array) => {
        out += String(chunk);
        return true;
      }) as typeof process.stdout.write;
      try {
        fn();
      } finally {
        process.stdout.write = write;
      }
      return out;
    };
    const from = copyWith("hf-qwen3-tied-bf16");
    const quiet = capture(() =>
      convertCommand({ from, to: path.join(tmp(), "q"), mode: "delta", quiet: true }),
    );
    assert.equal(quiet, "");
    const to = path.join(tmp(), "loud");
    const loud = capture(() => convertCommand({ from, to, mode: "delta" }));
    assert.match(loud, /convert \d+\/\d+: phase reading model\./);
    assert.match(loud, /convert \d+\/\d+: phase writing model\./);
    assert.ok(loud.includes(`wrote ${to}, weights BF16 (--dtype auto: as in the source) (`), loud);
    const f32 = capture(() =>
      convertCommand({ from, to: path.join(tmp(), "f"), mode: "delta", dtype: "f32", quiet: false }),
    );
    assert.match(f32, /weights F32 \(--dtype f32\)/);
  });
});

describe("fine-tuning a converted checkpoint", () => {
  const base: DecoderLMConfig = {
    model_type: "qwen3",
    vocab_size: 256,
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 64,
  };
  function setup() {
    const root = tmp();
    const data = path.join(root, "data");
    writePreparedBytes(data, sampleText(30000, 4));
    const std = path.join(root, "std");
    const m = new DecoderLM(base, { seed: 5 });
    saveCheckpoint(std, m);
    m.dispose();
    const conv = path.join(root, "conv");
    convertCheckpoint({ from: std, to: conv, mode: "delta" });
    return { root, data, conv };
  }
  const flags = (conv: string, data: string, extra: Record<string, unknown> = {}) => ({
    from: conv,
    data,
    steps: 30,
    batchSize: 4,
    seqLen: 32,
    lr: 3e-3,
    routingLr: 1e-2,
    evalEvery: 30,
    ...extra,
  });
  function valLossOf(dir: string, data: string): number {
    const d = loadPrepared(data);
    const m = loadCheckpoint(dir);
    const l = evaluate(m, evalBatches(d.val, 4, 32, 8));
    m.dispose();
    return l;
  }

  test("lowers validation loss; the run records init and routing lr", async () => {
    const { root, data, conv } = setup();
    const before = valLossOf(conv, data);
    const spec = finetuneSpec(flags(conv, data));
    assert.equal(spec.init, conv);
    assert.equal(spec.train.routing_lr, 1e-2);
    const r = await runTraining(spec, path.join(root, "run"));
    assert.ok(r.done);
    assert.ok(r.valLoss < before - 0.3, `val loss ${before} → ${r.valLoss}`);
  });

  test("--freeze-base leaves every backbone weight bit-identical; resume gives the same result", async () => {
    const { root, data, conv } = setup();
    const before = valLossOf(conv, data);
    const spec = finetuneSpec(
      flags(conv, data, { freezeBase: true, steps: 12, evalEvery: 6, lr: 1e-2, routingLr: 3e-2 }),
    );
    assert.equal(spec.train.freeze_base, true);
    // every training flag reaches the run, --matmul-dtype too (it was dropped once)
    assert.equal(finetuneSpec(flags(conv, data, { matmulDtype: "bfloat16" })).train.matmul_dtype, "bfloat16");
    const a = await runTraining(spec, path.join(root, "a"));
    const b1 = await runTraining(spec, path.join(root, "b"), { stopAfter: 5 });
    assert.ok(b1.interrupted);
    const b = await runTraining(spec, path.join(root, "b"), { resume: true });
    assert.equal(b.valLoss, a.valLoss, "resumed run equals the uninterrupted one");
    assert.ok(a.valLoss < before, `val loss ${before} → ${a.valLoss}`);
    const orig = readCheckpointWeights(conv).tensors;
    const after = readCheckpointWeights(path.join(root, "a", "checkpoint")).tensors;
    const resumed = readCheckpointWeights(path.join(root, "b", "checkpoint")).tensors;
    let routingMoved = false;
    for (const [n, t] of after) {
      const o = orig.get(n)!;
      assert.deepEqual(Array.from(resumed.get(n)!.data), Array.from(t.data), `${n}: resumed = uninterrupted`);
      if (isResidualParam(n)) routingMoved ||= Array.from(t.data).some((x, i) => x !== o.data[i]);
      else assert.deepEqual(Array.from(t.data), Array.from(o.data), `${n} changed under --freeze-base`);
    }
    assert.ok(routingMoved, "the routing parameters trained");
  });

  test("freezing a standard model is an error naming the problem", async () => {
    const root = tmp();
    const data = path.join(root, "data");
    writePreparedBytes(data, sampleText(8000, 2));
    const std = path.join(root, "std");
    const m = new DecoderLM(base, { seed: 5 });
    saveCheckpoint(std, m);
    m.dispose();
    await assert.rejects(
      runTraining(finetuneSpec(flags(std, data, { freezeBase: true })), path.join(root, "run")),
      /freeze_base needs a routed model, but mode standard has no routing parameters/,
    );
  });
});
