/** Welch's t-test and its distribution functions against closed forms. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { incompleteBeta, mean, std, studentTCdf, verdictLower, welch } from "../src/train/statistics.js";
import { assertClose } from "./helpers.js";

test("incomplete beta: closed forms", () => {
  for (const x of [0.1, 0.37, 0.5, 0.9]) {
    assertClose([incompleteBeta(x, 1, 1)], [x], { rtol: 1e-12 }, "I_x(1,1) = x");
    assertClose([incompleteBeta(x, 3, 1)], [x ** 3], { rtol: 1e-12 }, "I_x(a,1) = x^a");
    assertClose([incompleteBeta(x, 1, 4)], [1 - (1 - x) ** 4], { rtol: 1e-12 }, "I_x(1,b) = 1-(1-x)^b");
    assertClose(
      [incompleteBeta(x, 2.5, 1.5) + incompleteBeta(1 - x, 1.5, 2.5)],
      [1],
      { rtol: 1e-12 },
      "symmetry",
    );
  }
});

test("Student t CDF: df = 1 (Cauchy) and df = 2 closed forms, symmetry", () => {
  for (const t of [-3, -0.5, 0, 0.7, 2, 10]) {
    assertClose(
      [studentTCdf(t, 1)],
      [0.5 + Math.atan(t) / Math.PI],
      { rtol: 1e-12, atol: 1e-14 },
      `df=1 t=${t}`,
    );
    assertClose(
      [studentTCdf(t, 2)],
      [0.5 + t / (2 * Math.sqrt(2 + t * t))],
      { rtol: 1e-12, atol: 1e-14 },
      `df=2 t=${t}`,
    );
    assertClose([studentTCdf(t, 7.3) + studentTCdf(-t, 7.3)], [1], { rtol: 1e-12 }, "symmetry");
  }
  // Large df approaches the normal: P(T < 1.959964) → 0.975.
  assertClose([studentTCdf(1.959964, 1e6)], [0.975], { rtol: 1e-5 }, "normal limit");
});

test("Welch t-test statistic, degrees of freedom and p-value", () => {
  const a = [1, 2, 3, 4];
  const b = [2, 4, 6, 8, 10];
  const r = welch(a, b)!;
  // By hand: means 2.5 and 6, variances 5/3 and 10, n 4 and 5.
  const va = 5 / 3 / 4;
  const vb = 10 / 5;
  assertClose([r.t], [(2.5 - 6) / Math.sqrt(va + vb)], { rtol: 1e-12 }, "t");
  assertClose([r.df], [(va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)], { rtol: 1e-12 }, "df");
  assertClose([r.p], [2 * studentTCdf(-Math.abs(r.t), r.df)], { rtol: 1e-12 }, "p two-sided");
  assert.ok(r.p > 0.01 && r.p < 0.1, `p = ${r.p}`);
  assert.equal(welch([1], [2, 3]), null);
  assert.equal(mean([1, 2, 3]), 2);
  assert.equal(std([2, 4, 4, 4, 5, 5, 7, 9]), Math.sqrt(32 / 7));
});

test("verdict rule: holds, the opposite, noise, untestable", () => {
  const low = [1.0, 1.01, 0.99];
  const high = [2.0, 2.02, 1.98];
  assert.equal(verdictLower(low, high).kind, "holds");
  assert.equal(verdictLower(high, low).kind, "opposite");
  assertClose([verdictLower(low, high).delta], [-1], { rtol: 1e-12 }, "delta");
  // Overlapping samples: a small mean difference against a large spread.
  assert.equal(verdictLower([1.0, 1.5, 0.5], [1.1, 1.6, 0.6]).kind, "noise");
  assert.equal(verdictLower([1.0], [2.0, 2.1]).kind, "untestable");
  assert.equal(verdictLower([1, 1], [1, 1]).kind, "untestable");
  // The threshold is the caller's.
  const a = [1.0, 1.2, 0.9];
  const b = [1.3, 1.5, 1.2];
  const p = verdictLower(a, b).welch!.p;
  assert.equal(verdictLower(a, b, p * 1.01).kind, "holds");
  assert.equal(verdictLower(a, b, p * 0.99).kind, "noise");
});
