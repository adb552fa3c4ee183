/**
 * The backend contract: the narrow interface between the tensor frontend (src/tensor) and the
 * compute backends (src/backend/native, src/backend/reference).
 *
 * A backend knows nothing about tensors, shapes-as-objects or autograd. It allocates flat buffers
 * and runs kernels over them. Every size is passed explicitly. Conventions, binding on every kernel:
 *
 *  - Buffers are typed arrays: Float32Array (every backend) or Float64Array (reference only).
 *    Token ids and targets are Int32Array. Layouts are row-major; shapes are given in comments
 *    as [dim, ...]. Unless a kernel says otherwise, every buffer starts at element 0.
 *  - "writes X" means the kernel assigns every element of X in its extent, never reading X first.
 *    Tests fill outputs with NaN before each call to catch elements a kernel forgot.
 *  - "accumulates into X" means X += ...; the caller prepares X.
 *  - Inputs are never modified. Elementwise kernels (unary, unaryGrad, swiglu, axpy: x may be y)
 *    allow an output to alias an input of the same extent; binary allows out to alias an operand
 *    that is read contiguously with out's shape (no broadcast along any dim). No other kernel
 *    allows aliasing.
 *  - A kernel validates that every extent it touches fits inside its buffers and throws a plain
 *    Error naming the kernel otherwise: a bug upstream must never become memory corruption.
 *  - Reductions accumulate in at least float32; sumSquares returns a JS number accumulated in float64.
 */

export type DType = "float32" | "float64";
export type Buf = Float32Array | Float64Array;

/** y = f(x), elementwise. */
export type UnaryOp = "neg" | "exp" | "log" | "sqrt" | "rsqrt" | "sigmoid" | "silu" | "square" | "abs";
/** out = a (op) b, elementwise with broadcasting. "max"/"min" pick the larger/smaller; "eq" gives 1 or 0. */
export type BinaryOp = "add" | "sub" | "mul" | "div" | "max" | "min" | "eq";
export type ReduceOp = "sum" | "max";

export const UNARY_OPS: readonly UnaryOp[] = [
  "neg",
  "exp",
  "log",
  "sqrt",
  "rsqrt",
  "sigmoid",
  "silu",
  "square",
  "abs",
];
export const BINARY_OPS: readonly BinaryOp[] = ["add", "sub", "mul", "div", "max", "min", "eq"];

/** A second source of depthRouteSourceBackward: its buffer, its gradient (written), its column per call. */
export interface RoutePair {
  source: Buf;
  gsource: Buf;
  cols: Int32Array;
}

/**
 * depthRoute's summary of its N sources for the next routed call, which reads the same sources and
 * more, with its own query w and gain g [d]. Written: logits [rows, N] (the next call's l_i) and
 * rstd [rows, N] (the same as the call's own), stats [rows, 2] = (m, z) with m = max_i l_i and
 * z = sum_i e_i, and acc [rows, d] = sum_i e_i s_i, where e_i = exp(l_i - m).
 */
export interface RouteNext {
  w: Buf;
  g: Buf;
  acc: Buf;
  stats: Buf;
  logits: Buf;
  rstd: Buf;
}

/** A RouteNext's buffers, read by the next call, which then reads only its sources from n on. */
export interface RoutePrior {
  acc: Buf;
  stats: Buf;
  logits: Buf;
  rstd: Buf;
  n: number;
}

export interface MemoryStats {
  /** Bytes of buffer memory currently allocated by this backend and not yet released to the system. */
  allocatedBytes: number;
  /** Number of such buffers. */
  buffers: number;
}

export interface Backend {
  readonly name: "native" | "reference";
  /** Dtypes this backend can compute in. */
  readonly dtypes: readonly DType[];

  // ---------------------------------------------------------------- memory
  /** A fresh buffer of n elements. Contents unspecified (may be garbage). */
  alloc(dtype: DType, n: number): Buf;
  memoryStats(): MemoryStats;
  /** Threads used by kernels (1 for reference). */
  threads(): number;
  setThreads(n: number): void;
  /**
   * Optional: the precision of gemm's operands for the rest of the process. "bfloat16" rounds
   * op(A) and op(B) to bfloat16 (nearest even) and accumulates in float32; outputs, and everything
   * that is not a GEMM of more than one row, stay float32. Absent on backends without it; throws
   * where the hardware lacks it.
   */
  setMatmulDtype?(dtype: "float32" | "bfloat16"): void;

