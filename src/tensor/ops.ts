/**
 * The op set. Each op validates its inputs (errors name the op and the shapes), computes its
 * output eagerly with backend kernels, and records a GradFn whose backward is written in terms of
 * other ops/kernels. Everything in the model is built from these:
 *
 *   linear algebra  matmul (batched, transposes, broadcast batch)
 *   elementwise     add sub mul div maximum minimum (broadcasting); neg exp log sqrt rsqrt sigmoid
 *                   silu square abs; scale
 *   reductions      sum mean max (any axes, keepdim)
 *   shape           reshape permute transpose slice concat stack expand
 *   fused           embedding rmsnorm rope attention crossEntropy swiglu route (depth routing)
 *                   ddlRead ddlUpdate ddlUpdateRead (ddl-expanded state) ddlStep (ddl's whole update)
 *   composite       softmax
 */
import type { BinaryOp, Buf, DType, UnaryOp } from "../backend/backend.js";
import {
  broadcastShapes,
  broadcastStrides,
  contiguousStrides,
  fmt,
  normAxis,
  sameShape,
  sizeOf,
  type Shape,
} from "./shape.js";
import {
  clone,
  type DeferGroup,
  type Deferred,
  empty,
  full,
  noGrad,
  record,
  scalar,
  Tensor,
  zeros,
} from "./tensor.js";
import { track } from "./memory.js";

function like(t: Tensor, shape: Shape): Tensor {
  return empty(shape, { backend: t.backend, dtype: t.dtype });
}

function checkSame(op: string, ...ts: Tensor[]): void {
  const a = ts[0]!;
  for (const t of ts.slice(1)) {
    if (t.backend !== a.backend)
      throw new Error(`${op}: inputs live on different backends (${a.backend.name} and ${t.backend.name})`);
    if (t.dtype !== a.dtype)
      throw new Error(`${op}: inputs have different dtypes (${a.dtype} and ${t.dtype})`);
  }
}

// ================================================================== matmul

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
}

/** Runs C_b = op(A_b) op(B_b) for b < batch; when sumBatch, all products are summed into one C. */
function gemmInto(
  tA: boolean,
  tB: boolean,
  batch: number,
  M: number,
  N: number,
  K: number,
  A: Buf,
  sA: number,
  B: Buf,
  sB: number,
  C: Tensor,
  sumBatch: boolean,
): void {
  const be = C.backend;
  const lda = tA ? M : K;
  const ldb = tB ? K : N;
  if (K === 0) {
    be.fill(C.data, 0, C.size);
    return;
  }
  if (!sumBatch) {
    be.gemm(tA, tB, batch, M, N, K, 1, A, 0, lda, sA, B, 0, ldb, sB, 0, C.data, 0, N, M * N);
    return;
  }
  for (let b = 0; b < batch; b++)
    be.gemm(tA, tB, 1, M, N, K, 1, A, b * sA, lda, 0, B, b * sB, ldb, 0, b === 0 ? 0 : 1, C.data, 0, N, 0);
}

/**
 * op(a) @ op(b) over the last two dims. a: [...batch, M, K] ([..., K, M] when transA);
 * b: [...batch, K, N] ([..., N, K] when transB). Batch dims must be equal, or one side's batch
 * must be all ones/absent (it is then shared by every batch item, like a weight matrix).
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const op = "matmul";
  checkSame(op, a, b);
  const tA = opts.transA ?? false;
  const tB = opts.transB ?? false;
  if (a.rank < 2 || b.rank < 2)
    throw new Error(`${op}: both inputs need rank >= 2 (got ${fmt(a.shape)} and ${fmt(b.shape)})`);
  const [r0, r1] = a.shape.slice(-2) as [number, number];
  const [s0, s1] = b.shape.slice(-2) as [number, number];
  const M = tA ? r1 : r0;
  const K = tA ? r0 : r1;
  const K2 = tB ? s1 : s0;
  const N = tB ? s0 : s1;
  if (K !== K2)
    throw new Error(
      `${op}: inner dimensions differ: ${fmt(a.shape)}${tA ? "ᵀ" : ""} @ ${fmt(b.shape)}${tB ? "ᵀ" : ""} (${K} vs ${K2})`,
    );
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const nA = sizeOf(batchA);
  const nB = sizeOf(batchB);
  let batchShape: number[];
  if (nB === 1 && batchB.length <= batchA.length) batchShape = [...batchA];
  else if (nA === 1 && batchA.length <= batchB.length) batchShape = [...batchB];
  else if (sameShape(batchA, batchB)) batchShape = [...batchA];
  else throw new Error(`${op}: batch dimensions of ${fmt(a.shape)} and ${fmt(b.shape)} do not match`);
  const batch = sizeOf(batchShape);
  const sA = nA === 1 && batch > 1 ? 0 : M * K;
  const sB = nB === 1 && batch > 1 ? 0 : K * N;
  const out = like(a, [...batchShape, M, N]);
  // A weight shared by all batch items with a non-transposed A folds into one big GEMM.
  const fold = sB === 0 && !tA;
  if (fold) gemmInto(false, tB, 1, batch * M, N, K, a.data, 0, b.data, 0, out, false);
  else gemmInto(tA, tB, batch, M, N, K, a.data, sA, b.data, sB, out, false);

  return record(out, op, [a, b], (g) => {
    let ga: Tensor | null = null;
    let gb: Tensor | null = null;
    if (a.requiresGrad) {
      ga = like(a, a.shape);
      if (fold) gemmInto(false, !tB, 1, batch * M, K, N, g.data, 0, b.data, 0, ga, false);
      else if (!tA) gemmInto(false, !tB, batch, M, K, N, g.data, M * N, b.data, sB, ga, sA === 0);
      else gemmInto(tB, true, batch, K, M, N, b.data, sB, g.data, M * N, ga, sA === 0);
    }
    if (b.requiresGrad) {
      gb = like(b, b.shape);
      if (fold) {
        if (!tB) gemmInto(true, false, 1, K, N, batch * M, a.data, 0, g.data, 0, gb, false);
        else gemmInto(true, false, 1, N, K, batch * M, g.data, 0, a.data, 0, gb, false);
      } else if (!tB) gemmInto(!tA, false, batch, K, N, M, a.data, sA, g.data, M * N, gb, sB === 0);
      else gemmInto(true, tA, batch, N, K, M, g.data, M * N, a.data, sA, gb, sB === 0);
    }
    return [ga, gb];
  });
}

// ================================================================== elementwise

/** Sums g over the axes along which `shape` was broadcast to g.shape, giving a tensor of `shape`. */
export function reduceTo(g: Tensor, shape: Shape): Tensor {
  if (sameShape(g.shape, shape)) return g;
  const off = g.rank - shape.length;
  const axes: number[] = [];
  for (let k = 0; k < g.rank; k++) if (k < off || (shape[k - off] === 1 && g.shape[k] !== 1)) axes.push(k);
  const s = sum(g, axes, true);
  return reshape(s, shape);
}

