/**
 * Loading HF checkpoints (Qwen3 / Llama as transformers writes them: extra config keys, F32 / BF16,
 * single file / shards, tied / untied, GQA, q/k norms) against PyTorch float64 logits; converting
 * them to routed modes (exact where METHODS.md says so, eps residue explained elsewhere), writing
 * and reloading; refusing bad inputs with one clear line and nothing written; fine-tuning a
 * converted checkpoint (loss goes down; --freeze-base leaves the backbone bit-identical; resume).
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { convertCommand } from "../src/cli/convert.js";
import { finetuneSpec } from "../src/cli/finetune.js";
import { evalBatches } from "../src/data/batches.js";
import { resolveHfTokenizerFile } from "../src/data/hf-tokenizer.js";
import { loadPrepared } from "../src/data/prepared.js";
import { loadCheckpoint, readConfig, saveCheckpoint } from "../src/io/checkpoint.js";
import { readCheckpointWeights, readSafetensors, writeSafetensors } from "../src/io/safetensors.js";
import {
  CONVERT_MODES,
  convertCheckpoint,
  convertedConfig,
  logitsOf,
  maxAbsDiff,
  modelWithBackbone,
  ROUNDING_TOL,
  verifyConversion,
} from "../src/model/convert.js";
import { DecoderLM } from "../src/model/decoder.js";
import { runTraining } from "../src/train/run.js";
import { evaluate, isResidualParam } from "../src/train/trainer.js";
import { assertClose, sampleText, writePreparedBytes, tempDir } from "./helpers.js";

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
      /the tokenizer has 151669 ids but the embedding has only vocab_size 61 rows/,
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

describe("fine-tuning a converted checkpoint", () => {
  const base = {
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
