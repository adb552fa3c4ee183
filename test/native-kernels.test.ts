/**
 * Native backend kernels against the reference backend.
 *
 * Every case draws fresh random float32 inputs (the seed is printed in failure messages), fills the
 * native outputs with NaN (so an element a kernel forgot to write fails the comparison), runs the
 * reference backend in float64 on the same values, and compares. Tolerances:
 *  - elementwise kernels (a few float32 ops per element on exactly representable inputs):
 *    |got - want| <= 1e-5 * |want| + 1e-6 * max|want| (the second term covers results that cancel
 *    towards zero, where a relative bound on the element itself is meaningless);
 *  - anything summing K products (gemm, attention, norms, reductions): max|got - want| <=
 *    1e-5 * (1 + sqrt(K)) * max|want|. Float32 accumulation of K random-sign terms has an error growing
 *    like sqrt(K) * 6e-8 * (term size); the bound leaves two orders of magnitude on eps while still
 *    failing on any wrong index, missing term or unwritten element.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

import { BINARY_OPS, UNARY_OPS, type Backend, type BinaryOp, type UnaryOp } from "../src/backend/backend.js";
import {
  loadNativeBackend,
  measurePeakGflops,
  measureReadBandwidth,
  nativeInfo,
  setNativeGemm,
} from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { f64, maxAbs, nans, rand, randInt, rnd, SEED } from "./native-buffers.js";

const nat: Backend = loadNativeBackend();

// ------------------------------------------------------------------ helpers

/** Elementwise bound: |got - want| <= rtol*|want| + 1e-6*max|want| for every i < n. */
function closeElementwise(
  name: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  n = want.length,
): void {
  const floor = 1e-6 * maxAbs(want, n);
  for (let i = 0; i < n; i++) {
    const g = got[i]!;
    const w = want[i]!;
    if (Number.isNaN(w) && Number.isNaN(g)) continue;
    if (g === w) continue;
    const ok = Math.abs(g - w) <= 1e-5 * Math.abs(w) + floor;
    if (!ok) assert.fail(`${name}[${i}]: got ${g}, want ${w} (n=${n}, seed ${SEED})`);
  }
}

/**
 * Dot-product bound: max|got - want| <= 1e-5*(1+sqrt(K))*scale, scale = max|want| unless the caller
 * passes the size of the summed terms (for outputs that cancel by construction). NaN never passes.
 */
function closeDot(
  name: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  K: number,
  scale = maxAbs(want),
  n = want.length,
): void {
  const tol = 1e-5 * (1 + Math.sqrt(K)) * Math.max(scale, 1e-30);
  for (let i = 0; i < n; i++) {
    const g = got[i]!;
    const w = want[i]!;
    if (g === w) continue;
    if (!(Math.abs(g - w) <= tol))
      assert.fail(`${name}[${i}]: got ${g}, want ${w} (K=${K}, tol ${tol}, seed ${SEED})`);
  }
}

// ------------------------------------------------------------------ gemm

// Both GEMMs the addon can run (the built-in one always; the linked BLAS when there is one), each
// against the reference; the process's default is restored afterwards.
const gemmKinds: Array<"blas" | "builtin"> =
  nativeInfo().blas === "builtin" ? ["builtin"] : ["blas", "builtin"];
for (const kind of gemmKinds)
  describe(`gemm (${kind})`, () => {
    before(() => setNativeGemm(kind));
    after(() => setNativeGemm("default"));
    const cases: Array<[number, number, number, number, boolean]> = [
      // M, N, K, batch, strideB zero
      [1, 1, 1, 1, false],
      [7, 13, 37, 1, false],
      [13, 1, 7, 2, false],
      [129, 67, 255, 1, false],
      [129, 67, 255, 3, true],
      [37, 41, 1, 1, false],
      [16, 16, 16, 70, false], // many small matrices: the parallel-over-batch path
      [1, 1037, 77, 1, false], // one row times Bᵀ (a Linear on one token): the threaded GEMV path
      [1, 6, 19, 2, true], // the GEMV path below the threading threshold, a row count not a multiple of 4
      [70, 300, 520, 1, false], // K over several KC slices of the built-in GEMM, threaded
      [9, 4100, 300, 1, false], // N over the built-in GEMM's NC columns packed at once, K over 2 slices
      [37, 45, 1100, 1, false], // long K, few outputs (a weight gradient): K split over threads, shares summed
      [33, 20, 1029, 2, true], // the same, K's split off 16-k boundaries, batched
      // rows a multiple of the 8-row tile: op(A) is read in place, not packed (alpha scales the tile)
      [72, 300, 520, 1, false], // threaded, K over several slices, an N tail
      [256, 40, 1100, 1, false], // K split over threads
      // a Linear over 8 to 256 rows (tB): the streamed GEMM (builtin), an N tail, rows in and past the tile
      [128, 1000, 300, 1, false],
      [100, 150, 70, 2, true],
      [8, 97, 64, 1, false],
    ];
    for (const [M, N, K, batch, sharedB] of cases)
      for (const transA of [false, true])
        for (const transB of [false, true])
          for (const beta of [0, 0.5])
            test(`M=${M} N=${N} K=${K} batch=${batch}${sharedB ? " strideB=0" : ""} tA=${transA} tB=${transB} beta=${beta}`, () => {
              const aRows = transA ? K : M;
              const aCols = transA ? M : K;
              const bRows = transB ? N : K;
              const bCols = transB ? K : N;
              const lda = aCols + 3;
              const ldb = bCols + 1;
              const ldc = N + 2;
              const offA = 5;
              const offB = 2;
              const offC = 3;
              const strideA = aRows * lda + 4;
              const strideB = sharedB ? 0 : bRows * ldb + 1;
              const strideC = M * ldc + 7;
              const A = rnd(offA + batch * strideA);
              const B = rnd(offB + (sharedB ? bRows * ldb : batch * strideB));
              const C = beta === 0 ? nans(offC + batch * strideC) : rnd(offC + batch * strideC);
              const alpha = 0.75;
              const C64 = f64(C);
              // The size of the summed terms, per output: the same product over |A|, |B| (and |C|),
              // so an output that is small by cancellation is judged against its terms, not itself.
              const abs = (x: Float32Array) => Float64Array.from(x, Math.abs);
              const Cabs = abs(C);
              ref.gemm(
                transA,
                transB,
                batch,
                M,
                N,
                K,
                alpha,
                abs(A),
                offA,
                lda,
                strideA,
                abs(B),
                offB,
                ldb,
                strideB,
                beta,
                Cabs,
                offC,
                ldc,
                strideC,
              );
              ref.gemm(
                transA,
                transB,
                batch,
                M,
                N,
                K,
                alpha,
                f64(A),
                offA,
                lda,
                strideA,
                f64(B),
                offB,
                ldb,
                strideB,
                beta,
                C64,
                offC,
                ldc,
                strideC,
              );
              nat.gemm(
                transA,
                transB,
                batch,
                M,
                N,
                K,
                alpha,
                A,
                offA,
                lda,
                strideA,
                B,
                offB,
                ldb,
                strideB,
                beta,
                C,
                offC,
                ldc,
                strideC,
              );
              for (let b = 0; b < batch; b++)
                for (let i = 0; i < M; i++) {
                  const o = offC + b * strideC + i * ldc;
                  const got = C.subarray(o, o + N);
                  const want = C64.subarray(o, o + N);
                  for (const g of got) assert.ok(!Number.isNaN(g), `NaN leaked into C (beta=${beta})`);
                  closeDot(`C[b=${b},i=${i}]`, got, want, K, maxAbs(Cabs.subarray(o, o + N)));
                }
              // Padding columns [N, ldc) of every row are untouched.
              for (let b = 0; b < batch; b++)
                for (let i = 0; i < M; i++)
                  for (let j = N; j < ldc; j++) {
                    const idx = offC + b * strideC + i * ldc + j;
                    const g = C[idx]!;
                    const w = C64[idx]!;
                    assert.ok(Object.is(g, Math.fround(w)), `padding C[${idx}] changed: ${g} vs ${w}`);
                  }
            });

    // A Linear over 8 to 256 rows runs the streamed GEMM (AVX-512 builds), over more the blocked one: the
    // same rows must get the same bits either way (a prompt's prefill and the same tokens in a batch).
    if (kind === "builtin")
      test("a Linear over few rows (streamed) gives the bits of the same rows in a large product (blocked)", () => {
        const K = 300;
        const N = 203;
        const big = 264; // > 256 rows: the blocked GEMM
        const lda = K + 5;
        const A = rnd(big * lda);
        const W = rnd(N * K);
        // rows past the tile (100, 13) are exact when alpha = 1; whole tiles for any alpha
        for (const [M, alpha] of [
          [128, 0.75],
          [8, 1.5],
          [100, 1],
          [13, 1],
        ] as const)
          for (const beta of [0, 0.5]) {
            const C0 = beta === 0 ? nans(big * N) : rnd(big * N);
            const small = C0.slice(0, M * N);
            const large = C0.slice();
            nat.gemm(false, true, 1, M, N, K, alpha, A, 0, lda, 0, W, 0, K, 0, beta, small, 0, N, 0);
            nat.gemm(false, true, 1, big, N, K, alpha, A, 0, lda, 0, W, 0, K, 0, beta, large, 0, N, 0);
            for (let i = 0; i < M * N; i++)
              if (!Object.is(small[i], large[i]))
                assert.fail(
                  `M=${M} alpha=${alpha} beta=${beta}: C[${i}] ${small[i]} (few rows) vs ${large[i]}`,
                );
          }
      });

    test("beta=0 with NaN/Inf C never propagates, K=0 writes beta*C", () => {
      const M = 33;
      const N = 65;
      const K = 17;
      const A = rnd(M * K);
      const B = rnd(K * N);
      const C = nans(M * N);
      C[5] = Infinity;
      nat.gemm(false, false, 1, M, N, K, 1, A, 0, K, 0, B, 0, N, 0, 0, C, 0, N, 0);
      for (const v of C) assert.ok(Number.isFinite(v));
      const C2 = nans(M * N);
      nat.gemm(false, false, 1, M, N, 0, 1, A, 0, 1, 0, B, 0, N, 0, 0, C2, 0, N, 0);
      for (const v of C2) assert.equal(v, 0);
    });

    test("bounds and layout errors throw", () => {
      const A = rnd(10);
      const B = rnd(10);
      const C = rnd(10);
      assert.throws(
        () => nat.gemm(false, false, 1, 4, 2, 3, 1, A, 0, 3, 0, B, 0, 2, 0, 0, C, 0, 2, 0),
        /gemm: A has 10 elements, needs 12/,
      );
      assert.throws(
        () => nat.gemm(false, false, 2, 2, 2, 2, 1, A, 0, 2, 4, B, 0, 2, 4, 0, C, 0, 2, 8),
        /gemm: C has 10 elements, needs 12/,
      );
      assert.throws(
        () => nat.gemm(false, false, 1, 2, 2, 2, 1, A, 0, 1, 0, B, 0, 2, 0, 0, C, 0, 2, 0),
        /gemm: ld of A/,
      );
      assert.throws(
        () => nat.gemm(false, false, 1, 2, 2, 2, 1, A, -1, 2, 0, B, 0, 2, 0, 0, C, 0, 2, 0),
        /gemm: offA must be >= 0/,
      );
      assert.throws(
        () => nat.gemm(false, false, 1, 2, 2, 2, 1, new Float64Array(4), 0, 2, 0, B, 0, 2, 0, 0, C, 0, 2, 0),
        /float32-only/,
      );
    });
  });