function binary(op: BinaryOp, a: Tensor, bIn: Tensor | number): Tensor {
  const b = typeof bIn === "number" ? scalar(bIn, a) : bIn;
  checkSame(op, a, b);
  const shape = broadcastShapes(op, a.shape, b.shape);
  const out = like(a, shape);
  a.backend.binary(
    op,
    a.data,
    broadcastStrides(a.shape, shape),
    b.data,
    broadcastStrides(b.shape, shape),
    out.data,
    shape,
  );
  return out;
}

export function add(a: Tensor, b: Tensor | number): Tensor {
  const out = binary("add", a, b);
  const bt = typeof b === "number" ? null : b;
  return record(out, "add", bt ? [a, bt] : [a], (g) => [
    reduceTo(g, a.shape),
    bt ? reduceTo(g, bt.shape) : null,
  ]);
}

export function sub(a: Tensor, b: Tensor | number): Tensor {
  const out = binary("sub", a, b);
  const bt = typeof b === "number" ? null : b;
  return record(out, "sub", bt ? [a, bt] : [a], (g) => [
    reduceTo(g, a.shape),
    bt?.requiresGrad ? reduceTo(neg(g), bt.shape) : null,
  ]);
}

export function mul(a: Tensor, b: Tensor | number): Tensor {
  const out = binary("mul", a, b);
  if (typeof b === "number") return record(out, "mul", [a], (g) => [binary("mul", g, b)]);
  return record(out, "mul", [a, b], (g) => [
    a.requiresGrad ? reduceTo(binary("mul", g, b), a.shape) : null,
    b.requiresGrad ? reduceTo(binary("mul", g, a), b.shape) : null,
  ]);
}

export function div(a: Tensor, b: Tensor | number): Tensor {
  const out = binary("div", a, b);
  if (typeof b === "number") return record(out, "div", [a], (g) => [binary("div", g, b)]);
  return record(out, "div", [a, b], (g) => [
    a.requiresGrad ? reduceTo(binary("div", g, b), a.shape) : null,
    // d(a/b)/db = -out/b
    b.requiresGrad ? reduceTo(binary("mul", binary("div", g, b), binary("mul", out, -1)), b.shape) : null,
  ]);
}

/** out = x * s for a constant s. */
export function scale(x: Tensor, s: number): Tensor {
  return mul(x, s);
}

function minmax(op: "max" | "min", a: Tensor, b: Tensor): Tensor {
  const out = binary(op, a, b);
  return record(out, op === "max" ? "maximum" : "minimum", [a, b], (g) => {
    // The gradient goes to a where out == a, else to b: it is conserved even on ties.
    const ma = binary("eq", out, a);
    const ga = binary("mul", g, ma);
    return [
      a.requiresGrad ? reduceTo(ga, a.shape) : null,
      b.requiresGrad ? reduceTo(binary("sub", g, ga), b.shape) : null,
    ];
  });
}

export const maximum = (a: Tensor, b: Tensor): Tensor => minmax("max", a, b);
export const minimum = (a: Tensor, b: Tensor): Tensor => minmax("min", a, b);

function unary(op: UnaryOp, x: Tensor): Tensor {
  const out = like(x, x.shape);
  x.backend.unary(op, x.data, out.data, x.size);
  return record(out, op, [x], (g) => {
    const gx = like(x, x.shape);
    x.backend.unaryGrad(op, x.data, out.data, g.data, gx.data, x.size);
    return [gx];
  });
}

export const neg = (x: Tensor): Tensor => unary("neg", x);
export const exp = (x: Tensor): Tensor => unary("exp", x);
export const log = (x: Tensor): Tensor => unary("log", x);
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
export const rsqrt = (x: Tensor): Tensor => unary("rsqrt", x);
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
export const silu = (x: Tensor): Tensor => unary("silu", x);
export const square = (x: Tensor): Tensor => unary("square", x);
export const abs = (x: Tensor): Tensor => unary("abs", x);

// ================================================================== reductions

function reduceAxes(op: string, x: Tensor, axes?: number | readonly number[]): number[] {
  if (axes === undefined) return x.shape.map((_, i) => i);
  const list = typeof axes === "number" ? [axes] : [...axes];
  const norm = [...new Set(list.map((a) => normAxis(op, a, x.rank)))];
  return norm.sort((p, q) => p - q);
}

function reducedShape(x: Tensor, axes: number[], keepdim: boolean): number[] {
  return keepdim
    ? x.shape.map((s, i) => (axes.includes(i) ? 1 : s))
    : x.shape.filter((_, i) => !axes.includes(i));
}

/** Broadcasts x (whose shape broadcasts to `shape`) into a new contiguous tensor of `shape`. */
export function expand(x: Tensor, shape: Shape): Tensor {
  broadcastShapes("expand", x.shape, shape);
  if (sameShape(x.shape, shape)) return x;
  const out = like(x, shape);
  x.backend.copy(
    x.data,
    0,
    broadcastStrides(x.shape, shape),
    out.data,
    0,
    contiguousStrides(shape),
    shape,
    false,
  );
  return record(out, "expand", [x], (g) => [reduceTo(g, x.shape)]);
}

export function sum(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  const ax = reduceAxes("sum", x, axes);
  const kept = reducedShape(x, ax, true);
  const out = like(x, kept);
  x.backend.reduce("sum", x.data, x.shape, ax, out.data);
  const res = keepdim ? out : out.view(reducedShape(x, ax, false));
  return record(res, "sum", [x], (g) => [expand(g.view(kept), x.shape)]);
}

export function mean(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  const ax = reduceAxes("mean", x, axes);
  const count = ax.reduce((p, a) => p * x.shape[a]!, 1);
  return scale(sum(x, ax, keepdim), 1 / count);
}

export function max(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  const ax = reduceAxes("max", x, axes);
  const kept = reducedShape(x, ax, true);
  const out = like(x, kept);
  x.backend.reduce("max", x.data, x.shape, ax, out.data);
  const res = keepdim ? out : out.view(reducedShape(x, ax, false));
  return record(res, "max", [x], (g) => [binary("mul", binary("eq", x, out), g.view(kept))]);
}

// ================================================================== shape ops

export function reshape(x: Tensor, shape: Shape): Tensor {
  const infer = shape.indexOf(-1);
  const target = [...shape];
  if (infer >= 0) {
    const rest = sizeOf(shape.filter((_, i) => i !== infer));
    if (rest === 0 || x.size % rest !== 0)
      throw new Error(`reshape: cannot reshape ${fmt(x.shape)} into ${fmt(shape)}`);
    target[infer] = x.size / rest;
  }
  if (sizeOf(target) !== x.size)
    throw new Error(`reshape: cannot reshape ${fmt(x.shape)} into ${fmt(shape)}`);
  const out = x.view(target);
  return record(out, "reshape", [x], (g) => [g.view(x.shape)]);
}

