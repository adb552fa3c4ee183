/**
 * KV-cached generation (src/model/generate.ts, the cache in src/nn/layers.ts and decoder.ts) and
 * `attnres generate` (src/cli/generate.ts).
 *
 * For every residual mode, on a tiny GQA model whose routing queries, null sources, gates and DDL
 * parameters are randomised (so routing is far from uniform): the logits of incremental decoding
 * (prompt prefill, a chunk of 3, then one token at a time through the cache) equal those of one
 * uncached forward over the same sequence at every position — to 1e-10 in float64 on the reference
 * backend, to 1e-4 (relative to the largest logit) in float32 on the native one (there also at batch
 * 1, where one-token steps take the one-row projection kernels); `lastOnly` gives the last position's logits alone. Then: greedy
 * generation is the step-by-step argmax of uncached logits, top-k = 1 is greedy, a seed reproduces
 * samples (cached or not), the filtering is right on a hand-made distribution, the cache's memory
 * comes back on dispose, and the command prints what generate() samples and fails clearly.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { Command } from "commander";
import type { Backend, DType } from "../src/backend/backend.js";
import { nativeBackend } from "../src/backend/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { generateCommand, registerGenerate } from "../src/cli/generate.js";
import { ByteTokenizer } from "../src/data/tokenizer.js";
import { saveCheckpoint } from "../src/model/checkpoint.js";
import { DecoderLM } from "../src/model/decoder.js";
import { argmax, generate, sampleToken, samplingDistribution } from "../src/model/generate.js";
import { poolStats, tidy } from "../src/tensor/memory.js";
import { Rng } from "../src/tensor/random.js";
import { noGrad } from "../src/tensor/tensor.js";
import { assertClose, scaledClose, tempDir } from "./helpers.js";
import type { DecoderLMConfig } from "../src/model/config.js";

const base: DecoderLMConfig = {
  model_type: "qwen3",
  vocab_size: 29,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 5,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 20,
  rms_norm_eps: 1e-6,
};

const MODES: [string, Record<string, unknown>][] = [
  ["standard", {}],
  ["standard (llama: no q/k norm, tied embeddings)", { model_type: "llama", tie_word_embeddings: true }],
  ["attnres-full", { attnres_mode: "full" }],
  ["attnres-block", { attnres_mode: "block", attnres_num_blocks: 3 }],
  ["delta", { attnres_mode: "delta" }],
  [
    "delta (null source + gate)",
    { attnres_mode: "delta", attnres_use_null_source: true, attnres_gate_type: "learnable_alpha" },
  ],
  [
    "delta (states + null source)",
    {
      attnres_mode: "delta",
      attnres_sources: "states",
      attnres_use_null_source: true,
      attnres_gate_type: "learnable_alpha",
    },
  ],
  [
    "delta-block (null source + gate)",
    {
      attnres_mode: "delta_block",
      attnres_num_blocks: 3,
      attnres_use_null_source: true,
      attnres_gate_type: "learnable_alpha",
    },
  ],
  ["delta-block", { attnres_mode: "delta_block", attnres_num_blocks: 2 }],
  ["ddl", { attnres_mode: "ddl" }],
  ["ddl (sigmoid4 value)", { attnres_mode: "ddl", ddl_value_form: "sigmoid4" }],
  ["ddl-expanded", { attnres_mode: "ddl_expanded" }],
];

/** A model whose residual-mode parameters are random (non-trivial routing, gates, DDL) and whose
 * backbone is scaled up from the 0.02-std init so that attention is not near-uniform either. */
