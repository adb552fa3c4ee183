/**
 * The reference backend: every kernel of src/backend/backend.ts as plain TypeScript loops.
 *
 * It is the oracle of the test suite, so it favours obviousness over speed: no blocking, no
 * threads, every sum accumulated in a JS number (float64). It computes in float32 or float64,
 * whichever buffers it is handed (float32 outputs round once, on store). Runs anywhere.
 */
import type { Backend, BinaryOp, Buf, DType, ReduceOp, UnaryOp } from "../backend.js";

function need(kernel: string, name: string, buf: { length: number }, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new Error(`${kernel}: bad extent ${n} for ${name}`);
  if (buf.length < n) throw new Error(`${kernel}: ${name} has ${buf.length} elements, needs ${n}`);
}

/** Largest linear index touched by a strided walk over `shape`, plus one (0 for an empty shape). */
function extent(shape: readonly number[], strides: readonly number[], off: number): number {
  let hi = off;
  for (let k = 0; k < shape.length; k++) {
    if (shape[k] === 0) return 0;
    hi += (shape[k]! - 1) * strides[k]!;
  }
  return hi + 1;
}

/** Calls fn(ia, ib) for every multi-index of shape, with ia/ib the strided offsets, in row-major order. */
function walk2(
  shape: readonly number[],
  sa: readonly number[],
  oa: number,
  sb: readonly number[],
  ob: number,
  fn: (ia: number, ib: number, flat: number) => void,
): void {
  const rank = shape.length;
  let total = 1;
  for (const s of shape) total *= s;
  if (total === 0) return;
  const idx = new Array<number>(rank).fill(0);
  let ia = oa;
  let ib = ob;
  for (let flat = 0; flat < total; flat++) {
    fn(ia, ib, flat);
    for (let k = rank - 1; k >= 0; k--) {
      idx[k]!++;
      ia += sa[k]!;
      ib += sb[k]!;
      if (idx[k]! < shape[k]!) break;
      ia -= sa[k]! * shape[k]!;
      ib -= sb[k]! * shape[k]!;
      idx[k] = 0;
    }
  }
}

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

function unaryFn(op: UnaryOp): (x: number) => number {
  switch (op) {
    case "neg":
      return (x) => -x;
    case "exp":
      return Math.exp;
    case "log":
      return Math.log;
    case "sqrt":
      return Math.sqrt;
    case "rsqrt":
      return (x) => 1 / Math.sqrt(x);
    case "sigmoid":
      return sigmoid;
    case "silu":
      return (x) => x * sigmoid(x);
    case "square":
      return (x) => x * x;
    case "abs":
      return Math.abs;
  }
}

function binaryFn(op: BinaryOp): (a: number, b: number) => number {
  switch (op) {
    case "add":
      return (a, b) => a + b;
    case "sub":
      return (a, b) => a - b;
    case "mul":
      return (a, b) => a * b;
    case "div":
      return (a, b) => a / b;
    case "max":
      return (a, b) => (a >= b || Number.isNaN(a) ? a : b);
    case "min":
      return (a, b) => (a <= b || Number.isNaN(a) ? a : b);
    case "eq":
      return (a, b) => (a === b ? 1 : 0);
  }
}

function attentionRows(Tq: number, Tk: number, causal: boolean): { last: (i: number) => number } {
  const shift = Tk - Tq;
  return { last: (i) => (causal ? Math.min(Tk - 1, i + shift) : Tk - 1) };
}

