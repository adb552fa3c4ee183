/**
 * Every op's gradient against float64 central differences on the reference backend, plus the
 * autograd engine's bookkeeping (accumulation, shared subexpressions, no-grad, scopes).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import * as ops from "../src/tensor/ops.js";
import { RopeTable } from "../src/tensor/ops.js";
import { poolStats, tidy } from "../src/tensor/memory.js";
import { Rng } from "../src/tensor/random.js";
import { noGrad, tensor, type Tensor } from "../src/tensor/tensor.js";
import { assertClose, gradcheck, randTensor } from "./helpers.js";

const rng = new Rng(7);
const r = (shape: number[], o: { lo?: number; hi?: number } = {}): Tensor =>
  randTensor(rng, shape, ref, "float64", o);

describe("gradcheck: linear algebra", () => {
  for (const [tA, tB] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ] as const) {
    test(`matmul transA=${tA} transB=${tB}`, () => {
      const a = r(tA ? [5, 3] : [3, 5]);
      const b = r(tB ? [4, 5] : [5, 4]);
      gradcheck("matmul", [a, b], (x, y) => ops.matmul(x!, y!, { transA: tA, transB: tB }));
    });
    test(`batched matmul with a shared weight, transA=${tA} transB=${tB}`, () => {
      const a = r(tA ? [2, 3, 5, 3] : [2, 3, 3, 5]);
      const b = r(tB ? [4, 5] : [5, 4]);
      gradcheck("bmm-shared", [a, b], (x, y) => ops.matmul(x!, y!, { transA: tA, transB: tB }));
    });
  }
  test("batched matmul, equal batches", () => {
    gradcheck("bmm", [r([3, 2, 7]), r([3, 7, 1])], (x, y) => ops.matmul(x!, y!));
  });
  test("batched matmul, shared left operand", () => {
    gradcheck("bmm-left", [r([2, 3]), r([4, 3, 5])], (x, y) => ops.matmul(x!, y!));
  });
  test("matmul shape errors name the op and shapes", () => {
    assert.throws(
      () => ops.matmul(r([2, 3]), r([4, 5])),
      /matmul: inner dimensions differ: \[2, 3\] @ \[4, 5\]/,
    );
    assert.throws(() => ops.matmul(r([2, 2, 3]), r([3, 3, 5])), /matmul: batch dimensions/);
    assert.throws(() => ops.matmul(r([3]), r([3, 5])), /matmul: both inputs need rank >= 2/);
  });
});

describe("gradcheck: elementwise", () => {
  for (const name of ["add", "sub", "mul", "div", "maximum", "minimum"] as const) {
    test(`${name} with broadcasting`, () => {
      const a = r([3, 1, 4], { lo: 0.5, hi: 2 });
      const b = r([5, 1], { lo: 0.5, hi: 2 });
      gradcheck(name, [a, b], (x, y) => ops[name](x!, y!));
    });
    test(`${name} same shape`, () => {
      const a = r([7], { lo: 0.5, hi: 2 });
      const b = r([7], { lo: -2, hi: -0.5 });
      gradcheck(name, [a, b], (x, y) => ops[name](x!, y!));
    });
  }
  test("scalar operands", () => {
    gradcheck("add-scalar", [r([4])], (x) => ops.add(x!, 3));
    gradcheck("sub-scalar", [r([4])], (x) => ops.sub(x!, 3));
    gradcheck("mul-scalar", [r([4])], (x) => ops.mul(x!, -2.5));
    gradcheck("div-scalar", [r([4])], (x) => ops.div(x!, 4));
  });
  const unary: [keyof typeof ops, number, number][] = [
    ["neg", -2, 2],
    ["exp", -2, 2],
    ["log", 0.2, 3],
    ["sqrt", 0.2, 3],
    ["rsqrt", 0.2, 3],
    ["sigmoid", -4, 4],
    ["silu", -4, 4],
    ["square", -2, 2],
    ["abs", 0.1, 2],
  ];
  for (const [name, lo, hi] of unary)
    test(name, () => {
      const f = ops[name] as (x: Tensor) => Tensor;
      gradcheck(name, [r([2, 3, 5], { lo, hi })], (x) => f(x!));
      if (name === "abs") gradcheck("abs-neg", [r([6], { lo: -2, hi: -0.1 })], (x) => f(x!));
    });
  test("broadcast errors", () => {
    assert.throws(() => ops.add(r([3, 4]), r([5])), /add: shapes \[3, 4\] and \[5\] do not broadcast/);
  });
});

describe("gradcheck: reductions", () => {
  const x = r([3, 4, 5]);
  for (const axes of [undefined, 0, 1, 2, [0, 2], [-1]] as const)
    for (const keep of [false, true]) {
      test(`sum axes=${JSON.stringify(axes)} keepdim=${keep}`, () =>
        gradcheck("sum", [x], (t) => ops.sum(t!, axes, keep)));
      test(`mean axes=${JSON.stringify(axes)} keepdim=${keep}`, () =>
        gradcheck("mean", [x], (t) => ops.mean(t!, axes, keep)));
      test(`max axes=${JSON.stringify(axes)} keepdim=${keep}`, () =>
        gradcheck("max", [x], (t) => ops.max(t!, axes, keep)));
    }
  test("values", () => {
    const t = tensor([1, 5, 3, -2, 8, 0], [2, 3], { backend: ref, dtype: "float64" });
    assert.deepEqual(ops.sum(t, 1).toArray(), [9, 6]);
    assert.deepEqual(ops.max(t, 0).toArray(), [1, 8, 3]);
    assert.deepEqual(ops.mean(t).toArray(), [2.5]);
    assert.deepEqual(ops.max(t, 1, true).shape, [2, 1]);
  });
});

describe("gradcheck: shape ops", () => {
  test("reshape", () => gradcheck("reshape", [r([2, 6])], (x) => ops.reshape(x!, [3, -1])));
  test("permute", () => gradcheck("permute", [r([2, 3, 4])], (x) => ops.permute(x!, [2, 0, 1])));
  test("transpose", () => gradcheck("transpose", [r([2, 3, 4])], (x) => ops.transpose(x!, 0, 2)));
  test("slice", () => gradcheck("slice", [r([3, 7])], (x) => ops.slice(x!, 1, 2, 6)));
  test("concat", () =>
    gradcheck("concat", [r([2, 3]), r([2, 1]), r([2, 4])], (a, b, c) => ops.concat([a!, b!, c!], 1)));
  test("stack", () => gradcheck("stack", [r([2, 3]), r([2, 3])], (a, b) => ops.stack([a!, b!], 1)));
  test("expand", () => gradcheck("expand", [r([3, 1])], (a) => ops.expand(a!, [2, 3, 4])));
  test("softmax", () => gradcheck("softmax", [r([3, 5], { lo: -3, hi: 3 })], (a) => ops.softmax(a!, -1)));
  test("values and errors", () => {
    const t = tensor([0, 1, 2, 3, 4, 5], [2, 3], { backend: ref, dtype: "float64" });
    assert.deepEqual(ops.transpose(t).toArray(), [0, 3, 1, 4, 2, 5]);
    assert.deepEqual(ops.slice(t, 1, 1, 3).toArray(), [1, 2, 4, 5]);
    assert.deepEqual(ops.concat([t, t], 0).shape, [4, 3]);
    assert.throws(() => ops.slice(t, 1, 2, 4), /slice: range \[2, 4\) is outside axis 1 of size 3/);
    assert.throws(() => ops.reshape(t, [4, 2]), /reshape: cannot reshape \[2, 3\] into \[4, 2\]/);
    assert.throws(() => ops.permute(t, [0, 0]), /permute/);
  });
});

describe("gradcheck: fused model ops", () => {
  test("embedding (repeated ids accumulate)", () => {
    const ids = Int32Array.from([3, 0, 3, 1, 4, 3]);
    gradcheck("embedding", [r([5, 4])], (w) => ops.embedding(w!, ids, [2, 3]));
    assert.throws(() => ops.embedding(r([5, 4]), Int32Array.from([5]), [1]), /id 5 .* outside \[0, 5\)/);
  });
  test("rmsnorm with weight", () =>
    gradcheck("rmsnorm", [r([3, 7]), r([7])], (x, w) => ops.rmsnorm(x!, w!, 1e-5)));
  test("rmsnorm without weight", () =>
    gradcheck("rmsnorm-nw", [r([2, 3, 5])], (x) => ops.rmsnorm(x!, null, 1e-6)));
  test("rope", () => {
    const table = new RopeTable(6, 16, 10000);
    gradcheck("rope", [r([2, 3, 2, 6])], (x) => ops.rope(x!, table, 0));
    gradcheck("rope-offset", [r([1, 2, 3, 6])], (x) => ops.rope(x!, table, 5));
  });
  for (const [name, B, Tq, Tk, Hq, Hkv, D, causal] of [
    ["causal MHA", 2, 5, 5, 2, 2, 4, true],
    ["causal GQA", 1, 6, 6, 4, 2, 3, true],
    ["non-causal", 2, 3, 4, 2, 1, 4, false],
    ["causal Tq<Tk (cache)", 1, 2, 5, 2, 1, 4, true],
  ] as const)
    test(`attention ${name}`, () => {
      gradcheck(`attention ${name}`, [r([B, Tq, Hq, D]), r([B, Tk, Hkv, D]), r([B, Tk, Hkv, D])], (q, k, v) =>
        ops.attention(q!, k!, v!, { causal }),
      );
    });
  test("attention matches the composite softmax(qkᵀ/√d)v", () => {
    const q = r([1, 4, 1, 3]);
    const k = r([1, 4, 1, 3]);
    const v = r([1, 4, 1, 3]);
    const fused = ops.attention(q, k, v, { causal: true }).toArray();
    const s = ops.scale(
      ops.matmul(ops.reshape(q, [4, 3]), ops.reshape(k, [4, 3]), { transB: true }),
      1 / Math.sqrt(3),
    );
    const mask = tensor([0, -1e30, -1e30, -1e30, 0, 0, -1e30, -1e30, 0, 0, 0, -1e30, 0, 0, 0, 0], [4, 4], {
      backend: ref,
      dtype: "float64",
    });
    const composite = ops.matmul(ops.softmax(ops.add(s, mask)), ops.reshape(v, [4, 3])).toArray();
    assertClose(fused, composite, { rtol: 1e-12, atol: 1e-12 }, "attention vs composite");
  });
  for (const reduction of ["mean", "sum", "none"] as const)
    test(`crossEntropy ${reduction} with ignore index`, () => {
      const targets = Int32Array.from([2, -100, 0, 4, 1, -100]);
      gradcheck("crossEntropy", [r([2, 3, 5], { lo: -3, hi: 3 })], (x) =>
        ops.crossEntropy(x!, targets, { reduction }),
      );
    });
  test("crossEntropy values and errors", () => {
    const logits = tensor([0, 0, Math.log(2)], [1, 3], { backend: ref, dtype: "float64" });
    assertClose(
      ops.crossEntropy(logits, Int32Array.from([2])).toArray(),
      [Math.log(4) - Math.log(2)],
      { rtol: 1e-14 },
      "ce",
    );
    assert.throws(
      () => ops.crossEntropy(logits, Int32Array.from([-100])),
      /every target equals the ignore index/,
    );
    assert.throws(() => ops.crossEntropy(logits, Int32Array.from([3])), /target 3 at row 0 outside \[0, 3\)/);
  });
  test("swiglu", () =>
    gradcheck("swiglu", [r([3, 5], { lo: -3, hi: 3 }), r([3, 5])], (g, u) => ops.swiglu(g!, u!)));
});

describe("gradcheck: ddl-expanded state", () => {
  test("ddlRead", () =>
    gradcheck("ddlRead", [r([2, 3, 5, 4], { lo: -2, hi: 2 }), r([5, 4])], (X, C) => ops.ddlRead(X!, C!)));
  test("ddlUpdate", () =>
    gradcheck(
      "ddlUpdate",
      [r([2, 3, 5, 3], { lo: -2, hi: 2 }), r([2, 3, 5]), r([2, 3, 1], { lo: 0, hi: 2 }), r([2, 3, 3])],
      (X, k, b, v) => ops.ddlUpdate(X!, k!, b!, v!),
    ));
  // The update with the next read fused in: both results carry gradients; X's gradient is written
  // by the update's backward when it comes first, accumulated when another use of X came first.
  for (const alsoReadX of [false, true])
    test(`ddlUpdateRead${alsoReadX ? " (X also read)" : ""}`, () => {
      const W = r([5, 3]);
      gradcheck(
        "ddlUpdateRead",
        [
          r([2, 3, 5, 3], { lo: -2, hi: 2 }),
          r([2, 3, 5]),
          r([2, 3, 1], { lo: 0, hi: 2 }),
          r([2, 3, 3]),
          r([5, 3]),
        ],
        (X, k, b, v, C) => {
          const { Y, x } = ops.ddlUpdateRead(X!, k!, b!, v!, C!);
          const out = ops.add(ops.sum(ops.mul(Y, W), -1), x); // [2, 3, 5]
          return alsoReadX ? ops.add(out, ops.ddlRead(X!, C!)) : out;
        },
      );
    });
  test("ddlUpdate and ddlRead equal their composite definitions", () => {
    const X = r([2, 3, 5, 4], { lo: -2, hi: 2 });
    const k = r([2, 3, 5]);
    const b = r([2, 3, 1], { lo: 0, hi: 2 });
    const v = r([2, 3, 4]);
    const C = r([5, 4]);
    const k4 = ops.reshape(k, [2, 3, 5, 1]);
    const kX = ops.sum(ops.mul(k4, X), -2); // [2, 3, 4]
    const delta = ops.reshape(ops.sub(v, kX), [2, 3, 1, 4]);
    const want = ops.add(X, ops.mul(ops.mul(ops.reshape(b, [2, 3, 1, 1]), k4), delta));
    assertClose(ops.ddlUpdate(X, k, b, v).toArray(), want.toArray(), { rtol: 1e-12 }, "update");
    assertClose(ops.ddlRead(X, C).toArray(), ops.sum(ops.mul(X, C), -1).toArray(), { rtol: 1e-12 }, "read");
    assert.throws(() => ops.ddlUpdate(X, k, b, r([2, 3, 3])), /ddlUpdate: state \[2, 3, 5, 4\]/);
    const fused = ops.ddlUpdateRead(X, k, b, v, C);
    assert.deepEqual(fused.Y.toArray(), ops.ddlUpdate(X, k, b, v).toArray());
    assert.deepEqual(fused.x.toArray(), ops.ddlRead(fused.Y, C).toArray());
    assert.throws(
      () => ops.ddlUpdateRead(X, k, b, v, r([4, 5])),
      /ddlUpdateRead: state \[2, 3, 5, 4\] and mix \[4, 5\]/,
    );
    assert.throws(() => ops.ddlRead(X, r([4, 5])), /ddlRead: state/);
  });
});

describe("gradcheck: ddl's fused step", () => {
  for (const vFromStream of [false, true]) {
    const mk = () => ({
      x: r([2, 3, 6], { lo: -2, hi: 2 }),
      u: r([2, 3, 6], { lo: -2, hi: 2 }),
      c: r([2, 3, 6], { lo: -2, hi: 2 }),
      wb: r([1, 6]),
      bb: r([1]),
      wv: r([1, 6]),
      bv: r([1]),
    });
    const eps2 = 0.3;
    test(`ddlStep (value from ${vFromStream ? "the stream, sigmoid4" : "the pre-norm, linear"})`, () => {
      const t = mk();
      gradcheck(
        "ddlStep",
        [t.x, t.u, t.c, t.wb, t.bb, t.wv, t.bv],
        (x, u, c, wb, bb, wv, bv) => ops.ddlStep(x!, u!, c!, wb!, bb!, wv!, bv!, eps2, vFromStream).y,
      );
      // x and c also read by a later op: their gradients reach ddlStep's backward half-accumulated
      gradcheck(
        "ddlStep, shared inputs",
        [t.x, t.u, t.c, t.wb, t.bb, t.wv, t.bv],
        (x, u, c, wb, bb, wv, bv) =>
          ops.mul(
            ops.ddlStep(x!, u!, c!, wb!, bb!, wv!, bv!, eps2, vFromStream).y,
            ops.add(x!, ops.mul(c!, u!)),
          ),
      );
    });
    test(`ddlStep equals its composite definition (${vFromStream ? "sigmoid4" : "linear"})`, () => {
      const { x, u, c, wb, bb, wv, bv } = mk();
      const k = ops.div(u, ops.sqrt(ops.add(ops.sum(ops.square(u), -1, true), eps2)));
      const beta = ops.scale(ops.sigmoid(ops.add(ops.matmul(c, wb, { transB: true }), bb)), 2);
      const zv = ops.add(ops.matmul(vFromStream ? x : c, wv, { transB: true }), bv);
      const v = vFromStream ? ops.scale(ops.sigmoid(zv), 4) : zv;
      const kx = ops.sum(ops.mul(k, x), -1, true);
      const want = ops.add(x, ops.mul(ops.mul(beta, ops.sub(v, kx)), k));
      const got = ops.ddlStep(x, u, c, wb, bb, wv, bv, eps2, vFromStream);
      assertClose(got.y.toArray(), want.toArray(), { rtol: 1e-12 }, "y");
      assertClose(got.beta.toArray(), beta.toArray(), { rtol: 1e-12 }, "beta");
      assert.deepEqual(got.beta.shape, [2, 3, 1]);
      assert.equal(got.beta.requiresGrad, false);
    });
  }
  test("ddlStep shape errors name the op and shapes", () => {
    const [x, w, b] = [r([2, 4]), r([1, 4]), r([1])];
    assert.throws(
      () => ops.ddlStep(x, r([2, 3]), x, w, b, w, b, 1, false),
      /ddlStep: stream \[2, 4\], output \[2, 3\]/,
    );
    assert.throws(() => ops.ddlStep(x, x, x, r([1, 3]), b, w, b, 1, false), /ddlStep: projections \[1, 3\]/);
    assert.throws(() => ops.ddlStep(x, x, x, w, r([2]), w, b, 1, false), /biases \[2\], \[1\] one/);
  });
});

describe("gradcheck: depth routing", () => {
  for (const N of [1, 2, 5])
    test(`route over ${N} sources`, () => {
      const srcs = Array.from({ length: N }, () => r([2, 3, 6], { lo: -2, hi: 2 }));
      gradcheck(
        `route N=${N}`,
        [...srcs, r([6]), r([6], { lo: 0.5, hi: 1.5 })],
        (...xs) => ops.route(xs.slice(0, N), xs[N]!, xs[N + 1]!, 1e-6).out,
      );
    });
  test("route matches the composite definition, and alpha sums to one", () => {
    const srcs = [r([4, 5]), r([4, 5]), r([4, 5])];
    const w = r([5]);
    const g = r([5], { lo: 0.5, hi: 1.5 });
    const { out, alpha } = ops.route(srcs, w, g, 1e-6);
    const logits = ops.concat(
      srcs.map((s) => ops.sum(ops.mul(ops.rmsnorm(s, g, 1e-6), w), -1, true)),
      -1,
    );
    const a = ops.softmax(logits, -1);
    assertClose(alpha.toArray(), a.toArray(), { rtol: 1e-12, atol: 1e-14 }, "alpha");
    const composite = srcs.reduce<Tensor | null>((acc, s, i) => {
      const term = ops.mul(s, ops.slice(a, 1, i, i + 1));
      return acc ? ops.add(acc, term) : term;
    }, null)!;
    assertClose(out.toArray(), composite.toArray(), { rtol: 1e-12, atol: 1e-14 }, "out");
    const sums = ops.sum(alpha, -1).toArray();
    assertClose(sums, [1, 1, 1, 1], { rtol: 1e-14 }, "alpha rows sum to one");
  });
  test("zero query gives uniform weights", () => {
    const srcs = [r([3, 4]), r([3, 4])];
    const { alpha } = ops.route(
      srcs,
      tensor([0, 0, 0, 0], [4], { backend: ref, dtype: "float64" }),
      r([4]),
      1e-6,
    );
    assert.deepEqual(alpha.toArray(), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
  });
});

describe("autograd engine", () => {
  test("a tensor used twice gets both contributions", () => {
    gradcheck("shared", [r([4])], (x) => ops.add(ops.mul(x!, x!), ops.exp(x!)));
    gradcheck("shared-add", [r([4])], (x) => ops.add(x!, x!));
  });
  test("gradients accumulate across backward calls until zeroed", () => {
    const x = r([3]);
    tidy(() => ops.sum(ops.mul(x, 2)).backward());
    tidy(() => ops.sum(ops.mul(x, 3)).backward());
    assert.deepEqual(x.grad!.toArray(), [5, 5, 5]);
  });
  test("noGrad records nothing", () => {
    const x = r([3]);
    const y = noGrad(() => ops.exp(x));
    assert.equal(y.requiresGrad, false);
    assert.equal(y.gradFn, null);
    assert.throws(() => ops.sum(y).backward(), /does not require grad/);
  });
  test("tidy disposes intermediates and keeps what it returns", () => {
    const x = r([64]);
    const before = poolStats(ref).liveBytes;
    const kept = tidy(() => {
      const a = ops.exp(x);
      const b = ops.mul(a, a);
      return { b };
    });
    assert.equal(poolStats(ref).liveBytes - before, 64 * 8, "only the returned tensor stays live");
    kept.b.dispose();
    assert.equal(poolStats(ref).liveBytes, before);
  });
  test("backward after the forward's tidy returned is a clear error", () => {
    const x = r([3]);
    const y = tidy(() => ops.sum(ops.exp(x)));
    assert.throws(() => y.backward(), /graph behind this tensor was freed/);
  });
  test("using a disposed tensor is a clear error", () => {
    const a = tidy(() => ops.exp(r([2])));
    a.dispose();
    assert.throws(() => a.toArray(), /used after dispose/);
  });
  test("dtype and backend mismatches are errors", () => {
    const a = r([2]);
    const b = tensor([1, 2], [2], { backend: ref, dtype: "float32" });
    assert.throws(() => ops.add(a, b), /add: inputs have different dtypes/);
  });
});
