/**
 * The batch-1 decoding kernels (native/decode.cc) against the reference backend: decodeAttention
 * (qk-norm, RoPE, the KV-cache write and attention of one token in one call) and decodeRoute (one
 * row's depth routing plus the stream). Both serve inference under noGrad only, so there is no
 * backward to check.
 *
 * Fresh random float32 inputs per case (the seed is printed on failure); native outputs — and the
 * cache rows the kernel must write — are poisoned with NaN first; the reference runs in float64 on
 * the same values. Sizes include odd head dims and source widths that are not multiples of the
 * vector width, a cache of one position, and caches long enough for the threaded path.
 * Tolerance as in native-kernels.test.ts: max|got − want| ≤ 1e-5 · (1 + √K) · max|want|, K the
 * length of the longest sum.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import type { Backend } from "../src/backend/backend.js";
import { loadNativeBackend } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { f64, maxAbs, nans, rnd, SEED } from "./native-buffers.js";

const nat: Backend = loadNativeBackend();

function closeDot(name: string, got: ArrayLike<number>, want: ArrayLike<number>, K: number): void {
  assert.equal(got.length, want.length, `${name}: length`);
  const tol = 1e-5 * (1 + Math.sqrt(K)) * Math.max(maxAbs(want), 1e-30);
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    if (!(Math.abs(g - w) <= tol))
      assert.fail(`${name}[${i}]: got ${g}, want ${w} (K=${K}, tol ${tol}, seed ${SEED})`);
  }
}

/** Rotary tables [maxPos, D/2] as RopeTable builds them (theta 10000). */
function ropeTables(maxPos: number, D: number): { cos: Float32Array; sin: Float32Array } {
  const h = D / 2;
  const cos = nat.alloc("float32", maxPos * h) as Float32Array;
  const sin = nat.alloc("float32", maxPos * h) as Float32Array;
  for (let p = 0; p < maxPos; p++)
    for (let i = 0; i < h; i++) {
      const f = p / Math.pow(10000, (2 * i) / D);
      cos[p * h + i] = Math.cos(f);
      sin[p * h + i] = Math.sin(f);
    }
  return { cos, sin };
}