export const referenceBackend: Backend = {
  name: "reference",
  dtypes: ["float32", "float64"],

  alloc(dtype: DType, n: number): Buf {
    return dtype === "float64" ? new Float64Array(n) : new Float32Array(n);
  },
  memoryStats() {
    return { allocatedBytes: 0, buffers: 0 };
  },
  threads: () => 1,
  setThreads() {},

  gemm(
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
  ) {
    if (batch === 0 || M === 0 || N === 0) return;
    const k = "gemm";
    if (K > 0) {
      need(k, "A", A, offA + (batch - 1) * strideA + (transA ? (K - 1) * lda + M : (M - 1) * lda + K));
      need(k, "B", B, offB + (batch - 1) * strideB + (transB ? (N - 1) * ldb + K : (K - 1) * ldb + N));
    }
    need(k, "C", C, offC + (batch - 1) * strideC + (M - 1) * ldc + N);
    for (let b = 0; b < batch; b++) {
      const a0 = offA + b * strideA;
      const b0 = offB + b * strideB;
      const c0 = offC + b * strideC;
      for (let i = 0; i < M; i++) {
        for (let j = 0; j < N; j++) {
          let s = 0;
          for (let p = 0; p < K; p++) {
            const av = transA ? A[a0 + p * lda + i]! : A[a0 + i * lda + p]!;
            const bv = transB ? B[b0 + j * ldb + p]! : B[b0 + p * ldb + j]!;
            s += av * bv;
          }
          const ci = c0 + i * ldc + j;
          C[ci] = beta === 0 ? alpha * s : alpha * s + beta * C[ci]!;
        }
      }
    }
  },

  unary(op, x, out, n) {
    need("unary", "x", x, n);
    need("unary", "out", out, n);
    const f = unaryFn(op);
    for (let i = 0; i < n; i++) out[i] = f(x[i]!);
  },

  unaryGrad(op, x, y, gy, gx, n) {
    for (const [name, b] of [
      ["x", x],
      ["y", y],
      ["gy", gy],
      ["gx", gx],
    ] as const)
      need("unaryGrad", name, b, n);
    for (let i = 0; i < n; i++) {
      const xv = x[i]!;
      const yv = y[i]!;
      let d: number;
      switch (op) {
        case "neg":
          d = -1;
          break;
        case "exp":
          d = yv;
          break;
        case "log":
          d = 1 / xv;
          break;
        case "sqrt":
          d = 0.5 / yv;
          break;
        case "rsqrt":
          d = -0.5 * yv * yv * yv;
          break;
        case "sigmoid":
          d = yv * (1 - yv);
          break;
        case "silu": {
          const s = sigmoid(xv);
          d = s * (1 + xv * (1 - s));
          break;
        }
        case "square":
          d = 2 * xv;
          break;
        case "abs":
          d = xv > 0 ? 1 : xv < 0 ? -1 : xv === 0 ? 0 : NaN; // NaN in, NaN out
          break;
      }
      gx[i] = gy[i]! * d;
    }
  },

  binary(op, a, aStrides, b, bStrides, out, outShape) {
    const k = "binary";
    if (aStrides.length !== outShape.length || bStrides.length !== outShape.length)
      throw new Error(`${k}: rank mismatch`);
    need(k, "a", a, extent(outShape, aStrides, 0));
    need(k, "b", b, extent(outShape, bStrides, 0));
    need(
      k,
      "out",
      out,
      outShape.reduce((p, s) => p * s, 1),
    );
    const f = binaryFn(op);
    walk2(outShape, aStrides, 0, bStrides, 0, (ia, ib, flat) => {
      out[flat] = f(a[ia]!, b[ib]!);
    });
  },

  reduce(op: ReduceOp, x, shape, axes, out) {
    const n = shape.reduce((p, s) => p * s, 1);
    need("reduce", "x", x, n);
    const outShape = shape.map((s, i) => (axes.includes(i) ? 1 : s));
    const nOut = outShape.reduce((p, s) => p * s, 1);
    need("reduce", "out", out, nOut);
    // Strides of x (contiguous) and of out as seen from x's index space (0 on reduced axes).
    const xs = new Array<number>(shape.length);
    const os = new Array<number>(shape.length);
    let sx = 1;
    let so = 1;
    for (let kk = shape.length - 1; kk >= 0; kk--) {
      xs[kk] = sx;
      os[kk] = axes.includes(kk) ? 0 : so;
      sx *= shape[kk]!;
      so *= outShape[kk]!;
    }
    const acc = new Float64Array(nOut).fill(op === "sum" ? 0 : -Infinity);
    const seen = new Uint8Array(nOut);
    walk2(shape, xs, 0, os, 0, (ix, io) => {
      const v = x[ix]!;
      if (op === "sum") acc[io]! += v;
      else if (!seen[io] || v > acc[io]! || Number.isNaN(v)) acc[io] = Number.isNaN(acc[io]!) ? acc[io]! : v;
      seen[io] = 1;
    });
    for (let i = 0; i < nOut; i++) out[i] = acc[i]!;
  },

  copy(src, srcOff, srcStrides, dst, dstOff, dstStrides, shape, accumulate) {
    if (srcStrides.length !== shape.length || dstStrides.length !== shape.length)
      throw new Error("copy: rank mismatch");
    need("copy", "src", src, extent(shape, srcStrides, srcOff));
    need("copy", "dst", dst, extent(shape, dstStrides, dstOff));
    walk2(shape, srcStrides, srcOff, dstStrides, dstOff, (is, id) => {
      dst[id] = accumulate ? dst[id]! + src[is]! : src[is]!;
    });
  },

  fill(out, value, n) {
    need("fill", "out", out, n);
    out.fill(value, 0, n);
  },

  axpy(n, alpha, x, y) {
    need("axpy", "x", x, n);
    need("axpy", "y", y, n);
    for (let i = 0; i < n; i++) y[i] = y[i]! + alpha * x[i]!;
  },

  sumSquares(x, n) {
    need("sumSquares", "x", x, n);
    let s = 0;
    for (let i = 0; i < n; i++) s += x[i]! * x[i]!;
    return s;
  },

  embedding(weight, ids, out, n, d, vocab) {
    need("embedding", "weight", weight, vocab * d);
    need("embedding", "ids", ids, n);
    need("embedding", "out", out, n * d);
    for (let i = 0; i < n; i++) {
      const id = ids[i]!;
      if (id < 0 || id >= vocab)
        throw new Error(`embedding: id ${id} at position ${i} outside [0, ${vocab})`);
      for (let c = 0; c < d; c++) out[i * d + c] = weight[id * d + c]!;
    }
  },

  embeddingBackward(gout, ids, gweight, n, d, vocab) {
    need("embeddingBackward", "gout", gout, n * d);
    need("embeddingBackward", "ids", ids, n);
    need("embeddingBackward", "gweight", gweight, vocab * d);
    for (let i = 0; i < n; i++) {
      const id = ids[i]!;
      if (id < 0 || id >= vocab)
        throw new Error(`embeddingBackward: id ${id} at position ${i} outside [0, ${vocab})`);
      for (let c = 0; c < d; c++) gweight[id * d + c] = gweight[id * d + c]! + gout[i * d + c]!;
    }
  },

  rmsnorm(x, w, out, rstd, rows, d, eps) {
    need("rmsnorm", "x", x, rows * d);
    need("rmsnorm", "out", out, rows * d);
    need("rmsnorm", "rstd", rstd, rows);
    if (w) need("rmsnorm", "w", w, d);
    for (let r = 0; r < rows; r++) {
      let ss = 0;
      for (let c = 0; c < d; c++) ss += x[r * d + c]! * x[r * d + c]!;
      const rs = 1 / Math.sqrt(ss / d + eps);
      rstd[r] = rs;
      const rsStored = rstd[r]!; // the same (rounded) value the backward will see
      for (let c = 0; c < d; c++) out[r * d + c] = x[r * d + c]! * rsStored * (w ? w[c]! : 1);
    }
  },

  rmsnormBackward(x, w, rstd, gy, gx, gw, rows, d) {
    for (const [name, b, n] of [
      ["x", x, rows * d],
      ["gy", gy, rows * d],
      ["gx", gx, rows * d],
      ["rstd", rstd, rows],
    ] as const)
      need("rmsnormBackward", name, b, n);
    if (w) need("rmsnormBackward", "w", w, d);
    const gwAcc = new Float64Array(d);
    for (let r = 0; r < rows; r++) {
      const rs = rstd[r]!;
      // y = x * rs * w ; dL/dx = rs * (gw_ - x * rs^2 * mean(gw_ * x)), gw_ = gy * w
      let dot = 0;
      for (let c = 0; c < d; c++) {
        const g = gy[r * d + c]! * (w ? w[c]! : 1);
        dot += g * x[r * d + c]!;
        gwAcc[c]! += gy[r * d + c]! * x[r * d + c]! * rs;
      }
      const coef = (rs * rs * rs * dot) / d;
      for (let c = 0; c < d; c++) {
        const g = gy[r * d + c]! * (w ? w[c]! : 1);
        gx[r * d + c] = rs * g - coef * x[r * d + c]!;
      }
    }
    if (w && gw) {
      need("rmsnormBackward", "gw", gw, d);
      for (let c = 0; c < d; c++) gw[c] = gwAcc[c]!;
    }
  },

  rope(x, out, cos, sin, B, T, H, D, posOffset, inverse) {
    if (D % 2 !== 0) throw new Error(`rope: head dim ${D} must be even`);
    const h = D / 2;
    need("rope", "x", x, B * T * H * D);
    need("rope", "out", out, B * T * H * D);
    need("rope", "cos", cos, (posOffset + T) * h);
    need("rope", "sin", sin, (posOffset + T) * h);
    for (let b = 0; b < B; b++)
      for (let t = 0; t < T; t++) {
        const p = t + posOffset;
        for (let hh = 0; hh < H; hh++) {
          const base = ((b * T + t) * H + hh) * D;
          for (let c = 0; c < h; c++) {
            const co = cos[p * h + c]!;
            const si = inverse ? -sin[p * h + c]! : sin[p * h + c]!;
            const x1 = x[base + c]!;
            const x2 = x[base + c + h]!;
            out[base + c] = x1 * co - x2 * si;
            out[base + c + h] = x2 * co + x1 * si;
          }
        }
      }
  },

  attention(q, k, v, out, lse, B, Tq, Tk, Hq, Hkv, D, scale, causal) {
    if (Hkv <= 0 || Hq % Hkv !== 0) throw new Error(`attention: Hq=${Hq} not a multiple of Hkv=${Hkv}`);
    if (causal && Tq > Tk) throw new Error(`attention: causal needs Tq <= Tk (got ${Tq} > ${Tk})`);
    need("attention", "q", q, B * Tq * Hq * D);
    need("attention", "k", k, B * Tk * Hkv * D);
    need("attention", "v", v, B * Tk * Hkv * D);
    need("attention", "out", out, B * Tq * Hq * D);
    need("attention", "lse", lse, B * Hq * Tq);
    const rep = Hq / Hkv;
    const { last } = attentionRows(Tq, Tk, causal);
    const s = new Float64Array(Tk);
    for (let b = 0; b < B; b++)
      for (let h = 0; h < Hq; h++) {
        const kh = Math.floor(h / rep);
        for (let i = 0; i < Tq; i++) {
          const qo = ((b * Tq + i) * Hq + h) * D;
          const jl = last(i);
          let mx = -Infinity;
          for (let j = 0; j <= jl; j++) {
            const ko = ((b * Tk + j) * Hkv + kh) * D;
            let dot = 0;
            for (let c = 0; c < D; c++) dot += q[qo + c]! * k[ko + c]!;
            s[j] = dot * scale;
            if (s[j]! > mx) mx = s[j]!;
          }
          let z = 0;
          for (let j = 0; j <= jl; j++) z += Math.exp(s[j]! - mx);
          lse[(b * Hq + h) * Tq + i] = mx + Math.log(z);
          for (let c = 0; c < D; c++) {
            let acc = 0;
            for (let j = 0; j <= jl; j++)
              acc += (Math.exp(s[j]! - mx) / z) * v[((b * Tk + j) * Hkv + kh) * D + c]!;
            out[qo + c] = acc;
          }
        }
      }
  },

  attentionBackward(q, k, v, out, lse, gout, gq, gk, gv, B, Tq, Tk, Hq, Hkv, D, scale, causal) {
    if (Hkv <= 0 || Hq % Hkv !== 0)
      throw new Error(`attentionBackward: Hq=${Hq} not a multiple of Hkv=${Hkv}`);
    const kb = "attentionBackward";
    need(kb, "q", q, B * Tq * Hq * D);
    need(kb, "out", out, B * Tq * Hq * D);
    need(kb, "gout", gout, B * Tq * Hq * D);
    need(kb, "gq", gq, B * Tq * Hq * D);
    need(kb, "k", k, B * Tk * Hkv * D);
    need(kb, "v", v, B * Tk * Hkv * D);
    need(kb, "gk", gk, B * Tk * Hkv * D);
    need(kb, "gv", gv, B * Tk * Hkv * D);
    need(kb, "lse", lse, B * Hq * Tq);
    const rep = Hq / Hkv;
    const { last } = attentionRows(Tq, Tk, causal);
    const gkAcc = new Float64Array(B * Tk * Hkv * D);
    const gvAcc = new Float64Array(B * Tk * Hkv * D);
    const p = new Float64Array(Tk);
    for (let b = 0; b < B; b++)
      for (let h = 0; h < Hq; h++) {
        const kh = Math.floor(h / rep);
        for (let i = 0; i < Tq; i++) {
          const qo = ((b * Tq + i) * Hq + h) * D;
          const jl = last(i);
          const L = lse[(b * Hq + h) * Tq + i]!;
          let rowDot = 0; // sum_c gout * out
          for (let c = 0; c < D; c++) rowDot += gout[qo + c]! * out[qo + c]!;
          for (let c = 0; c < D; c++) gq[qo + c] = 0;
          for (let j = 0; j <= jl; j++) {
            const ko = ((b * Tk + j) * Hkv + kh) * D;
            let dot = 0;
            for (let c = 0; c < D; c++) dot += q[qo + c]! * k[ko + c]!;
            p[j] = Math.exp(dot * scale - L);
            let dp = 0;
            for (let c = 0; c < D; c++) dp += gout[qo + c]! * v[ko + c]!;
            const ds = p[j]! * (dp - rowDot);
            for (let c = 0; c < D; c++) {
              gq[qo + c] = gq[qo + c]! + scale * ds * k[ko + c]!;
              gkAcc[ko + c]! += scale * ds * q[qo + c]!;
              gvAcc[ko + c]! += p[j]! * gout[qo + c]!;
            }
          }
        }
      }
    for (let i = 0; i < gkAcc.length; i++) {
      gk[i] = gkAcc[i]!;
      gv[i] = gvAcc[i]!;
    }
  },

  crossEntropy(logits, targets, loss, lse, rows, V, ignoreIndex) {
    need("crossEntropy", "logits", logits, rows * V);
    need("crossEntropy", "targets", targets, rows);
    need("crossEntropy", "loss", loss, rows);
    need("crossEntropy", "lse", lse, rows);
    for (let r = 0; r < rows; r++) {
      let mx = -Infinity;
      for (let c = 0; c < V; c++) mx = Math.max(mx, logits[r * V + c]!);
      let z = 0;
      for (let c = 0; c < V; c++) z += Math.exp(logits[r * V + c]! - mx);
      const L = mx + Math.log(z);
      lse[r] = L;
      const t = targets[r]!;
      if (t === ignoreIndex) loss[r] = 0;
      else if (t < 0 || t >= V) throw new Error(`crossEntropy: target ${t} at row ${r} outside [0, ${V})`);
      else loss[r] = L - logits[r * V + t]!;
    }
  },

  crossEntropyBackward(logits, targets, lse, gloss, glogits, rows, V, ignoreIndex) {
    need("crossEntropyBackward", "logits", logits, rows * V);
    need("crossEntropyBackward", "glogits", glogits, rows * V);
    need("crossEntropyBackward", "targets", targets, rows);
    need("crossEntropyBackward", "lse", lse, rows);
    need("crossEntropyBackward", "gloss", gloss, rows);
    for (let r = 0; r < rows; r++) {
      const t = targets[r]!;
      if (t === ignoreIndex) {
        for (let c = 0; c < V; c++) glogits[r * V + c] = 0;
        continue;
      }
      if (t < 0 || t >= V) throw new Error(`crossEntropyBackward: target ${t} at row ${r} outside [0, ${V})`);
      const g = gloss[r]!;
      const L = lse[r]!;
      for (let c = 0; c < V; c++)
        glogits[r * V + c] = g * (Math.exp(logits[r * V + c]! - L) - (c === t ? 1 : 0));
    }
  },

  gemvMany(x, ws, outs, ns, K) {
    if (ws.length === 0) throw new Error("gemvMany: no weights");
    if (outs.length !== ws.length || ns.length !== ws.length)
      throw new Error(
        `gemvMany: ${ws.length} weights, ${outs.length} outputs and ${ns.length} row counts must be equal in number`,
      );
    need("gemvMany", "x", x, K);
    ws.forEach((w, i) => {
      const N = ns[i]!;
      need("gemvMany", `weight ${i}`, w, N * K);
      need("gemvMany", `out ${i}`, outs[i]!, N);
      for (let n = 0; n < N; n++) {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += w[n * K + k]! * x[k]!;
        outs[i]![n] = acc;
      }
    });
  },
  gemvSwiglu(x, wg, wu, out, N, K) {
    need("gemvSwiglu", "x", x, K);
    need("gemvSwiglu", "wg", wg, N * K);
    need("gemvSwiglu", "wu", wu, N * K);
    need("gemvSwiglu", "out", out, N);
    for (let n = 0; n < N; n++) {
      let g = 0;
      let u = 0;
      for (let k = 0; k < K; k++) {
        g += wg[n * K + k]! * x[k]!;
        u += wu[n * K + k]! * x[k]!;
      }
      out[n] = g * sigmoid(g) * u;
    }
  },
  swiglu(gate, up, out, n) {
    need("swiglu", "gate", gate, n);
    need("swiglu", "up", up, n);
    need("swiglu", "out", out, n);
    for (let i = 0; i < n; i++) {
      const g = gate[i]!;
      out[i] = g * sigmoid(g) * up[i]!;
    }
  },

  swigluBackward(gate, up, gout, ggate, gup, n) {
    for (const [name, b] of [
      ["gate", gate],
      ["up", up],
      ["gout", gout],
      ["ggate", ggate],
      ["gup", gup],
    ] as const)
      need("swigluBackward", name, b, n);
    for (let i = 0; i < n; i++) {
      const g = gate[i]!;
      const u = up[i]!;
      const go = gout[i]!;
      const s = sigmoid(g);
      ggate[i] = go * u * s * (1 + g * (1 - s));
      gup[i] = go * g * s;
    }
  },

  depthRoute(sources, w, g, out, alpha, rstd, rows, d, eps, base, next, prior) {
    const op = "depthRoute";
    const N = sources.length;
    if (N === 0) throw new Error(`${op}: no sources`);
    if (next && prior)
      throw new Error(`${op}: a call cannot both continue a prior sum and start the next call's`);
    if (base) need(op, "base", base, rows * d);
    const n0 = prior ? prior.n : 0; // sources read here: n0 … N−1
    if (prior && !(Number.isInteger(n0) && n0 >= 1 && n0 <= N))
      throw new Error(`${op}: prior.n must be in [1, ${N}], got ${n0}`);
    sources.forEach((s, i) => {
      if (i >= n0) need(op, `source ${i}`, s, rows * d);
    });
    need(op, "w", w, d);
    need(op, "g", g, d);
    need(op, "out", out, rows * d);
    need(op, "alpha", alpha, rows * N);
    need(op, "rstd", rstd, rows * N);
    if (next) {
      need(op, "next.w", next.w, d);
      need(op, "next.g", next.g, d);
      need(op, "next.acc", next.acc, rows * d);
      need(op, "next.stats", next.stats, rows * 2);
      need(op, "next.logits", next.logits, rows * N);
      need(op, "next.rstd", next.rstd, rows * N);
    }
    if (prior) {
      need(op, "prior.acc", prior.acc, rows * d);
      need(op, "prior.stats", prior.stats, rows * 2);
      need(op, "prior.logits", prior.logits, rows * n0);
      need(op, "prior.rstd", prior.rstd, rows * n0);
    }
    // logit of source i's row r under query wq and gain gq, given its rstd
    const logit = (i: number, r: number, rs: number, wq: Buf, gq: Buf): number => {
      let dot = 0;
      for (let c = 0; c < d; c++) dot += wq[c]! * sources[i]![r * d + c]! * rs * gq[c]!;
      return dot;
    };
    const l = new Float64Array(N);
    for (let r = 0; r < rows; r++) {
      for (let i = n0; i < N; i++) {
        const s = sources[i]!;
        let ss = 0;
        for (let c = 0; c < d; c++) ss += s[r * d + c]! * s[r * d + c]!;
        rstd[r * N + i] = 1 / Math.sqrt(ss / d + eps);
        l[i] = logit(i, r, rstd[r * N + i]!, w, g);
      }
      // the prior's sources: their logits and rstd as the earlier call wrote them
      for (let i = 0; i < n0; i++) {
        l[i] = prior!.logits[r * n0 + i]!;
        rstd[r * N + i] = prior!.rstd[r * n0 + i]!;
      }
      const m0 = prior ? prior.stats[2 * r]! : -Infinity;
      let mx = m0;
      for (let i = n0; i < N; i++) if (l[i]! > mx) mx = l[i]!;
      let z = prior ? prior.stats[2 * r + 1]! * Math.exp(m0 - mx) : 0;
      for (let i = n0; i < N; i++) z += Math.exp(l[i]! - mx);
      for (let i = 0; i < N; i++) alpha[r * N + i] = Math.exp(l[i]! - mx) / z;
      const priorWeight = prior ? Math.exp(m0 - mx) / z : 0;
      for (let c = 0; c < d; c++) {
        let acc = prior ? priorWeight * prior.acc[r * d + c]! : 0;
        for (let i = n0; i < N; i++) acc += alpha[r * N + i]! * sources[i]![r * d + c]!;
        out[r * d + c] = base ? base[r * d + c]! + acc : acc;
      }
      if (next) {
        for (let i = 0; i < N; i++) {
          next.rstd[r * N + i] = rstd[r * N + i]!;
          next.logits[r * N + i] = logit(i, r, rstd[r * N + i]!, next.w, next.g);
        }
        let m = -Infinity;
        for (let i = 0; i < N; i++) m = Math.max(m, next.logits[r * N + i]!);
        let z2 = 0;
        for (let i = 0; i < N; i++) z2 += Math.exp(next.logits[r * N + i]! - m);
        next.stats[2 * r] = m;
        next.stats[2 * r + 1] = z2;
        for (let c = 0; c < d; c++) {
          let acc = 0;
          for (let i = 0; i < N; i++) acc += Math.exp(next.logits[r * N + i]! - m) * sources[i]![r * d + c]!;
          next.acc[r * d + c] = acc;
        }
      }
    }
  },

  decodeAttention(q, k, v, qNorm, kNorm, eps, cos, sin, kCache, vCache, pos, out, Hq, Hkv, D, scale) {
    // The composition of the kernels it fuses: per-head rmsnorm, rope at pos, the cache write, attention.
    const op = "decodeAttention";
    if (Hkv <= 0 || Hq % Hkv !== 0) throw new Error(`${op}: Hq=${Hq} not a multiple of Hkv=${Hkv}`);
    if (!Number.isInteger(pos) || pos < 0) throw new Error(`${op}: bad position ${pos}`);
    const row = Hkv * D;
    need(op, "q", q, Hq * D);
    need(op, "k", k, row);
    need(op, "v", v, row);
    need(op, "kCache", kCache, (pos + 1) * row);
    need(op, "vCache", vCache, (pos + 1) * row);
    need(op, "out", out, Hq * D);
    const like = (n: number): Buf => (q instanceof Float32Array ? new Float32Array(n) : new Float64Array(n));
    const normRope = (x: Buf, w: Buf | null, H: number, dst: Buf): void => {
      const normed = like(H * D);
      if (w) referenceBackend.rmsnorm(x, w, normed, like(H), H, D, eps);
      else normed.set(x.subarray(0, H * D));
      referenceBackend.rope(normed, dst, cos, sin, 1, 1, H, D, pos, false);
    };
    normRope(k, kNorm, Hkv, kCache.subarray(pos * row, (pos + 1) * row));
    vCache.set(v.subarray(0, row), pos * row);
    const qr = like(Hq * D);
    normRope(q, qNorm, Hq, qr);
    referenceBackend.attention(qr, kCache, vCache, out, like(Hq), 1, 1, pos + 1, Hq, Hkv, D, scale, true);
  },

  decodeRoute(sources, N, w, g, h, gate, out, d, eps) {
    // depthRoute on one row whose sources are the rows of one buffer, then h + gate · r.
    if (N < 1) throw new Error("decodeRoute: no sources");
    need("decodeRoute", "sources", sources, N * d);
    need("decodeRoute", "h", h, d);
    need("decodeRoute", "out", out, d);
    const rows = Array.from({ length: N }, (_, i) => sources.subarray(i * d, (i + 1) * d));
    const r = new Float64Array(d);
    referenceBackend.depthRoute(rows, w, g, r, new Float64Array(N), new Float64Array(N), 1, d, eps, null);
    for (let c = 0; c < d; c++) out[c] = h[c]! + gate * r[c]!;
  },

  depthRouteBackward(sources, w, g, alpha, rstd, gout, gsources, gw, gg, rows, d) {
    const N = sources.length;
    const k = "depthRouteBackward";
    if (gsources.length !== N) throw new Error(`${k}: ${gsources.length} gradient buffers for ${N} sources`);
    sources.forEach((s, i) => need(k, `source ${i}`, s, rows * d));
    gsources.forEach((s, i) => s && need(k, `gsource ${i}`, s, rows * d));
    for (const [name, b, n] of [
      ["w", w, d],
      ["g", g, d],
      ["gw", gw, d],
      ["gg", gg, d],
      ["alpha", alpha, rows * N],
      ["rstd", rstd, rows * N],
      ["gout", gout, rows * d],
    ] as const)
      need(k, name, b, n);
    const gwAcc = new Float64Array(d);
    const ggAcc = new Float64Array(d);
    const da = new Float64Array(N);
    for (let r = 0; r < rows; r++) {
      // dL/dalpha_i = gout . s_i ; dL/dl_i = alpha_i (dalpha_i - sum_j alpha_j dalpha_j)
      let mean = 0;
      for (let i = 0; i < N; i++) {
        const s = sources[i]!;
        let dot = 0;
        for (let c = 0; c < d; c++) dot += gout[r * d + c]! * s[r * d + c]!;
        da[i] = dot;
        mean += alpha[r * N + i]! * dot;
      }
      for (let i = 0; i < N; i++) {
        const s = sources[i]!;
        const a = alpha[r * N + i]!;
        const dl = a * (da[i]! - mean);
        const rs = rstd[r * N + i]!;
        // k = s * rs * g ; dk = dl * w ; rmsnorm backward through rs
        let dot = 0; // sum_c dk_c g_c s_c
        for (let c = 0; c < d; c++) {
          const sc = s[r * d + c]!;
          gwAcc[c]! += dl * sc * rs * g[c]!;
          ggAcc[c]! += dl * w[c]! * sc * rs;
          dot += dl * w[c]! * g[c]! * sc;
        }
        const gs = gsources[i];
        if (!gs) continue;
        const coef = (rs * rs * rs * dot) / d;
        for (let c = 0; c < d; c++) {
          const sc = s[r * d + c]!;
          gs[r * d + c] = gs[r * d + c]! + a * gout[r * d + c]! + rs * dl * w[c]! * g[c]! - coef * sc;
        }
      }
    }
    for (let c = 0; c < d; c++) {
      gw[c] = gwAcc[c]!;
      gg[c] = ggAcc[c]!;
    }
  },

  depthRouteSourceBackward(
    source,
    gsource,
    accumulate,
    gouts,
    alphas,
    rstds,
    meta,
    cs,
    ws,
    gs,
    ps,
    rows,
    d,
    init,
    outs,
    bases,
    pair,
  ) {
    const k = "depthRouteSourceBackward";
    const K = gouts.length;
    if (pair) {
      // the first source (computing each call's c where asked), then the pair's source with the same
      // calls at its own columns, c now known: the same sums as one pass over both
      if (!gsource) throw new Error(`${k}: a pair needs the first source's gsource too`);
      need(k, "pair cols", pair.cols, K);
      need(k, "pair gsource", pair.gsource, rows * d);
      const once = (src: Buf, gsrc: Buf, acc: boolean, m: Int32Array, first: Buf | null) =>
        referenceBackend.depthRouteSourceBackward(
          src,
          gsrc,
          acc,
          gouts,
          alphas,
          rstds,
          m,
          cs,
          ws,
          gs,
          ps,
          rows,
          d,
          first,
          outs,
          bases,
        );
      once(source, gsource, accumulate, meta, init);
      const meta2 = new Int32Array(3 * K);
      for (let j = 0; j < K; j++) {
        const col2 = pair.cols[j]!;
        if (col2 === meta[3 * j])
          throw new Error(`${k}: consumer ${j} has pair column ${col2}, the first source's column`);
        meta2[3 * j] = col2;
        meta2[3 * j + 1] = meta[3 * j + 1]!;
      }
      once(pair.source, pair.gsource, false, meta2, null);
      return;
    }
    for (const [name, list] of [
      ["alphas", alphas],
      ["rstds", rstds],
      ["cs", cs],
      ["ws", ws],
      ["gs", gs],
      ["ps", ps],
      ["outs", outs],
      ["bases", bases],
    ] as const)
      if (list.length !== K) throw new Error(`${k}: ${list.length} ${name} for ${K} gradients`);
    need(k, "meta", meta, 3 * K);
    need(k, "source", source, rows * d);
    if (gsource) need(k, "gsource", gsource, rows * d);
    if (init) need(k, "init", init, rows * d);
    for (let j = 0; j < K; j++) {
      const col = meta[3 * j]!;
      const N = meta[3 * j + 1]!;
      if (!(N > 0 && col >= 0 && col < N)) throw new Error(`${k}: consumer ${j} has column ${col} of ${N}`);
      if (meta[3 * j + 2]) {
        // c_j = gout_j . (out_j - base_j) per row, before any use
        const [o, b] = [outs[j]!, bases[j] ?? null];
        need(k, `out ${j}`, o, rows * d);
        if (b) need(k, `base ${j}`, b, rows * d);
        const c = cs[j]!;
        const go = gouts[j]!;
        need(k, `gout ${j}`, go, rows * d);
        need(k, `c ${j}`, c, rows);
        for (let r = 0; r < rows; r++) {
          let dot = 0;
          for (let x = r * d; x < r * d + d; x++) dot += go[x]! * (o[x]! - (b ? b[x]! : 0));
          c[r] = dot;
        }
      }
      need(k, `gout ${j}`, gouts[j]!, rows * d);
      need(k, `alpha ${j}`, alphas[j]!, rows * N);
      need(k, `rstd ${j}`, rstds[j]!, rows * N);
      need(k, `c ${j}`, cs[j]!, rows);
      need(k, `w ${j}`, ws[j]!, d);
      need(k, `g ${j}`, gs[j]!, d);
      need(k, `p ${j}`, ps[j]!, d);
    }
    const acc = new Float64Array(d);
    const pAcc = Array.from({ length: K }, () => new Float64Array(d));
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      acc.fill(0);
      let coef = 0;
      for (let j = 0; j < K; j++) {
        const col = meta[3 * j]!;
        const N = meta[3 * j + 1]!;
        const go = gouts[j]!;
        const w = ws[j]!;
        const g = gs[j]!;
        let da = 0;
        let dq = 0;
        for (let c = 0; c < d; c++) {
          da += go[o + c]! * source[o + c]!;
          dq += w[c]! * g[c]! * source[o + c]!;
        }
        const a = alphas[j]![r * N + col]!;
        const rs = rstds[j]![r * N + col]!;
        const dli = N === 1 ? 0 : rs * a * (da - cs[j]![r]!); // one source: alpha ≡ 1
        coef += (rs * rs * dli * dq) / d;
        const p = pAcc[j]!;
        for (let c = 0; c < d; c++) {
          p[c]! += dli * source[o + c]!;
          acc[c]! += a * go[o + c]! + dli * w[c]! * g[c]!;
        }
      }
      if (!gsource) continue;
      for (let c = 0; c < d; c++) {
        const v = acc[c]! - coef * source[o + c]!;
        gsource[o + c] = (accumulate ? gsource[o + c]! : init ? init[o + c]! : 0) + v;
      }
    }
    for (let j = 0; j < K; j++) {
      const p = ps[j]!;
      for (let c = 0; c < d; c++) p[c] = p[c]! + pAcc[j]![c]!;
    }
  },

  rowDot(a, b, out, rows, d) {
    need("rowDot", "a", a, rows * d);
    need("rowDot", "b", b, rows * d);
    need("rowDot", "out", out, rows);
    for (let r = 0; r < rows; r++) {
      let dot = 0;
      for (let c = 0; c < d; c++) dot += a[r * d + c]! * b[r * d + c]!;
      out[r] = dot;
    }
  },

  ddlRead(X, C, x, rows, d, dv) {
    need("ddlRead", "X", X, rows * d * dv);
    need("ddlRead", "C", C, d * dv);
    need("ddlRead", "x", x, rows * d);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < d; i++) {
        let acc = 0;
        for (let c = 0; c < dv; c++) acc += X[(r * d + i) * dv + c]! * C[i * dv + c]!;
        x[r * d + i] = acc;
      }
  },

  ddlReadBackward(X, C, gx, gX, gC, rows, d, dv) {
    const k = "ddlReadBackward";
    need(k, "X", X, rows * d * dv);
    need(k, "C", C, d * dv);
    need(k, "gx", gx, rows * d);
    need(k, "gC", gC, d * dv);
    if (gX) need(k, "gX", gX, rows * d * dv);
    const acc = new Float64Array(d * dv);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < d; i++) {
        const g = gx[r * d + i]!;
        for (let c = 0; c < dv; c++) {
          const at = (r * d + i) * dv + c;
          acc[i * dv + c]! += g * X[at]!;
          if (gX) gX[at] = gX[at]! + g * C[i * dv + c]!;
        }
      }
    for (let j = 0; j < d * dv; j++) gC[j] = acc[j]!;
  },

  ddlUpdate(X, k, beta, v, Y, rows, d, dv, C, x) {
    for (const [name, b, n] of [
      ["X", X, rows * d * dv],
      ["k", k, rows * d],
      ["beta", beta, rows],
      ["v", v, rows * dv],
      ["Y", Y, rows * d * dv],
    ] as const)
      need("ddlUpdate", name, b, n);
    if ((C === null) !== (x === null))
      throw new Error("ddlUpdate: C and x must both be given or both be null");
    const delta = new Float64Array(dv);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < dv; c++) {
        let kx = 0;
        for (let i = 0; i < d; i++) kx += k[r * d + i]! * X[(r * d + i) * dv + c]!;
        delta[c] = v[r * dv + c]! - kx;
      }
      const b = beta[r]!;
      for (let i = 0; i < d; i++)
        for (let c = 0; c < dv; c++) {
          const at = (r * d + i) * dv + c;
          Y[at] = X[at]! + b * k[r * d + i]! * delta[c]!;
        }
    }
    if (C !== null && x !== null) referenceBackend.ddlRead(Y, C, x, rows, d, dv);
  },

  ddlUpdateBackward(X, k, beta, v, gY, gX, accumulate, gk, gbeta, gv, rows, d, dv) {
    const n = "ddlUpdateBackward";
    for (const [name, b, len] of [
      ["X", X, rows * d * dv],
      ["k", k, rows * d],
      ["beta", beta, rows],
      ["v", v, rows * dv],
      ["gY", gY, rows * d * dv],
      ["gk", gk, rows * d],
      ["gbeta", gbeta, rows],
      ["gv", gv, rows * dv],
    ] as const)
      need(n, name, b, len);
    if (gX) need(n, "gX", gX, rows * d * dv);
    const delta = new Float64Array(dv);
    const s = new Float64Array(dv);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < dv; c++) {
        let kx = 0;
        let ks = 0;
        for (let i = 0; i < d; i++) {
          const at = (r * d + i) * dv + c;
          kx += k[r * d + i]! * X[at]!;
          ks += k[r * d + i]! * gY[at]!;
        }
        delta[c] = v[r * dv + c]! - kx;
        s[c] = ks;
      }
      const b = beta[r]!;
      let gb = 0;
      for (let c = 0; c < dv; c++) {
        gb += delta[c]! * s[c]!;
        gv[r * dv + c] = b * s[c]!;
      }
      gbeta[r] = gb;
      for (let i = 0; i < d; i++) {
        let acc = 0;
        const ki = k[r * d + i]!;
        for (let c = 0; c < dv; c++) {
          const at = (r * d + i) * dv + c;
          acc += gY[at]! * delta[c]! - X[at]! * s[c]!;
          if (gX) gX[at] = (accumulate ? gX[at]! : 0) + gY[at]! - b * ki * s[c]!;
        }
        gk[r * d + i] = b * acc;
      }
    }
  },

  ddlStep(x, u, c, wb, bb, wv, bv, y, beta, aux, rows, d, eps2, vFromStream) {
    for (const [name, b, n] of [
      ["x", x, rows * d],
      ["u", u, rows * d],
      ["c", c, rows * d],
      ["wb", wb, d],
      ["bb", bb, 1],
      ["wv", wv, d],
      ["bv", bv, 1],
      ["y", y, rows * d],
      ["beta", beta, rows],
      ["aux", aux, rows * 3],
    ] as const)
      need("ddlStep", name, b, n);
    const vin = vFromStream ? x : c;
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      let uu = 0;
      let ux = 0;
      let zb = bb[0]!;
      let zv = bv[0]!;
      for (let i = 0; i < d; i++) {
        uu += u[o + i]! * u[o + i]!;
        ux += u[o + i]! * x[o + i]!;
        zb += wb[i]! * c[o + i]!;
        zv += wv[i]! * vin[o + i]!;
      }
      const rs = 1 / Math.sqrt(uu + eps2);
      const b = 2 / (1 + Math.exp(-zb));
      const v = vFromStream ? 4 / (1 + Math.exp(-zv)) : zv;
      const kx = rs * ux;
      const f = b * (v - kx) * rs;
      for (let i = 0; i < d; i++) y[o + i] = x[o + i]! + f * u[o + i]!;
      beta[r] = b;
      aux[3 * r] = rs;
      aux[3 * r + 1] = v;
      aux[3 * r + 2] = kx;
    }
  },

  ddlStepBackward(
    x,
    u,
    c,
    wb,
    wv,
    beta,
    aux,
    gy,
    gx,
    gu,
    gc,
    accumulate,
    gwb,
    gbb,
    gwv,
    gbv,
    rows,
    d,
    vFromStream,
  ) {
    const n = "ddlStepBackward";
    for (const [name, b, len] of [
      ["x", x, rows * d],
      ["u", u, rows * d],
      ["c", c, rows * d],
      ["wb", wb, d],
      ["wv", wv, d],
      ["beta", beta, rows],
      ["aux", aux, rows * 3],
      ["gy", gy, rows * d],
      ["gwb", gwb, d],
      ["gbb", gbb, 1],
      ["gwv", gwv, d],
      ["gbv", gbv, 1],
    ] as const)
      need(n, name, b, len);
    if (gx) need(n, "gx", gx, rows * d);
    if (gu) need(n, "gu", gu, rows * d);
    if (gc) need(n, "gc", gc, rows * d);
    gwb.fill(0);
    gwv.fill(0);
    let sb = 0;
    let sv = 0;
    const vin = vFromStream ? x : c;
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      const rs = aux[3 * r]!;
      const v = aux[3 * r + 1]!;
      const kx = aux[3 * r + 2]!;
      const b = beta[r]!;
      let ug = 0;
      for (let i = 0; i < d; i++) ug += u[o + i]! * gy[o + i]!;
      const s = rs * ug; // k·gy
      const delta = v - kx;
      const gzb = delta * s * b * (1 - b / 2);
      const gzv = vFromStream ? b * s * v * (1 - v / 4) : b * s;
      sb += gzb;
      sv += gzv;
      // gu = r β (δ gy − s x − s (δ − kx) r u)
      const fu = rs * b;
      const fuu = s * (delta - kx) * rs;
      for (let i = 0; i < d; i++) {
        const k = rs * u[o + i]!;
        const gxi = gy[o + i]! - b * s * k + (vFromStream ? gzv * wv[i]! : 0);
        const gui = fu * (delta * gy[o + i]! - s * x[o + i]! - fuu * u[o + i]!);
        const gci = gzb * wb[i]! + (vFromStream ? 0 : gzv * wv[i]!);
        if (gx) gx[o + i] = (accumulate & 1 ? gx[o + i]! : 0) + gxi;
        if (gu) gu[o + i] = (accumulate & 2 ? gu[o + i]! : 0) + gui;
        if (gc) gc[o + i] = (accumulate & 4 ? gc[o + i]! : 0) + gci;
        gwb[i] = gwb[i]! + gzb * c[o + i]!;
        gwv[i] = gwv[i]! + gzv * vin[o + i]!;
      }
    }
    gbb[0] = sb;
    gbv[0] = sv;
  },

  adamw(p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2) {
    for (const [name, b] of [
      ["p", p],
      ["g", g],
      ["m", m],
      ["v", v],
    ] as const)
      need("adamw", name, b, n);
    const stepSize = lr / bc1;
    const sbc2 = Math.sqrt(bc2);
    const decay = 1 - lr * wd;
    for (let i = 0; i < n; i++) {
      const gi = g[i]!;
      p[i] = p[i]! * decay;
      m[i] = beta1 * m[i]! + (1 - beta1) * gi;
      v[i] = beta2 * v[i]! + (1 - beta2) * gi * gi;
      p[i] = p[i]! - (stepSize * m[i]!) / (Math.sqrt(v[i]!) / sbc2 + eps);
    }
  },
};