export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const op = "permute";
  const d = dims.map((a) => normAxis(op, a, x.rank));
  if (d.length !== x.rank || new Set(d).size !== d.length)
    throw new Error(`${op}: ${fmt(dims)} is not a permutation of the ${x.rank} dims of ${fmt(x.shape)}`);
  const shape = d.map((a) => x.shape[a]!);
  const xs = contiguousStrides(x.shape);
  const out = like(x, shape);
  x.backend.copy(
    x.data,
    0,
    d.map((a) => xs[a]!),
    out.data,
    0,
    contiguousStrides(shape),
    shape,
    false,
  );
  const inv = new Array<number>(d.length);
  d.forEach((a, i) => (inv[a] = i));
  return record(out, op, [x], (g) => [permute(g, inv)]);
}

export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const dims = x.shape.map((_, i) => i);
  const p = normAxis("transpose", a, x.rank);
  const q = normAxis("transpose", b, x.rank);
  [dims[p], dims[q]] = [dims[q]!, dims[p]!];
  return permute(x, dims);
}

/** x[..., start:end, ...] along one axis (a copy). */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const op = "slice";
  const ax = normAxis(op, axis, x.rank);
  const n = x.shape[ax]!;
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > n || start > end)
    throw new Error(`${op}: range [${start}, ${end}) is outside axis ${ax} of size ${n} in ${fmt(x.shape)}`);
  const shape = x.shape.map((s, i) => (i === ax ? end - start : s));
  const xs = contiguousStrides(x.shape);
  const out = like(x, shape);
  x.backend.copy(x.data, start * xs[ax]!, xs, out.data, 0, contiguousStrides(shape), shape, false);
  return record(out, op, [x], (g) => {
    const gx = zeros(x.shape, { backend: x.backend, dtype: x.dtype });
    x.backend.copy(g.data, 0, contiguousStrides(shape), gx.data, start * xs[ax]!, xs, shape, false);
    return [gx];
  });
}

export function concat(ts: readonly Tensor[], axis: number): Tensor {
  const op = "concat";
  if (ts.length === 0) throw new Error(`${op}: no tensors`);
  checkSame(op, ...ts);
  const first = ts[0]!;
  const ax = normAxis(op, axis, first.rank);
  for (const t of ts)
    if (t.rank !== first.rank || t.shape.some((s, i) => i !== ax && s !== first.shape[i]))
      throw new Error(`${op}: shapes ${ts.map((u) => fmt(u.shape)).join(", ")} differ outside axis ${ax}`);
  const shape = first.shape.map((s, i) => (i === ax ? ts.reduce((p, t) => p + t.shape[ax]!, 0) : s));
  const os = contiguousStrides(shape);
  const out = like(first, shape);
  const offsets: number[] = [];
  let at = 0;
  for (const t of ts) {
    offsets.push(at);
    first.backend.copy(t.data, 0, contiguousStrides(t.shape), out.data, at * os[ax]!, os, t.shape, false);
    at += t.shape[ax]!;
  }
  return record(out, op, ts, (g) =>
    ts.map((t, i) => (t.requiresGrad ? slice(g, ax, offsets[i]!, offsets[i]! + t.shape[ax]!) : null)),
  );
}

export function stack(ts: readonly Tensor[], axis = 0): Tensor {
  if (ts.length === 0) throw new Error("stack: no tensors");
  const ax = normAxis("stack", axis, ts[0]!.rank + 1);
  return concat(
    ts.map((t) => reshape(t, [...t.shape.slice(0, ax), 1, ...t.shape.slice(ax)])),
    ax,
  );
}

/** A tensor sharing x's values with no gradient history. */
export function detach(x: Tensor): Tensor {
  return noGrad(() => x.view());
}

// ================================================================== fused model ops

/** weight [V, d] gathered at ids (any shape S, given as `shape`) → [...S, d]. */
export function embedding(weight: Tensor, ids: Int32Array, shape: Shape = [ids.length]): Tensor {
  const op = "embedding";
  if (weight.rank !== 2) throw new Error(`${op}: weight must be [vocab, d], got ${fmt(weight.shape)}`);
  if (sizeOf(shape) !== ids.length)
    throw new Error(`${op}: ${ids.length} ids do not fill shape ${fmt(shape)}`);
  const [V, d] = weight.shape as [number, number];
  const n = ids.length;
  const out = like(weight, [...shape, d]);
  weight.backend.embedding(weight.data, ids, out.data, n, d, V);
  return record(out, op, [weight], (g) => {
    const gw = zeros(weight.shape, { backend: weight.backend, dtype: weight.dtype });
    weight.backend.embeddingBackward(g.data, ids, gw.data, n, d, V);
    return [gw];
  });
}

/** RMSNorm over the last dim: x * rsqrt(mean(x²) + eps) * w. w [d] or null. */
export function rmsnorm(x: Tensor, w: Tensor | null, eps: number): Tensor {
  const op = "rmsnorm";
  const d = x.shape[x.rank - 1] ?? 1;
  if (w) {
    checkSame(op, x, w);
    if (w.rank !== 1 || w.shape[0] !== d)
      throw new Error(`${op}: weight ${fmt(w.shape)} does not match x ${fmt(x.shape)}`);
  }
  const rows = d === 0 ? 0 : x.size / d;
  const out = like(x, x.shape);
  const rstd = like(x, [rows]);
  x.backend.rmsnorm(x.data, w ? w.data : null, out.data, rstd.data, rows, d, eps);
  const inputs = w ? [x, w] : [x];
  return record(out, op, inputs, (g) => {
    const gx = like(x, x.shape);
    const gw = w?.requiresGrad ? like(w, w.shape) : null;
    x.backend.rmsnormBackward(
      x.data,
      w ? w.data : null,
      rstd.data,
      g.data,
      gx.data,
      gw ? gw.data : null,
      rows,
      d,
    );
    return [gx, gw];
  });
}

/** Precomputed rotary tables: cos/sin [maxPos, headDim/2] per backend and dtype, built in float64. */
/** Llama 3 RoPE frequency scaling (HF `rope_scaling` with `rope_type: "llama3"`). */
export interface Llama3RopeScaling {
  factor: number;
  low_freq_factor: number;
  high_freq_factor: number;
  original_max_position_embeddings: number;
}

/**
 * Llama 3's scaled inverse frequency: wavelengths longer than old/low_freq_factor are divided by
 * `factor`, shorter than old/high_freq_factor kept, and interpolated linearly in old/wavelength in
 * between (the formula of the Llama 3.1 release, as transformers implements it).
 */
export function llama3InvFreq(invFreq: number, s: Llama3RopeScaling): number {
  const old = s.original_max_position_embeddings;
  const wavelen = (2 * Math.PI) / invFreq;
  if (wavelen < old / s.high_freq_factor) return invFreq;
  if (wavelen > old / s.low_freq_factor) return invFreq / s.factor;
  const smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1 - smooth) * (invFreq / s.factor) + smooth * invFreq;
}