// ------------------------------------------------------------------ elementwise

function unaryInput(op: UnaryOp, n: number): Float32Array {
  return op === "log" || op === "sqrt" || op === "rsqrt" ? rnd(n, 0.05, 4) : rnd(n, -4, 4);
}

describe("unary / unaryGrad", () => {
  for (const op of UNARY_OPS)
    for (const n of [1, 7, 37, 50001])
      test(`${op} n=${n}`, () => {
        const x = unaryInput(op, n);
        const out = nans(n);
        const want = new Float64Array(n);
        ref.unary(op, f64(x), want, n);
        nat.unary(op, x, out, n);
        closeElementwise(op, out, want);
        // grad: y as computed natively, compared with the reference given the same x, y, gy
        const gy = rnd(n);
        const gx = nans(n);
        const gwant = new Float64Array(n);
        ref.unaryGrad(op, f64(x), f64(out), f64(gy), gwant, n);
        nat.unaryGrad(op, x, out, gy, gx, n);
        closeElementwise(`${op}'`, gx, gwant);
        // in-place (out aliases x)
        const x2 = Float32Array.from(x);
        nat.unary(op, x2, x2, n);
        assert.deepEqual(x2, out);
      });

  test("n beyond the buffers throws, Float64Array rejected", () => {
    assert.throws(() => nat.unary("exp", rnd(5), rnd(4), 5), /unary: out has 4 elements, needs 5/);
    assert.throws(
      () => nat.unary("exp", new Float64Array(5), rnd(5), 5),
      /unary: x is a Float64Array.*float32-only/,
    );
    assert.throws(() => nat.unary("nope" as UnaryOp, rnd(5), rnd(5), 5), /unary: unknown unary op/);
    assert.throws(() => nat.unaryGrad("exp", rnd(5), rnd(5), rnd(4), rnd(5), 5), /unaryGrad: gy has 4/);
  });
});

describe("binary", () => {
  // [name, outShape, aStrides, aLen, bStrides, bLen]
  const cases: Array<[string, number[], number[], number, number[], number]> = [
    ["same shape", [37], [1], 37, [1], 37],
    ["same shape 2d", [7, 13], [13, 1], 91, [13, 1], 91],
    ["b scalar", [7, 13], [13, 1], 91, [0, 0], 1],
    ["a scalar", [13, 7], [0, 0], 1, [7, 1], 91],
    ["row broadcast", [13, 7], [7, 1], 91, [0, 1], 7],
    ["row broadcast a", [13, 7], [0, 1], 7, [7, 1], 91],
    ["column broadcast", [7, 13], [13, 1], 91, [1, 0], 7],
    ["transposed a", [5, 7, 3], [1, 15, 5], 105, [21, 3, 1], 105],
    ["rank 0", [], [], 1, [], 1],
    ["rank 8", [2, 1, 3, 2, 1, 2, 3, 2], [72, 72, 24, 12, 12, 6, 2, 1], 144, [0, 0, 1, 0, 0, 0, 0, 0], 3],
    ["large same", [301, 200], [200, 1], 60200, [200, 1], 60200],
    ["large row broadcast", [301, 200], [200, 1], 60200, [0, 1], 200],
    ["large general", [200, 301], [1, 200], 60200, [301, 1], 60200],
    ["zero size", [3, 0, 2], [0, 2, 1], 1, [0, 0, 1], 2],
  ];
  for (const op of BINARY_OPS)
    for (const [name, shape, aS, aLen, bS, bLen] of cases)
      test(`${op} ${name}`, () => {
        const a = rnd(aLen, -2, 2);
        const b = rnd(bLen, -2, 2);
        if (op === "eq") for (let i = 0; i < Math.min(aLen, bLen); i += 3) b[i] = a[i]!;
        const total = shape.reduce((p, s) => p * s, 1);
        const out = nans(total);
        const want = new Float64Array(total);
        ref.binary(op, f64(a), aS, f64(b), bS, want, shape);
        nat.binary(op, a, aS, b, bS, out, shape);
        closeElementwise(`${op}`, out, want);
      });

  test("max/min propagate NaN like the reference; out may alias a", () => {
    for (const op of ["max", "min"] as BinaryOp[]) {
      const a = Float32Array.from([1, NaN, 3, NaN, -0]);
      const b = Float32Array.from([NaN, 2, 1, NaN, 0]);
      const out = nans(5);
      const want = new Float64Array(5);
      ref.binary(op, f64(a), [1], f64(b), [1], want, [5]);
      nat.binary(op, a, [1], b, [1], out, [5]);
      for (let i = 0; i < 5; i++) assert.equal(Number.isNaN(out[i]), Number.isNaN(want[i]), `${op}[${i}]`);
    }
    const a = rnd(37);
    const b = rnd(37);
    const want = new Float64Array(37);
    ref.binary("mul", f64(a), [1], f64(b), [1], want, [37]);
    nat.binary("mul", a, [1], b, [1], a, [37]);
    closeElementwise("mul in place", a, want);
  });

  test("out-of-range strides throw", () => {
    assert.throws(
      () => nat.binary("add", rnd(6), [3, 1], rnd(6), [3, 1], rnd(9), [3, 3]),
      /binary: a has 6 elements, needs 9/,
    );
    assert.throws(
      () => nat.binary("add", rnd(9), [3, 1], rnd(9), [3, 1], rnd(8), [3, 3]),
      /binary: out has 8/,
    );
    assert.throws(
      () => nat.binary("add", rnd(9), [3, 1], rnd(9), [3], rnd(9), [3, 3]),
      /binary: .*equal length/,
    );
  });
});

describe("reduce", () => {
  const shapes: number[][] = [[1], [7], [7, 13, 5], [2, 3, 1, 5], [301, 203], [3, 200, 67]];
  for (const shape of shapes) {
    const rank = shape.length;
    const axesList: number[][] = [];
    for (let mask = 0; mask < 1 << rank; mask++)
      axesList.push([...Array(rank).keys()].filter((k) => mask & (1 << k)));
    for (const op of ["sum", "max"] as const)
      for (const axes of axesList)
        test(`${op} [${shape}] axes [${axes}]`, () => {
          const n = shape.reduce((p, s) => p * s, 1);
          const x = rnd(n);
          const nOut = shape.reduce((p, s, k) => p * (axes.includes(k) ? 1 : s), 1);
          const K = n / nOut;
          const out = nans(nOut);
          const want = new Float64Array(nOut);
          ref.reduce(op, f64(x), shape, axes, want);
          nat.reduce(op, x, shape, axes, out);
          if (op === "max") assert.deepEqual(Array.from(out), Array.from(want, Math.fround));
          else closeDot("sum", out, want, K);
        });
  }
  test("rank 0 and bad axes", () => {
    const out = nans(1);
    nat.reduce("sum", Float32Array.from([2.5]), [], [], out);
    assert.equal(out[0], 2.5);
    assert.throws(() => nat.reduce("sum", rnd(6), [2, 3], [2], rnd(6)), /reduce: axis 2 out of range/);
    assert.throws(() => nat.reduce("sum", rnd(6), [2, 3], [1, 0], rnd(6)), /reduce: axes must be sorted/);
    assert.throws(() => nat.reduce("sum", rnd(5), [2, 3], [1], rnd(2)), /reduce: x has 5 elements, needs 6/);
  });
});

describe("copy", () => {
  // [name, shape, srcOff, srcStrides, srcLen, dstOff, dstStrides, dstLen]
  const cases: Array<[string, number[], number, number[], number, number, number[], number]> = [
    ["contiguous", [7, 13], 0, [13, 1], 91, 0, [13, 1], 91],
    ["permute", [5, 7, 3], 0, [1, 15, 5], 105, 0, [21, 3, 1], 105],
    ["slice into concat", [7, 5], 3, [13, 2], 95, 4, [11, 1], 81],
    ["expand", [7, 13], 0, [0, 1], 13, 0, [13, 1], 91],
    ["reduce by accumulate (dst stride 0)", [37, 13], 0, [13, 1], 481, 1, [0, 1], 14],
    ["rank 0", [], 2, [], 3, 1, [], 2],
    ["large permute", [61, 37, 29], 0, [1, 61, 2257], 65453, 0, [1073, 29, 1], 65453],
    ["large slice", [301, 150], 7, [301, 2], 90700, 0, [150, 1], 45150],
  ];
  for (const accumulate of [false, true])
    for (const [name, shape, so, ss, sl, dOff, ds, dl] of cases)
      test(`${name} accumulate=${accumulate}`, () => {
        const src = rnd(sl);
        const dst = rnd(dl);
        const want = f64(dst);
        ref.copy(f64(src), so, ss, want, dOff, ds, shape, accumulate);
        nat.copy(src, so, ss, dst, dOff, ds, shape, accumulate);
        const K = name.includes("accumulate") && accumulate ? 38 : 1;
        if (K === 1 && !name.includes("dst stride 0")) closeElementwise("dst", dst, want);
        else closeDot("dst", dst, want, 38);
      });
  test("out-of-range copy throws", () => {
    assert.throws(
      () => nat.copy(rnd(10), 2, [3, 1], rnd(20), 0, [4, 1], [3, 3], false),
      /copy: src has 10 elements, needs 11/,
    );
    assert.throws(
      () => nat.copy(rnd(20), 0, [3, 1], rnd(10), 0, [4, 1], [3, 3], true),
      /copy: dst has 10 elements, needs 11/,
    );
  });
});

