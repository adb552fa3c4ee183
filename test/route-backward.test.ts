/**
 * Depth routing's deferred backward (src/tensor/ops.ts `route`, the engine's deferred
 * contributions in src/tensor/tensor.ts): float64 gradient checks of graphs where several routed
 * calls share sources (computed sources used by one call and by many, a source twice in one call,
 * sources that need no gradient, leaf sources, a query and gain shared by calls, a computed query
 * that takes the whole-call path, a leaf with both a direct and a deferred gradient); the
 * engine's bookkeeping (recorded gradients released, group end() on failure); calls with a base
 * (out = base + the routed sum), whose sources get their gradient so far as a shared view; and standard-mode
 * training bit-identical to the engine before deferral: test/fixtures/standard-steps.json holds
 * the losses, gradient norms and a CRC-32 of every parameter's float64 bytes after three steps of
 * two micro-batches each on the reference backend, as written by the engine before deferred
 * contributions existed (`ATTNRES_WRITE_FIXTURE=1 node --import tsx --test
 * test/route-backward.test.ts` rewrites it).
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, test } from "node:test";
import zlib from "node:zlib";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { DecoderLM } from "../src/model/decoder.js";
import { poolStats, tidy } from "../src/tensor/memory.js";
import * as ops from "../src/tensor/ops.js";
import { Rng } from "../src/tensor/random.js";
import { record, type Tensor } from "../src/tensor/tensor.js";
import { AdamW } from "../src/train/optim.js";
import { paramGroups, trainStep } from "../src/train/trainer.js";
import { gradcheck, randTensor } from "./helpers.js";

const rng = new Rng(11);
const r = (shape: number[], o: { lo?: number; hi?: number; requiresGrad?: boolean } = {}): Tensor =>
  randTensor(rng, shape, ref, "float64", o);

/** A delta-like graph of five routed calls over [2, 3, 6] sources (see the file comment). */
function routedGraph(xs: Tensor[], cst: Tensor): Tensor {
  const [x0, x1, wA, gA, wB, gB, wS, gS] = xs as [
    Tensor,
    Tensor,
    Tensor,
    Tensor,
    Tensor,
    Tensor,
    Tensor,
    Tensor,
  ];
  const eps = 1e-6;
  const h0 = ops.silu(x0); // read by every call
  const r1 = ops.route([h0, cst], wA, gA, eps).out; // cst needs no gradient
  const o1 = ops.silu(ops.add(r1, x1));
  const r2 = ops.route([h0, o1, o1], wB, gB, eps).out; // o1 twice
  const o2 = ops.exp(ops.scale(r2, 0.3));
  const u = ops.silu(ops.scale(x1, -1.5)); // read by one call only
  const r3 = ops.route([h0, o1, o2, x1], wS, gS, eps).out; // x1: a leaf source
  const r4 = ops.route([o2, u, h0], wS, gS, eps).out; // the query and gain of r3 again
  const r5 = ops.route([o1, h0, o2], ops.scale(wA, 2), gB, eps).out; // computed query: whole call
  // wA also gets a direct gradient, beside its deferred one from r1
  return ops.add(ops.add(ops.add(r3, r4), ops.add(r5, o2)), wA);
}