function model(extra: Record<string, unknown>, backend: Backend, dtype: DType, seed = 3): DecoderLM {
  const m = new DecoderLM({ ...base, ...extra }, { backend, dtype, seed });
  const rng = new Rng(seed + 100);
  for (const [name, p] of m.namedParameters()) {
    const d = p.data;
    if (/res_proj|null_source|res_alpha|ddl_/.test(name))
      for (let i = 0; i < p.size; i++) d[i] = rng.normal() * (name.includes("null_source") ? 0.05 : 1);
    else if (/proj\.weight|embed_tokens|lm_head/.test(name))
      for (let i = 0; i < p.size; i++) d[i] = d[i]! * 10;
    else if (/norm\.weight/.test(name)) for (let i = 0; i < p.size; i++) d[i] = 1 + 0.3 * rng.normal();
  }
  return m;
}

function randomIds(n: number, seed: number, V = base.vocab_size): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: n }, () => rng.int(V));
}

/** Logits [B, T, V] of one uncached forward over ids [B, T]. */
function fullLogits(m: DecoderLM, ids: Int32Array, B: number, T: number): Float64Array {
  return noGrad(() => tidy(() => m.forward(ids, B, T).toFloat64Array()));
}

/** Logits [B, T, V] of the same sequence fed through a cache in chunks of the given sizes. */
function cachedLogits(m: DecoderLM, ids: Int32Array, B: number, chunks: number[]): Float64Array {
  const T = chunks.reduce((a, b) => a + b, 0);
  const V = m.config.vocab_size;
  const out = new Float64Array(B * T * V);
  const cache = m.newCache(B, T);
  try {
    let at = 0;
    for (const n of chunks) {
      assert.equal(cache.length, at);
      const part = new Int32Array(B * n);
      for (let b = 0; b < B; b++) part.set(ids.subarray(b * T + at, b * T + at + n), b * n);
      const l = noGrad(() => tidy(() => m.forward(part, B, n, { cache }).toFloat64Array()));
      for (let b = 0; b < B; b++) out.set(l.subarray(b * n * V, (b + 1) * n * V), (b * T + at) * V);
      at += n;
    }
  } finally {
    cache.dispose();
  }
  return out;
}

/** Logits [B, 1, V] of a forward with lastOnly, checked against rows T − 1 of the full logits. */
function checkLastOnly(m: DecoderLM, ids: Int32Array, B: number, T: number, full: Float64Array, tol: number) {
  const V = m.config.vocab_size;
  const last = noGrad(() =>
    tidy(() => {
      const l = m.forward(ids, B, T, { lastOnly: true });
      assert.deepEqual(l.shape, [B, 1, V]);
      return l.toFloat64Array();
    }),
  );
  const want = new Float64Array(B * V);
  for (let b = 0; b < B; b++) want.set(full.subarray((b * T + T - 1) * V, (b * T + T) * V), b * V);
  scaledClose(last, want, tol, "lastOnly logits");
}

/** Largest deviation of any routing weight from uniform over a full forward (0 for unrouted modes). */
function routingSpread(m: DecoderLM, ids: Int32Array, B: number, T: number): number {
  return noGrad(() =>
    tidy(() => {
      const { trace } = m.run(ids, B, T, { trace: true });
      let worst = 0;
      for (const a of trace!.alphas.values()) {
        const N = a.shape[a.rank - 1]!;
        for (const x of a.toArray()) worst = Math.max(worst, Math.abs(x - 1 / N));
      }
      return worst;
    }),
  );
}

const B = 2;
const CHUNKS = [5, 3, 1, 1, 1, 1, 1, 1]; // prompt, a chunk (Tq = 3 < Tk), then single tokens
const T = CHUNKS.reduce((a, b) => a + b, 0);
const ids = randomIds(B * T, 11);