describe("fill / axpy / sumSquares", () => {
  for (const n of [0, 1, 13, 200003])
    test(`n=${n}`, () => {
      const out = nans(n + 3);
      nat.fill(out, 1.25, n);
      for (let i = 0; i < n; i++) assert.equal(out[i], 1.25);
      for (let i = n; i < n + 3; i++) assert.ok(Number.isNaN(out[i]), "fill wrote past n");
      const x = rnd(n);
      const y = rnd(n);
      const want = f64(y);
      ref.axpy(n, -0.3, f64(x), want);
      nat.axpy(n, -0.3, x, y);
      closeElementwise("axpy", y, want);
      const s = nat.sumSquares(x, n);
      const sw = ref.sumSquares(f64(x), n);
      assert.ok(Math.abs(s - sw) <= 1e-12 * (1 + sw), `sumSquares ${s} vs ${sw}`);
    });
  test("errors", () => {
    assert.throws(() => nat.fill(rnd(3), 0, 4), /fill: out has 3 elements, needs 4/);
    assert.throws(() => nat.axpy(4, 1, rnd(4), rnd(3)), /axpy: y has 3/);
    assert.throws(() => nat.sumSquares(new Float64Array(3), 3), /float32-only/);
  });
});

// ------------------------------------------------------------------ model kernels

describe("embedding", () => {
  for (const [n, d, vocab] of [
    [1, 1, 1],
    [13, 7, 5],
    [301, 129, 37],
  ])
    test(`n=${n} d=${d} vocab=${vocab} (repeated ids)`, () => {
      const w = rnd(vocab * d);
      const ids = new Int32Array(n);
      for (let i = 0; i < n; i++) ids[i] = randInt(vocab);
      if (n > 2) ids[1] = ids[0]!; // a repeat for sure
      const out = nans(n * d);
      const want = new Float64Array(n * d);
      ref.embedding(f64(w), ids, want, n, d, vocab);
      nat.embedding(w, ids, out, n, d, vocab);
      closeElementwise("out", out, want);
      const gout = rnd(n * d);
      const gw = rnd(vocab * d);
      const gwant = f64(gw);
      ref.embeddingBackward(f64(gout), ids, gwant, n, d, vocab);
      nat.embeddingBackward(gout, ids, gw, n, d, vocab);
      closeDot("gweight", gw, gwant, n);
    });
  test("ids out of range throw", () => {
    assert.throws(
      () => nat.embedding(rnd(15), Int32Array.from([0, 5]), rnd(6), 2, 3, 5),
      /embedding: ids\[1\] = 5 is outside \[0, 5\)/,
    );
    assert.throws(
      () => nat.embeddingBackward(rnd(6), Int32Array.from([-1, 0]), rnd(15), 2, 3, 5),
      /embeddingBackward: ids\[0\] = -1/,
    );
    assert.throws(
      () => nat.embedding(rnd(15), Int32Array.from([0]), rnd(6), 2, 3, 5),
      /embedding: ids has 1 elements, needs 2/,
    );
  });
});

describe("rmsnorm", () => {
  for (const [rows, d] of [
    [1, 1],
    [13, 7],
    [301, 129],
  ])
    for (const withW of [true, false])
      test(`rows=${rows} d=${d} w=${withW}`, () => {
        const x = rnd(rows * d, -2, 2);
        const w = withW ? rnd(d, 0.5, 1.5) : null;
        const out = nans(rows * d);
        const rstd = nans(rows);
        const want = new Float64Array(rows * d);
        const rwant = new Float64Array(rows);
        ref.rmsnorm(f64(x), w && f64(w), want, rwant, rows, d, 1e-5);
        nat.rmsnorm(x, w, out, rstd, rows, d, 1e-5);
        closeDot("out", out, want, d);
        closeDot("rstd", rstd, rwant, d);
        const gy = rnd(rows * d);
        for (const wantGw of [true, false]) {
          const gx = nans(rows * d);
          const gw = wantGw ? nans(d) : null;
          const gxw = new Float64Array(rows * d);
          const gww = new Float64Array(d);
          ref.rmsnormBackward(f64(x), w && f64(w), f64(rstd), f64(gy), gxw, wantGw ? gww : null, rows, d);
          nat.rmsnormBackward(x, w, rstd, gy, gx, gw, rows, d);
          // gx = rstd*g*w - x*(...) cancels exactly for d = 1: measure against the size of rstd*gy*w.
          let gScale = 0;
          for (let r = 0; r < rows; r++)
            for (let c = 0; c < d; c++)
              gScale = Math.max(gScale, Math.abs(rstd[r]! * gy[r * d + c]! * (w ? w[c]! : 1)));
          closeDot("gx", gx, gxw, d, gScale);
          if (gw && w) closeDot("gw", gw, gww, rows);
          if (gw && !w) for (const v of gw) assert.ok(Number.isNaN(v), "gw written without w");
        }
      });
  test("errors", () => {
    assert.throws(
      () => nat.rmsnorm(rnd(12), rnd(3), rnd(12), rnd(3), 3, 4, 1e-5),
      /rmsnorm: w has 3 elements, needs 4/,
    );
    assert.throws(
      () => nat.rmsnormBackward(rnd(12), null, rnd(2), rnd(12), rnd(12), null, 3, 4),
      /rmsnormBackward: rstd has 2/,
    );
  });
});

describe("rope", () => {
  for (const [B, T, H, D, off] of [
    [1, 1, 1, 2, 0],
    [2, 7, 3, 16, 5],
    [3, 37, 4, 34, 2],
  ])
    for (const inverse of [false, true])
      test(`B=${B} T=${T} H=${H} D=${D} posOffset=${off} inverse=${inverse}`, () => {
        const h = D / 2;
        const maxPos = off + T + 3;
        const cos = nat.alloc("float32", maxPos * h) as Float32Array;
        const sin = nat.alloc("float32", maxPos * h) as Float32Array;
        for (let p = 0; p < maxPos; p++)
          for (let c = 0; c < h; c++) {
            const ang = p / Math.pow(10000, (2 * c) / D);
            cos[p * h + c] = Math.cos(ang);
            sin[p * h + c] = Math.sin(ang);
          }
        const n = B * T * H * D;
        const x = rnd(n);
        const out = nans(n);
        const want = new Float64Array(n);
        ref.rope(f64(x), want, f64(cos), f64(sin), B, T, H, D, off, inverse);
        nat.rope(x, out, cos, sin, B, T, H, D, off, inverse);
        closeDot("out", out, want, 2);
        const back = nans(n);
        nat.rope(out, back, cos, sin, B, T, H, D, off, !inverse);
        closeDot("round trip", back, x, 4);
      });
  test("errors", () => {
    assert.throws(
      () => nat.rope(rnd(12), rnd(12), rnd(4), rnd(4), 1, 2, 2, 3, 0, false),
      /rope: D must be even/,
    );
    assert.throws(
      () => nat.rope(rnd(16), rnd(16), rnd(5), rnd(8), 1, 2, 2, 4, 1, false),
      /rope: cos has 5 elements, needs 6/,
    );
  });
});

describe("one-row projections (gemvMany, gemvSwiglu)", () => {
  for (const [ns, K] of [
    [[1], 1],
    [[7, 3, 3], 19],
    [[768, 256, 257], 77], // the threaded path; a row count not a multiple of 4
  ] as [number[], number][])
    test(`gemvMany rows ${ns.join(", ")} K=${K}`, () => {
      const x = rnd(K);
      const ws = ns.map((n) => rnd(n * K));
      const outs = ns.map((n) => nans(n));
      const want = ns.map((n) => new Float64Array(n));
      ref.gemvMany(f64(x), ws.map(f64), want, ns, K);
      nat.gemvMany(x, ws, outs, ns, K);
      outs.forEach((o, i) => closeDot(`out ${i}`, o, want[i]!, K));
    });
  for (const [N, K] of [
    [1, 1],
    [6, 19],
    [1031, 77],
  ])
    test(`gemvSwiglu N=${N} K=${K}`, () => {
      const x = rnd(K);
      const wg = rnd(N * K);
      const wu = rnd(N * K);
      const out = nans(N);
      const want = new Float64Array(N);
      ref.gemvSwiglu(f64(x), f64(wg), f64(wu), want, N, K);
      nat.gemvSwiglu(x, wg, wu, out, N, K);
      closeDot("out", out, want, K);
    });
  test("errors", () => {
    assert.throws(() => nat.gemvMany(rnd(4), [], [], [], 4), /gemvMany: no weights/);
    assert.throws(
      () => nat.gemvMany(rnd(4), [rnd(8)], [rnd(2), rnd(2)], [2], 4),
      /gemvMany: 1 weights, 2 outputs and 1 row counts/,
    );
    assert.throws(
      () => nat.gemvMany(rnd(4), [rnd(7)], [rnd(2)], [2], 4),
      /gemvMany: weight 0 has 7 elements, needs 8/,
    );
    assert.throws(
      () => nat.gemvSwiglu(rnd(3), rnd(8), rnd(8), rnd(2), 2, 4),
      /gemvSwiglu: x has 3 elements, needs 4/,
    );
  });
});