export class RopeTable {
  private cache = new Map<string, { cos: Tensor; sin: Tensor }>();
  constructor(
    readonly headDim: number,
    readonly maxPos: number,
    readonly theta: number,
    readonly scaling: Llama3RopeScaling | null = null,
  ) {
    if (headDim % 2 !== 0) throw new Error(`rope: head_dim ${headDim} must be even`);
  }
  tables(x: Tensor): { cos: Buf; sin: Buf } {
    const key = `${x.backend.name}:${x.dtype}`;
    let t = this.cache.get(key);
    if (!t) {
      const h = this.headDim / 2;
      const c = new Float64Array(this.maxPos * h);
      const s = new Float64Array(this.maxPos * h);
      for (let p = 0; p < this.maxPos; p++)
        for (let i = 0; i < h; i++) {
          const base = 1 / Math.pow(this.theta, (2 * i) / this.headDim);
          const invFreq = this.scaling ? llama3InvFreq(base, this.scaling) : base;
          c[p * h + i] = Math.cos(p * invFreq);
          s[p * h + i] = Math.sin(p * invFreq);
        }
      const opts = { backend: x.backend, dtype: x.dtype as DType };
      t = noGrad(() => ({
        cos: tensorFrom(c, [this.maxPos, h], opts),
        sin: tensorFrom(s, [this.maxPos, h], opts),
      }));
      t.cos.keep();
      t.sin.keep();
      this.cache.set(key, t);
    }
    return { cos: t.cos.data, sin: t.sin.data };
  }
}

function tensorFrom(
  values: Float64Array,
  shape: Shape,
  opts: { backend: Tensor["backend"]; dtype: DType },
): Tensor {
  const t = empty(shape, opts);
  t.data.set(values);
  return t;
}

/** Rotary embedding on x [B, T, H, D] at positions posOffset + t. */
export function rope(x: Tensor, table: RopeTable, posOffset = 0): Tensor {
  const op = "rope";
  if (x.rank !== 4) throw new Error(`${op}: x must be [B, T, H, D], got ${fmt(x.shape)}`);
  const [B, T, H, D] = x.shape as [number, number, number, number];
  if (D !== table.headDim)
    throw new Error(`${op}: head dim ${D} but the table was built for ${table.headDim}`);
  if (posOffset + T > table.maxPos)
    throw new Error(
      `${op}: positions up to ${posOffset + T} exceed the table's ${table.maxPos} (max_position_embeddings)`,
    );
  const { cos, sin } = table.tables(x);
  const out = like(x, x.shape);
  x.backend.rope(x.data, out.data, cos, sin, B, T, H, D, posOffset, false);
  return record(out, op, [x], (g) => {
    const gx = like(x, x.shape);
    x.backend.rope(g.data, gx.data, cos, sin, B, T, H, D, posOffset, true);
    return [gx];
  });
}

export interface AttentionOptions {
  causal?: boolean;
  /** Defaults to 1/sqrt(D). */
  scale?: number;
}

/**
 * Fused scaled-dot-product attention with grouped-query heads. q [B, Tq, Hq, D]; k, v [B, Tk, Hkv, D].
 * Memory kept for backward: q, k, v, the output and one logsumexp per query row ([B, Hq, Tq]);
 * the [Tq, Tk] probabilities are recomputed in backward, never stored.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  const op = "attention";
  checkSame(op, q, k, v);
  if (q.rank !== 4 || k.rank !== 4 || !sameShape(k.shape, v.shape))
    throw new Error(
      `${op}: expected q [B,Tq,Hq,D], k and v [B,Tk,Hkv,D]; got ${fmt(q.shape)}, ${fmt(k.shape)}, ${fmt(v.shape)}`,
    );
  const [B, Tq, Hq, D] = q.shape as [number, number, number, number];
  const [B2, Tk, Hkv, D2] = k.shape as [number, number, number, number];
  if (B !== B2 || D !== D2 || Hkv === 0 || Hq % Hkv !== 0)
    throw new Error(
      `${op}: q ${fmt(q.shape)} and k ${fmt(k.shape)} are incompatible (batch, head dim, or Hq % Hkv)`,
    );
  const causal = opts.causal ?? true;
  if (causal && Tq > Tk) throw new Error(`${op}: causal attention needs Tq <= Tk, got ${Tq} > ${Tk}`);
  const sc = opts.scale ?? 1 / Math.sqrt(D);
  const out = like(q, q.shape);
  const lse = like(q, [B, Hq, Tq]);
  q.backend.attention(q.data, k.data, v.data, out.data, lse.data, B, Tq, Tk, Hq, Hkv, D, sc, causal);
  return record(out, op, [q, k, v], (g) => {
    const gq = like(q, q.shape);
    const gk = like(k, k.shape);
    const gv = like(v, v.shape);
    q.backend.attentionBackward(
      q.data,
      k.data,
      v.data,
      out.data,
      lse.data,
      g.data,
      gq.data,
      gk.data,
      gv.data,
      B,
      Tq,
      Tk,
      Hq,
      Hkv,
      D,
      sc,
      causal,
    );
    return [gq, gk, gv];
  });
}

export interface CrossEntropyOptions {
  ignoreIndex?: number;
  reduction?: "mean" | "sum" | "none";
}

/**
 * Softmax cross-entropy. logits [..., V]; targets holds one class per row (prod of leading dims).
 * "mean" averages over rows whose target is not ignoreIndex (default -100), like PyTorch.
 */
export function crossEntropy(logits: Tensor, targets: Int32Array, opts: CrossEntropyOptions = {}): Tensor {
  const op = "crossEntropy";
  const ignore = opts.ignoreIndex ?? -100;
  const V = logits.shape[logits.rank - 1] ?? 0;
  const rows = V === 0 ? 0 : logits.size / V;
  if (targets.length !== rows)
    throw new Error(`${op}: ${targets.length} targets for logits ${fmt(logits.shape)} (${rows} rows)`);
  const loss = like(logits, [rows]);
  const lse = like(logits, [rows]);
  logits.backend.crossEntropy(logits.data, targets, loss.data, lse.data, rows, V, ignore);
  const perRow = record(loss, op, [logits], (g) => {
    const gl = like(logits, logits.shape);
    logits.backend.crossEntropyBackward(logits.data, targets, lse.data, g.data, gl.data, rows, V, ignore);
    return [gl];
  });
  const reduction = opts.reduction ?? "mean";
  if (reduction === "none") return perRow;
  if (reduction === "sum") return sum(perRow);
  let count = 0;
  for (let i = 0; i < rows; i++) if (targets[i] !== ignore) count++;
  if (count === 0)
    throw new Error(`${op}: every target equals the ignore index ${ignore}; the mean is undefined`);
  return scale(sum(perRow), 1 / count);
}