describe("cached logits equal uncached logits in every mode", () => {
  const nat = nativeBackend();
  for (const [name, extra] of MODES) {
    test(`${name}: reference float64, to 1e-10`, () => {
      const m = model(extra, ref, "float64");
      try {
        if (name.startsWith("attnres") || name.startsWith("delta"))
          assert.ok(
            routingSpread(m, ids, B, T) > 0.2,
            "routing is not far from uniform: the test would be weak",
          );
        const full = fullLogits(m, ids, B, T);
        scaledClose(cachedLogits(m, ids, B, CHUNKS), full, 1e-10, `${name} logits`);
        checkLastOnly(m, ids, B, T, full, 1e-12);
        // Batch 1, token by token: the one-row projections (gemvMany, gemvSwiglu).
        const one = ids.subarray(0, T);
        scaledClose(
          cachedLogits(m, one, 1, new Array<number>(T).fill(1)),
          fullLogits(m, one, 1, T),
          1e-10,
          `${name} logits (B=1)`,
        );
        // Token by token from the first position too (a one-token prefill).
        scaledClose(
          cachedLogits(m, ids, B, new Array<number>(T).fill(1)),
          full,
          1e-10,
          `${name} logits (T=1 steps)`,
        );
      } finally {
        m.dispose();
      }
    });
    test(`${name}: native float32, to 1e-4`, () => {
      assert.ok(nat, "native backend unavailable");
      const m = model(extra, nat!, "float32");
      try {
        const full = fullLogits(m, ids, B, T);
        scaledClose(cachedLogits(m, ids, B, CHUNKS), full, 1e-4, `${name} logits`);
        checkLastOnly(m, ids, B, T, full, 1e-5);
        // Batch 1: one-row matmuls (the GEMV path) and one query row per head in attention.
        const one = ids.subarray(0, T);
        scaledClose(cachedLogits(m, one, 1, CHUNKS), fullLogits(m, one, 1, T), 1e-4, `${name} logits (B=1)`);
      } finally {
        m.dispose();
      }
    });
  }

  test("the cached logits are not trivially equal: the last token changes every position's logits", () => {
    // A sanity check of the harness: a sequence differing only in its first token differs at
    // every later position, so the cache really carries the prefix.
    const m = model({ attnres_mode: "full" }, ref, "float64");
    try {
      const other = ids.slice();
      other[0] = (other[0]! + 1) % base.vocab_size;
      const a = cachedLogits(m, ids, B, CHUNKS);
      const b = cachedLogits(m, other, B, CHUNKS);
      const V = base.vocab_size;
      for (let t = 0; t < T; t++) {
        let d = 0;
        for (let v = 0; v < V; v++) d = Math.max(d, Math.abs(a[t * V + v]! - b[t * V + v]!));
        assert.ok(d > 1e-6, `position ${t} does not depend on token 0`);
      }
    } finally {
      m.dispose();
    }
  });
});

