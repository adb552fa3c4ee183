/**
 * Training must not leak: over 300 steps, after a short warm-up, the bytes handed out by the
 * buffer pool, the backend's natively allocated bytes, and the process RSS stay flat. A routed
 * mode (delta, with null sources) must not leak either: its deferred backward keeps each call's
 * output gradient until every source of the call has been added.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import * as v8 from "node:v8";
import * as vm from "node:vm";
import { defaultBackend } from "../src/backend/index.js";
import { BatchSampler } from "../src/data/batches.js";
import { DecoderLM } from "../src/model/decoder.js";
import { poolStats } from "../src/tensor/memory.js";
import { AdamW, lrMultiplier } from "../src/train/optim.js";
import { paramGroups, trainStep } from "../src/train/trainer.js";

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

test("memory stays flat over 300 training steps", () => {
  const backend = defaultBackend();
  const model = new DecoderLM(
    {
      vocab_size: 64,
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 64,
    },
    { backend, seed: 1 },
  );
  const opt = new AdamW(paramGroups(model, 3e-3, 0.1), { beta2: 0.95 });
  const tokens = Int32Array.from({ length: 5000 }, (_, i) => (i * 7 + (i >> 3)) % 64);
  const sampler = new BatchSampler(tokens, 4, 32, 3);
  const sched = { warmup: 10, total: 300, minRatio: 0.1 };
  const snap = () => {
    gc();
    return {
      pool: poolStats(backend).liveBytes,
      pooled: poolStats(backend).pooledBytes,
      native: backend.memoryStats().allocatedBytes,
      rss: process.memoryUsage().rss,
    };
  };
  let first = 0;
  let last = 0;
  let warm = snap();
  for (let step = 0; step < 300; step++) {
    const { loss } = trainStep(model, opt, sampler.next(), step, lrMultiplier(step, sched), 1.0);
    if (step === 0) first = loss;
    last = loss;
    if (step === 29) warm = snap();
  }
  const end = snap();
  assert.ok(last < first, `the model learns (loss ${first} → ${last})`);
  assert.equal(end.pool, warm.pool, "bytes held by live tensors are the same after 30 and 300 steps");
  assert.equal(end.pooled, warm.pooled, "the pool did not grow");
  assert.equal(end.native, warm.native, "natively allocated bytes are the same after 30 and 300 steps");
  const growMB = (end.rss - warm.rss) / 2 ** 20;
  assert.ok(growMB < 16, `RSS grew by ${growMB.toFixed(1)} MB over 270 steps`);
  model.dispose();
  opt.dispose();
});

test("memory stays flat in a routed mode (delta, null sources)", () => {
  const backend = defaultBackend();
  const model = new DecoderLM(
    {
      vocab_size: 64,
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 3,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 64,
      attnres_mode: "delta",
      attnres_use_null_source: true,
    },
    { backend, seed: 1 },
  );
  const opt = new AdamW(paramGroups(model, 3e-3, 0.1), { beta2: 0.95 });
  const tokens = Int32Array.from({ length: 5000 }, (_, i) => (i * 7 + (i >> 3)) % 64);
  const sampler = new BatchSampler(tokens, 4, 32, 3);
  const live = () => (gc(), poolStats(backend).liveBytes);
  let warm = 0;
  for (let step = 0; step < 60; step++) {
    trainStep(model, opt, sampler.next(), step, 1, 1.0);
    if (step === 9) warm = live();
  }
  assert.equal(live(), warm, "bytes held by live tensors are the same after 10 and 60 steps");
  assert.ok(
    model.parameters().every((p) => p.grad && p.grad.toArray().every(Number.isFinite)),
    "every parameter (routers and null sources too) has a finite gradient",
  );
  model.dispose();
  opt.dispose();
});
