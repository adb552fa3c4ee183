/**
 * Training runs: bit-exact resume, finished runs left alone, no clobbering, gradient
 * accumulation, the routing learning-rate group.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { DecoderLM } from "../src/model/decoder.js";
import { Rng } from "../src/tensor/random.js";
import { tidy } from "../src/tensor/memory.js";
import { AdamW } from "../src/train/optim.js";
import { finishedRun, runTraining, type RunSpec, type TrainSettingsInput } from "../src/train/run.js";
import { isResidualParam } from "../src/model/residual.js";
import { paramGroups, trainStep } from "../src/train/trainer.js";
import { assertClose, sampleText, writePreparedBytes, readMetrics, tempDir, tinySpec } from "./helpers.js";

const tmp = () => tempDir("run");
const data = tmp();
writePreparedBytes(data, sampleText(20000));

const spec = (model: Record<string, unknown> = {}, train: Partial<TrainSettingsInput> = {}): RunSpec =>
  tinySpec(data, {
    model,
    train: { steps: 12, seq_len: 16, warmup: 3, eval_every: 4, checkpoint_every: 4, seed: 3, ...train },
  });

const losses = (dir: string) => readMetrics(dir, ["step", "loss", "grad_norm", "lr", "val_loss"]);

describe("training runs", () => {
  for (const mode of [{}, { attnres_mode: "delta" }] as Record<string, unknown>[])
    test(`an interrupted and resumed run equals an uninterrupted one, bit for bit (${JSON.stringify(mode)})`, async () => {
      const a = tmp();
      const b = tmp();
      const ra = await runTraining(spec(mode), a);
      assert.equal(ra.done, true);
      const rb1 = await runTraining(spec(mode), b, { stopAfter: 5 });
      assert.equal(rb1.interrupted, true);
      assert.equal(rb1.steps, 5);
      const rb2 = await runTraining(spec(mode), b, { resume: true });
      assert.equal(rb2.done, true);
      assert.deepEqual(losses(b), losses(a), "every step's loss, grad norm, lr and val loss");
      assert.ok(
        fs
          .readFileSync(path.join(a, "checkpoint", "model.safetensors"))
          .equals(fs.readFileSync(path.join(b, "checkpoint", "model.safetensors"))),
        "final weights are identical",
      );
      assert.equal(rb2.valLoss, ra.valLoss);
    });

  test("a finished run is returned as saved, an existing one is not overwritten", async () => {
    const a = tmp();
    const r = await runTraining(spec(), a, { stopAfter: 12 });
    assert.equal(r.done, true);
    const before = fs.readFileSync(path.join(a, "metrics.jsonl"), "utf8");
    const again = await runTraining(spec(), a, { resume: true });
    assert.equal(again.valLoss, r.valLoss);
    assert.equal(fs.readFileSync(path.join(a, "metrics.jsonl"), "utf8"), before);
    assert.equal(finishedRun(a)?.valLoss, r.valLoss);
    await assert.rejects(runTraining(spec(), a), /already holds a run .*\(RunOptions\.resume\)/);
    await assert.rejects(runTraining(spec({}, { lr: 1e-3 }), a, { resume: true }), /different settings/);
    assert.ok(
      fs.existsSync(path.join(a, "checkpoint", "tokenizer.json")) ||
        fs.existsSync(path.join(a, "checkpoint", "attnres_tokenizer.json")),
    );
    assert.ok(
      !fs.existsSync(path.join(a, "checkpoint.tmp")) && !fs.existsSync(path.join(a, "checkpoint.old")),
    );
  });

  test("a model too small for the tokenizer is refused", async () => {
    await assert.rejects(
      runTraining(spec({ vocab_size: 100 }), tmp()),
      /vocab_size 100 is smaller than the tokenizer's 256/,
    );
  });
});

describe("optimizer steps", () => {
  test("gradient accumulation over two micro-batches equals one step on their union", () => {
    const cfg = {
      vocab_size: 17,
      hidden_size: 8,
      intermediate_size: 12,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      max_position_embeddings: 8,
    };
    const rng = new Rng(5);
    const mk = (B: number) => ({
      ids: Int32Array.from({ length: B * 6 }, () => rng.int(17)),
      targets: Int32Array.from({ length: B * 6 }, () => rng.int(17)),
      B,
      T: 6,
    });
    const b1 = mk(2);
    const b2 = mk(2);
    const union = {
      ids: Int32Array.from([...b1.ids, ...b2.ids]),
      targets: Int32Array.from([...b1.targets, ...b2.targets]),
      B: 4,
      T: 6,
    };
    const run = (batches: Parameters<typeof trainStep>[2]) => {
      const m = new DecoderLM(cfg, { backend: ref, dtype: "float64", seed: 1 });
      const opt = new AdamW(paramGroups(m, 1e-2, 0.1));
      const r = trainStep(m, opt, batches, 1, 1, 0);
      const w = m.parameters().map((p) => p.toArray());
      m.dispose();
      opt.dispose();
      return { r, w };
    };
    const acc = run([b1, b2]);
    const one = run(union);
    assertClose([acc.r.loss], [one.r.loss], { rtol: 1e-12 }, "loss");
    acc.w.forEach((w, i) => assertClose(w, one.w[i]!, { rtol: 1e-10, atol: 1e-12 }, `param ${i}`));
  });
  test("residual-family parameters can get their own learning rate", () => {
    const m = new DecoderLM(
      {
        vocab_size: 17,
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        attnres_mode: "delta",
        attnres_use_null_source: true,
      },
      { backend: ref },
    );
    const groups = paramGroups(m, 1e-3, 0.1, [
      { name: "routing", match: isResidualParam, lr: 1e-2, weightDecay: 0 },
    ]);
    const routing = groups.find((g) => g.name === "routing")!;
    assert.equal(routing.params.length, 2 * 2 * 3); // per sublayer: query, gain, null source
    assert.ok(routing.params.every((p) => isResidualParam(p.name)));
    assert.ok(
      groups
        .filter((g) => g.name !== "routing")
        .every((g) => g.params.every((p) => !isResidualParam(p.name))),
    );
    tidy(() => undefined);
    m.dispose();
  });
});