describe("attention", () => {
  const cases: Array<[number, number, number, number, number, number]> = [
    // B, Tq, Tk, Hq, Hkv, D
    [1, 1, 1, 1, 1, 1],
    [2, 67, 67, 6, 2, 16],
    [1, 13, 37, 4, 4, 8], // Tq < Tk: queries are the last 13 positions
    [2, 70, 131, 3, 1, 7], // more than one query block, GQA with a single kv head
    [3, 5, 5, 2, 2, 13],
    [1, 1, 300, 12, 4, 64], // one query over a cache (decoding a token): the single-row path
    [1, 1, 1400, 12, 4, 64], // the same over a cache long enough for threads
    [2, 1, 37, 3, 1, 13],
    // Register tiles: strips of 8 rows over 32 keys, 64 columns at a time (D's tail masked), backward
    // blocks of 32 rows; sizes off every tile edge, threads, and the GEMM backward for one kv head.
    [2, 100, 100, 4, 2, 64],
    [1, 45, 77, 2, 1, 48],
    [1, 130, 130, 2, 2, 128],
    [3, 33, 33, 2, 1, 80],
    [1, 9, 200, 1, 1, 20],
    [1, 300, 300, 2, 1, 64],
  ];
  for (const [B, Tq, Tk, Hq, Hkv, D] of cases)
    for (const causal of [true, false])
      test(`B=${B} Tq=${Tq} Tk=${Tk} Hq=${Hq} Hkv=${Hkv} D=${D} causal=${causal}`, () => {
        const nq = B * Tq * Hq * D;
        const nk = B * Tk * Hkv * D;
        const q = rnd(nq, -2, 2);
        const k = rnd(nk, -2, 2);
        const v = rnd(nk);
        const scale = 1 / Math.sqrt(D);
        const out = nans(nq);
        const lse = nans(B * Hq * Tq);
        const outW = new Float64Array(nq);
        const lseW = new Float64Array(B * Hq * Tq);
        ref.attention(f64(q), f64(k), f64(v), outW, lseW, B, Tq, Tk, Hq, Hkv, D, scale, causal);
        nat.attention(q, k, v, out, lse, B, Tq, Tk, Hq, Hkv, D, scale, causal);
        closeDot("out", out, outW, Tk + D);
        closeDot("lse", lse, lseW, Tk + D);
        const gout = rnd(nq);
        const gq = nans(nq);
        const gk = nans(nk);
        const gv = nans(nk);
        const gqW = new Float64Array(nq);
        const gkW = new Float64Array(nk);
        const gvW = new Float64Array(nk);
        ref.attentionBackward(
          f64(q),
          f64(k),
          f64(v),
          f64(out),
          f64(lse),
          f64(gout),
          gqW,
          gkW,
          gvW,
          B,
          Tq,
          Tk,
          Hq,
          Hkv,
          D,
          scale,
          causal,
        );
        nat.attentionBackward(q, k, v, out, lse, gout, gq, gk, gv, B, Tq, Tk, Hq, Hkv, D, scale, causal);
        const G = Hq / Hkv;
        closeDot("gq", gq, gqW, Tk + D);
        closeDot("gk", gk, gkW, Tq * G + D);
        closeDot("gv", gv, gvW, Tq * G + D);
      });

  test("one query row with non-finite keys or values: as the reference (recomputed exactly)", () => {
    const [Tk, Hq, Hkv, D] = [45, 4, 2, 8];
    for (const [where, value] of [
      ["k", NaN],
      ["k", Infinity],
      ["v", NaN],
      ["v", -Infinity],
    ] as const) {
      const q = rnd(Hq * D);
      const k = rnd(Tk * Hkv * D);
      const v = rnd(Tk * Hkv * D);
      (where === "k" ? k : v)[17 * Hkv * D + 3] = value; // key 17 of kv head 0
      const out = nans(Hq * D);
      const lse = nans(Hq);
      const outW = new Float64Array(Hq * D);
      const lseW = new Float64Array(Hq);
      ref.attention(f64(q), f64(k), f64(v), outW, lseW, 1, 1, Tk, Hq, Hkv, D, 0.3, true);
      nat.attention(q, k, v, out, lse, 1, 1, Tk, Hq, Hkv, D, 0.3, true);
      const same = (name: string, got: ArrayLike<number>, want: ArrayLike<number>) => {
        for (let i = 0; i < want.length; i++) {
          const g = got[i]!;
          const w = want[i]!;
          if (Number.isNaN(w) || !Number.isFinite(w))
            assert.ok(Object.is(g, w), `${where}=${value}: ${name}[${i}] ${g} vs ${w}`);
          else
            assert.ok(
              Math.abs(g - w) <= 1e-4 * (1 + Math.abs(w)),
              `${where}=${value}: ${name}[${i}] ${g} vs ${w}`,
            );
        }
      };
      same("out", out, outW);
      same("lse", lse, lseW);
      // Query heads 2, 3 read kv head 1, which holds only finite values.
      assert.ok(out.subarray(2 * D).every(Number.isFinite));
    }
  });

  test("same results with 1 thread", () => {
    const [B, T, H, D] = [2, 67, 4, 16];
    const n = B * T * H * D;
    const q = rnd(n);
    const k = rnd(n);
    const v = rnd(n);
    const run = (): Float32Array => {
      const out = nans(n);
      nat.attention(q, k, v, out, nans(B * H * T), B, T, T, H, H, D, 0.25, true);
      return out;
    };
    const before = nat.threads();
    const multi = run();
    nat.setThreads(1);
    try {
      assert.equal(nat.threads(), 1);
      closeDot("out", run(), multi, T);
    } finally {
      nat.setThreads(before);
    }
    assert.equal(nat.threads(), before);
  });

  test("errors", () => {
    const [B, T, H, D] = [1, 4, 2, 16];
    const n = B * T * H * D;
    assert.throws(
      () => nat.attention(rnd(n), rnd(100), rnd(n), rnd(n), rnd(8), B, T, T, H, H, D, 1, true),
      /attention: k has 100 elements, needs 128/,
    );
    assert.throws(
      () => nat.attention(rnd(n), rnd(n), rnd(n), rnd(n), rnd(8), B, T, T, 2, 3, D, 1, true),
      /attention: Hq \(2\) must be a multiple of Hkv \(3\)/,
    );
    assert.throws(
      () => nat.attention(rnd(n), rnd(64), rnd(64), rnd(n), rnd(8), B, T, 2, H, H, D, 1, true),
      /attention: causal needs Tq <= Tk/,
    );
    assert.throws(
      () =>
        nat.attentionBackward(
          rnd(n),
          rnd(n),
          rnd(n),
          rnd(n),
          rnd(7),
          rnd(n),
          rnd(n),
          rnd(n),
          rnd(n),
          B,
          T,
          T,
          H,
          H,
          D,
          1,
          true,
        ),
      /attentionBackward: lse has 7 elements, needs 8/,
    );
    assert.throws(
      () =>
        nat.attention(rnd(n), rnd(n), rnd(n), rnd(n), rnd(8), B, T, T, H, H, D, 1, 1 as unknown as boolean),
      /attention: causal must be a boolean/,
    );
  });
});

describe("crossEntropy", () => {
  for (const [rows, V] of [
    [1, 1],
    [13, 37],
    [67, 1001],
  ])
    test(`rows=${rows} V=${V} with ignored rows`, () => {
      const logits = rnd(rows * V, -5, 5);
      const targets = new Int32Array(rows);
      for (let r = 0; r < rows; r++) targets[r] = r % 4 === 1 ? -100 : randInt(V);
      const loss = nans(rows);
      const lse = nans(rows);
      const lossW = new Float64Array(rows);
      const lseW = new Float64Array(rows);
      ref.crossEntropy(f64(logits), targets, lossW, lseW, rows, V, -100);
      nat.crossEntropy(logits, targets, loss, lse, rows, V, -100);
      closeDot("lse", lse, lseW, V);
      closeDot("loss", loss, lossW, V);
      for (let r = 0; r < rows; r++) if (targets[r] === -100) assert.equal(loss[r], 0);
      const gloss = rnd(rows, 0.1, 2);
      const gl = nans(rows * V);
      const glW = new Float64Array(rows * V);
      ref.crossEntropyBackward(f64(logits), targets, f64(lse), f64(gloss), glW, rows, V, -100);
      nat.crossEntropyBackward(logits, targets, lse, gloss, gl, rows, V, -100);
      closeDot("glogits", gl, glW, 1);
      for (let r = 0; r < rows; r++)
        if (targets[r] === -100) for (let c = 0; c < V; c++) assert.equal(gl[r * V + c], 0);
    });
  test("targets outside [0, V) that are not the ignore index throw", () => {
    assert.throws(
      () => nat.crossEntropy(rnd(6), Int32Array.from([0, 3]), rnd(2), rnd(2), 2, 3, -100),
      /crossEntropy: targets\[1\] = 3 is outside \[0, 3\)/,
    );
    assert.throws(
      () => nat.crossEntropyBackward(rnd(6), Int32Array.from([-1, 0]), rnd(2), rnd(2), rnd(6), 2, 3, -100),
      /crossEntropyBackward: targets\[0\] = -1/,
    );
    assert.throws(
      () => nat.crossEntropy(rnd(6), new Int32Array(2), rnd(1), rnd(2), 2, 3, -100),
      /crossEntropy: loss has 1/,
    );
  });
});

describe("swiglu", () => {
  for (const n of [1, 7, 37, 40009])
    test(`n=${n}`, () => {
      const gate = rnd(n, -6, 6);
      const up = rnd(n, -2, 2);
      const out = nans(n);
      const want = new Float64Array(n);
      ref.swiglu(f64(gate), f64(up), want, n);
      nat.swiglu(gate, up, out, n);
      closeElementwise("out", out, want);
      const gout = rnd(n);
      const gg = nans(n);
      const gu = nans(n);
      const ggW = new Float64Array(n);
      const guW = new Float64Array(n);
      ref.swigluBackward(f64(gate), f64(up), f64(gout), ggW, guW, n);
      nat.swigluBackward(gate, up, gout, gg, gu, n);
      closeElementwise("ggate", gg, ggW);
      closeElementwise("gup", gu, guW);
      // aliasing: outputs over inputs
      const g2 = Float32Array.from(gate);
      const u2 = Float32Array.from(up);
      nat.swigluBackward(g2, u2, gout, g2, u2, n);
      assert.deepEqual(g2, gg);
      assert.deepEqual(u2, gu);
    });
});