describe("decodeAttention", () => {
  // [Hq, Hkv, D, pos, qk-norm]: pos + 1 keys are attended; the cache has room for pos + 3.
  const cases: [number, number, number, number, boolean][] = [
    [1, 1, 2, 0, false], // one position: the token attends only to itself
    [3, 1, 6, 4, true], // odd heads per group, a head dim below the vector width
    [4, 2, 18, 37, true],
    [6, 3, 34, 9, false],
    [16, 8, 128, 150, true], // the Qwen3-0.6B head layout (threaded: Hq · Tk · D ≥ 2^15)
    [4, 2, 16, 300, false], // just below the threshold (Hq · Tk · D = 19264: one thread)
    [4, 2, 16, 520, false], // just above it (33344: two threads)
    [16, 8, 128, 520, true], // the Qwen3-0.6B layout with a longer cache
    [12, 4, 64, 1400, false], // the 125M shape's heads, threaded
  ];
  for (const [Hq, Hkv, D, pos, qkNorm] of cases)
    test(`Hq=${Hq} Hkv=${Hkv} D=${D} pos=${pos}${qkNorm ? " qk-norm" : ""}`, () => {
      const row = Hkv * D;
      const maxLen = pos + 3;
      const q = rnd(Hq * D);
      const k = rnd(row);
      const v = rnd(row);
      const qw = qkNorm ? rnd(D, 0.5, 1.5) : null;
      const kw = qkNorm ? rnd(D, 0.5, 1.5) : null;
      const { cos, sin } = ropeTables(maxLen, D);
      // Earlier positions hold random keys/values; row pos and the rows after it are poisoned.
      const kc = rnd(maxLen * row);
      const vc = rnd(maxLen * row);
      kc.fill(NaN, pos * row);
      vc.fill(NaN, pos * row);
      const scale = 1 / Math.sqrt(D);
      const wantK = f64(kc);
      const wantV = f64(vc);
      const want = new Float64Array(Hq * D);
      ref.decodeAttention(
        f64(q),
        f64(k),
        f64(v),
        qw && f64(qw),
        kw && f64(kw),
        1e-6,
        f64(cos),
        f64(sin),
        wantK,
        wantV,
        pos,
        want,
        Hq,
        Hkv,
        D,
        scale,
      );
      const out = nans(Hq * D);
      nat.decodeAttention(q, k, v, qw, kw, 1e-6, cos, sin, kc, vc, pos, out, Hq, Hkv, D, scale);
      closeDot("out", out, want, Math.max(D, pos + 1));
      closeDot("k cache", kc.subarray(0, (pos + 1) * row), wantK.subarray(0, (pos + 1) * row), D);
      assert.deepEqual(
        vc.subarray(0, (pos + 1) * row),
        Float32Array.from(wantV.subarray(0, (pos + 1) * row)),
      );
      // nothing beyond row pos is written
      assert.ok(kc.subarray((pos + 1) * row).every(Number.isNaN));
      assert.ok(vc.subarray((pos + 1) * row).every(Number.isNaN));
    });

  test("the reference is rmsnorm, rope, the cache write and attention composed", () => {
    // An independent check of the oracle on one head: scores and softmax by hand.
    const D = 4;
    const q = Float64Array.from([1, 0, 0, 0]);
    const k = Float64Array.from([0, 2, 0, 0]);
    const v = Float64Array.from([5, 6, 7, 8]);
    const cos = Float64Array.from([1, 1, 1, 1]); // position 0 and 1: no rotation
    const sin = Float64Array.from([0, 0, 0, 0]);
    const kc = Float64Array.from([1, 0, 0, 0, 0, 0, 0, 0]); // position 0: key e0; position 1 is written
    const vc = Float64Array.from([1, 2, 3, 4, 0, 0, 0, 0]);
    const out = new Float64Array(D);
    ref.decodeAttention(q, k, v, null, null, 1e-6, cos, sin, kc, vc, 1, out, 1, 1, D, 1);
    assert.deepEqual(Array.from(kc.subarray(4)), [0, 2, 0, 0]);
    assert.deepEqual(Array.from(vc.subarray(4)), [5, 6, 7, 8]);
    // scores: q·e0 = 1, q·(2 e1) = 0 → p = [e/(e+1), 1/(e+1)]
    const p0 = Math.E / (Math.E + 1);
    const p1 = 1 / (Math.E + 1);
    for (let c = 0; c < D; c++) assert.ok(Math.abs(out[c]! - (p0 * (c + 1) + p1 * (c + 5))) < 1e-12);
    // with qk-norm (unit gains) the key [0, 2, 0, 0] becomes [0, 2, 0, 0] / rms = [0, 2, 0, 0]
    ref.decodeAttention(q, k, v, null, new Float64Array(D).fill(1), 0, cos, sin, kc, vc, 1, out, 1, 1, D, 1);
    assert.deepEqual(Array.from(kc.subarray(4)), [0, 2, 0, 0]);
  });

  test("a non-finite value in the cache reaches its group's outputs only", () => {
    const Hq = 4;
    const Hkv = 2;
    const D = 8;
    const pos = 5;
    const row = Hkv * D;
    const { cos, sin } = ropeTables(pos + 1, D);
    const kc = rnd((pos + 1) * row);
    const vc = rnd((pos + 1) * row);
    vc[2 * row + D + 3] = NaN; // position 2, kv head 1
    const out = nans(Hq * D);
    nat.decodeAttention(
      rnd(Hq * D),
      rnd(row),
      rnd(row),
      null,
      null,
      1e-6,
      cos,
      sin,
      kc,
      vc,
      pos,
      out,
      Hq,
      Hkv,
      D,
      1,
    );
    assert.ok(out.subarray(0, 2 * D).every(Number.isFinite), "kv head 0's query heads stay finite");
    assert.ok(
      Number.isNaN(out[2 * D + 3]!) && Number.isNaN(out[3 * D + 3]!),
      "kv head 1's heads get the NaN",
    );
    // +∞ in a cached key with positive queries and no rotation (identity tables): an infinite
    // score, so exp(s − max) is NaN for the whole head, as in the reference's softmax.
    const one = nat.alloc("float32", (pos + 1) * (D / 2)) as Float32Array;
    const zero = nat.alloc("float32", (pos + 1) * (D / 2)) as Float32Array;
    one.fill(1);
    zero.fill(0);
    const kinf = rnd((pos + 1) * row);
    kinf[row + 1] = Infinity; // position 1, kv head 0
    const qpos = rnd(Hq * D, 0.1, 1);
    nat.decodeAttention(
      qpos,
      rnd(row),
      rnd(row),
      null,
      null,
      1e-6,
      one,
      zero,
      kinf,
      rnd((pos + 1) * row),
      pos,
      out,
      Hq,
      Hkv,
      D,
      1,
    );
    assert.ok(out.subarray(0, 2 * D).every(Number.isNaN), "an infinite score is not hidden");
    assert.ok(out.subarray(2 * D).every(Number.isFinite));
  });

  test("errors name the kernel and the buffer", () => {
    const { cos, sin } = ropeTables(4, 8);
    const call = (over: {
      pos?: number;
      kc?: Float32Array;
      Hq?: number;
      D?: number;
      qw?: Float32Array;
      Hkv?: number;
    }) =>
      nat.decodeAttention(
        rnd(16),
        rnd(8),
        rnd(8),
        over.qw ?? null,
        null,
        1e-6,
        cos,
        sin,
        over.kc ?? rnd(32),
        rnd(32),
        over.pos ?? 3,
        nans(16),
        over.Hq ?? 2,
        over.Hkv ?? 1,
        over.D ?? 8,
        1,
      );
    assert.throws(() => call({ pos: 4 }), /decodeAttention: cos has 16 elements, needs 20/);
    assert.throws(() => call({ kc: rnd(31) }), /decodeAttention: kCache has 31 elements, needs 32/);
    assert.throws(() => call({ qw: rnd(7) }), /decodeAttention: qNorm has 7 elements, needs 8/);
    assert.throws(
      () => call({ Hq: 3, Hkv: 2 }),
      /decodeAttention: 3 query heads are not a multiple of 2 kv heads/,
    );
    assert.throws(() => call({ D: 7 }), /decodeAttention: D must be even/);
  });
});