describe("cache bookkeeping", () => {
  test("memory: newCache allocates 2 · layers · B · maxLen · Hkv · D elements and dispose returns them", () => {
    const m = model({ attnres_mode: "delta_block", attnres_num_blocks: 2 }, ref, "float64");
    try {
      noGrad(() => tidy(() => void m.forward(randomIds(3, 1), 1, 3))); // builds the persistent RoPE tables
      const before = poolStats(ref).liveBytes;
      const cache = m.newCache(3, 7);
      const headDim = base.hidden_size / base.num_attention_heads;
      const bytes = 2 * base.num_hidden_layers * 3 * 7 * base.num_key_value_heads! * headDim * 8;
      assert.equal(poolStats(ref).liveBytes - before, bytes);
      noGrad(() => tidy(() => void m.forward(randomIds(3 * 4, 1), 3, 4, { cache })));
      assert.equal(poolStats(ref).liveBytes - before, bytes, "a forward through the cache leaks nothing");
      cache.dispose();
      assert.equal(poolStats(ref).liveBytes, before);
      assert.ok(cache.isDisposed);
      assert.throws(() => m.forward(randomIds(3, 1), 3, 1, { cache }), /disposed/);
      generate(m, [randomIds(4, 1), randomIds(4, 2)], { maxNewTokens: 5 });
      assert.equal(poolStats(ref).liveBytes, before, "generate disposes its cache and activations");
    } finally {
      m.dispose();
    }
  });

  test("posOffset may rewind (overwriting later positions) but not leave a gap; sizes are checked", () => {
    const m = model({ attnres_mode: "full" }, ref, "float64");
    const cache = m.newCache(B, 8);
    try {
      const seq = randomIds(B * 6, 4);
      const full = fullLogits(m, seq, B, 6);
      const first = new Int32Array(B * 6);
      first.set(randomIds(B * 6, 99)); // other tokens first, then rewind to 2 and overwrite
      noGrad(() => tidy(() => m.forward(first, B, 6, { cache })));
      const prefix = new Int32Array(B * 2);
      for (let b = 0; b < B; b++) prefix.set(seq.subarray(b * 6, b * 6 + 2), b * 2);
      const rest = new Int32Array(B * 4);
      for (let b = 0; b < B; b++) rest.set(seq.subarray(b * 6 + 2, b * 6 + 6), b * 4);
      noGrad(() => tidy(() => m.forward(prefix, B, 2, { cache, posOffset: 0 })));
      assert.equal(cache.length, 2);
      const got = noGrad(() => tidy(() => m.forward(rest, B, 4, { cache }).toFloat64Array()));
      const V = base.vocab_size;
      const want = new Float64Array(B * 4 * V);
      for (let b = 0; b < B; b++) want.set(full.subarray((b * 6 + 2) * V, (b * 6 + 6) * V), b * 4 * V);
      scaledClose(got, want, 1e-10, "logits after a rewind");
      assert.throws(() => noGrad(() => m.forward(rest, B, 4, { cache, posOffset: 7 })), /gap/);
      assert.throws(
        () => noGrad(() => m.forward(rest, B, 4, { cache })),
        /do not fit in the cache of length 8/,
      );
      assert.throws(
        () => noGrad(() => m.forward(prefix, 1, 4, { cache })),
        /cache for B=2 cannot decode B=1/,
      );
      assert.throws(() => m.forward(prefix, B, 2, { cache, posOffset: 0 }), /inference only.*noGrad/);
      assert.throws(() => m.newCache(1, 21), /max_position_embeddings \(20\)/);
      assert.throws(() => m.newCache(0, 4), /batch size 0/);
    } finally {
      cache.dispose();
      m.dispose();
    }
  });
});