/** silu(gate) * up, elementwise. */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const op = "swiglu";
  checkSame(op, gate, up);
  if (!sameShape(gate.shape, up.shape))
    throw new Error(`${op}: gate ${fmt(gate.shape)} and up ${fmt(up.shape)} differ`);
  const out = like(gate, gate.shape);
  gate.backend.swiglu(gate.data, up.data, out.data, gate.size);
  return record(out, op, [gate, up], (g) => {
    const gg = like(gate, gate.shape);
    const gu = like(up, up.shape);
    gate.backend.swigluBackward(gate.data, up.data, g.data, gg.data, gu.data, gate.size);
    return [gg, gu];
  });
}

export interface RouteResult {
  /** [base +] sum_i alpha_i s_i, [..., d]. */
  out: Tensor;
  /** Routing weights per row (token) and source, [..., N]; no gradient. */
  alpha: Tensor;
  /** With `link.next`: the next call's share of these sources, for its `link.prior`. */
  partial?: RoutePartial;
}

/**
 * The next routed call's summary of the sources of an earlier call, computed in that call's pass
 * (route's `link.next`; the buffers of RouteNext in src/backend/backend.ts): the next call, whose
 * sources start with these same tensors and whose query and gain are w and g, then reads only its
 * newer sources. Used once; its buffers are released by the call that uses it (or by release()).
 */
export class RoutePartial {
  private bufs: Tensor[] | null;
  constructor(
    readonly sources: readonly Tensor[],
    readonly w: Tensor,
    readonly g: Tensor,
    /** acc [rows, d], stats [rows, 2], logits and rstd [rows, N]. */
    readonly acc: Tensor,
    readonly stats: Tensor,
    readonly logits: Tensor,
    readonly rstd: Tensor,
  ) {
    this.bufs = [acc, stats, logits, rstd];
  }
  /** Whether a call over `sources` with query w and gain g can continue from this summary. */
  fits(sources: readonly Tensor[], w: Tensor, g: Tensor): boolean {
    return (
      this.bufs !== null &&
      w === this.w &&
      g === this.g &&
      sources.length >= this.sources.length &&
      this.sources.every((s, i) => sources[i] === s)
    );
  }
  get released(): boolean {
    return this.bufs === null;
  }
  release(): void {
    for (const t of this.bufs ?? []) t.dispose();
    this.bufs = null;
  }
}

/**
 * A route call's link to its neighbours in a chain of routed calls: `next` (the next call's query
 * and gain) also computes that call's share of these sources (returned as `partial`); `prior`
 * continues from such a share (its sources must begin this call's, its router be this call's).
 */
export interface RouteLink {
  next?: { w: Tensor; g: Tensor } | null;
  prior?: RoutePartial | null;
}

/**
 * Depth routing (docs/methods.md "Routing") over N same-shaped sources [..., d] with query w [d] and key
 * gain g [d]: keys are RMSNorm(s_i; g), logits w·k_i, alpha = softmax over sources. The fused
 * kernel reads the sources in place (no stacking copy). With `base` (same shape), the output is
 * base + the routed sum, in the same kernel (an additive mode's x = h + route(…) without a separate
 * add). Returns the output and alpha.
 *
 * Backward. The softmax backward of a call needs, besides each source's gout·s_i, only the per-row
 * scalar c = gout·(out − base), so a call's backward defers the rest (tensor.ts, "Deferred
 * contributions"): each source that is computed by an op gets a contribution {call, column}, and
 * when the walk reaches the source, every call that read it has its gradient recorded and one
 * kernel (depthRouteSourceBackward) adds them all into the source's gradient, reading the source
 * once and each call's gout once (once per two sources where routeGroup pairs them), and adds each
 * call's share of its sum over rows p [d]; the same kernel computes c on the call's first source,
 * while it reads gout anyway. When the last source of a call has been added, the call's
 * gw = g ∘ p and gg = w ∘ p are ready and its recorded gout is
 * released; w and g (leaves) take them after the walk. Sources that are leaves or need no gradient
 * are done at the call's own backward. When w or g is computed by an op (not a leaf), the call does
 * its whole backward at once (depthRouteBackward). base's gradient is gout itself.
 */