describe("route: deferred backward", () => {
  test("float64 gradients of calls sharing sources match central differences", () => {
    const inputs = [
      r([2, 3, 6], { lo: -2, hi: 2 }),
      r([2, 3, 6], { lo: -2, hi: 2 }),
      r([6]),
      r([6], { lo: 0.5, hi: 1.5 }),
      r([6]),
      r([6], { lo: 0.5, hi: 1.5 }),
      r([6]),
      r([6], { lo: 0.5, hi: 1.5 }),
    ];
    const cst = r([2, 3, 6], { requiresGrad: false });
    gradcheck("routed graph", inputs, (...xs) => routedGraph(xs, cst));
  });

  test("frozen query and gain: sources still get gradients, and nothing is left behind", () => {
    const x0 = r([4, 5], { lo: -2, hi: 2 });
    const w = r([5], { requiresGrad: false });
    const g = r([5], { lo: 0.5, hi: 1.5, requiresGrad: false });
    gradcheck("frozen router", [x0], (x) => {
      const a = ops.silu(x!);
      const b = ops.exp(ops.scale(x!, 0.5));
      const o = ops.route([a, b], w, g, 1e-6).out;
      return ops.route([a, o, b], w, g, 1e-6).out;
    });
    const live = poolStats(ref).liveBytes;
    tidy(() => {
      const a = ops.silu(x0);
      ops.sum(ops.route([a, ops.square(a)], w, g, 1e-6).out).backward();
    });
    x0.grad?.dispose();
    x0.grad = null;
    assert.equal(poolStats(ref).liveBytes, live, "every recorded gradient was released");
  });
});

describe("route with a base (out = base + the routed sum)", () => {
  /** A delta-like chain: x_j = h + route(…) with h the stream, whose adds hand a source its gradient as a shared view. */
  function chain(xs: Tensor[]): Tensor {
    const [x0, x1, w1, g1, w2, g2] = xs as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
    const eps = 1e-6;
    const h0 = ops.silu(x0);
    const o0 = ops.exp(ops.scale(x1, 0.3));
    const h1 = ops.add(h0, o0); // o0's gradient from here is a view of h1's
    const x1in = ops.route([h0, o0], w1, g1, eps, h1).out;
    const o1 = ops.silu(x1in);
    const h2 = ops.add(h1, o1);
    const x2in = ops.route([h0, o0, o1], w2, g2, eps, h2).out;
    const same = ops.route([h0, o1], w1, g2, eps, h0).out; // the base is also a source
    const one = ops.route([o1], w2, g1, eps, o0).out; // one source: alpha ≡ 1
    return ops.add(ops.add(ops.mul(x2in, o1), same), one);
  }
  const inputs = () => [
    r([2, 3, 6], { lo: -2, hi: 2 }),
    r([2, 3, 6], { lo: -2, hi: 2 }),
    r([6]),
    r([6], { lo: 0.5, hi: 1.5 }),
    r([6]),
    r([6], { lo: 0.5, hi: 1.5 }),
  ];
  test("float64 gradients match central differences, and nothing is left behind", () => {
    const xs = inputs();
    gradcheck("routed chain with bases", xs, (...t) => chain(t));
    for (const x of xs) {
      x.grad?.dispose();
      x.grad = null;
    }
    const live = poolStats(ref).liveBytes;
    tidy(() => ops.sum(chain(xs)).backward());
    for (const x of xs) {
      x.grad?.dispose();
      x.grad = null;
    }
    assert.equal(poolStats(ref).liveBytes, live, "every recorded gradient and kept output was released");
  });
  test("equals the routed sum plus the base; one source gives an exactly zero query gradient", () => {
    const [s0, s1, b] = [r([4, 5]), r([4, 5]), r([4, 5])];
    const [w, g] = [r([5]), r([5], { lo: 0.5, hi: 1.5 })];
    const plain = ops.route([s0, s1], w, g, 1e-6).out.toArray();
    const withBase = ops.route([s0, s1], w, g, 1e-6, b).out.toArray();
    const bs = b.toArray();
    withBase.forEach((v, i) => assert.ok(Math.abs(v - (plain[i]! + bs[i]!)) <= 1e-12, `element ${i}`));
    tidy(() => ops.sum(ops.mul(ops.route([ops.silu(s0)], w, g, 1e-6, ops.exp(b)).out, s1)).backward());
    assert.ok(w.grad && w.grad.toArray().every((v) => v === 0), "query gradient of a one-source call");
    assert.throws(
      () => ops.route([s0], w, g, 1e-6, r([4, 4])),
      /route: base \[4, 4\] differs from the sources' \[4, 5\]/,
    );
  });
});