describe("generate", () => {
  const P = 4;
  const N = 9;
  const prompts = [randomIds(P, 21), randomIds(P, 22)];
  const V = base.vocab_size;

  for (const [name, extra] of MODES)
    test(`${name}: greedy is the step-by-step argmax of uncached logits (B = 2)`, () => {
      const m = model(extra, ref, "float64");
      try {
        const g = generate(m, prompts, { maxNewTokens: N, temperature: 0, returnLogits: true });
        assert.deepEqual(
          generate(m, prompts, { maxNewTokens: N, temperature: 0 }).ids,
          g.ids,
          "deterministic",
        );
        assert.equal(g.logits!.length, N);
        const seq = new Int32Array(B * (P + N));
        prompts.forEach((p, b) => {
          assert.equal(g.ids[b]!.length, N);
          seq.set(p, b * (P + N));
          seq.set(g.ids[b]!, b * (P + N) + P);
        });
        const full = fullLogits(m, seq, B, P + N);
        for (let s = 0; s < N; s++)
          for (let b = 0; b < B; b++) {
            const at = (b * (P + N) + P + s - 1) * V;
            const want = full.subarray(at, at + V);
            scaledClose(g.logits![s]!.subarray(b * V, (b + 1) * V), want, 1e-10, `step ${s} row ${b} logits`);
            assert.equal(g.ids[b]![s], argmax(want), `step ${s} row ${b}`);
          }
      } finally {
        m.dispose();
      }
    });

  test("top-k = 1 is greedy; a seed reproduces samples, cached or not; other seeds differ", () => {
    const m = model({ attnres_mode: "delta_block", attnres_num_blocks: 3 }, ref, "float64");
    try {
      const greedy = generate(m, prompts, { maxNewTokens: N, temperature: 0 }).ids;
      assert.deepEqual(
        generate(m, prompts, { maxNewTokens: N, topK: 1, temperature: 1.5, seed: 5 }).ids,
        greedy,
      );
      const opts = { maxNewTokens: N, temperature: 1.3, topP: 0.95, seed: 42 };
      const a = generate(m, prompts, opts).ids;
      assert.deepEqual(generate(m, prompts, opts).ids, a);
      assert.deepEqual(generate(m, prompts, { ...opts, cache: false }).ids, a, "uncached sampling agrees");
      assert.notDeepEqual(a, greedy, "temperature 1.3 sampling is not greedy here");
      const others = [1, 2, 3].map((seed) => generate(m, prompts, { ...opts, seed }).ids);
      assert.ok(
        others.some((o) => JSON.stringify(o) !== JSON.stringify(a)),
        "different seeds give different samples",
      );
    } finally {
      m.dispose();
    }
  });

  test("stop ids end a row (excluded) while other rows go on; vocabLimit bounds the ids", () => {
    const m = model({}, ref, "float64");
    try {
      const g = generate(m, prompts, { maxNewTokens: N, temperature: 0 }).ids;
      const stopId = g[0]![3]!;
      const first = g[0]!.indexOf(stopId);
      const s = generate(m, prompts, { maxNewTokens: N, temperature: 0, stopIds: [stopId] }).ids;
      assert.deepEqual(s[0], g[0]!.subarray(0, first));
      const firstInRow1 = g[1]!.indexOf(stopId);
      assert.deepEqual(s[1], firstInRow1 < 0 ? g[1] : g[1]!.subarray(0, firstInRow1));
      const limited = generate(m, prompts, { maxNewTokens: N, seed: 1, vocabLimit: 5 }).ids;
      for (const row of limited) for (const id of row) assert.ok(id < 5, `id ${id} ≥ vocabLimit 5`);
      const streamed: [number, number][] = [];
      const r = generate(m, prompts, {
        maxNewTokens: 3,
        seed: 2,
        onToken: (id, row) => streamed.push([row, id]),
      });
      assert.deepEqual(
        streamed,
        [0, 1, 2].flatMap((s) => [0, 1].map((b) => [b, r.ids[b]![s]!] as [number, number])),
      );
      assert.deepEqual(generate(m, prompts[0]!, { maxNewTokens: 0 }).ids, [new Int32Array(0)]);
    } finally {
      m.dispose();
    }
  });

  test("bad arguments are clear errors", () => {
    const m = model({}, ref, "float64");
    try {
      assert.throws(() => generate(m, new Int32Array(0), { maxNewTokens: 1 }), /prompt is empty/);
      assert.throws(
        () => generate(m, [prompts[0]!, randomIds(3, 1)], { maxNewTokens: 1 }),
        /different lengths/,
      );
      assert.throws(() => generate(m, prompts, { maxNewTokens: 1, temperature: -1 }), /temperature must be/);
      assert.throws(() => generate(m, prompts, { maxNewTokens: 1, topK: 1.5 }), /top-k must be/);
      assert.throws(() => generate(m, prompts, { maxNewTokens: 1, topP: 0 }), /top-p must be in \(0, 1\]/);
      assert.throws(() => generate(m, prompts, { maxNewTokens: 1, vocabLimit: 30 }), /vocabulary limit 30/);
    } finally {
      m.dispose();
    }
  });
});