describe("ddl-expanded state", () => {
  // The update kernels take a SIMD path when dv divides 16 and d*dv is a multiple of 16 (the last
  // three cases), a plain loop otherwise (the first four); the read kernels one per dv of 1, 2, 4
  // and 8 (any d), a plain loop for other dv.
  for (const [rows, d, dv] of [
    [1, 1, 1],
    [13, 7, 3],
    [67, 37, 4],
    [301, 129, 5],
    [23, 33, 8],
    [5, 8, 2],
    [19, 12, 4],
    [70, 64, 16],
  ])
    test(`rows=${rows} d=${d} dv=${dv}`, () => {
      const X = rnd(rows * d * dv, -2, 2);
      const C = rnd(d * dv);
      const k = rnd(rows * d);
      const beta = rnd(rows, 0, 2);
      const v = rnd(rows * dv);
      const x = nans(rows * d);
      const xW = new Float64Array(rows * d);
      ref.ddlRead(f64(X), f64(C), xW, rows, d, dv);
      nat.ddlRead(X, C, x, rows, d, dv);
      closeDot("x", x, xW, dv);
      const Y = nans(rows * d * dv);
      const YW = new Float64Array(rows * d * dv);
      ref.ddlUpdate(f64(X), f64(k), f64(beta), f64(v), YW, rows, d, dv, null, null);
      nat.ddlUpdate(X, k, beta, v, Y, rows, d, dv, null, null);
      closeDot("Y", Y, YW, d);
      // With the next read fused in: the same Y, and x = read(Y, C) (against the reference's read
      // of the native Y, so only the read's rounding is compared).
      const Y2 = nans(rows * d * dv);
      const x2 = nans(rows * d);
      nat.ddlUpdate(X, k, beta, v, Y2, rows, d, dv, C, x2);
      assert.deepEqual([...Y2], [...Y]);
      const x2W = new Float64Array(rows * d);
      ref.ddlRead(f64(Y), f64(C), x2W, rows, d, dv);
      closeDot("fused x", x2, x2W, dv);
      const [YR, xR] = [new Float64Array(rows * d * dv), new Float64Array(rows * d)];
      ref.ddlUpdate(f64(X), f64(k), f64(beta), f64(v), YR, rows, d, dv, f64(C), xR);
      const xRW = new Float64Array(rows * d);
      ref.ddlRead(YR, f64(C), xRW, rows, d, dv);
      assert.deepEqual([...xR], [...xRW], "reference: the fused read is its ddlRead");
      // Backward: gX accumulates (start it at random values); the other gradients are written.
      const gx = rnd(rows * d);
      const gX = rnd(rows * d * dv);
      const gXW = f64(gX);
      const gC = nans(d * dv);
      const gCW = new Float64Array(d * dv);
      ref.ddlReadBackward(f64(X), f64(C), f64(gx), gXW, gCW, rows, d, dv);
      nat.ddlReadBackward(X, C, gx, gX, gC, rows, d, dv);
      closeDot("read gX", gX, gXW, dv);
      closeDot("read gC", gC, gCW, rows);
      const gY = rnd(rows * d * dv);
      const gX2 = rnd(rows * d * dv);
      const gX2W = f64(gX2);
      const [gk, gb, gv] = [nans(rows * d), nans(rows), nans(rows * dv)];
      const [gkW, gbW, gvW] = [
        new Float64Array(rows * d),
        new Float64Array(rows),
        new Float64Array(rows * dv),
      ];
      ref.ddlUpdateBackward(
        f64(X),
        f64(k),
        f64(beta),
        f64(v),
        f64(gY),
        gX2W,
        true,
        gkW,
        gbW,
        gvW,
        rows,
        d,
        dv,
      );
      nat.ddlUpdateBackward(X, k, beta, v, gY, gX2, true, gk, gb, gv, rows, d, dv);
      closeDot("update gX", gX2, gX2W, d);
      // Without accumulate gX is written: a NaN-filled buffer gets what a zero-filled one accumulates.
      const gX3 = nans(rows * d * dv);
      const gX3W = new Float64Array(rows * d * dv).fill(Number.NaN);
      const gX0W = new Float64Array(rows * d * dv);
      const gArgs = [
        new Float64Array(rows * d),
        new Float64Array(rows),
        new Float64Array(rows * dv),
      ] as const;
      ref.ddlUpdateBackward(f64(X), f64(k), f64(beta), f64(v), f64(gY), gX3W, false, ...gArgs, rows, d, dv);
      ref.ddlUpdateBackward(f64(X), f64(k), f64(beta), f64(v), f64(gY), gX0W, true, ...gArgs, rows, d, dv);
      assert.deepEqual([...gX3W], [...gX0W], "reference: written = accumulated onto zeros");
      nat.ddlUpdateBackward(
        X,
        k,
        beta,
        v,
        gY,
        gX3,
        false,
        nans(rows * d),
        nans(rows),
        nans(rows * dv),
        rows,
        d,
        dv,
      );
      closeDot("update gX written", gX3, gX0W, d);
      closeDot("update gk", gk, gkW, d * dv);
      closeDot("update gbeta", gb, gbW, d * dv);
      closeDot("update gv", gv, gvW, d);
      // Without gX nothing else changes.
      const [gk2, gb2, gv2] = [nans(rows * d), nans(rows), nans(rows * dv)];
      nat.ddlUpdateBackward(X, k, beta, v, gY, null, true, gk2, gb2, gv2, rows, d, dv);
      assert.deepEqual([...gk2], [...gk]);
      assert.deepEqual([...gv2], [...gv]);
    });
  test("errors", () => {
    assert.throws(
      () => nat.ddlRead(rnd(11), rnd(6), rnd(4), 2, 2, 3),
      /ddlRead: X has 11 elements, needs 12/,
    );
    assert.throws(
      () => nat.ddlUpdate(rnd(12), rnd(4), rnd(1), rnd(6), rnd(12), 2, 2, 3, null, null),
      /ddlUpdate: beta has 1 elements, needs 2/,
    );
    assert.throws(
      () => nat.ddlUpdate(rnd(12), rnd(4), rnd(2), rnd(6), rnd(12), 2, 2, 3, rnd(6), null),
      /ddlUpdate: C and x must both be given or both be null/,
    );
    assert.throws(
      () => nat.ddlUpdate(rnd(12), rnd(4), rnd(2), rnd(6), rnd(12), 2, 2, 3, rnd(6), rnd(3)),
      /ddlUpdate: x has 3 elements, needs 4/,
    );
    assert.throws(
      () =>
        nat.ddlUpdateBackward(
          rnd(12),
          rnd(4),
          rnd(2),
          rnd(6),
          rnd(12),
          null,
          true,
          rnd(4),
          rnd(2),
          rnd(5),
          2,
          2,
          3,
        ),
      /ddlUpdateBackward: gv has 5 elements, needs 6/,
    );
  });
});

describe("ddlStep (ddl's fused update)", () => {
  // awkward sizes: d not a multiple of the SIMD width, rows below and above the threading threshold
  for (const [rows, d] of [
    [1, 1],
    [13, 7],
    [67, 37],
    [301, 129],
  ])
    for (const vFromStream of [false, true])
      test(`rows=${rows} d=${d} ${vFromStream ? "sigmoid4" : "linear"}`, () => {
        const [x, u, c] = [rnd(rows * d, -2, 2), rnd(rows * d, -2, 2), rnd(rows * d, -2, 2)];
        const [wb, wv, bb, bv] = [rnd(d), rnd(d), rnd(1), rnd(1)];
        const eps2 = 0.01 + rand();
        const [y, beta, aux] = [nans(rows * d), nans(rows), nans(rows * 3)];
        const [yW, betaW, auxW] = [
          new Float64Array(rows * d),
          new Float64Array(rows),
          new Float64Array(rows * 3),
        ];
        ref.ddlStep(
          f64(x),
          f64(u),
          f64(c),
          f64(wb),
          f64(bb),
          f64(wv),
          f64(bv),
          yW,
          betaW,
          auxW,
          rows,
          d,
          eps2,
          vFromStream,
        );
        nat.ddlStep(x, u, c, wb, bb, wv, bv, y, beta, aux, rows, d, eps2, vFromStream);
        // y = x + (a term of similar size), v = wv·c + bv: judged against the size of the terms
        // (cancellation can make a result far smaller than they are)
        closeDot("y", y, yW, d, maxAbs(x) + maxAbs(yW));
        closeDot("beta", beta, betaW, d);
        closeDot("aux", aux, auxW, d, maxAbs(auxW) + 4);
        // Backward, from the forward's own beta and aux, for every accumulate mask: accumulated
        // gradients start at random values, written ones at NaN.
        const gy = rnd(rows * d);
        for (let mask = 0; mask < 8; mask++) {
          const start = [0, 1, 2].map((i) => (mask & (1 << i) ? rnd(rows * d) : nans(rows * d)));
          const want = start.map((b, i) => (mask & (1 << i) ? f64(b) : new Float64Array(rows * d)));
          const [gwb, gbb, gwv, gbv] = [nans(d), nans(1), nans(d), nans(1)];
          const [gwbW, gbbW, gwvW, gbvW] = [d, 1, d, 1].map((n) => new Float64Array(n)) as Float64Array[];
          ref.ddlStepBackward(
            f64(x),
            f64(u),
            f64(c),
            f64(wb),
            f64(wv),
            f64(beta),
            f64(aux),
            f64(gy),
            want[0]!,
            want[1]!,
            want[2]!,
            mask,
            gwbW!,
            gbbW!,
            gwvW!,
            gbvW!,
            rows,
            d,
            vFromStream,
          );
          nat.ddlStepBackward(
            x,
            u,
            c,
            wb,
            wv,
            beta,
            aux,
            gy,
            start[0]!,
            start[1]!,
            start[2]!,
            mask,
            gwb,
            gbb,
            gwv,
            gbv,
            rows,
            d,
            vFromStream,
          );
          // each gradient element sums a few terms of at most ~8 |gy| (inputs in [-2, 2], β < 2,
          // |k| ≤ 1), plus the start value when it accumulates; the parameter gradients sum
          // such terms over the rows
          const T = 8 * maxAbs(gy) + 1;
          for (const [i, name] of ["gx", "gu", "gc"].entries())
            closeDot(`${name} (mask ${mask})`, start[i]!, want[i]!, d, maxAbs(want[i]!) + T);
          const P = T * (2 + Math.sqrt(rows));
          closeDot("gwb", gwb, gwbW!, rows * d, maxAbs(gwbW!) + P);
          closeDot("gbb", gbb, gbbW!, rows * d, maxAbs(gbbW!) + P);
          closeDot("gwv", gwv, gwvW!, rows * d, maxAbs(gwvW!) + P);
          closeDot("gbv", gbv, gbvW!, rows * d, maxAbs(gbvW!) + P);
        }
        // Null input gradients: nothing else changes.
        const [gwb2, gbb2, gwv2, gbv2] = [nans(d), nans(1), nans(d), nans(1)];
        const gx = nans(rows * d);
        nat.ddlStepBackward(
          x,
          u,
          c,
          wb,
          wv,
          beta,
          aux,
          gy,
          gx,
          null,
          null,
          0,
          gwb2,
          gbb2,
          gwv2,
          gbv2,
          rows,
          d,
          vFromStream,
        );
        const gxAll = nans(rows * d);
        const [gwb3, gbb3, gwv3, gbv3] = [nans(d), nans(1), nans(d), nans(1)];
        nat.ddlStepBackward(
          x,
          u,
          c,
          wb,
          wv,
          beta,
          aux,
          gy,
          gxAll,
          nans(rows * d),
          nans(rows * d),
          0,
          gwb3,
          gbb3,
          gwv3,
          gbv3,
          rows,
          d,
          vFromStream,
        );
        assert.deepEqual([...gx], [...gxAll]);
        assert.deepEqual([...gwb2, ...gbb2, ...gwv2, ...gbv2], [...gwb3, ...gbb3, ...gwv3, ...gbv3]);
      });
  test("errors", () => {
    assert.throws(
      () =>
        nat.ddlStep(
          rnd(8),
          rnd(8),
          rnd(7),
          rnd(4),
          rnd(1),
          rnd(4),
          rnd(1),
          rnd(8),
          rnd(2),
          rnd(6),
          2,
          4,
          1,
          false,
        ),
      /ddlStep: c has 7 elements, needs 8/,
    );
    assert.throws(
      () =>
        nat.ddlStepBackward(
          rnd(8),
          rnd(8),
          rnd(8),
          rnd(4),
          rnd(4),
          rnd(2),
          rnd(6),
          rnd(8),
          null,
          null,
          null,
          8,
          rnd(4),
          rnd(1),
          rnd(4),
          rnd(1),
          2,
          4,
          false,
        ),
      /ddlStepBackward: accumulate must be a bit mask below 8/,
    );
    assert.throws(
      () =>
        ref.ddlStep(
          rnd(8),
          rnd(8),
          rnd(8),
          rnd(4),
          rnd(1),
          rnd(4),
          rnd(1),
          rnd(8),
          rnd(2),
          rnd(5),
          2,
          4,
          1,
          false,
        ),
      /ddlStep: aux/,
    );
  });
});