export function route(
  sourceList: readonly Tensor[],
  w: Tensor,
  g: Tensor,
  eps: number,
  base: Tensor | null = null,
  link: RouteLink = {},
): RouteResult {
  const op = "route";
  const sources = [...sourceList]; // a snapshot: callers may keep appending to their list
  if (sources.length === 0) throw new Error(`${op}: no sources`);
  const first = sources[0]!;
  checkSame(op, ...sources, w, g, ...(base ? [base] : []));
  for (const s of sources)
    if (!sameShape(s.shape, first.shape))
      throw new Error(`${op}: sources have different shapes (${fmt(first.shape)} and ${fmt(s.shape)})`);
  if (base && !sameShape(base.shape, first.shape))
    throw new Error(`${op}: base ${fmt(base.shape)} differs from the sources' ${fmt(first.shape)}`);
  const d = first.shape[first.rank - 1] ?? 0;
  if (w.size !== d || g.size !== d)
    throw new Error(`${op}: query ${fmt(w.shape)} and gain ${fmt(g.shape)} must have ${d} elements`);
  const rows = d === 0 ? 0 : first.size / d;
  const N = sources.length;
  const out = like(first, first.shape);
  const alpha = like(first, [...first.shape.slice(0, -1), N]);
  const rstd = like(first, [rows, N]);
  const { next = null, prior = null } = link;
  if (next && prior)
    throw new Error(`${op}: a call cannot both continue a prior sum and start the next call's`);
  if (prior && !prior.fits(sources, w, g))
    throw new Error(
      prior.released
        ? `${op}: this partial sum has been used already`
        : `${op}: the partial sum belongs to another call (its sources must begin this call's, its query and gain be this call's)`,
    );
  if (next) {
    checkSame(op, first, next.w, next.g);
    if (next.w.size !== d || next.g.size !== d)
      throw new Error(
        `${op}: next query ${fmt(next.w.shape)} and gain ${fmt(next.g.shape)} must have ${d} elements`,
      );
  }
  const partial = next
    ? new RoutePartial(
        sources,
        next.w,
        next.g,
        like(first, [rows, d]),
        like(first, [rows, 2]),
        like(first, [rows, N]),
        like(first, [rows, N]),
      )
    : undefined;
  // with a prior, sources 0 … n−1 are not read (the kernel takes their summary instead)
  const bufs = sources.map((s) => s.data);
  first.backend.depthRoute(
    bufs,
    w.data,
    g.data,
    out.data,
    alpha.data,
    rstd.data,
    rows,
    d,
    eps,
    base ? base.data : null,
    partial
      ? {
          w: next!.w.data,
          g: next!.g.data,
          acc: partial.acc.data,
          stats: partial.stats.data,
          logits: partial.logits.data,
          rstd: partial.rstd.data,
        }
      : null,
    prior
      ? {
          acc: prior.acc.data,
          stats: prior.stats.data,
          logits: prior.logits.data,
          rstd: prior.rstd.data,
          n: prior.sources.length,
        }
      : null,
  );
  prior?.release();
  const inputs = base ? [...sources, w, g, base] : [...sources, w, g];
  // base's gradient is gy itself (an entry only when there is a base)
  const baseGrad = (gy: Tensor): (Tensor | null)[] => (base ? [base.requiresGrad ? gy : null] : []);
  const whole = (gy: Tensor, acc: readonly (Tensor | null)[]): (Tensor | null)[] => {
    // Source gradients accumulate: into the engine's running gradient when it has one, else into
    // a fresh zeroed buffer.
    const gs = sources.map((s, i) =>
      s.requiresGrad ? (acc[i] ?? zeros(s.shape, { backend: s.backend, dtype: s.dtype })) : null,
    );
    const gw = like(w, w.shape);
    const gg = like(g, g.shape);
    first.backend.depthRouteBackward(
      sources.map((s) => s.data),
      w.data,
      g.data,
      alpha.data,
      rstd.data,
      gy.data,
      gs.map((t) => (t ? t.data : null)),
      gw.data,
      gg.data,
      rows,
      d,
    );
    return [...gs, w.requiresGrad ? gw : null, g.requiresGrad ? gg : null, ...baseGrad(gy)];
  };
  const deferred = (gy: Tensor, acc: readonly (Tensor | null)[]): (Tensor | Deferred | null)[] => {
    if ((w.requiresGrad && w.gradFn) || (g.requiresGrad && g.gradFn)) return whole(gy, acc);
    const call = new RouteCall(sources, w, g, alpha, rstd, gy, out, base, rows, d);
    const res: (Tensor | Deferred | null)[] = sources.map((s, i) => {
      if (s.requiresGrad && s.gradFn) {
        call.pending++;
        return { group: routeGroup, item: { call, col: i } satisfies SourceItem };
      }
      // now: a leaf source's gradient, and every source's share of p
      const own = s.requiresGrad ? (acc[i] ?? null) : null;
      const gs = s.requiresGrad ? (own ?? like(s, s.shape)) : null;
      sourceBackward(s, gs, own !== null, null, [{ call, col: i }], rows, d);
      return gs;
    });
    if (call.pending === 0) call.finish();
    // kept until the group's end() (a Deferred below registers the group with the engine)
    if (call.pending > 0 || w.requiresGrad || g.requiresGrad) routeGroup.live.add(call);
    const param = (which: "w" | "g"): Deferred => ({ group: routeGroup, item: { call, which } });
    return [...res, w.requiresGrad ? param("w") : null, g.requiresGrad ? param("g") : null, ...baseGrad(gy)];
  };
  record(out, op, inputs, (gy) => whole(gy, []), deferred);
  return partial ? { out, alpha, partial } : { out, alpha };
}

/** The backward state of one route call whose source gradients are deferred. */
class RouteCall {
  /** Kept until every deferred source has been added: the output's gradient [rows, d], c [rows]. */
  gy: Tensor | null;
  c: Tensor | null;
  /** The output and base, kept until c has been computed (on the call's first source). */
  out: Tensor | null;
  base: Tensor | null;
  /** sum over rows of (dl rstd s), summed over the sources added so far [d]. */
  p: Tensor | null;
  /** Deferred sources not yet added. */
  pending = 0;
  /** Set once pending is 0 (for the ones that need a gradient), until handed to the engine. */
  gw: Tensor | null = null;
  gg: Tensor | null = null;
  constructor(
    readonly sources: readonly Tensor[],
    readonly w: Tensor,
    readonly g: Tensor,
    readonly alpha: Tensor,
    readonly rstd: Tensor,
    gy: Tensor,
    out: Tensor,
    base: Tensor | null,
    rows: number,
    d: number,
  ) {
    this.gy = gy.view().keep();
    this.out = out.view().keep();
    this.base = base ? base.view().keep() : null;
    this.c = like(gy, [rows]).keep();
    this.p = zeros([d], { backend: w.backend, dtype: w.dtype }).keep();
  }
  /** c has been computed: the output and base are no longer needed. */
  cDone(): void {
    this.out?.dispose();
    this.base?.dispose();
    this.out = this.base = null;
  }
  /** All sources added: gw = g ∘ p, gg = w ∘ p; releases the recorded gradient. */
  finish(): void {
    const p = this.p!;
    const mul = (a: Tensor): Tensor => {
      const r = like(p, a.shape).keep();
      p.backend.binary("mul", a.data, [1], p.data, [1], r.data, [p.size]);
      return r;
    };
    if (this.w.requiresGrad) this.gw = mul(this.g);
    if (this.g.requiresGrad) this.gg = mul(this.w);
    this.release();
  }
  release(): void {
    this.cDone();
    for (const t of [this.gy, this.c, this.p]) t?.dispose();
    this.gy = this.c = this.p = null;
  }
}

interface SourceItem {
  call: RouteCall;
  col: number;
}
interface ParamItem {
  call: RouteCall;
  which: "w" | "g";
}

/**
 * One source's deferred backward over the calls (items) that read it; gs null: only p. gs is
 * accumulated into, or written starting from init (null: zero). Computes each call's c on its
 * first source.
 */
function sourceBackward(
  s: Tensor,
  gs: Tensor | null,
  accumulate: boolean,
  init: Tensor | null,
  items: readonly SourceItem[],
  rows: number,
  d: number,
  pair: { source: Tensor; gs: Tensor; cols: Int32Array } | null = null,
): void {
  const calls = items.map((it) => it.call);
  const meta = new Int32Array(items.length * 3);
  const seen = new Set<RouteCall>();
  items.forEach((it, k) => {
    meta[3 * k] = it.col;
    meta[3 * k + 1] = it.call.sources.length;
    meta[3 * k + 2] = it.call.out && !seen.has(it.call) ? 1 : 0;
    seen.add(it.call);
  });
  s.backend.depthRouteSourceBackward(
    s.data,
    gs ? gs.data : null,
    accumulate,
    calls.map((c) => c.gy!.data),
    calls.map((c) => c.alpha.data),
    calls.map((c) => c.rstd.data),
    meta,
    calls.map((c) => c.c!.data),
    calls.map((c) => c.w.data),
    calls.map((c) => c.g.data),
    calls.map((c) => c.p!.data),
    rows,
    d,
    init ? init.data : null,
    calls.map((c) => (c.out ?? c.gy!).data),
    calls.map((c) => (c.base ? c.base.data : null)),
    pair ? { source: pair.source.data, gsource: pair.gs.data, cols: pair.cols } : null,
  );
  for (const c of calls) c.cDone();
}