describe("route: a backward pass that fails", () => {
  test("releases the gradients the routed calls recorded", () => {
    const x = r([4, 5], { lo: -2, hi: 2 });
    const w = r([5]);
    const g = r([5], { lo: 0.5, hi: 1.5 });
    const live = poolStats(ref).liveBytes;
    assert.throws(
      () =>
        tidy(() => {
          const b = ops.silu(x); // added after a: still pending when a's backward throws
          const a = record(ops.square(x), "failing", [x], () => {
            throw new Error("failing backward");
          });
          ops.sum(ops.route([a, b], w, g, 1e-6).out).backward();
        }),
      /failing backward/,
    );
    assert.equal(poolStats(ref).liveBytes, live, "nothing recorded outlives the failed pass");
    assert.equal(w.grad, null);
    assert.equal(x.grad, null);
  });
});

describe("route: the rest of the engine is unchanged", () => {
  test("standard-mode training is bit-identical to the fixture", () => {
    const model = new DecoderLM(
      {
        vocab_size: 32,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 16,
      },
      { backend: ref, dtype: "float64", seed: 5 },
    );
    const opt = new AdamW(paramGroups(model, 1e-2, 0.1));
    const data = new Rng(9);
    const batch = () => {
      const ids = Int32Array.from({ length: 2 * 8 }, () => data.int(32));
      return { ids, targets: Int32Array.from(ids, (t) => (t * 5 + 3) % 32), B: 2, T: 8 };
    };
    const steps = [0, 1, 2].map((step) => trainStep(model, opt, [batch(), batch()], step, 1, 1));
    const params = Object.fromEntries(
      model
        .namedParameters()
        .map(([name, t]) => [name, zlib.crc32(Buffer.from(t.data.buffer, t.data.byteOffset, t.size * 8))]),
    );
    const got = { losses: steps.map((s) => s.loss), gradNorms: steps.map((s) => s.gradNorm), params };
    const file = new URL("./fixtures/standard-steps.json", import.meta.url);
    if (process.env.ATTNRES_WRITE_FIXTURE) writeFileSync(file, JSON.stringify(got, null, 2) + "\n");
    assert.deepEqual(got, JSON.parse(readFileSync(file, "utf8")));
    model.dispose();
    opt.dispose();
  });
});

