/**
 * Non-finite propagation: every native kernel against the reference when one input element is
 * NaN, +Inf or -Inf. For each kernel and each of its float inputs, seeded trials put one
 * non-finite value at a random position, run both backends on the same values, and require every
 * output element to fall in the same class on both: NaN, +Inf, -Inf or finite. (Finite values
 * are compared by test/native-kernels.test.ts; here only where non-finite values go matters, so a
 * kernel that turns a NaN into a zero, or masks a row it should not, fails.)
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { UNARY_OPS, BINARY_OPS, type Backend, type Buf } from "../src/backend/backend.js";
import { loadNativeBackend } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { Rng } from "../src/tensor/random.js";

const nat: Backend = loadNativeBackend();
const SPECIALS = [NaN, Infinity, -Infinity] as const;
const TRIALS = 24;

/** The inputs of one kernel call: named float arrays (values shared by both backends). */
type Inputs = Record<string, Float32Array>;
/** Runs the kernel on backend `b` with buffers made from `inp`; returns the named outputs. */
type Run = (b: Backend, buf: (x: Float32Array) => Buf, inp: Inputs) => Record<string, Buf>;

interface Kernel {
  name: string;
  inputs: (rng: Rng) => Inputs;
  run: Run;
}

const randArr = (rng: Rng, n: number, lo = -1, hi = 1) =>
  Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.uniform());

const cls = (x: number) =>
  Number.isNaN(x) ? "NaN" : x === Infinity ? "+Inf" : x === -Infinity ? "-Inf" : "finite";

function bufferFor(b: Backend) {
  return (x: Float32Array): Buf => {
    const out = b.alloc(b === ref ? "float64" : "float32", x.length);
    out.set(x);
    return out;
  };
}
const out = (b: Backend, n: number): Buf => {
  const o = b.alloc(b === ref ? "float64" : "float32", n);
  o.fill(NaN);
  return o;
};

/** Attention and its backward over T tokens (B=1, Hq=2, Hkv=1, head size D). */
function attentionKernel(name: string, T: number, D: number, scale: number, causal: boolean): Kernel {
  const [nq, nk] = [T * 2 * D, T * D];
  return {
    name,
    inputs: (rng) => ({
      q: randArr(rng, nq),
      k: randArr(rng, nk),
      v: randArr(rng, nk),
      gout: randArr(rng, nq),
    }),
    run: (b, buf, i) => {
      const [q, k, v] = [buf(i.q!), buf(i.k!), buf(i.v!)];
      const [o, lse] = [out(b, nq), out(b, 2 * T)];
      b.attention(q, k, v, o, lse, 1, T, T, 2, 1, D, scale, causal);
      const [gq, gk, gv] = [out(b, nq), out(b, nk), out(b, nk)];
      b.attentionBackward(q, k, v, o, lse, buf(i.gout!), gq, gk, gv, 1, T, T, 2, 1, D, scale, causal);
      return { o, lse, gq, gk, gv };
    },
  };
}