/** A source's share of some calls, computed early, in the pass of the source combined before it. */
interface Early {
  gs: Tensor;
  calls: Set<RouteCall>;
}

/**
 * The source to add in the same pass as t (items: t's remaining calls): the one just before t in
 * the first call's sources, when every call reads it (once, at another column; t once too), it
 * needs a gradient, is computed by an op (so it is combined later in this walk) and has not been
 * combined or paired yet. Its other calls (those that do not read t) are added when it is combined.
 */
function pairFor(
  t: Tensor,
  items: readonly SourceItem[],
  seen: ReadonlySet<Tensor>,
): { source: Tensor; cols: Int32Array } | null {
  const first = items[0]!;
  const u = first.col > 0 ? first.call.sources[first.col - 1]! : null;
  if (!u || u === t || !u.requiresGrad || !u.gradFn || seen.has(u) || !sameShape(u.shape, t.shape))
    return null;
  const cols = new Int32Array(items.length);
  for (const [k, it] of items.entries()) {
    const srcs = it.call.sources;
    const c = srcs.indexOf(u);
    if (c < 0 || c === it.col || srcs.lastIndexOf(u) !== c || srcs.indexOf(t) !== srcs.lastIndexOf(t))
      return null;
    cols[k] = c;
  }
  return { source: u, cols };
}

/**
 * The deferred contributions of every route call (one group, so a source is read once). Sources are
 * added in pairs where they can be (pairFor): a source's pass also adds the previous source's share
 * of the same calls, kept in `early` until that source is combined, so each call's gout is read
 * once per two sources.
 */
const routeGroup: DeferGroup & {
  live: Set<RouteCall>;
  early: Map<Tensor, Early>;
  seen: Set<Tensor>;
} = {
  live: new Set(),
  early: new Map(),
  seen: new Set(),
  acceptsBase: true,
  combine(t, items, acc, base) {
    const srcItems = items.filter((it): it is SourceItem => "col" in (it as object));
    const paramItems = items.filter((it): it is ParamItem => "which" in (it as object));
    let total = acc;
    const early = this.early.get(t);
    this.early.delete(t);
    this.seen.add(t);
    const rest = early ? srcItems.filter((it) => !early.calls.has(it.call)) : srcItems;
    if (rest.length) {
      const d = t.shape[t.rank - 1] ?? 0;
      const rows = d === 0 ? 0 : t.size / d;
      const gs = total ?? like(t, t.shape);
      const pair = early ? null : pairFor(t, rest, this.seen);
      const pg = pair ? like(pair.source, pair.source.shape).keep() : null;
      sourceBackward(
        t,
        gs,
        total !== null,
        total ? null : (base ?? null),
        rest,
        rows,
        d,
        pair && pg ? { ...pair, gs: pg } : null,
      );
      total = gs;
      if (pair && pg) {
        this.seen.add(pair.source);
        this.early.set(pair.source, { gs: pg, calls: new Set(rest.map((it) => it.call)) });
      }
      // each call has one or (with the pair) two of its sources added
      const added = pair ? 2 : 1;
      for (const { call } of rest) if ((call.pending -= added) === 0) call.finish();
    } else if (base && !early) total = clone(base);
    if (early) {
      // the share added with the source after this one
      if (total) {
        total.backend.axpy(total.size, 1, early.gs.data, total.data);
        early.gs.dispose();
      } else {
        if (base) early.gs.backend.axpy(base.size, 1, base.data, early.gs.data);
        track(early.gs); // back in this walk's scopes, like any gradient it hands on
        total = early.gs;
      }
    }
    for (const { call, which } of paramItems) {
      const gp = which === "w" ? call.gw : call.gg;
      if (!gp)
        throw new Error("internal: route's query/gain gradient was taken before all its sources were added");
      if (which === "w") call.gw = null;
      else call.gg = null;
      if (!total) total = gp;
      else {
        total.backend.axpy(total.size, 1, gp.data, total.data);
        gp.dispose();
      }
    }
    return total;
  },
  end() {
    for (const call of this.live) {
      call.release();
      call.gw?.dispose();
      call.gg?.dispose();
    }
    this.live.clear();
    for (const e of this.early.values()) e.gs.dispose();
    this.early.clear();
    this.seen.clear();
  },
};

/**
 * ddl-expanded's read: x[..., i] = sum_c X[..., i, c] * C[i, c], with the state X [..., d, dv] and
 * the per-feature channel mix C [d, dv]. Returns x [..., d].
 */
export function ddlRead(X: Tensor, C: Tensor): Tensor {
  const op = "ddlRead";
  checkSame(op, X, C);
  checkDdlMix(op, X, C);
  const [d, dv] = C.shape as [number, number];
  const rows = d * dv === 0 ? 0 : X.size / (d * dv);
  const x = like(X, X.shape.slice(0, -1));
  X.backend.ddlRead(X.data, C.data, x.data, rows, d, dv);
  return recordDdlRead(X, C, x);
}

/** A read's mix C must be [d, dv] for the state X [..., d, dv]. */
function checkDdlMix(op: string, X: Tensor, C: Tensor): void {
  if (X.rank < 2 || C.rank !== 2 || !sameShape(X.shape.slice(-2), C.shape))
    throw new Error(`${op}: state ${fmt(X.shape)} and mix ${fmt(C.shape)} must end in the same [d, dv]`);
}

/** Records x = ddlRead(X, C), already computed, with its backward. */
function recordDdlRead(X: Tensor, C: Tensor, x: Tensor): Tensor {
  const [d, dv] = C.shape as [number, number];
  const rows = d * dv === 0 ? 0 : X.size / (d * dv);
  const backwardInto = (gx: Tensor, acc: readonly (Tensor | null)[]): (Tensor | null)[] => {
    const gX = X.requiresGrad ? (acc[0] ?? zeros(X.shape, { backend: X.backend, dtype: X.dtype })) : null;
    const gC = like(C, C.shape);
    X.backend.ddlReadBackward(X.data, C.data, gx.data, gX ? gX.data : null, gC.data, rows, d, dv);
    return [gX, C.requiresGrad ? gC : null];
  };
  return record(x, "ddlRead", [X, C], (g) => backwardInto(g, []), backwardInto);
}

/**
 * ddl-expanded's state update of one sublayer: X [..., d, dv], unit key k [..., d], gate
 * beta [..., 1], value v [..., dv] →  X + beta k (v − kᵀX)  [..., d, dv] (one fused kernel; the
 * backward recomputes kᵀX instead of keeping temporaries).
 */
export function ddlUpdate(X: Tensor, k: Tensor, beta: Tensor, v: Tensor): Tensor {
  return ddlUpdateAndRead(X, k, beta, v, null).Y;
}

/**
 * ddlUpdate, and with the next read's mix C [d, dv] also x = ddlRead(Y, C) [..., d] computed in the
 * same pass over the new state (each row read while it is still in cache). Both results are recorded
 * as they would be by ddlUpdate and ddlRead: the gradients are the same.
 */