describe("decodeRoute", () => {
  for (const [N, d, gate] of [
    [1, 1, 1],
    [2, 19, 1],
    [7, 33, 0.37],
    [57, 1024, 1], // the last sublayer's routing at the Qwen3-0.6B shape
  ])
    test(`N=${N} d=${d} gate=${gate}`, () => {
      const src = rnd(N * d, -2, 2);
      const w = rnd(d, -0.5, 0.5);
      const g = rnd(d, 0.5, 1.5);
      const h = rnd(d);
      const want = new Float64Array(d);
      ref.decodeRoute(f64(src), N, f64(w), f64(g), f64(h), gate, want, d, 1e-6);
      const out = nans(d);
      nat.decodeRoute(src, N, w, g, h, gate, out, d, 1e-6);
      closeDot("out", out, want, Math.max(N, d));
      // only the first N rows of a larger buffer are sources
      const big = nat.alloc("float32", (N + 2) * d) as Float32Array;
      big.set(src);
      big.fill(1e30, N * d);
      const out2 = nans(d);
      nat.decodeRoute(big, N, w, g, h, gate, out2, d, 1e-6);
      assert.deepEqual(out2, out);
    });

  test("the reference: uniform weights for a zero query, h + gate · mean", () => {
    const d = 3;
    const src = Float64Array.from([1, 2, 3, -3, 0, 9]);
    const out = new Float64Array(d);
    ref.decodeRoute(
      src,
      2,
      new Float64Array(d),
      new Float64Array(d).fill(1),
      Float64Array.from([1, 1, 1]),
      0.5,
      out,
      d,
      1e-6,
    );
    assert.deepEqual(Array.from(out), [1 + 0.5 * -1, 1 + 0.5 * 1, 1 + 0.5 * 6]);
  });

  test("errors", () => {
    assert.throws(
      () => nat.decodeRoute(rnd(4), 0, rnd(4), rnd(4), rnd(4), 1, nans(4), 4, 1e-6),
      /decodeRoute: no sources/,
    );
    assert.throws(
      () => nat.decodeRoute(rnd(7), 2, rnd(4), rnd(4), rnd(4), 1, nans(4), 4, 1e-6),
      /decodeRoute: sources has 7 elements, needs 8/,
    );
    assert.throws(
      () => nat.decodeRoute(rnd(8), 2, rnd(4), rnd(4), rnd(3), 1, nans(4), 4, 1e-6),
      /decodeRoute: h has 3 elements, needs 4/,
    );
  });
});