const [R, D] = [3, 8];
const kernels: Kernel[] = [
  ...UNARY_OPS.map((op): Kernel => ({
    name: `unary ${op}`,
    inputs: (rng) => ({ x: randArr(rng, 7, 0.1, 1) }),
    run: (b, buf, i) => {
      const o = out(b, 7);
      b.unary(op, buf(i.x!), o, 7);
      return { o };
    },
  })),
  ...UNARY_OPS.map((op): Kernel => ({
    name: `unaryGrad ${op}`,
    inputs: (rng) => {
      const x = randArr(rng, 7, 0.1, 1);
      return { x, gy: randArr(rng, 7) };
    },
    run: (b, buf, i) => {
      const x = buf(i.x!);
      const y = out(b, 7);
      b.unary(op, x, y, 7);
      const gx = out(b, 7);
      b.unaryGrad(op, x, y, buf(i.gy!), gx, 7);
      return { gx };
    },
  })),
  ...BINARY_OPS.map((op): Kernel => ({
    name: `binary ${op}`,
    inputs: (rng) => ({ a: randArr(rng, 12, 0.1, 1), b: randArr(rng, 4, 0.1, 1) }),
    run: (b, buf, i) => {
      const o = out(b, 12);
      b.binary(op, buf(i.a!), [4, 1], buf(i.b!), [0, 1], o, [3, 4]);
      return { o };
    },
  })),
  ...(["sum", "max"] as const).map((op): Kernel => ({
    name: `reduce ${op}`,
    inputs: (rng) => ({ x: randArr(rng, 12) }),
    run: (b, buf, i) => {
      const o = out(b, 3);
      b.reduce(op, buf(i.x!), [3, 4], [1], o);
      return { o };
    },
  })),
  {
    name: "gemm",
    inputs: (rng) => ({ A: randArr(rng, 15), B: randArr(rng, 20), C: randArr(rng, 12) }),
    run: (b, buf, i) => {
      const C = buf(i.C!);
      b.gemm(false, false, 1, 3, 4, 5, 1, buf(i.A!), 0, 5, 0, buf(i.B!), 0, 4, 0, 0.5, C, 0, 4, 0);
      return { C };
    },
  },
  {
    name: "sumSquares / axpy",
    inputs: (rng) => ({ x: randArr(rng, 9), y: randArr(rng, 9) }),
    run: (b, buf, i) => {
      const y = buf(i.y!);
      const s = b.sumSquares(buf(i.x!), 9);
      b.axpy(9, 0.5, buf(i.x!), y);
      return { y, s: Float64Array.of(s) };
    },
  },
  {
    name: "rmsnorm (+ backward)",
    inputs: (rng) => ({ x: randArr(rng, R * D), w: randArr(rng, D), gy: randArr(rng, R * D) }),
    run: (b, buf, i) => {
      const [x, w, o, rstd] = [buf(i.x!), buf(i.w!), out(b, R * D), out(b, R)];
      b.rmsnorm(x, w, o, rstd, R, D, 1e-6);
      const [gx, gw] = [out(b, R * D), out(b, D)];
      b.rmsnormBackward(x, w, rstd, buf(i.gy!), gx, gw, R, D);
      return { o, rstd, gx, gw };
    },
  },
  {
    name: "rope",
    inputs: (rng) => ({ x: randArr(rng, 2 * 3 * 2 * 4), cos: randArr(rng, 3 * 2), sin: randArr(rng, 3 * 2) }),
    run: (b, buf, i) => {
      const o = out(b, 48);
      b.rope(buf(i.x!), o, buf(i.cos!), buf(i.sin!), 2, 3, 2, 4, 0, false);
      return { o };
    },
  },
  ...[true, false].map((causal) =>
    attentionKernel(`attention${causal ? " causal" : ""} (+ backward)`, 5, 4, 0.5, causal),
  ),
  // Several 8-row strips and 32-row backward blocks: a hidden key's 0 weight meets a NaN/Inf inside a
  // strip, which the register tiles detect in their outputs and recompute exactly.
  attentionKernel("attention causal, 40 tokens (+ backward)", 40, 20, 0.25, true),
  {
    name: "crossEntropy (+ backward)",
    inputs: (rng) => ({ logits: randArr(rng, 3 * 6), gloss: randArr(rng, 3) }),
    run: (b, buf, i) => {
      const targets = Int32Array.of(1, 5, 0);
      const logits = buf(i.logits!);
      const [loss, lse] = [out(b, 3), out(b, 3)];
      b.crossEntropy(logits, targets, loss, lse, 3, 6, -100);
      const gl = out(b, 18);
      b.crossEntropyBackward(logits, targets, lse, buf(i.gloss!), gl, 3, 6, -100);
      return { loss, lse, gl };
    },
  },
  {
    name: "swiglu (+ backward)",
    inputs: (rng) => ({ gate: randArr(rng, 10), up: randArr(rng, 10), gout: randArr(rng, 10) }),
    run: (b, buf, i) => {
      const [gate, up, o] = [buf(i.gate!), buf(i.up!), out(b, 10)];
      b.swiglu(gate, up, o, 10);
      const [gg, gu] = [out(b, 10), out(b, 10)];
      b.swigluBackward(gate, up, buf(i.gout!), gg, gu, 10);
      return { o, gg, gu };
    },
  },
  {
    name: "depthRoute (+ backward)",
    inputs: (rng) => ({
      s0: randArr(rng, R * D),
      s1: randArr(rng, R * D),
      s2: randArr(rng, R * D),
      w: randArr(rng, D),
      g: randArr(rng, D),
      gout: randArr(rng, R * D),
    }),
    run: (b, buf, i) => {
      const src = [buf(i.s0!), buf(i.s1!), buf(i.s2!)];
      const [w, g] = [buf(i.w!), buf(i.g!)];
      const [o, alpha, rstd] = [out(b, R * D), out(b, R * 3), out(b, R * 3)];
      b.depthRoute(src, w, g, o, alpha, rstd, R, D, 1e-6, null);
      const gs = src.map(() => out(b, R * D));
      const [gw, gg] = [out(b, D), out(b, D)];
      b.depthRouteBackward(src, w, g, alpha, rstd, buf(i.gout!), gs, gw, gg, R, D);
      return { o, alpha, gs0: gs[0]!, gs1: gs[1]!, gs2: gs[2]!, gw, gg };
    },
  },
  {
    name: "depthRoute (+ deferred per-source backward, rowDot)",
    inputs: (rng) => ({
      s0: randArr(rng, R * D),
      s1: randArr(rng, R * D),
      w: randArr(rng, D),
      g: randArr(rng, D),
      gout: randArr(rng, R * D),
      gs0: randArr(rng, R * D),
      p: randArr(rng, D),
    }),
    run: (b, buf, i) => {
      const src = [buf(i.s0!), buf(i.s1!)];
      const [w, g, gout, p] = [buf(i.w!), buf(i.g!), buf(i.gout!), buf(i.p!)];
      const [o, alpha, rstd, c] = [out(b, R * D), out(b, R * 2), out(b, R * 2), out(b, R)];
      b.depthRoute(src, w, g, o, alpha, rstd, R, D, 1e-6, null);
      b.rowDot(gout, o, c, R, D);
      const [gs0, gs1] = [buf(i.gs0!), out(b, R * D)];
      const one = (col: number, gs: Buf, acc: boolean) =>
        b.depthRouteSourceBackward(
          src[col]!,
          gs,
          acc,
          [gout],
          [alpha],
          [rstd],
          Int32Array.of(col, 2, 0),
          [c],
          [w],
          [g],
          [p],
          R,
          D,
          null,
          [o],
          [null],
        );
      one(0, gs0, true);
      one(1, gs1, false);
      return { c, gs0, gs1, p };
    },
  },
  {
    name: "embedding (+ backward)",
    inputs: (rng) => ({ w: randArr(rng, 5 * 4), gout: randArr(rng, 3 * 4) }),
    run: (b, buf, i) => {
      const ids = Int32Array.of(0, 3, 3);
      const o = out(b, 12);
      b.embedding(buf(i.w!), ids, o, 3, 4, 5);
      const gw = buf(new Float32Array(20));
      b.embeddingBackward(buf(i.gout!), ids, gw, 3, 4, 5);
      return { o, gw };
    },
  },
  {
    name: "adamw",
    inputs: (rng) => ({
      p: randArr(rng, 6),
      g: randArr(rng, 6),
      m: randArr(rng, 6),
      v: randArr(rng, 6, 0, 1),
    }),
    run: (b, buf, i) => {
      const [p, m, v] = [buf(i.p!), buf(i.m!), buf(i.v!)];
      b.adamw(p, buf(i.g!), m, v, 6, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.1, 0.05);
      return { p, m, v };
    },
  },
];

describe("non-finite inputs propagate in native kernels as in the reference", () => {
  for (const k of kernels)
    test(k.name, () => {
      const rng = new Rng(0x5eed ^ k.name.length);
      const base = k.inputs(rng);
      for (const name of Object.keys(base))
        for (let t = 0; t < TRIALS; t++) {
          const inp: Inputs = Object.fromEntries(Object.entries(base).map(([n, a]) => [n, a.slice()]));
          const at = rng.int(inp[name]!.length);
          const special = SPECIALS[t % SPECIALS.length]!;
          inp[name]![at] = special;
          const want = k.run(ref, bufferFor(ref), inp);
          const got = k.run(nat, bufferFor(nat), inp);
          for (const [o, w] of Object.entries(want)) {
            const g = got[o]!;
            for (let j = 0; j < w.length; j++)
              assert.equal(
                cls(g[j]!),
                cls(w[j]!),
                `${k.name}: ${name}[${at}] = ${special}: output ${o}[${j}] is ${g[j]} natively, ${w[j]} in the reference`,
              );
          }
        }
    });
});