describe("depthRoute", () => {
  for (const [rows, d, N] of [
    [1, 1, 1],
    [13, 7, 3],
    [67, 37, 5],
    [301, 129, 4],
    [70, 33, 26], // rows not a multiple of the kernels' 16- and 32-row blocks, many sources, threaded
  ])
    for (const withBase of [false, true])
      test(`rows=${rows} d=${d} N=${N}${withBase ? " with a base" : ""}`, () => {
        const sources = Array.from({ length: N }, () => rnd(rows * d, -2, 2));
        const w = rnd(d);
        const g = rnd(d, 0.5, 1.5);
        const base = withBase ? rnd(rows * d, -2, 2) : null;
        const out = nans(rows * d);
        const alpha = nans(rows * N);
        const rstd = nans(rows * N);
        const outW = new Float64Array(rows * d);
        const alphaW = new Float64Array(rows * N);
        const rstdW = new Float64Array(rows * N);
        ref.depthRoute(
          sources.map(f64),
          f64(w),
          f64(g),
          outW,
          alphaW,
          rstdW,
          rows,
          d,
          1e-6,
          base && f64(base),
        );
        nat.depthRoute(sources, w, g, out, alpha, rstd, rows, d, 1e-6, base);
        closeDot("rstd", rstd, rstdW, d);
        closeDot("alpha", alpha, alphaW, d + N);
        closeDot("out", out, outW, d + N);
        const gout = rnd(rows * d);
        // Source gradients accumulate: start them at random values. Every source gets a gradient
        // except (when N > 1) the second one, which must stay untouched.
        const gs = sources.map((_, i) => (N > 1 && i === 1 ? null : rnd(rows * d)));
        const gsW = gs.map((b) => (b ? f64(b) : null));
        const gw = nans(d);
        const gg = nans(d);
        const gwW = new Float64Array(d);
        const ggW = new Float64Array(d);
        ref.depthRouteBackward(
          sources.map(f64),
          f64(w),
          f64(g),
          f64(alpha),
          f64(rstd),
          f64(gout),
          gsW,
          gwW,
          ggW,
          rows,
          d,
        );
        nat.depthRouteBackward(sources, w, g, alpha, rstd, gout, gs, gw, gg, rows, d);
        for (let i = 0; i < N; i++) if (gs[i]) closeDot(`gsource ${i}`, gs[i]!, gsW[i]!, d + N);
        closeDot("gw", gw, gwW, rows * N);
        closeDot("gg", gg, ggW, rows * N);
      });
  test("errors", () => {
    assert.throws(
      () => nat.depthRoute([], rnd(4), rnd(4), rnd(8), rnd(2), rnd(2), 2, 4, 1e-6, null),
      /depthRoute: no sources/,
    );
    assert.throws(
      () => nat.depthRoute([rnd(8), rnd(7)], rnd(4), rnd(4), rnd(8), rnd(4), rnd(4), 2, 4, 1e-6, null),
      /depthRoute: source 1 has 7 elements, needs 8/,
    );
    assert.throws(
      () =>
        nat.depthRoute(
          [rnd(8), new Float64Array(8)],
          rnd(4),
          rnd(4),
          rnd(8),
          rnd(4),
          rnd(4),
          2,
          4,
          1e-6,
          null,
        ),
      /depthRoute: source 1 is a Float64Array/,
    );
    assert.throws(
      () => nat.depthRoute([rnd(8)], rnd(4), rnd(4), rnd(8), rnd(2), rnd(2), 2, 4, 1e-6, rnd(7)),
      /depthRoute: base has 7 elements, needs 8/,
    );
    assert.throws(
      () =>
        nat.depthRouteBackward([rnd(8)], rnd(4), rnd(4), rnd(2), rnd(2), rnd(8), [], rnd(4), rnd(4), 2, 4),
      /depthRouteBackward: 0 gradient buffers for 1 sources/,
    );
  });
});

describe("depthRoute linked: a call computes the next call's share of its sources", () => {
  /**
   * Call A routes N sources and writes call B's summary of them (next); B routes those N and k more,
   * reading only the k new ones (prior). Native linked A and B against the reference unlinked, and
   * the reference linked against the reference unlinked (float64: equal to rounding).
   */
  for (const [rows, d, N, k] of [
    [1, 1, 1, 1],
    [13, 7, 2, 0], // B routes the same sources (a delta-block pair)
    [67, 37, 3, 1],
    [301, 129, 5, 2],
    [70, 33, 25, 1], // threaded, rows not a multiple of 16 or 32
  ])
    for (const withBase of [false, true])
      test(`rows=${rows} d=${d} N=${N} then ${k} more${withBase ? " with a base" : ""}`, () => {
        const M = N + k;
        const sources = Array.from({ length: M }, () => rnd(rows * d, -2, 2));
        const [wA, wB] = [rnd(d, -2, 2), rnd(d, -2, 2)];
        const [gA, gB] = [rnd(d, 0.5, 1.5), rnd(d, 0.5, 1.5)];
        const base = withBase ? rnd(rows * d, -2, 2) : null;
        const want = (n: number, w: Float32Array, g: Float32Array) => {
          const o = {
            out: new Float64Array(rows * d),
            alpha: new Float64Array(rows * n),
            rstd: new Float64Array(rows * n),
          };
          ref.depthRoute(
            sources.slice(0, n).map(f64),
            f64(w),
            f64(g),
            o.out,
            o.alpha,
            o.rstd,
            rows,
            d,
            1e-6,
            base && f64(base),
          );
          return o;
        };
        const [wantA, wantB] = [want(N, wA, gA), want(M, wB, gB)];
        for (const be of ["native", "reference"] as const) {
          const native = be === "native";
          const buf = (n: number): Float32Array | Float64Array =>
            native ? nans(n) : new Float64Array(n).fill(NaN);
          const cast = (a: Float32Array) => (native ? a : f64(a));
          const srcs = sources.map(cast);
          const b = native ? nat : ref;
          const check = (name: string, got: ArrayLike<number>, want: ArrayLike<number>, K: number) => {
            if (native) closeDot(`${be} ${name}`, got, want, K);
            else
              for (let i = 0; i < want.length; i++)
                assert.ok(
                  Math.abs(got[i]! - want[i]!) <= 1e-12 * (1 + Math.abs(want[i]!)),
                  `${name}[${i}]: ${got[i]} vs ${want[i]}`,
                );
          };
          const next = {
            w: cast(wB),
            g: cast(gB),
            acc: buf(rows * d),
            stats: buf(rows * 2),
            logits: buf(rows * N),
            rstd: buf(rows * N),
          };
          // one call of this backend over n sources (poisoned outputs), checked against want
          const call = (
            name: string,
            callSrcs: (Float32Array | Float64Array)[],
            w: Float32Array,
            g: Float32Array,
            want: { out: Float64Array; alpha: Float64Array; rstd: Float64Array },
            nx: Parameters<Backend["depthRoute"]>[10],
            prior: Parameters<Backend["depthRoute"]>[11],
          ) => {
            const n = callSrcs.length;
            const o = { out: buf(rows * d), alpha: buf(rows * n), rstd: buf(rows * n) };
            b.depthRoute(
              callSrcs,
              cast(w),
              cast(g),
              o.out,
              o.alpha,
              o.rstd,
              rows,
              d,
              1e-6,
              base && cast(base),
              nx,
              prior,
            );
            check(`${name} out`, o.out, want.out, d + n);
            check(`${name} alpha`, o.alpha, want.alpha, d + n);
            check(`${name} rstd`, o.rstd, want.rstd, d);
          };
          call("A", srcs.slice(0, N), wA, gA, wantA, next, null);
          const prior = { acc: next.acc, stats: next.stats, logits: next.logits, rstd: next.rstd, n: N };
          // B's first N sources are never read: pass buffers of NaN in their place
          const bsrcs = srcs.map((s, i) => (i < N ? buf(rows * d) : s));
          call("B", bsrcs, wB, gB, wantB, null, prior);
        }
      });
  test("errors", () => {
    const [rows, d] = [2, 4];
    const call = (next: unknown, prior: unknown) => () =>
      nat.depthRoute(
        [rnd(8), rnd(8)],
        rnd(4),
        rnd(4),
        rnd(8),
        rnd(4),
        rnd(4),
        rows,
        d,
        1e-6,
        null,
        next as never,
        prior as never,
      );
    const next = { w: rnd(4), g: rnd(4), acc: rnd(8), stats: rnd(4), logits: rnd(4), rstd: rnd(4) };
    const prior = { acc: rnd(8), stats: rnd(4), logits: rnd(2), rstd: rnd(2), n: 1 };
    call(next, null)();
    call(null, prior)();
    assert.throws(
      call(next, prior),
      /depthRoute: a call cannot both continue a prior sum and start the next call's/,
    );
    assert.throws(call({ ...next, acc: undefined }, null), /depthRoute: next\.acc must be a Float32Array/);
    assert.throws(
      call({ ...next, logits: rnd(3) }, null),
      /depthRoute: next\.logits has 3 elements, needs 4/,
    );
    assert.throws(call(null, { ...prior, n: 3 }), /depthRoute: prior\.n must be in \[1, 2\], got 3/);
    assert.throws(call(null, { ...prior, rstd: rnd(1) }), /depthRoute: prior\.rstd has 1 elements, needs 2/);
    assert.throws(call(7, null), /depthRoute: next must be an object or null/);
    assert.throws(
      () =>
        ref.depthRoute(
          [new Float64Array(8)],
          new Float64Array(4),
          new Float64Array(4),
          new Float64Array(8),
          new Float64Array(2),
          new Float64Array(2),
          rows,
          d,
          1e-6,
          null,
          null,
          { ...prior, n: 2 } as never,
        ),
      /depthRoute: prior\.n must be in \[1, 1\], got 2/,
    );
  });
});