describe("route linked to the next call (one read of the shared sources for two calls)", () => {
  const eps = 1e-6;
  const close = (got: number[], want: number[], what: string) =>
    got.forEach((v, i) =>
      assert.ok(Math.abs(v - want[i]!) <= 1e-12 * (1 + Math.abs(want[i]!)), `${what}[${i}]`),
    );
  test("the second call's output, α and gradients equal the unlinked call's", () => {
    const xs = [
      r([2, 3, 6], { lo: -2, hi: 2 }),
      r([2, 3, 6], { lo: -2, hi: 2 }),
      r([6]),
      r([6], { lo: 0.5, hi: 1.5 }),
    ];
    const [wA, gA] = [r([6]), r([6], { lo: 0.5, hi: 1.5 })];
    // a delta-like pair: call B routes A's sources and A's output's successor
    const pass = (linked: boolean) => {
      const [x0, x1, wB, gB] = xs as [Tensor, Tensor, Tensor, Tensor];
      const h0 = ops.silu(x0);
      const o0 = ops.exp(ops.scale(x1, 0.3));
      const A = ops.route([h0, o0], wA, gA, eps, h0, linked ? { next: { w: wB, g: gB } } : {});
      assert.equal(A.partial !== undefined, linked);
      const o1 = ops.silu(A.out);
      const B = ops.route([h0, o0, o1], wB, gB, eps, o1, linked ? { prior: A.partial! } : {});
      if (linked) assert.ok(A.partial!.released, "the partial is released once used");
      return { out: ops.sum(ops.mul(B.out, B.out)), alpha: B.alpha.toArray() };
    };
    const grads = (linked: boolean) => {
      for (const x of xs) x.grad = null;
      const { out, alpha } = pass(linked);
      out.backward();
      return { value: out.item(), alpha, grads: xs.map((x) => x.grad!.toArray()) };
    };
    const [plain, linked] = [grads(false), grads(true)];
    close([linked.value], [plain.value], "loss");
    close(linked.alpha, plain.alpha, "alpha");
    linked.grads.forEach((g, i) => close(g, plain.grads[i]!, `grad ${i}`));
  });
  test("a partial fits only its own next call, once", () => {
    const [s0, s1, s2] = [r([4, 5]), r([4, 5]), r([4, 5])];
    const [w, g, w2, g2] = [r([5]), r([5]), r([5]), r([5])];
    const { partial } = ops.route([s0, s1], w, g, eps, null, { next: { w: w2, g: g2 } });
    assert.throws(
      () => ops.route([s1, s0, s2], w2, g2, eps, null, { prior: partial! }),
      /route: the partial sum belongs to another call \(its sources must begin this call's/,
    );
    assert.throws(
      () => ops.route([s0, s1, s2], w, g2, eps, null, { prior: partial! }),
      /belongs to another call/,
    );
    assert.throws(
      () => ops.route([s0, s1], w, g, eps, null, { next: { w: w2, g: g2 }, prior: partial! }),
      /route: a call cannot both continue a prior sum and start the next call's/,
    );
    ops.route([s0, s1, s2], w2, g2, eps, null, { prior: partial! });
    assert.throws(
      () => ops.route([s0, s1, s2], w2, g2, eps, null, { prior: partial! }),
      /route: this partial sum has been used already/,
    );
    assert.throws(
      () => ops.route([s0, s1], w, g, eps, null, { next: { w: r([4]), g: g2 } }),
      /route: next query \[4\] and gain \[5\] must have 5 elements/,
    );
  });
  for (const mode of ["delta", "attnres-full", "delta-block"] as const)
    for (const sources of mode === "delta-block" ? ["outputs"] : ["outputs", "states"])
      test(`${mode} over ${sources}: the forward links its calls in pairs, with the unlinked result`, () => {
        const config = {
          vocab_size: 32,
          hidden_size: 16,
          intermediate_size: 24,
          num_hidden_layers: 3,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          max_position_embeddings: 16,
          attnres_mode: mode === "attnres-full" ? "full" : mode.replace("-", "_"),
          attnres_sources: sources,
          attnres_num_blocks: 2,
          ...(sources === "states" ? { attnres_gate_type: "learnable_alpha" } : {}),
        };
        const model = new DecoderLM(config as never, { backend: ref, dtype: "float64", seed: 3 });
        // the gates start at zero; make the routed terms count
        for (const [name, t] of model.namedParameters())
          if (/_res_alpha$|_res_proj\./.test(name)) t.data.fill(0.3);
        const ids = Int32Array.from({ length: 2 * 6 }, (_, i) => (i * 7) % 32);
        const kernel = ref.depthRoute;
        let linked = 0;
        const logits = (strip: boolean) => {
          ref.depthRoute = (...a: Parameters<typeof kernel>) => {
            if (a[11]) linked++;
            // stripped: every call reads all its sources itself
            return strip ? kernel(...(a.slice(0, 10) as Parameters<typeof kernel>)) : kernel(...a);
          };
          try {
            return tidy(() => model.forward(ids, 2, 6).toArray());
          } finally {
            ref.depthRoute = kernel;
          }
        };
        const want = logits(true);
        linked = 0;
        const got = logits(false);
        // 6 sublayers (+ the final routing in attnres-full): the last call of the chain is always linked
        assert.ok(linked >= 2, `${linked} linked calls`);
        close(got, want, "logits");
        model.dispose();
      });
});