describe("generation beyond the context (sliding window over the last max_position_embeddings tokens)", () => {
  const C = base.max_position_embeddings!; // 20
  const V = base.vocab_size;
  const P = 6;
  const N = 30; // P + N = 36 > C: 16 steps slide the window
  const prompts = [randomIds(P, 31), randomIds(P, 32)];

  /** The same weights with a longer context (RoPE tables agree on the shared positions). */
  function longer(m: DecoderLM, extra: Record<string, unknown>, ctx: number): DecoderLM {
    const l = new DecoderLM(
      { ...base, ...extra, max_position_embeddings: ctx },
      { backend: ref, dtype: "float64" },
    );
    const src = new Map(m.namedParameters());
    for (const [name, p] of l.namedParameters()) p.data.set(src.get(name)!.data);
    return l;
  }

  for (const [name, extra] of MODES)
    test(`${name}: cached = uncached = a forward over the window; the first C tokens are the uncropped model's`, () => {
      const m = model(extra, ref, "float64");
      const big = longer(m, extra, 64);
      try {
        const g = generate(m, prompts, { maxNewTokens: N, temperature: 0, returnLogits: true });
        const u = generate(m, prompts, { maxNewTokens: N, temperature: 0, returnLogits: true, cache: false });
        assert.deepEqual(g.ids, u.ids, "cached and uncached agree");
        for (let s = 0; s < N; s++) scaledClose(g.logits![s]!, u.logits![s]!, 1e-10, `step ${s} logits`);
        // Each step's logits are those of one plain forward over the last ≤ C tokens.
        for (let s = 0; s < N; s++) {
          const len = P + s;
          const W = Math.min(len, C);
          const win = new Int32Array(B * W);
          prompts.forEach((p, b) => {
            const full = Int32Array.from([...p, ...g.ids[b]!.subarray(0, s)]);
            win.set(full.subarray(len - W, len), b * W);
          });
          const f = fullLogits(m, win, B, W);
          for (let b = 0; b < B; b++) {
            const at = (b * W + W - 1) * V;
            scaledClose(
              g.logits![s]!.subarray(b * V, (b + 1) * V),
              f.subarray(at, at + V),
              1e-10,
              `step ${s} row ${b}`,
            );
          }
        }
        // Up to length C nothing is cropped: the same tokens as a model with a longer context.
        const un = generate(big, prompts, { maxNewTokens: N, temperature: 0 });
        for (let b = 0; b < B; b++)
          assert.deepEqual(g.ids[b]!.subarray(0, C - P), un.ids[b]!.subarray(0, C - P), `row ${b}`);
      } finally {
        m.dispose();
        big.dispose();
      }
    });

  test("a prompt longer than the context is cropped to its last C tokens", () => {
    const m = model({ attnres_mode: "delta" }, ref, "float64");
    try {
      const long = randomIds(C + 7, 40);
      const a = generate(m, long, { maxNewTokens: 12, temperature: 0.8, seed: 9 });
      const b = generate(m, long.subarray(7), { maxNewTokens: 12, temperature: 0.8, seed: 9 });
      assert.deepEqual(a.ids, b.ids);
      assert.equal(a.ids[0]!.length, 12);
    } finally {
      m.dispose();
    }
  });

  const nat = nativeBackend();
  test("native float32: 400 tokens from a 20-token context, cached = uncached", () => {
    assert.ok(nat, "native backend unavailable");
    const m = model({ attnres_mode: "delta_block", attnres_num_blocks: 2 }, nat!, "float32");
    try {
      const a = generate(m, prompts, { maxNewTokens: 400, temperature: 0.9, seed: 4 });
      const before = poolStats(nat!).liveBytes; // after the first run built the RoPE tables
      const b = generate(m, prompts, { maxNewTokens: 400, temperature: 0.9, seed: 4, cache: false });
      assert.equal(a.ids[0]!.length, 400);
      assert.deepEqual(a.ids, b.ids);
      assert.deepEqual(generate(m, prompts, { maxNewTokens: 400, temperature: 0.9, seed: 4 }).ids, a.ids);
      assert.equal(poolStats(nat!).liveBytes, before, "the cache is released");
    } finally {
      m.dispose();
    }
  });
});