  // ---------------------------------------------------------------- dense linear algebra
  /**
   * Batched strided GEMM. For b in [0, batch):
   *   C_b = alpha * op(A_b) @ op(B_b) + beta * C_b
   * with A_b = A[offA + b*strideA ...], B_b = B[offB + b*strideB ...], C_b = C[offC + b*strideC ...].
   * op(A_b) is [M, K]: stored [M, K] with row stride lda when !transA, stored [K, M] with row stride
   * lda when transA. op(B_b) is [K, N]: stored [K, N] (ldb) when !transB, [N, K] (ldb) when transB.
   * C_b is [M, N] with row stride ldc. strideA/strideB may be 0 (the same matrix for every b).
   * When beta == 0, C is written without being read (NaN in C must not propagate).
   */
  gemm(
    transA: boolean,
    transB: boolean,
    batch: number,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: Buf,
    offA: number,
    lda: number,
    strideA: number,
    B: Buf,
    offB: number,
    ldb: number,
    strideB: number,
    beta: number,
    C: Buf,
    offC: number,
    ldc: number,
    strideC: number,
  ): void;

  // ---------------------------------------------------------------- elementwise
  /** Writes out[i] = op(x[i]) for i < n. */
  unary(op: UnaryOp, x: Buf, out: Buf, n: number): void;
  /**
   * Writes gx[i] = gy[i] * op'(x[i]) for i < n, where y = op(x) is given too (kernels use whichever
   * is cheaper: exp uses y, log uses x, sqrt/rsqrt/sigmoid use y, silu/square/abs use x).
   */
  unaryGrad(op: UnaryOp, x: Buf, y: Buf, gy: Buf, gx: Buf, n: number): void;
  /**
   * Writes out (contiguous, shape outShape) = a (op) b with broadcasting expressed by strides:
   * element at multi-index i reads a[sum_k i_k*aStrides[k]] and b[sum_k i_k*bStrides[k]]
   * (stride 0 along broadcast dims). outShape, aStrides, bStrides have equal length (rank 0..8).
   */
  binary(
    op: BinaryOp,
    a: Buf,
    aStrides: readonly number[],
    b: Buf,
    bStrides: readonly number[],
    out: Buf,
    outShape: readonly number[],
  ): void;
  /**
   * Reduction over the listed axes (sorted, distinct). x is contiguous with the given shape; out is
   * contiguous with the same shape except size 1 along each reduced axis. Writes out.
   */
  reduce(op: ReduceOp, x: Buf, shape: readonly number[], axes: readonly number[], out: Buf): void;
  /**
   * Strided copy over a multi-index space `shape` (rank 0..8):
   *   dst[dstOff + sum_k i_k*dstStrides[k]] (=, or += when accumulate) src[srcOff + sum_k i_k*srcStrides[k]]
   * Used for permute, slice, concat, stack, expand and their backwards. Writes (or accumulates into)
   * exactly the addressed elements of dst, nothing else.
   */
  copy(
    src: Buf,
    srcOff: number,
    srcStrides: readonly number[],
    dst: Buf,
    dstOff: number,
    dstStrides: readonly number[],
    shape: readonly number[],
    accumulate: boolean,
  ): void;
  /** Writes out[i] = value for i < n. */
  fill(out: Buf, value: number, n: number): void;
  /** Accumulates y[i] += alpha * x[i] for i < n. */
  axpy(n: number, alpha: number, x: Buf, y: Buf): void;
  /** Returns sum_i x[i]^2 for i < n, accumulated in float64. */
  sumSquares(x: Buf, n: number): number;

  // ---------------------------------------------------------------- fused model kernels
  /** x, out [n, d] via ids [n]: writes out[i, :] = weight[ids[i], :]. weight [vocab, d]; ids validated. */
  embedding(weight: Buf, ids: Int32Array, out: Buf, n: number, d: number, vocab: number): void;
  /** Accumulates gweight[ids[i], :] += gout[i, :] (scatter-add; repeated ids add up). */
  embeddingBackward(gout: Buf, ids: Int32Array, gweight: Buf, n: number, d: number, vocab: number): void;