export function ddlUpdateRead(
  X: Tensor,
  k: Tensor,
  beta: Tensor,
  v: Tensor,
  C: Tensor,
): { Y: Tensor; x: Tensor } {
  const { Y, x } = ddlUpdateAndRead(X, k, beta, v, C);
  return { Y, x: x! };
}

function ddlUpdateAndRead(
  X: Tensor,
  k: Tensor,
  beta: Tensor,
  v: Tensor,
  C: Tensor | null,
): { Y: Tensor; x: Tensor | null } {
  const op = C ? "ddlUpdateRead" : "ddlUpdate";
  checkSame(op, X, k, beta, v, ...(C ? [C] : []));
  const lead = X.shape.slice(0, -2);
  const [d, dv] = X.shape.slice(-2) as [number, number];
  if (
    X.rank < 2 ||
    !sameShape(k.shape, [...lead, d]) ||
    !sameShape(beta.shape, [...lead, 1]) ||
    !sameShape(v.shape, [...lead, dv])
  )
    throw new Error(
      `${op}: state ${fmt(X.shape)}, key ${fmt(k.shape)}, beta ${fmt(beta.shape)} and value ${fmt(v.shape)} do not fit`,
    );
  if (C) checkDdlMix(op, X, C);
  const rows = d * dv === 0 ? 0 : X.size / (d * dv);
  const Y = like(X, X.shape);
  const x = C ? like(X, X.shape.slice(0, -1)) : null;
  X.backend.ddlUpdate(
    X.data,
    k.data,
    beta.data,
    v.data,
    Y.data,
    rows,
    d,
    dv,
    C?.data ?? null,
    x?.data ?? null,
  );
  const backwardInto = (gY: Tensor, acc: readonly (Tensor | null)[]): (Tensor | null)[] => {
    // the first gradient reaching X is written, not added to a zero-filled buffer
    const prior = acc[0] ?? null;
    const gX = X.requiresGrad ? (prior ?? like(X, X.shape)) : null;
    const gk = like(k, k.shape);
    const gb = like(beta, beta.shape);
    const gv = like(v, v.shape);
    X.backend.ddlUpdateBackward(
      X.data,
      k.data,
      beta.data,
      v.data,
      gY.data,
      gX ? gX.data : null,
      prior !== null,
      gk.data,
      gb.data,
      gv.data,
      rows,
      d,
      dv,
    );
    return [gX, k.requiresGrad ? gk : null, beta.requiresGrad ? gb : null, v.requiresGrad ? gv : null];
  };
  record(Y, "ddlUpdate", [X, k, beta, v], (g) => backwardInto(g, []), backwardInto);
  return { Y, x: C && x ? recordDdlRead(Y, C, x) : null };
}

export interface DdlStepResult {
  /** The new stream [..., d]. */
  y: Tensor;
  /** The gate β [..., 1] per row (token); no gradient. */
  beta: Tensor;
}

/**
 * ddl's update of one sublayer, fused (one kernel forward, one backward): with the stream x, the
 * sublayer's output u and its pre-norm c (all [..., d]), the gate projection wb [1, d] (or [d]) with
 * bias bb [1] and the value projection wv, bv alike:
 *   k = u / sqrt(|u|² + eps2),  β = 2σ(wb·c + bb),  v = wv·c + bv (or 4σ(wv·x + bv) when
 *   vFromStream),  y = x + β (v − k·x) k.
 * Keeps three numbers per row (1/sqrt(|u|² + eps2), v, k·x) and β for the backward; k, the
 * projections and the gate are never materialised as tensors.
 */
export function ddlStep(
  x: Tensor,
  u: Tensor,
  c: Tensor,
  wb: Tensor,
  bb: Tensor,
  wv: Tensor,
  bv: Tensor,
  eps2: number,
  vFromStream: boolean,
): DdlStepResult {
  const op = "ddlStep";
  checkSame(op, x, u, c, wb, bb, wv, bv);
  if (!sameShape(x.shape, u.shape) || !sameShape(x.shape, c.shape) || x.rank < 1)
    throw new Error(
      `${op}: stream ${fmt(x.shape)}, output ${fmt(u.shape)} and pre-norm ${fmt(c.shape)} differ`,
    );
  const d = x.shape[x.rank - 1]!;
  if (wb.size !== d || wv.size !== d || bb.size !== 1 || bv.size !== 1)
    throw new Error(
      `${op}: projections ${fmt(wb.shape)}, ${fmt(wv.shape)} need ${d} elements and biases ${fmt(bb.shape)}, ${fmt(bv.shape)} one`,
    );
  const rows = d === 0 ? 0 : x.size / d;
  const y = like(x, x.shape);
  const beta = like(x, [...x.shape.slice(0, -1), 1]);
  const aux = like(x, [rows, 3]);
  const b = x.backend;
  b.ddlStep(
    x.data,
    u.data,
    c.data,
    wb.data,
    bb.data,
    wv.data,
    bv.data,
    y.data,
    beta.data,
    aux.data,
    rows,
    d,
    eps2,
    vFromStream,
  );
  const backwardInto = (gy: Tensor, acc: readonly (Tensor | null)[]): (Tensor | null)[] => {
    const grads = [x, u, c].map((t, i) => (t.requiresGrad ? (acc[i] ?? like(t, t.shape)) : null));
    const mask = grads.reduce((m, g, i) => (g && g === acc[i] ? m | (1 << i) : m), 0);
    const [gwb, gbb, gwv, gbv] = [wb, bb, wv, bv].map((p) => like(p, p.shape)) as [
      Tensor,
      Tensor,
      Tensor,
      Tensor,
    ];
    b.ddlStepBackward(
      x.data,
      u.data,
      c.data,
      wb.data,
      wv.data,
      beta.data,
      aux.data,
      gy.data,
      grads[0] ? grads[0].data : null,
      grads[1] ? grads[1].data : null,
      grads[2] ? grads[2].data : null,
      mask,
      gwb.data,
      gbb.data,
      gwv.data,
      gbv.data,
      rows,
      d,
      vFromStream,
    );
    return [
      ...grads,
      wb.requiresGrad ? gwb : null,
      bb.requiresGrad ? gbb : null,
      wv.requiresGrad ? gwv : null,
      bv.requiresGrad ? gbv : null,
    ];
  };
  record(y, op, [x, u, c, wb, bb, wv, bv], (g) => backwardInto(g, []), backwardInto);
  return { y, beta };
}

/** Softmax along one axis (composite: exp(x - max) / sum). */
export function softmax(x: Tensor, axis = -1): Tensor {
  const ax = normAxis("softmax", axis, x.rank);
  const m = noGrad(() => max(x, ax, true));
  const e = exp(sub(x, m));
  return div(e, sum(e, ax, true));
}

export { full, zeros };