describe("depthRouteSourceBackward and rowDot", () => {
  /**
   * K routed calls reading one source s (at a random column of each), and s2 too when given (at
   * another column, col2), forward run natively.
   */
  function calls(rows: number, d: number, K: number, s: Float32Array, s2: Float32Array | null = null) {
    return Array.from({ length: K }, () => {
      const N = s2 ? 2 + randInt(4) : 1 + randInt(5);
      const col = randInt(N);
      const col2 = s2 ? (col + 1 + randInt(N - 1)) % N : -1;
      const srcs = Array.from({ length: N }, (_, i) =>
        i === col ? s : i === col2 && s2 ? s2 : rnd(rows * d, -2, 2),
      );
      const w = rnd(d);
      const g = rnd(d, 0.5, 1.5);
      const out = nans(rows * d);
      const alpha = nans(rows * N);
      const rstd = nans(rows * N);
      // every third call with a base (out = base + the routed sum)
      const base = randInt(3) === 0 ? rnd(rows * d, -2, 2) : null;
      nat.depthRoute(srcs, w, g, out, alpha, rstd, rows, d, 1e-6, base);
      const gout = rnd(rows * d);
      // half of the calls have c already (rowDot of gout with the routed sum), the others have
      // the kernel compute it (needC; c starts poisoned)
      const needC = randInt(2) === 1;
      const routed = Float32Array.from(out, (v, i) => (base ? v - base[i]! : v));
      const cW = new Float64Array(rows);
      ref.rowDot(f64(gout), f64(routed), cW, rows, d);
      const c = nans(rows);
      if (!needC) {
        nat.rowDot(gout, routed, c, rows, d);
        closeDot("c", c, cW, d);
      }
      return { N, col, col2, w, g, alpha, rstd, gout, c, cW, needC, out, base, p: rnd(d) };
    });
  }
  for (const [rows, d, K] of [
    [1, 1, 1],
    [13, 7, 3],
    [67, 37, 5],
    [301, 129, 4],
    [70, 33, 26], // rows not a multiple of the 32-row blocks, many calls, threaded
    [40, 16, 0], // no calls: a written gradient is zero
  ])
    for (const mode of ["accumulate", "write", "write from init", "none"] as const)
      test(`rows=${rows} d=${d} calls=${K}, gradient: ${mode}`, () => {
        const s = rnd(rows * d, -2, 2);
        const cs = calls(rows, d, K, s);
        const meta = Int32Array.from(cs.flatMap((c) => [c.col, c.N, c.needC ? 1 : 0]));
        const gs = mode === "accumulate" ? rnd(rows * d) : mode === "none" ? null : nans(rows * d);
        const init = mode === "write from init" ? rnd(rows * d) : null;
        const gsW = mode === "accumulate" ? f64(gs!) : mode === "none" ? null : new Float64Array(rows * d);
        const psW = cs.map((c) => f64(c.p));
        const cWs = cs.map((c) => (c.needC ? new Float64Array(rows) : f64(c.c)));
        ref.depthRouteSourceBackward(
          f64(s),
          gsW,
          mode === "accumulate",
          cs.map((c) => f64(c.gout)),
          cs.map((c) => f64(c.alpha)),
          cs.map((c) => f64(c.rstd)),
          meta,
          cWs,
          cs.map((c) => f64(c.w)),
          cs.map((c) => f64(c.g)),
          psW,
          rows,
          d,
          init && f64(init),
          cs.map((c) => f64(c.out)),
          cs.map((c) => c.base && f64(c.base)),
        );
        nat.depthRouteSourceBackward(
          s,
          gs,
          mode === "accumulate",
          cs.map((c) => c.gout),
          cs.map((c) => c.alpha),
          cs.map((c) => c.rstd),
          meta,
          cs.map((c) => c.c),
          cs.map((c) => c.w),
          cs.map((c) => c.g),
          cs.map((c) => c.p),
          rows,
          d,
          init,
          cs.map((c) => c.out),
          cs.map((c) => c.base),
        );
        if (gs) closeDot("gsource", gs, gsW!, d * (K + 1));
        cs.forEach((c, k) => {
          closeDot(`p ${k}`, c.p, psW[k]!, rows * d);
          closeDot(`c ${k}`, c.c, c.cW, d);
          closeDot(`reference c ${k}`, cWs[k]!, c.cW, d);
        });
      });
  for (const [rows, d, K] of [
    [1, 1, 2],
    [13, 7, 3],
    [67, 37, 5],
    [70, 33, 26],
    [301, 129, 4],
  ])
    test(`a pair of sources in one pass: rows=${rows} d=${d} calls=${K}`, () => {
      const s = rnd(rows * d, -2, 2);
      const s2 = rnd(rows * d, -2, 2);
      const cs = calls(rows, d, K, s, s2);
      const meta = Int32Array.from(cs.flatMap((c) => [c.col, c.N, c.needC ? 1 : 0]));
      const cols = Int32Array.from(cs.map((c) => c.col2));
      const gs = rnd(rows * d);
      const gs2 = nans(rows * d); // written, from zero
      const gsW = f64(gs);
      const gs2W = new Float64Array(rows * d);
      const psW = cs.map((c) => f64(c.p));
      const cWs = cs.map((c) => (c.needC ? new Float64Array(rows) : f64(c.c)));
      const lists = <T>(f: (c: (typeof cs)[number]) => T) => cs.map(f);
      ref.depthRouteSourceBackward(
        f64(s),
        gsW,
        true,
        lists((c) => f64(c.gout)),
        lists((c) => f64(c.alpha)),
        lists((c) => f64(c.rstd)),
        meta,
        cWs,
        lists((c) => f64(c.w)),
        lists((c) => f64(c.g)),
        psW,
        rows,
        d,
        null,
        lists((c) => f64(c.out)),
        lists((c) => c.base && f64(c.base)),
        { source: f64(s2), gsource: gs2W, cols },
      );
      // The native call with this case's calls; the first source's gradient, accumulate and the pair vary.
      const natArgs = (gsource: Float32Array | null, accumulate: boolean, pair: unknown) =>
        [
          s,
          gsource,
          accumulate,
          lists((c) => c.gout),
          lists((c) => c.alpha),
          lists((c) => c.rstd),
          meta,
          lists((c) => c.c),
          lists((c) => c.w),
          lists((c) => c.g),
          lists((c) => c.p),
          rows,
          d,
          null,
          lists((c) => c.out),
          lists((c) => c.base),
          pair,
        ] as Parameters<typeof nat.depthRouteSourceBackward>;
      nat.depthRouteSourceBackward(...natArgs(gs, true, { source: s2, gsource: gs2, cols }));
      closeDot("gsource", gs, gsW, d * (K + 1));
      closeDot("pair gsource", gs2, gs2W, d * (K + 1));
      cs.forEach((c, k) => {
        closeDot(`p ${k}`, c.p, psW[k]!, 2 * rows * d);
        closeDot(`c ${k}`, c.c, c.cW, d);
      });
      assert.throws(
        () => nat.depthRouteSourceBackward(...natArgs(null, false, { source: s2, gsource: gs2, cols })),
        /a pair needs the first source's gsource too/,
      );
      assert.throws(
        () =>
          nat.depthRouteSourceBackward(
            ...natArgs(gs, true, { source: s2, gsource: gs2, cols: Int32Array.from(cs.map((c) => c.col)) }),
          ),
        /has pair column \d+ of \d+ \(column \d+ is the first source's\)/,
      );
      assert.throws(
        () => nat.depthRouteSourceBackward(...natArgs(gs, false, 5)),
        /pair must be an object or null/,
      );
      assert.throws(
        () => nat.depthRouteSourceBackward(...natArgs(gs, false, { source: s2, cols })),
        /the pair's source, gsource and cols must be given together/,
      );
    });
  test("over every source of a call, it equals depthRouteBackward (float64)", () => {
    const near = (name: string, got: Float64Array, want: Float64Array) => {
      const tol = 1e-12 * maxAbs(want);
      want.forEach((v, i) => assert.ok(Math.abs(got[i]! - v) <= tol, `${name}[${i}]: ${got[i]} vs ${v}`));
    };
    const [rows, d, N] = [19, 11, 4];
    const srcs = Array.from({ length: N }, () => f64(rnd(rows * d, -2, 2)));
    const w = f64(rnd(d));
    const g = f64(rnd(d, 0.5, 1.5));
    const out = new Float64Array(rows * d);
    const alpha = new Float64Array(rows * N);
    const rstd = new Float64Array(rows * N);
    ref.depthRoute(srcs, w, g, out, alpha, rstd, rows, d, 1e-6, null);
    const gout = f64(rnd(rows * d));
    const c = new Float64Array(rows);
    ref.rowDot(gout, out, c, rows, d);
    const whole = srcs.map(() => new Float64Array(rows * d));
    const gw = new Float64Array(d);
    const gg = new Float64Array(d);
    ref.depthRouteBackward(srcs, w, g, alpha, rstd, gout, whole, gw, gg, rows, d);
    const p = new Float64Array(d);
    srcs.forEach((s, i) => {
      const gs = new Float64Array(rows * d);
      ref.depthRouteSourceBackward(
        s,
        gs,
        false,
        [gout],
        [alpha],
        [rstd],
        Int32Array.of(i, N, 0),
        [c],
        [w],
        [g],
        [p],
        rows,
        d,
        null,
        [out],
        [null],
      );
      near(`gsource ${i}`, gs, whole[i]!);
    });
    near(
      "gw",
      Float64Array.from(p, (v, k) => v * g[k]!),
      gw,
    );
    near(
      "gg",
      Float64Array.from(p, (v, k) => v * w[k]!),
      gg,
    );
  });
  test("errors", () => {
    const one = [rnd(8)];
    assert.throws(
      () =>
        nat.depthRouteSourceBackward(
          rnd(8),
          null,
          false,
          one,
          [],
          one,
          Int32Array.of(0, 1, 0),
          one,
          one,
          one,
          one,
          2,
          4,
          null,
          one,
          [null],
        ),
      /depthRouteSourceBackward: 0 alphas for 1 gradients/,
    );
    assert.throws(
      () =>
        nat.depthRouteSourceBackward(
          rnd(8),
          null,
          false,
          one,
          one,
          one,
          Int32Array.of(2, 2, 0),
          one,
          one,
          one,
          one,
          2,
          4,
          null,
          one,
          [null],
        ),
      /depthRouteSourceBackward: consumer 0 has column 2 of 2/,
    );
    assert.throws(
      () =>
        nat.depthRouteSourceBackward(
          rnd(8),
          rnd(7),
          true,
          [],
          [],
          [],
          new Int32Array(0),
          [],
          [],
          [],
          [],
          2,
          4,
          null,
          [],
          [],
        ),
      /depthRouteSourceBackward: gsource has 7 elements, needs 8/,
    );
    assert.throws(
      () =>
        nat.depthRouteSourceBackward(
          rnd(8),
          null,
          false,
          one,
          one,
          one,
          Int32Array.of(0, 1, 1),
          one,
          one,
          one,
          one,
          2,
          4,
          null,
          [rnd(8)],
          [rnd(6)],
        ),
      /depthRouteSourceBackward: base 0 has 6 elements, needs 8/,
    );
    assert.throws(
      () =>
        nat.depthRouteSourceBackward(
          rnd(8),
          rnd(8),
          false,
          one,
          one,
          one,
          Int32Array.of(0, 1, 0),
          one,
          one,
          one,
          one,
          2,
          4,
          rnd(5),
          one,
          [null],
        ),
      /depthRouteSourceBackward: init has 5 elements, needs 8/,
    );
    assert.throws(() => nat.rowDot(rnd(8), rnd(8), rnd(1), 2, 4), /rowDot: out has 1 elements, needs 2/);
  });
});

describe("adamw", () => {
  for (const n of [1, 13, 40007])
    test(`n=${n}, 3 steps`, () => {
      const p = rnd(n);
      const m = rnd(n, -0.01, 0.01);
      const v = rnd(n, 0, 1e-4);
      const [p64, m64, v64] = [f64(p), f64(m), f64(v)];
      const [lr, b1, b2, eps, wd] = [1e-2, 0.9, 0.95, 1e-8, 0.1];
      for (let t = 1; t <= 3; t++) {
        const g = rnd(n);
        const bc1 = 1 - Math.pow(b1, t);
        const bc2 = 1 - Math.pow(b2, t);
        ref.adamw(p64, f64(g), m64, v64, n, lr, b1, b2, eps, wd, bc1, bc2);
        nat.adamw(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);
      }
      closeElementwise("m", m, m64);
      closeElementwise("v", v, v64);
      closeElementwise("p", p, p64);
    });
  test("errors", () => {
    assert.throws(
      () => nat.adamw(rnd(4), rnd(4), rnd(3), rnd(4), 4, 1e-3, 0.9, 0.999, 1e-8, 0, 0.1, 0.001),
      /adamw: m has 3 elements, needs 4/,
    );
  });
});

// ------------------------------------------------------------------ memory, threads, info

describe("memory", () => {
  test("alloc: float32, 64-byte aligned, n = 0 works, float64 rejected", () => {
    const before = nat.memoryStats();
    const a = nat.alloc("float32", 1001) as Float32Array;
    const z = nat.alloc("float32", 0) as Float32Array;
    assert.ok(a instanceof Float32Array);
    assert.equal(a.length, 1001);
    assert.equal(z.length, 0);
    const after = nat.memoryStats();
    assert.equal(after.allocatedBytes - before.allocatedBytes, 4004);
    assert.equal(after.buffers - before.buffers, 2);
    assert.throws(
      () => nat.alloc("float64", 4),
      /native backend is float32-only; use ATTNRES_BACKEND=reference for float64/,
    );
    assert.throws(() => nat.alloc("float32", -1), /alloc: n must be >= 0/);
    a.fill(3);
    assert.equal(a[1000], 3);
  });

  test("memoryStats goes down after buffers are garbage-collected", async () => {
    // gc() without --expose-gc on the command line: enable the flag, then fetch gc from a new context.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const base = nat.memoryStats();
    (() => {
      const bufs: Float32Array[] = [];
      for (let i = 0; i < 20; i++) bufs.push(nat.alloc("float32", 1 << 16) as Float32Array);
      const mid = nat.memoryStats();
      assert.equal(mid.buffers - base.buffers, 20);
      assert.equal(mid.allocatedBytes - base.allocatedBytes, 20 * 4 * (1 << 16));
    })();
    let now = nat.memoryStats();
    for (let round = 0; round < 50 && now.allocatedBytes > base.allocatedBytes; round++) {
      gc();
      await new Promise((r) => setImmediate(r));
      now = nat.memoryStats();
    }
    assert.ok(
      now.allocatedBytes <= base.allocatedBytes,
      `still ${now.allocatedBytes - base.allocatedBytes} bytes live`,
    );
    assert.ok(now.buffers <= base.buffers);
  });
});

describe("threads and info", () => {
  test("setThreads / threads", () => {
    const before = nat.threads();
    assert.ok(before >= 1);
    nat.setThreads(1);
    assert.equal(nat.threads(), 1);
    nat.setThreads(before);
    assert.equal(nat.threads(), before);
    assert.throws(() => nat.setThreads(0), /setThreads: n must be in \[1, 1024\]/);
  });
  test("nativeInfo, measurePeakGflops and measureReadBandwidth", () => {
    const info = nativeInfo();
    assert.ok(["openblas", "cblas", "builtin"].includes(info.blas));
    assert.ok([info.blas, "builtin"].includes(info.gemm), `gemm ${info.gemm} with blas ${info.blas}`);
    assert.equal(typeof info.blasCore, "string");
    assert.throws(
      () => setNativeGemm("fast" as "blas"),
      /setGemm: kind must be "blas", "builtin" or "default"/,
    );
    assert.equal(typeof info.streamed, "boolean");
    assert.equal(info.threads, nat.threads());
    assert.ok(info.simd.length > 0);
    const peak = measurePeakGflops(0.05);
    assert.ok(peak > 0.1 && peak < 1e5, `peak ${peak}`);
    // A small buffer (16 MiB) keeps the test quick; three samples and their median.
    const bw = measureReadBandwidth(0.02, 3, 16 << 20);
    assert.equal(bw.samples.length, 3);
    for (const s of bw.samples) assert.ok(s > 0.1 && s < 1e5, `read bandwidth sample ${s} GB/s`);
    assert.equal(bw.gbPerS, [...bw.samples].sort((a, b) => a - b)[1]);
    assert.ok(bw.bytes > 0 && bw.bytes <= 16 << 20 && bw.bytes % (nat.threads() * 512) === 0, `${bw.bytes}`);
    assert.throws(() => measureReadBandwidth(0.02, 0), /readBandwidth: repeats must be in \[1, 1000\]/);
  });
  test("default GEMM: the built-in AVX-512 one unless the BLAS runs AVX-512 kernels; ATTNRES_GEMM overrides", () => {
    const probe = (env: Record<string, string>) => {
      const r = spawnSync(
        process.execPath,
        [
          "--import",
          "tsx",
          "-e",
          'import("./src/backend/native/index.ts").then((m) => console.log(JSON.stringify(m.nativeInfo())))',
        ],
        { env: { ...process.env, ...env }, encoding: "utf8" },
      );
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as ReturnType<typeof nativeInfo>;
    };
    const info = probe({});
    if (info.blas === "builtin") assert.equal(info.gemm, "builtin");
    else {
      const blasAvx512 = /skylakex|cooperlake|sapphire/i.test(info.blasCore) || info.blas === "cblas";
      const want =
        info.simd === "avx512f" && !(info.blas === "openblas" && blasAvx512) ? "builtin" : info.blas;
      assert.equal(info.gemm, want, JSON.stringify(info));
      assert.equal(probe({ ATTNRES_GEMM: "blas" }).gemm, info.blas);
      assert.equal(probe({ ATTNRES_GEMM: "builtin" }).gemm, "builtin");
      assert.equal(probe({ ATTNRES_GEMM: "blas" }).streamed, false, "a chosen BLAS runs every product");
    }
    // The streamed GEMM (Linears over few rows) is the AVX-512 build's unless a BLAS was chosen.
    assert.equal(info.streamed, info.simd === "avx512f");
    assert.equal(probe({ ATTNRES_GEMM: "builtin" }).streamed, info.simd === "avx512f");
    // bfloat16 GEMMs on AMX tiles: only with AVX-512 BF16 too; ATTNRES_AMX=0 turns them off.
    assert.equal(typeof info.amx, "boolean");
    if (info.amx) assert.equal(info.bf16, true);
    assert.equal(probe({ ATTNRES_AMX: "0" }).amx, false);
    assert.equal(probe({ ATTNRES_AMX: "1" }).amx, info.amx);
  });
  test("backend identity", () => {
    assert.equal(nat.name, "native");
    assert.deepEqual(nat.dtypes, ["float32"]);
  });
});