  /**
   * RMSNorm over the last dim. x, out [rows, d]; w [d] or null (no gain); rstd [rows].
   * Writes rstd[r] = 1/sqrt(mean_c x[r,c]^2 + eps) and out[r,c] = x[r,c] * rstd[r] * (w ? w[c] : 1).
   */
  rmsnorm(x: Buf, w: Buf | null, out: Buf, rstd: Buf, rows: number, d: number, eps: number): void;
  /**
   * Backward of rmsnorm given the saved rstd. Writes gx [rows, d]; writes gw [d] (sum over rows of
   * gy * x * rstd) when both w and gw are non-null.
   */
  rmsnormBackward(
    x: Buf,
    w: Buf | null,
    rstd: Buf,
    gy: Buf,
    gx: Buf,
    gw: Buf | null,
    rows: number,
    d: number,
  ): void;

  /**
   * Rotary embedding, HF "rotate_half" convention. x, out [B, T, H, D], D even, h = D/2.
   * cos, sin [maxPos, h]; position of token t is t + posOffset. For c < h, with p = t + posOffset:
   *   out[..c]   = x[..c]   * cos[p,c] - x[..c+h] * s
   *   out[..c+h] = x[..c+h] * cos[p,c] + x[..c]   * s          where s = inverse ? -sin[p,c] : sin[p,c]
   * The inverse rotation is the backward (the rotation is orthogonal). Writes out.
   */
  rope(
    x: Buf,
    out: Buf,
    cos: Buf,
    sin: Buf,
    B: number,
    T: number,
    H: number,
    D: number,
    posOffset: number,
    inverse: boolean,
  ): void;

  /**
   * Scaled-dot-product attention with grouped-query heads.
   * q, out [B, Tq, Hq, D]; k, v [B, Tk, Hkv, D]; lse [B, Hq, Tq]. Hq % Hkv == 0; query head h reads
   * kv head floor(h / (Hq/Hkv)). Scores s = scale * q.k. When causal, query i (0-based among the Tq
   * queries, which are the last Tq of the Tk positions) sees keys j <= i + (Tk - Tq).
   * Writes out = softmax(s) @ v and lse = logsumexp(s) per query row (the only thing kept for
   * backward besides q, k, v, out: probabilities are recomputed, never stored).
   */
  attention(
    q: Buf,
    k: Buf,
    v: Buf,
    out: Buf,
    lse: Buf,
    B: number,
    Tq: number,
    Tk: number,
    Hq: number,
    Hkv: number,
    D: number,
    scale: number,
    causal: boolean,
  ): void;
  /** Backward of attention. Writes gq [B,Tq,Hq,D], gk and gv [B,Tk,Hkv,D]. */
  attentionBackward(
    q: Buf,
    k: Buf,
    v: Buf,
    out: Buf,
    lse: Buf,
    gout: Buf,
    gq: Buf,
    gk: Buf,
    gv: Buf,
    B: number,
    Tq: number,
    Tk: number,
    Hq: number,
    Hkv: number,
    D: number,
    scale: number,
    causal: boolean,
  ): void;

  /**
   * Softmax cross-entropy per row. logits [rows, V]; targets [rows]; writes loss [rows] and
   * lse [rows] (logsumexp of the row). Rows whose target == ignoreIndex get loss 0 (lse still written).
   * Any other target outside [0, V) is an error.
   */
  crossEntropy(
    logits: Buf,
    targets: Int32Array,
    loss: Buf,
    lse: Buf,
    rows: number,
    V: number,
    ignoreIndex: number,
  ): void;
  /** Writes glogits[r, :] = gloss[r] * (softmax(logits[r]) - onehot(target[r])); ignored rows get 0. */
  crossEntropyBackward(
    logits: Buf,
    targets: Int32Array,
    lse: Buf,
    gloss: Buf,
    glogits: Buf,
    rows: number,
    V: number,
    ignoreIndex: number,
  ): void;

