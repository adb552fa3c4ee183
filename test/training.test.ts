/**
 * Training-level behaviour: gradient checks through whole models (the DDL updates and the
 * routed modes, against float64 finite differences), routing statistics, and what happens when
 * the loss stops being finite.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { DecoderLM } from "../src/model/decoder.js";
import { routingStats } from "../src/model/stats.js";
import { tidy } from "../src/tensor/memory.js";
import { Rng } from "../src/tensor/random.js";
import { noGrad, tensor } from "../src/tensor/tensor.js";
import { AdamW } from "../src/train/optim.js";
import { paramGroups, TrainingDiverged, trainStep } from "../src/train/trainer.js";
import { assertClose } from "./helpers.js";
import type { DecoderLMConfig } from "../src/model/config.js";

const base: DecoderLMConfig = {
  model_type: "qwen3",
  vocab_size: 13,
  hidden_size: 8,
  intermediate_size: 12,
  num_hidden_layers: 3,
  num_attention_heads: 2,
  max_position_embeddings: 8,
  rms_norm_eps: 1e-6,
};
const rng = new Rng(11);
const B = 2;
const T = 4;
const ids = Int32Array.from({ length: B * T }, () => rng.int(13));
const targets = Int32Array.from({ length: B * T }, () => rng.int(13));

/** Finite-difference check of d loss / d p for sampled elements of every parameter. */
function modelGradcheck(extra: Record<string, unknown>, perParam = 3): void {
  const model = new DecoderLM({ ...base, ...extra }, { backend: ref, dtype: "float64", seed: 2 });
  const pr = new Rng(4);
  // Random routing queries etc., so nothing sits at a symmetric point.
  for (const [, p] of model.namedParameters())
    for (let i = 0; i < p.size; i++) p.data[i] = p.data[i]! + 0.3 * pr.normal();
  const loss = () => noGrad(() => tidy(() => model.loss(ids, targets, B, T).item()));
  tidy(() => model.loss(ids, targets, B, T).backward());
  const eps = 1e-6;
  for (const [name, p] of model.namedParameters()) {
    const got: number[] = [];
    const want: number[] = [];
    for (let s = 0; s < Math.min(perParam, p.size); s++) {
      const i = pr.int(p.size);
      const orig = p.data[i]!;
      p.data[i] = orig + eps;
      const lp = loss();
      p.data[i] = orig - eps;
      const lm = loss();
      p.data[i] = orig;
      want.push((lp - lm) / (2 * eps));
      got.push(p.grad ? p.grad.data[i]! : 0);
    }
    assertClose(got, want, { rtol: 1e-5, atol: 1e-8 }, `d loss / d ${name}`);
  }
  model.dispose();
}

describe("gradient checks through whole models (float64, finite differences)", () => {
  const cases: [string, Record<string, unknown>][] = [
    ["ddl (linear value)", { attnres_mode: "ddl" }],
    ["ddl (sigmoid4 value, beta0 0.5)", { attnres_mode: "ddl", ddl_value_form: "sigmoid4", ddl_beta0: 0.5 }],
    ["ddl-expanded", { attnres_mode: "ddl_expanded" }],
    ["attnres-full", { attnres_mode: "full" }],
    ["attnres-block", { attnres_mode: "block", attnres_num_blocks: 2 }],
    [
      "delta with null source and gate",
      { attnres_mode: "delta", attnres_use_null_source: true, attnres_gate_type: "learnable_alpha" },
    ],
    ["delta-block", { attnres_mode: "delta_block", attnres_num_blocks: 2 }],
    ["llama, tied", { model_type: "llama", tie_word_embeddings: true }],
  ];
  for (const [name, extra] of cases) test(name, () => modelGradcheck(extra));
});

describe("routing statistics", () => {
  test("mean max weight, entropy and mean alpha from a known alpha", () => {
    const alpha = tensor([1, 0, 0.5, 0.5], [1, 2, 2], { backend: ref, dtype: "float64" });
    const beta = tensor([0.05, 1.0, 1.95, 1.0], [1, 4, 1], { backend: ref, dtype: "float64" });
    const r = routingStats({
      alphas: new Map([[3, alpha]]),
      sources: new Map(),
      streams: new Map(),
      betas: new Map([[2, beta]]),
    });
    assert.equal(r.routing.length, 1);
    const s = r.routing[0]!;
    assert.equal(s.layer, 1);
    assert.equal(s.kind, "mlp");
    assert.equal(s.meanMaxWeight, 0.75);
    assertClose([s.meanEntropy], [Math.log(2) / 2], { rtol: 1e-14 }, "entropy");
    assert.deepEqual(s.meanAlpha, [0.75, 0.25]);
    const b = r.beta[0]!;
    assert.equal(b.kind, "attn");
    assertClose([b.mean, b.min, b.max], [1, 0.05, 1.95], { rtol: 1e-14 }, "beta");
    assert.equal(
      b.histogram.reduce((p, c) => p + c, 0),
      4,
    );
    assert.equal(b.histogram[0], 1);
    assert.equal(b.histogram[10], 2);
    assert.equal(b.histogram[19], 1);
  });
  test("model.analyze reports every routed sublayer and the final routing", () => {
    const model = new DecoderLM({ ...base, attnres_mode: "full" }, { backend: ref, dtype: "float64" });
    const report = tidy(() => model.analyze(ids, B, T).report);
    assert.deepEqual(
      report.routing.map((r) => r.j),
      [0, 1, 2, 3, 4, 5, "final"],
    );
    assert.deepEqual(
      report.routing.map((r) => r.sources),
      [1, 2, 3, 4, 5, 6, 7],
    );
    // Zero queries: uniform weights.
    for (const r of report.routing)
      assertClose([r.meanMaxWeight], [1 / r.sources], { rtol: 1e-12 }, `sublayer ${r.j}`);
    model.dispose();
  });
});

describe("divergence", () => {
  test("a non-finite loss stops training with the step and advice, and leaves the weights untouched", () => {
    const model = new DecoderLM(base, { backend: ref, dtype: "float32", seed: 1 });
    const opt = new AdamW(paramGroups(model, 1e-2, 0.1));
    const batch = { ids, targets, B, T };
    trainStep(model, opt, batch, 0, 1, 1);
    const w = model.model.norm.weight;
    w.data[3] = Number.POSITIVE_INFINITY;
    const before = model.parameters().map((p) => p.toArray());
    assert.throws(
      () => trainStep(model, opt, batch, 7, 1, 1),
      (e: unknown) =>
        e instanceof TrainingDiverged &&
        e.step === 7 &&
        /diverged at step 7/.test(e.message) &&
        /lower learning rate/.test(e.message),
    );
    assert.deepEqual(
      model.parameters().map((p) => p.toArray()),
      before,
      "the optimizer did not run",
    );
    model.dispose();
    opt.dispose();
  });
});