describe("sampling filters on a hand-made distribution", () => {
  const probs = [0.1, 0.4, 0.2, 0.3];
  const logits = probs.map(Math.log);
  const dist = (o: Parameters<typeof samplingDistribution>[1]) => Array.from(samplingDistribution(logits, o));
  const close = (got: number[], want: number[], what: string) =>
    assertClose(got, want, { atol: 1e-12 }, what);

  test("temperature", () => {
    close(dist({}), probs, "temperature 1 is the model's distribution");
    const z = probs.reduce((a, p) => a + Math.sqrt(p), 0);
    close(
      dist({ temperature: 2 }),
      probs.map((p) => Math.sqrt(p) / z),
      "temperature 2 takes the square root",
    );
    close(dist({ temperature: 0 }), [0, 1, 0, 0], "temperature 0 is one-hot on the argmax");
  });
  test("top-k", () => {
    close(dist({ topK: 2 }), [0, 0.4 / 0.7, 0, 0.3 / 0.7], "top-2");
    close(dist({ topK: 1 }), [0, 1, 0, 0], "top-1");
    close(dist({ topK: 4 }), probs, "top-4 keeps everything");
    close(dist({ topK: 10 }), probs, "k beyond the vocabulary keeps everything");
    close(Array.from(samplingDistribution([1, 1, 0], { topK: 1 })), [1, 0, 0], "ties go to the lower id");
  });
  test("top-p", () => {
    close(dist({ topP: 0.4 }), [0, 1, 0, 0], "0.4 is reached by the first id alone");
    close(dist({ topP: 0.5 }), [0, 0.4 / 0.7, 0, 0.3 / 0.7], "0.5 needs two ids");
    close(dist({ topP: 0.75 }), [0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9], "0.75 needs three");
    close(dist({ topP: 1 }), probs, "1 keeps everything");
    // Top-p applies to the top-k distribution: top-3 is {0.4, 0.3, 0.2}/0.9; 0.4/0.9 < 0.6 ≤ 0.7/0.9.
    close(dist({ topK: 3, topP: 0.6 }), [0, 0.4 / 0.7, 0, 0.3 / 0.7], "top-k then top-p");
    // Temperature first: at T = 0.5 the probabilities are ∝ p², 0.16/0.3 ≥ 0.5.
    close(dist({ temperature: 0.5, topP: 0.5 }), [0, 1, 0, 0], "temperature then top-p");
  });
  test("draws follow the filtered distribution", () => {
    const rng = new Rng(9);
    const n = 20000;
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < n; i++) counts[sampleToken(logits, { topK: 3 }, rng)]!++;
    assert.equal(counts[0], 0, "a filtered-out id was drawn");
    // Binomial standard deviation ≤ 0.0036 at n = 20000: 0.015 is over four of them.
    assertClose(
      counts.map((c) => c / n),
      [0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9],
      { atol: 0.015 },
      "frequencies",
    );
    assert.equal(sampleToken([0, 3, 1], { temperature: 0 }, rng), 1);
  });
});