  /** Writes out[i] = silu(gate[i]) * up[i] for i < n. */
  swiglu(gate: Buf, up: Buf, out: Buf, n: number): void;
  /** Writes ggate and gup for i < n from gout. */
  swigluBackward(gate: Buf, up: Buf, gout: Buf, ggate: Buf, gup: Buf, n: number): void;

  /**
   * Depth routing (docs/methods.md "Routing") of N sources at every row (token), reading the sources
   * in place (never stacked). sources: N buffers, each [rows, d]; w (query) and g (key gain) [d].
   *   rstd[r, i] = 1/sqrt(mean_c s_i[r,c]^2 + eps);   k_i = s_i[r] * rstd[r, i] * g
   *   l_i = w . k_i;   alpha[r, :] = softmax_i(l);     out[r] = base[r] + sum_i alpha[r, i] * s_i[r]
   * (base [rows, d], or null for none). Writes out [rows, d], alpha [rows, N] and rstd [rows, N]
   * (both kept for the backward). With next, the same pass also writes the next call's summary of
   * these sources (RouteNext); with prior (never both), sources 0 … n−1 are not read: their logits,
   * rstd and weighted sum come from the summary an earlier call wrote, and the results are those of
   * the call without it up to rounding. Two calls linked so read the shared sources once.
   */
  depthRoute(
    sources: readonly Buf[],
    w: Buf,
    g: Buf,
    out: Buf,
    alpha: Buf,
    rstd: Buf,
    rows: number,
    d: number,
    eps: number,
    base: Buf | null,
    next?: RouteNext | null,
    prior?: RoutePrior | null,
  ): void;
  /**
   * Backward of depthRoute. Accumulates into gsources[i] [rows, d] for every i whose entry is
   * non-null (the autograd engine hands in the running gradient of each source, so no separate
   * buffer is written and summed later); writes gw [d] and gg [d] (sums over rows).
   */
  depthRouteBackward(
    sources: readonly Buf[],
    w: Buf,
    g: Buf,
    alpha: Buf,
    rstd: Buf,
    gout: Buf,
    gsources: readonly (Buf | null)[],
    gw: Buf,
    gg: Buf,
    rows: number,
    d: number,
  ): void;
  /**
   * The backward of depthRoute for one source, deferred until every routed call that reads it has
   * its output gradient (src/tensor/ops.ts `route`). With the per-row scalar c_k[r] =
   * gout_k[r] . (out_k[r] - base_k[r]) of consumer k (the routed sum's share of the output), the
   * softmax backward needs only this source:
   *   da = gout_k . s,  dl = alpha_k (da - c_k),  dl_i = rstd_k * dl  (per row r, consumer k)
   *   gsource += sum_k [alpha_k gout_k + dl_i (w_k o g_k) - (rstd_k^2 dl_i (w_k o g_k) . s / d) s]
   *   ps[k] += sum_r dl_i s        (so that gw_k = g_k o ps[k], gg_k = w_k o ps[k] once every
   *                                 source of call k has been added)
   * source [rows, d]. Per consumer k < K: gouts[k] [rows, d]; alphas[k], rstds[k] [rows, N_k], this
   * source being column col_k of them, meta = Int32Array [col_0, N_0, needC_0, col_1, ...] (3K);
   * cs[k] [rows]: c_k, computed here first (from outs[k] and bases[k], [rows, d], a base may be
   * null) and written to cs[k] when needC_k is 1 (on the first source of a call; then only cs[k] is
   * read); ws[k], gs[k] [d] (the call's query and key gain); ps[k] [d] (accumulates into).
   * gsource [rows, d]: null (only ps is wanted), accumulated into when accumulate, else written,
   * starting from init [rows, d] when that is non-null (from zero otherwise).
   * pair: a second source that every one of the K calls reads too (at column pair.cols[k], Int32Array
   * [K]): pair.gsource [rows, d] is written (from zero) with its share of the same K calls, and its
   * p terms are added too, in the same pass (each gout read once for both); gsource must be non-null.
   */
  depthRouteSourceBackward(
    source: Buf,
    gsource: Buf | null,
    accumulate: boolean,
    gouts: readonly Buf[],
    alphas: readonly Buf[],
    rstds: readonly Buf[],
    meta: Int32Array,
    cs: readonly Buf[],
    ws: readonly Buf[],
    gs: readonly Buf[],
    ps: readonly Buf[],
    rows: number,
    d: number,
    init: Buf | null,
    outs: readonly Buf[],
    bases: readonly (Buf | null)[],
    pair?: RoutePair | null,
  ): void;
  /** Writes out[r] = sum_c a[r, c] * b[r, c] for r < rows (a, b [rows, d]; out [rows]). */
  rowDot(a: Buf, b: Buf, out: Buf, rows: number, d: number): void;

  /**
   * Deep Delta Learning's expanded state (ddl-expanded): X [rows, d, dv] holds dv value channels per
   * feature of every row (token). ddlRead reads the stream out of it with a per-feature mix C [d, dv]:
   *   x[r, i] = sum_c X[r, i, c] * C[i, c]                                  writes x [rows, d]
   */
  ddlRead(X: Buf, C: Buf, x: Buf, rows: number, d: number, dv: number): void;
  /**
   * Backward of ddlRead from gx [rows, d]: accumulates gX[r, i, c] += gx[r, i] * C[i, c] when gX is
   * non-null; writes gC[i, c] = sum_r gx[r, i] * X[r, i, c].
   */
  ddlReadBackward(
    X: Buf,
    C: Buf,
    gx: Buf,
    gX: Buf | null,
    gC: Buf,
    rows: number,
    d: number,
    dv: number,
  ): void;
  /**
   * The ddl-expanded state update of one sublayer, with key k [rows, d] (unit norm), gate
   * beta [rows] and value v [rows, dv]:
   *   kX[r, c] = sum_i k[r, i] X[r, i, c];   Y[r, i, c] = X[r, i, c] + beta[r] k[r, i] (v[r, c] - kX[r, c])
   * Writes Y [rows, d, dv]. Given the next read's mix C [d, dv] (C and x both non-null), also writes
   * that read of the new state, x[r, i] = sum_c Y[r, i, c] * C[i, c] [rows, d] (ddlRead fused in).
   */
  ddlUpdate(
    X: Buf,
    k: Buf,
    beta: Buf,
    v: Buf,
    Y: Buf,
    rows: number,
    d: number,
    dv: number,
    C: Buf | null,
    x: Buf | null,
  ): void;
  /**
   * Backward of ddlUpdate from gY [rows, d, dv]. With s[r, c] = sum_i k[r, i] gY[r, i, c] and
   * delta = v - kX: gX += gY - beta k (x) s when gX is non-null (gX = ... without accumulate); writes
   * gk[r, i] = beta sum_c (gY[r, i, c] delta[r, c] - X[r, i, c] s[r, c]), gbeta[r] = sum_c delta s,
   * gv[r, c] = beta[r] s[r, c].
   */
  ddlUpdateBackward(
    X: Buf,
    k: Buf,
    beta: Buf,
    v: Buf,
    gY: Buf,
    gX: Buf | null,
    accumulate: boolean,
    gk: Buf,
    gbeta: Buf,
    gv: Buf,
    rows: number,
    d: number,
    dv: number,
  ): void;
  /**
   * Deep Delta Learning's scalar step (ddl) of one sublayer, fused. Per row (token), with the stream
   * x, the sublayer's output u and its pre-norm c (all [rows, d]), gate and value projections wb, wv
   * [d] with biases bb, bv [1]:
   *   r = 1/sqrt(|u|² + eps2),  k = r u,  β = 2σ(wb·c + bb),  kx = k·x,
   *   v = wv·c + bv, or 4σ(wv·x + bv) when vFromStream,
   *   y = x + β (v − kx) k
   * Writes y [rows, d], beta [rows] and aux [rows, 3] = (r, v, kx), which the backward reads.
   */
  ddlStep(
    x: Buf,
    u: Buf,
    c: Buf,
    wb: Buf,
    bb: Buf,
    wv: Buf,
    bv: Buf,
    y: Buf,
    beta: Buf,
    aux: Buf,
    rows: number,
    d: number,
    eps2: number,
    vFromStream: boolean,
  ): void;
  /**
   * Backward of ddlStep from gy [rows, d]. gx, gu, gc may each be null (not wanted); bit 1 / 2 / 4
   * of accumulate makes gx / gu / gc accumulate (+=) instead of being written. Writes the
   * parameter gradients gwb, gwv [d], gbb, gbv [1] (sums over rows).
   */
  ddlStepBackward(
    x: Buf,
    u: Buf,
    c: Buf,
    wb: Buf,
    wv: Buf,
    beta: Buf,
    aux: Buf,
    gy: Buf,
    gx: Buf | null,
    gu: Buf | null,
    gc: Buf | null,
    accumulate: number,
    gwb: Buf,
    gbb: Buf,
    gwv: Buf,
    gbv: Buf,
    rows: number,
    d: number,
    vFromStream: boolean,
  ): void;