describe("attnres generate", () => {
  const tmp = tempDir("generate");
  const dir = path.join(tmp, "ckpt");
  const cfg = { ...base, vocab_size: 260, max_position_embeddings: 32, attnres_mode: "delta" };
  const m = model(cfg, ref, "float64", 7);
  saveCheckpoint(dir, m);
  m.dispose();
  new ByteTokenizer().save(dir);
  const tok = new ByteTokenizer();

  test("prints the prompt and the greedy continuation of the checkpoint", () => {
    let out = "";
    const r = generateCommand(
      { checkpoint: dir, prompt: "The ", maxNewTokens: 12, temperature: 0 },
      (s) => (out += s),
    );
    assert.equal(r.ids.length, 12);
    for (const id of r.ids) assert.ok(id < 256, "only ids of the tokenizer are sampled");
    assert.equal(out, "The " + tok.decode(r.ids) + "\n");
    assert.equal(r.text, tok.decode(r.ids));
    const again = generateCommand(
      { checkpoint: dir, prompt: "The ", maxNewTokens: 12, temperature: 0 },
      () => {},
    );
    assert.deepEqual(again.ids, r.ids, "greedy is deterministic");
  });

  test("the command's ids are generate()'s on the loaded model, seed respected, --no-echo", async () => {
    const { loadCheckpoint } = await import("../src/model/checkpoint.js");
    const model2 = loadCheckpoint(dir);
    const want = generate(model2, tok.encode("ab"), {
      maxNewTokens: 10,
      temperature: 0.9,
      topK: 40,
      seed: 3,
      vocabLimit: 256,
    }).ids[0]!;
    model2.dispose();
    let out = "";
    const r = generateCommand(
      { checkpoint: dir, prompt: "ab", maxNewTokens: 10, temperature: 0.9, topK: 40, seed: 3, echo: false },
      (s) => (out += s),
    );
    assert.deepEqual(r.ids, want);
    assert.equal(out, tok.decode(want) + "\n");
  });

  test("through commander: options parse, bad values are rejected", async () => {
    const run = async (args: string[]): Promise<{ out: string; err: string; code: number }> => {
      const program = new Command().exitOverride();
      let out = "";
      let err = "";
      program.configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) });
      registerGenerate(program);
      const write = process.stdout.write.bind(process.stdout);
      // The command writes strings; the test runner's own reports (bytes) pass through while the
      // action awaits the import of its implementation.
      process.stdout.write = ((s: string | Uint8Array, ...rest: never[]) =>
        typeof s === "string" ? ((out += s), true) : write(s, ...rest)) as typeof process.stdout.write;
      try {
        await program.parseAsync(["generate", ...args], { from: "user" });
        return { out, err, code: 0 };
      } catch (e) {
        return { out, err: err || (e as Error).message, code: (e as { exitCode?: number }).exitCode ?? 1 };
      } finally {
        process.stdout.write = write;
      }
    };
    const ok = await run(["-c", dir, "--prompt", "xy", "-n", "6", "--temperature", "0", "--no-echo"]);
    assert.equal(ok.code, 0, ok.err);
    const direct = generateCommand(
      { checkpoint: dir, prompt: "xy", maxNewTokens: 6, temperature: 0 },
      () => {},
    );
    assert.equal(ok.out, direct.text + "\n");
    const bad = await run(["-c", dir, "--prompt", "xy", "--top-p", "1.5"]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.err, /--top-p.*expected a number in \(0, 1\]/);
    const badK = await run(["-c", dir, "--prompt", "xy", "--top-k", "-2"]);
    assert.match(badK.err, /expected an integer ≥ 0/);
    const help = await run(["--help"]);
    assert.match(help.out, /Examples:/);
    assert.match(help.out, /--temperature <x>/);
  });

  test("clear errors: no tokenizer, empty prompt, not a checkpoint", () => {
    const bare = path.join(tmp, "bare");
    fs.mkdirSync(bare);
    for (const f of ["config.json", "model.safetensors"])
      fs.copyFileSync(path.join(dir, f), path.join(bare, f));
    assert.throws(() => generateCommand({ checkpoint: bare, prompt: "a" }, () => {}), /has no tokenizer/);
    assert.throws(() => generateCommand({ checkpoint: dir, prompt: "" }, () => {}), /the prompt is empty/);
    assert.throws(
      () => generateCommand({ checkpoint: tmp, prompt: "a" }, () => {}),
      /config\.json is missing/,
    );
  });

  test("-n beyond the context: 400 tokens from a 32-token model (sliding window)", () => {
    let out = "";
    const r = generateCommand(
      { checkpoint: dir, prompt: "abcd", maxNewTokens: 400, temperature: 0 },
      (s) => (out += s),
    );
    assert.equal(r.ids.length, 400);
    assert.equal(out, "abcd" + tok.decode(r.ids) + "\n");
    const short = generateCommand(
      { checkpoint: dir, prompt: "abcd", maxNewTokens: 28, temperature: 0 },
      () => {},
    );
    assert.deepEqual(r.ids.subarray(0, 28), short.ids, "the first 32 tokens are those of a run that fits");
  });

  test("cleanup", () => fs.rmSync(tmp, { recursive: true, force: true }));
});