  // ---------------------------------------------------------------- one-row projections (decoding)
  /**
   * Projections of one row, for batch-1 decoding (inference only: these have no backward). For
   * each i: writes outs[i] [ns[i]] = ws[i] [ns[i], K] x [K] (x Wᵀ for a Linear weight W), all in
   * one call (the q, k and v projections of a token).
   */
  gemvMany(x: Buf, ws: readonly Buf[], outs: readonly Buf[], ns: readonly number[], K: number): void;
  /** Writes out[n] = silu(wg[n, :] · x) · (wu[n, :] · x) for n < N: wg, wu [N, K]; x [K]; out [N]. */
  gemvSwiglu(x: Buf, wg: Buf, wu: Buf, out: Buf, N: number, K: number): void;
  /**
   * One token's attention step over a KV cache (batch 1, inference only: no backward), in one call.
   * q [Hq, D], k, v [Hkv, D] (the token's projections); qNorm, kNorm [D] or null: per-head RMSNorm
   * gains (qk-norm; null = no norm); cos, sin [maxPos, D/2] (the rotary tables, row pos used);
   * kCache, vCache [≥ pos + 1, Hkv, D]. With q', k' = rope(rmsnorm(q), pos), rope(rmsnorm(k), pos)
   * per head (HF rotate_half, as `rope`), writes kCache[pos] = k', vCache[pos] = v and
   * out [Hq, D] = softmax(scale q'·K[0..pos]ᵀ) V[0..pos] per query head (kv head h / (Hq/Hkv)).
   * Non-finite scores follow softmax's arithmetic, exp(s − max) / Σ: a NaN or +∞ score makes its
   * head's output NaN, a −∞ score gets weight 0.
   */
  decodeAttention(
    q: Buf,
    k: Buf,
    v: Buf,
    qNorm: Buf | null,
    kNorm: Buf | null,
    eps: number,
    cos: Buf,
    sin: Buf,
    kCache: Buf,
    vCache: Buf,
    pos: number,
    out: Buf,
    Hq: number,
    Hkv: number,
    D: number,
    scale: number,
  ): void;
  /**
   * One row's depth routing plus the stream (batch-1 decoding, inference only: no backward).
   * sources [N, d] (one source per row, N ≥ 1); w, g, h, out [d]. Writes
   *   out = h + gate · Σ_i α_i sources[i],  α = softmax_i((w ∘ g) · sources[i] · rstd_i),
   *   rstd_i = 1 / sqrt(mean_c sources[i, c]² + eps)   (the routing of depthRoute, one row).
   */
  decodeRoute(
    sources: Buf,
    N: number,
    w: Buf,
    g: Buf,
    h: Buf,
    gate: number,
    out: Buf,
    d: number,
    eps: number,
  ): void;

  // ---------------------------------------------------------------- optimizer
  /**
   * One AdamW step on n elements, in PyTorch's exact order of operations:
   *   p *= 1 - lr*wd
   *   m = beta1*m + (1-beta1)*g;   v = beta2*v + (1-beta2)*g*g
   *   p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
   * where bc1 = 1 - beta1^t, bc2 = 1 - beta2^t are passed in. Updates p, m, v in place.
   */
  adamw(
    p: Buf,
    g: Buf,
    m: Buf,
    v: Buf,
    n: number,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    wd: number,
    bc1: number,
    bc2: number,
  ): void;
}
