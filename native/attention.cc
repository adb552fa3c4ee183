// attention.cc: scaled-dot-product attention with grouped-query heads, flash-style memory.
//
//   q, out, gq, gout [B, Tq, Hq, D]   k, v, gk, gv [B, Tk, Hkv, D]   lse [B, Hq, Tq]
//   query head h reads kv head g = h / (Hq / Hkv); causal: query i sees keys j <= i + (Tk - Tq).
//
// Only lse is kept from the forward; the backward recomputes P = exp(S - lse) and runs
//   dP = dO V^T,  dS = P o (dP - rowsum(dO o O)),  dQ = scale dS K,  dK += scale dS^T Q,  dV += P^T dO.
// Forward tasks are (b, h, block of BQ query rows); backward tasks are (b, kv head), which own their gk/gv
// slices (all query heads of the group are processed by the same task: no races). Causal work stops at the
// last key a strip's or block's last query can see. Two ways to compute the same products:
//  - register tiles (AVX-512 builds, Tq > 1): a task transposes its keys once (KT [D, Tk]); a score strip of
//    8 query rows x 32 keys accumulates in 16 registers; P V, dS K, dS^T Q and P^T dO accumulate 4 rows x
//    64 columns. No packing per product, any D (its tail masked).
//  - tile GEMMs (other builds; decoding one query row; a backward with fewer tasks than threads, where the
//    GEMMs use all threads): S [bq, kend] = scale * Q_blk K^T is one sgemm reading q/k in place.
// Scratch is per thread, allocated once per call. Non-finite scores propagate as in exp(s - max) / sum: a row
// whose visible scores are all NaN or -inf gives NaN (only a row with no visible key gives zeros). A NaN or
// Inf input must not reach a position its mask hides, as tile products would spread it (0 * NaN), so such
// inputs take an exact scalar path (attention_exact*, double accumulators) that skips masked pairs: the
// tile GEMM path scans its inputs first; the register tiles check their outputs as they store them and
// recompute exactly only when one is not finite (finite outputs mean no non-finite input mattered).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace attnres {

constexpr i64 BQ = 64;

// Keys visible to query row i (0-based among Tq): [0, limit).
static inline i64 key_limit(i64 i, i64 Tq, i64 Tk, bool causal) {
  if (!causal) return Tk;
  return std::max<i64>(0, std::min<i64>(Tk, i + (Tk - Tq) + 1));
}

// Prefetches rows r0 .. r1-1 of a head's slice (row t at x + t * ld, D floats) into L2: the next task's
// inputs, a slice at a time while this task runs (in L1 they would push out this task's own).
static void prefetch_rows(const float* x, i64 ld, i64 r0, i64 r1, i64 D) {
  for (i64 t = r0; t < r1; t++) prefetch_l2(x + t * ld, D);
}

// x[t * ld + c] = 0 for t < rows, c < D (one kv head's gradient rows, which the task accumulates into).
static void zero_rows(float* x, i64 rows, i64 ld, i64 D) {
  for (i64 t = 0; t < rows; t++) std::memset(x + t * ld, 0, sizeof(float) * D);
}

// True when x[0..n) holds no NaN or Inf (x * 0 is NaN exactly for those).
static bool all_finite(const float* x, i64 n) {
  float s = 0.0f;  // 0, or NaN once any term is: the order of the sum cannot change that, so it may vectorize
#pragma omp simd reduction(+ : s)
  for (i64 i = 0; i < n; i++) s += x[i] * 0.0f;
  return s == 0.0f;
}

// The exact path for non-finite inputs: softmax over visible keys only, as the reference computes.
static void attention_exact(const float* q, const float* k, const float* v, float* out, float* lse, i64 B,
                            i64 Tq, i64 Tk, i64 Hq, i64 Hkv, i64 D, float scale, bool causal) {
  const i64 G = Hq / Hkv;
  std::vector<double> s((size_t)std::max<i64>(Tk, 1));
  for (i64 b = 0; b < B; b++)
    for (i64 h = 0; h < Hq; h++)
      for (i64 i = 0; i < Tq; i++) {
        const float* qi = q + ((b * Tq + i) * Hq + h) * D;
        const i64 lim = key_limit(i, Tq, Tk, causal);
        double mx = -INFINITY;
        for (i64 j = 0; j < lim; j++) {
          const float* kj = k + ((b * Tk + j) * Hkv + h / G) * D;
          double dot = 0;
          for (i64 c = 0; c < D; c++) dot += (double)qi[c] * kj[c];
          s[j] = dot * scale;
          if (s[j] > mx) mx = s[j];
        }
        double z = 0;
        for (i64 j = 0; j < lim; j++) z += std::exp(s[j] - mx);
        lse[(b * Hq + h) * Tq + i] = (float)(mx + std::log(z));
        float* oi = out + ((b * Tq + i) * Hq + h) * D;
        for (i64 c = 0; c < D; c++) {
          double acc = 0;
          for (i64 j = 0; j < lim; j++)
            acc += std::exp(s[j] - mx) / z * v[((b * Tk + j) * Hkv + h / G) * D + c];
          oi[c] = (float)acc;
        }
      }
}

static void attention_backward_exact(const float* q, const float* k, const float* v, const float* out,
                                     const float* lse, const float* gout, float* gq, float* gk, float* gv,
                                     i64 B, i64 Tq, i64 Tk, i64 Hq, i64 Hkv, i64 D, float scale,
                                     bool causal) {
  const i64 G = Hq / Hkv;
  std::vector<double> ak((size_t)(B * Tk * Hkv * D), 0.0), av((size_t)(B * Tk * Hkv * D), 0.0);
  std::vector<double> aq((size_t)D);
  for (i64 b = 0; b < B; b++)
    for (i64 h = 0; h < Hq; h++)
      for (i64 i = 0; i < Tq; i++) {
        const i64 qo = ((b * Tq + i) * Hq + h) * D;
        const i64 lim = key_limit(i, Tq, Tk, causal);
        const double L = lse[(b * Hq + h) * Tq + i];
        double rowDot = 0;
        for (i64 c = 0; c < D; c++) rowDot += (double)gout[qo + c] * out[qo + c];
        std::fill(aq.begin(), aq.end(), 0.0);
        for (i64 j = 0; j < lim; j++) {
          const i64 ko = ((b * Tk + j) * Hkv + h / G) * D;
          double dot = 0, dp = 0;
          for (i64 c = 0; c < D; c++) {
            dot += (double)q[qo + c] * k[ko + c];
            dp += (double)gout[qo + c] * v[ko + c];
          }
          const double p = std::exp(dot * scale - L), ds = p * (dp - rowDot);
          for (i64 c = 0; c < D; c++) {
            aq[c] += scale * ds * k[ko + c];
            ak[ko + c] += scale * ds * q[qo + c];
            av[ko + c] += p * gout[qo + c];
          }
        }
        for (i64 c = 0; c < D; c++) gq[qo + c] = (float)aq[c];
      }
  for (size_t i = 0; i < ak.size(); i++) {
    gk[i] = (float)ak[i];
    gv[i] = (float)av[i];
  }
}

#if defined(__AVX512F__)
// ---------------------------------------------------------------- the register-tiled path (AVX-512)
// For Tq > 1 the products run in register tiles on the operands in place, instead of small GEMMs that
// pack both operands on every call (a non-finite output sends the call to the exact path, see the top): keys
// are transposed once per task into KT [D, ldt] so that a score strip is an outer-product accumulation (8
// query rows x 32 keys in 16 registers, one broadcast of q per row and column c); P V, dS K, dS^T Q and P^T
// dO accumulate 4 rows x 64 columns (masked at D's tail). Causal strips stop at their last row's last key.
// Any D.
constexpr i64 SR = 8;   // query rows per score strip [SR, ldt]
constexpr i64 BR = 32;  // query rows per backward block: the depth of the dK / dV accumulation

static inline i64 round16(i64 x) { return (x + 15) / 16 * 16; }

// XT[c * ldt + j] = X[j * ldx + c] for j < n, c < D; zero for n <= j < round16(n) (ldt >= round16(n)).
static void transpose_keys(const float* X, i64 ldx, i64 n, i64 D, float* XT, i64 ldt) {
  for (i64 j0 = 0; j0 < n; j0 += 16) {
    const i64 jn = std::min<i64>(16, n - j0);
    for (i64 c0 = 0; c0 < D; c0 += 16) {
      const i64 cn = std::min<i64>(16, D - c0);
      __m512 in[16], out[16];
      for (i64 r = 0; r < 16; r++)
        in[r] =
            r < jn ? _mm512_maskz_loadu_ps(first_lanes(cn), X + (j0 + r) * ldx + c0) : _mm512_setzero_ps();
      transpose16x16(in, out);
      for (i64 c = 0; c < cn; c++) _mm512_storeu_ps(XT + (c0 + c) * ldt + j0, out[c]);
    }
  }
}

// The micro-kernels below only accumulate into a small tile, not inlined: inlined into the loops
// around them, GCC 12 keeps a copy of the accumulator array on the stack and stores to it every step.

// tile[r * 32 + j] = sum_c a[r][c] * bt[c * ldt + j] for r < 8, j < 16 * NV (NV = 1 or 2).
template <int NV>
__attribute__((noinline)) static void tile_abT(const float* const* a, const float* bt, i64 ldt, i64 D,
                                               float* tile) {
  __m512 acc[SR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < SR; r++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  for (i64 c = 0; c < D; c++, bt += ldt) {
    __m512 b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(bt + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < SR; r++) {
      const __m512 x = _mm512_set1_ps(a[r][c]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < SR; r++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) _mm512_store_ps(tile + r * 32 + 16 * v, acc[r][v]);
}

// tile[r * 64 + c] = sum_{j<n} w[r][j] * X[j * ldx + c] for r < 4, c < 64 (lane l of vector v read under
// mask m >> 16v; masked-off lanes are zero).
__attribute__((noinline)) static void tile_wx(const float* const* w, const float* X, i64 ldx, i64 n,
                                              uint64_t m, float* tile) {
  const __mmask16 m0 = (__mmask16)m, m1 = (__mmask16)(m >> 16), m2 = (__mmask16)(m >> 32),
                  m3 = (__mmask16)(m >> 48);
  __m512 acc[4][4];
#pragma GCC unroll 8
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 8
    for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
  for (i64 j = 0; j < n; j++, X += ldx) {
    const __m512 x[4] = {_mm512_maskz_loadu_ps(m0, X), _mm512_maskz_loadu_ps(m1, X + 16),
                         _mm512_maskz_loadu_ps(m2, X + 32), _mm512_maskz_loadu_ps(m3, X + 48)};
#pragma GCC unroll 8
    for (int r = 0; r < 4; r++) {
      const __m512 s = _mm512_set1_ps(w[r][j]);
#pragma GCC unroll 8
      for (int v = 0; v < 4; v++) acc[r][v] = _mm512_fmadd_ps(s, x[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 8
    for (int v = 0; v < 4; v++) _mm512_store_ps(tile + r * 64 + 16 * v, acc[r][v]);
}

// tile[u * 64 + c] = sum_{r<R} W[r * ldw + u] * X[r * ldx + c] for u < 4, c < 64 (masked as tile_wx).
__attribute__((noinline)) static void tile_wtx(const float* W, i64 ldw, i64 R, const float* X, i64 ldx,
                                               uint64_t m, float* tile) {
  const __mmask16 m0 = (__mmask16)m, m1 = (__mmask16)(m >> 16), m2 = (__mmask16)(m >> 32),
                  m3 = (__mmask16)(m >> 48);
  __m512 acc[4][4];
#pragma GCC unroll 8
  for (int u = 0; u < 4; u++)
#pragma GCC unroll 8
    for (int v = 0; v < 4; v++) acc[u][v] = _mm512_setzero_ps();
  for (i64 r = 0; r < R; r++, W += ldw, X += ldx) {
    const __m512 x[4] = {_mm512_maskz_loadu_ps(m0, X), _mm512_maskz_loadu_ps(m1, X + 16),
                         _mm512_maskz_loadu_ps(m2, X + 32), _mm512_maskz_loadu_ps(m3, X + 48)};
#pragma GCC unroll 8
    for (int u = 0; u < 4; u++) {
      const __m512 s = _mm512_set1_ps(W[u]);
#pragma GCC unroll 8
      for (int v = 0; v < 4; v++) acc[u][v] = _mm512_fmadd_ps(s, x[v], acc[u][v]);
    }
  }
#pragma GCC unroll 8
  for (int u = 0; u < 4; u++)
#pragma GCC unroll 8
    for (int v = 0; v < 4; v++) _mm512_store_ps(tile + u * 64 + 16 * v, acc[u][v]);
}

// Lanes of columns c0 .. c0+64 below D, as one 64-bit mask (bit i: column c0 + i).
static inline uint64_t column_mask(i64 c0, i64 D) {
  const i64 w = std::min<i64>(64, D - c0);
  return w >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << w) - 1);
}

// S[r * lds + j] = alpha * sum_c A[r * lda + c] * BT[c * ldt + j]   for r < R <= SR, j < n (n % 16 == 0).
static void strip_abT(const float* A, i64 lda, i64 R, const float* BT, i64 ldt, i64 n, i64 D, float alpha,
                      float* S, i64 lds) {
  const float* a[SR];
  for (i64 r = 0; r < SR; r++) a[r] = A + std::min(r, R - 1) * lda;  // rows past R repeat the last one
  alignas(64) float tile[SR * 32];
  for (i64 j = 0; j < n; j += 32) {
    const i64 w = std::min<i64>(32, n - j);
    if (w == 32)
      tile_abT<2>(a, BT + j, ldt, D, tile);
    else
      tile_abT<1>(a, BT + j, ldt, D, tile);
    for (i64 r = 0; r < R; r++)
      for (i64 c = 0; c < w; c++) S[r * lds + j + c] = alpha * tile[r * 32 + c];
  }
}

// O[r * ldo + c] = alpha * sum_{j<n} P[r * ldp + j] * V[j * ldv + c]   for r < R <= SR, c < D (writes).
// Returns 0, or NaN when an output is NaN or infinite (the sum of every output times 0).
static float strip_pv(const float* P, i64 ldp, i64 R, const float* V, i64 ldv, i64 n, i64 D, float alpha,
                      float* O, i64 ldo) {
  alignas(64) float tile[4 * 64];
  // the outputs times 0, summed per lane and across lanes once at the end
  const __m512 av = _mm512_set1_ps(alpha), zero = _mm512_setzero_ps();
  __m512 bad = zero;
  for (i64 r0 = 0; r0 < R; r0 += 4) {
    const float* p[4];
    for (i64 r = 0; r < 4; r++) p[r] = P + std::min(r0 + r, R - 1) * ldp;
    for (i64 c0 = 0; c0 < D; c0 += 64) {
      tile_wx(p, V + c0, ldv, n, column_mask(c0, D), tile);
      const i64 w = std::min<i64>(64, D - c0);
      for (i64 r = 0; r < std::min<i64>(4, R - r0); r++) {
        float* o = O + (r0 + r) * ldo + c0;
        const float* t = tile + r * 64;
        for (i64 c = 0; c < w; c += 16) {
          const __mmask16 m = first_lanes(w - c);
          const __m512 x = _mm512_mul_ps(av, _mm512_load_ps(t + c));
          _mm512_mask_storeu_ps(o + c, m, x);
          bad = _mm512_fmadd_ps(x, zero, bad);  // lanes past w hold 0 (tile_wx zeroes them)
        }
      }
    }
  }
  return hsum(bad);
}

// G[j * ldg + c] += alpha * sum_{r<R} W[r * ldw + j] * X[r * ldx + c]   for j < n, c < D. W's rows are
// read up to column round4(n) (the strips' scratch is wider); those extra columns' sums are dropped.
// Returns 0, or NaN when an updated G is NaN or infinite.
static float update_keys(const float* W, i64 ldw, i64 R, const float* X, i64 ldx, i64 n, i64 D, float alpha,
                         float* G, i64 ldg) {
  alignas(64) float tile[4 * 64];
  const __m512 av = _mm512_set1_ps(alpha), zero = _mm512_setzero_ps();
  __m512 bad = zero;
  for (i64 j0 = 0; j0 < n; j0 += 4) {
    const i64 kn = std::min<i64>(4, n - j0);
    for (i64 c0 = 0; c0 < D; c0 += 64) {
      tile_wtx(W + j0, ldw, R, X + c0, ldx, column_mask(c0, D), tile);
      const i64 w = std::min<i64>(64, D - c0);
      for (i64 u = 0; u < kn; u++) {
        float* g = G + (j0 + u) * ldg + c0;
        const float* t = tile + u * 64;
        for (i64 c = 0; c < w; c += 16) {
          const __mmask16 m = first_lanes(w - c);
          const __m512 x = _mm512_fmadd_ps(av, _mm512_load_ps(t + c), _mm512_maskz_loadu_ps(m, g + c));
          _mm512_mask_storeu_ps(g + c, m, x);
          bad = _mm512_fmadd_ps(x, zero, bad);  // lanes past w: 0 from the masked load and the tile
        }
      }
    }
  }
  return hsum(bad);
}

// Row r of a score strip in place -> softmax over its first lim entries, zero in [lim, n); returns the
// row's log-sum-exp (-inf for lim == 0; NaN when every visible score is NaN or -inf, the row NaN too).
static float softmax_row(float* s, i64 lim, i64 n) {
  __m512 mv = _mm512_set1_ps(-INFINITY);
  i64 j0 = 0;
  for (; j0 + 16 <= lim; j0 += 16)  // the masked form: GCC 12 flags _mm512_max_ps's undefined pass-through
    mv = _mm512_mask_max_ps(mv, (__mmask16)0xffff, _mm512_loadu_ps(s + j0), mv);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, mv);
  float m = -INFINITY;
  for (int l = 0; l < 16; l++) m = std::max(m, lanes[l]);
  for (; j0 < lim; j0++) m = std::max(m, s[j0]);
  if (lim == 0 || m == -INFINITY) {
    for (i64 j = 0; j < lim; j++) s[j] = NAN;
    for (i64 j = lim; j < n; j++) s[j] = 0.0f;
    return lim == 0 ? -INFINITY : NAN;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (i64 j = 0; j < lim; j++) {
    const float e = exp_fast(s[j] - m);
    s[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (i64 j = 0; j < lim; j++) s[j] *= inv;
  for (i64 j = lim; j < n; j++) s[j] = 0.0f;
  return m + std::log(sum);
}

// Returns false when an output is NaN or infinite: then a non-finite input may have reached a position
// its mask hides (a hidden key's 0 weight times a NaN value), and the caller recomputes exactly. With
// finite outputs no non-finite input mattered, and the result is the exact path's (up to rounding).
static bool attention_tiled(const float* q, const float* k, const float* v, float* out, float* lse, i64 B,
                            i64 Tq, i64 Tk, i64 Hq, i64 Hkv, i64 D, float scale, bool causal) {
  const i64 G = Hq / Hkv, nQB = (Tq + BQ - 1) / BQ;
  const i64 ldq = Hq * D, ldk = Hkv * D;
  // Tasks: (b, h) with all its query blocks in order when there are enough of them for the threads (the
  // keys are transposed once, each block adding the ones it newly sees, and K and V stay in this core's
  // cache), else (b, h, query block) with the keys each block sees transposed for it.
  const bool wholeHeads = B * Hq >= 2 * omp_get_max_threads();
  const i64 nTasks = wholeHeads ? B * Hq : B * Hq * nQB, perTask = wholeHeads ? nQB : 1;
  const bool par = nTasks >= omp_get_max_threads() && B * Hq * Tq * Tk * D >= kParallelMin;
  float bad = 0.0f;
#pragma omp parallel if (par)
  {
    const i64 ldt = round16(std::max<i64>(Tk, 1));
    std::vector<float> KT((size_t)(D * ldt)), S((size_t)(SR * ldt));
    // one task: a whole head (its query blocks in order) or one query block of a head
    const auto run = [&](i64 task) {
      float bad1 = 0.0f;
      for (i64 t = 0, done = 0; t < perTask; t++) {  // done: keys transposed so far for this task's head
        // Split tasks: the last query blocks see the most keys, so they go first and the dynamic schedule
        // ends balanced. Whole heads: blocks in order, so each transposes only the keys it adds.
        const i64 qb = wholeHeads ? t : nQB - 1 - task % nQB;
        const i64 h = wholeHeads ? task % Hq : (task / nQB) % Hq,
                  b = wholeHeads ? task / Hq : task / (nQB * Hq);
        const i64 g = h / G;
        const i64 i0 = qb * BQ, i1 = std::min(Tq, i0 + BQ);
        const i64 kend = key_limit(i1 - 1, Tq, Tk, causal);
        const float* kp = k + (b * Tk * Hkv + g) * D;
        const float* vp = v + (b * Tk * Hkv + g) * D;
        if (kend > done) {  // transpose_keys zero-pads to a multiple of 16 keys: restart at that boundary
          const i64 from = done / 16 * 16;
          transpose_keys(kp + from * ldk, ldk, kend - from, D, KT.data() + from, ldt);
          done = kend;
        }
        for (i64 s0 = i0; s0 < i1; s0 += SR) {
          const i64 R = std::min(SR, i1 - s0);
          if (wholeHeads && task + 1 < nTasks) {  // the next head's rows at this position, for its task
            const i64 bn = (task + 1) / Hq, hn = (task + 1) % Hq, gn = hn / G;
            prefetch_rows(q + (bn * Tq * Hq + hn) * D, ldq, s0, s0 + R, D);
            const i64 j0 = s0 * Tk / Tq, j1 = (s0 + R) * Tk / Tq;
            prefetch_rows(k + (bn * Tk * Hkv + gn) * D, ldk, j0, j1, D);
            prefetch_rows(v + (bn * Tk * Hkv + gn) * D, ldk, j0, j1, D);
          }
          const float* qp = q + ((b * Tq + s0) * Hq + h) * D;
          float* op = out + ((b * Tq + s0) * Hq + h) * D;
          float* lp = lse + (b * Hq + h) * Tq + s0;
          const i64 lmax = key_limit(s0 + R - 1, Tq, Tk, causal), n = round16(lmax);
          if (n > 0) strip_abT(qp, ldq, R, KT.data(), ldt, n, D, scale, S.data(), ldt);
          for (i64 r = 0; r < R; r++)
            lp[r] = softmax_row(S.data() + r * ldt, key_limit(s0 + r, Tq, Tk, causal), n);
          bad1 += strip_pv(S.data(), ldt, R, vp, ldk, lmax, D, 1.0f, op, ldq);
        }
      }
      return bad1;
    };
    if (wholeHeads) {  // equal tasks: static, so a thread's next task is task + 1 (prefetched in run)
#pragma omp for schedule(static) reduction(+ : bad)
      for (i64 task = 0; task < nTasks; task++) bad += run(task);
    } else {
#pragma omp for schedule(dynamic) reduction(+ : bad)
      for (i64 task = 0; task < nTasks; task++) bad += run(task);
    }
  }
  return bad == 0.0f;
}

// Returns false when a gradient is NaN or infinite (see attention_tiled).
static bool attention_backward_tiled(const float* q, const float* k, const float* v, const float* out,
                                     const float* lse, const float* gout, float* gq, float* gk, float* gv,
                                     i64 B, i64 Tq, i64 Tk, i64 Hq, i64 Hkv, i64 D, float scale,
                                     bool causal) {
  const i64 G = Hq / Hkv, nTasks = B * Hkv;
  const i64 ldq = Hq * D, ldk = Hkv * D;
  const bool par = nTasks >= omp_get_max_threads() && B * Hq * Tq * Tk * D >= kParallelMin;
  float bad = 0.0f;
#pragma omp parallel if (par)
  {
    const i64 ldt = round16(std::max<i64>(Tk, 1));
    std::vector<float> KT((size_t)(D * ldt)), VT((size_t)(D * ldt)), P((size_t)(BR * ldt)),
        dS((size_t)(BR * ldt));
    // equal tasks: static, so a thread's next task is task + 1, whose inputs are prefetched meanwhile
#pragma omp for schedule(static) reduction(+ : bad)
    for (i64 task = 0; task < nTasks; task++) {
      const i64 b = task / Hkv, g = task % Hkv, kv = (b * Tk * Hkv + g) * D;  // this task's kv head
      const float *kp = k + kv, *vp = v + kv;
      float *gkp = gk + kv, *gvp = gv + kv;
      zero_rows(gkp, Tk, ldk, D);
      zero_rows(gvp, Tk, ldk, D);
      transpose_keys(kp, ldk, Tk, D, KT.data(), ldt);
      transpose_keys(vp, ldk, Tk, D, VT.data(), ldt);
      for (i64 h = g * G; h < (g + 1) * G; h++)
        for (i64 i0 = 0; i0 < Tq; i0 += BR) {
          const i64 bq = std::min(BR, Tq - i0), kend = key_limit(i0 + bq - 1, Tq, Tk, causal);
          if (h == g * G && task + 1 < nTasks) {  // the next task's rows at this position
            const i64 bn = (task + 1) / Hkv, gx = (task + 1) % Hkv, kvn = (bn * Tk * Hkv + gx) * D;
            const i64 j0 = i0 * Tk / Tq, j1 = (i0 + bq) * Tk / Tq, qn = (bn * Tq * Hq + gx * G) * D;
            prefetch_rows(k + kvn, ldk, j0, j1, D);
            prefetch_rows(v + kvn, ldk, j0, j1, D);
            prefetch_rows(q + qn, ldq, i0, i0 + bq, D);
            prefetch_rows(out + qn, ldq, i0, i0 + bq, D);
            prefetch_rows(gout + qn, ldq, i0, i0 + bq, D);
          }
          const i64 rowOff = ((b * Tq + i0) * Hq + h) * D;
          const float *qp = q + rowOff, *op = out + rowOff, *gop = gout + rowOff;
          float* gqp = gq + rowOff;
          const float* lp = lse + (b * Hq + h) * Tq + i0;
          for (i64 s0 = 0; s0 < bq; s0 += SR) {
            const i64 R = std::min(SR, bq - s0), lmax = key_limit(i0 + s0 + R - 1, Tq, Tk, causal);
            const i64 n = round16(lmax);
            float* ps = P.data() + s0 * ldt;
            float* ds = dS.data() + s0 * ldt;
            for (i64 r = 0; r < R; r++)  // the forward's output rows, read below (di), while the strips run
              for (i64 c = 0; c < D; c += 16)
                _mm_prefetch((const char*)(op + (s0 + r) * ldq + c), _MM_HINT_T0);
            if (n > 0) {
              strip_abT(qp + s0 * ldq, ldq, R, KT.data(), ldt, n, D, scale, ps, ldt);
              strip_abT(gop + s0 * ldq, ldq, R, VT.data(), ldt, n, D, 1.0f, ds, ldt);
            }
            for (i64 r = 0; r < R; r++) {
              float* pr = ps + r * ldt;
              float* dr = ds + r * ldt;
              const float* o = op + (s0 + r) * ldq;
              const float* go = gop + (s0 + r) * ldq;
              float di = 0.0f;
#pragma omp simd reduction(+ : di)
              for (i64 c = 0; c < D; c++) di += o[c] * go[c];
              const float L = lp[s0 + r];
              const i64 lim = L == -INFINITY ? 0 : key_limit(i0 + s0 + r, Tq, Tk, causal);
#pragma omp simd
              for (i64 j = 0; j < lim; j++) {
                const float pj = exp_fast(pr[j] - L);
                pr[j] = pj;
                dr[j] = pj * (dr[j] - di);
              }
              for (i64 j = lim; j < kend; j++) pr[j] = dr[j] = 0.0f;
            }
            bad += strip_pv(ds, ldt, R, kp, ldk, lmax, D, scale, gqp + s0 * ldq, ldq);
          }
          bad += update_keys(dS.data(), ldt, bq, qp, ldq, kend, D, scale, gkp, ldk);
          bad += update_keys(P.data(), ldt, bq, gop, ldq, kend, D, 1.0f, gvp, ldk);
        }
    }
  }
  return bad == 0.0f;
}
#endif

void attention(const float* q, const float* k, const float* v, float* out, float* lse, i64 B, i64 Tq, i64 Tk,
               i64 Hq, i64 Hkv, i64 D, float scale, bool causal) {
  if (B == 0 || Tq == 0 || Hq == 0) return;
  // One query row per (b, h) (decoding a token over a KV cache) masks no key, so the tiles below
  // compute exactly the exact path's math: instead of scanning the whole cache for non-finite
  // values first, the result is checked afterwards and only a non-finite one is recomputed.
  const bool single = Tq == 1;
#if defined(__AVX512F__)
  // The register tiles check their own outputs (no pass over the inputs first).
  if (!single) {
    if (!attention_tiled(q, k, v, out, lse, B, Tq, Tk, Hq, Hkv, D, scale, causal))
      attention_exact(q, k, v, out, lse, B, Tq, Tk, Hq, Hkv, D, scale, causal);
    return;
  }
#endif
  if (!single && (!all_finite(q, B * Tq * Hq * D) || !all_finite(k, B * Tk * Hkv * D) ||
                  !all_finite(v, B * Tk * Hkv * D)))
    return attention_exact(q, k, v, out, lse, B, Tq, Tk, Hq, Hkv, D, scale, causal);
  const i64 G = Hq / Hkv, nQB = (Tq + BQ - 1) / BQ, nTasks = B * Hq * nQB;
  const i64 ldq = Hq * D, ldk = Hkv * D;
  // One query row per head (decoding) is little work per call: threads only for long caches, since
  // a parallel region costs more than it saves below that (and far more on a loaded machine).
  const i64 parMin = single ? (i64)1 << 20 : kParallelMin;
  const bool par = nTasks >= omp_get_max_threads() && B * Hq * Tq * Tk * D >= parMin;
#pragma omp parallel if (par)
  {
    std::vector<float> S((size_t)(std::min(BQ, Tq) * std::max<i64>(Tk, 1)));
#pragma omp for schedule(dynamic)
    for (i64 task = 0; task < nTasks; task++) {
      const i64 qb = task % nQB, h = (task / nQB) % Hq, b = task / (nQB * Hq), g = h / G;
      const i64 i0 = qb * BQ, i1 = std::min(Tq, i0 + BQ), bq = i1 - i0;
      const i64 kend = key_limit(i1 - 1, Tq, Tk, causal);
      const float* qp = q + ((b * Tq + i0) * Hq + h) * D;
      const float* kp = k + (b * Tk * Hkv + g) * D;
      const float* vp = v + (b * Tk * Hkv + g) * D;
      float* op = out + ((b * Tq + i0) * Hq + h) * D;
      float* lp = lse + (b * Hq + h) * Tq + i0;
      if (kend > 0) sgemm(false, true, bq, kend, D, scale, qp, ldq, kp, ldk, 0.0f, S.data(), kend);
      for (i64 r = 0; r < bq; r++) {
        float* s = S.data() + r * kend;
        const i64 lim = key_limit(i0 + r, Tq, Tk, causal);
        float m = -INFINITY;
        for (i64 j = 0; j < lim; j++) m = std::max(m, s[j]);
        if (lim == 0) {  // no visible key (a truly masked row): empty softmax, zero output
          for (i64 j = 0; j < kend; j++) s[j] = 0.0f;
          lp[r] = -INFINITY;
          continue;
        }
        if (m == -INFINITY) {  // every visible score is NaN or -inf: NaN, as exp(s - max) / sum gives
          for (i64 j = 0; j < lim; j++) s[j] = NAN;
          for (i64 j = lim; j < kend; j++) s[j] = 0.0f;
          lp[r] = NAN;
          continue;
        }
        float acc[16] = {};
        i64 j = 0;
        for (; j + 16 <= lim; j += 16)
          for (int u = 0; u < 16; u++) {
            const float e = exp_fast(s[j + u] - m);
            s[j + u] = e;
            acc[u] += e;
          }
        float sum = 0.0f;
        for (; j < lim; j++) {
          s[j] = exp_fast(s[j] - m);
          sum += s[j];
        }
        for (int u = 0; u < 16; u++) sum += acc[u];
        const float inv = 1.0f / sum;
        for (j = 0; j < lim; j++) s[j] *= inv;
        for (j = lim; j < kend; j++) s[j] = 0.0f;
        lp[r] = m + std::log(sum);
      }
      if (bq == 1) {  // one row: out = sum_j p_j v_j directly (a GEMM would pack V first)
        for (i64 c = 0; c < D; c++) op[c] = 0.0f;
        const float* p = S.data();
        for (i64 j = 0; j < kend; j++) {
          const float pj = p[j];
          const float* vj = vp + j * ldk;
          for (i64 c = 0; c < D; c++) op[c] += pj * vj[c];
        }
      } else {
        sgemm(false, false, bq, D, kend, 1.0f, S.data(), kend, vp, ldk, 0.0f, op, ldq);
      }
    }
  }
  if (single && (!all_finite(out, B * Hq * D) || !all_finite(lse, B * Hq)))
    attention_exact(q, k, v, out, lse, B, Tq, Tk, Hq, Hkv, D, scale, causal);
}

void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* lse,
                        const float* gout, float* gq, float* gk, float* gv, i64 B, i64 Tq, i64 Tk, i64 Hq,
                        i64 Hkv, i64 D, float scale, bool causal) {
  if (B == 0 || Hkv == 0) return;
  const i64 nq = B * Tq * Hq * D, nk = B * Tk * Hkv * D;
  const i64 G = Hq / Hkv, nQB = (Tq + BQ - 1) / BQ, nTasks = B * Hkv;
  const i64 ldq = Hq * D, ldk = Hkv * D;
  const bool par = nTasks >= omp_get_max_threads() && B * Hq * Tq * Tk * D >= kParallelMin;
#if defined(__AVX512F__)
  // Fewer (batch, kv head) tasks than threads on enough work: the tile GEMMs below use all threads.
  // The register tiles check their own outputs (no pass over the inputs first).
  if (par || B * Hq * Tq * Tk * D < kParallelMin) {
    if (!attention_backward_tiled(q, k, v, out, lse, gout, gq, gk, gv, B, Tq, Tk, Hq, Hkv, D, scale, causal))
      attention_backward_exact(q, k, v, out, lse, gout, gq, gk, gv, B, Tq, Tk, Hq, Hkv, D, scale, causal);
    return;
  }
#endif
  if (!all_finite(q, nq) || !all_finite(k, nk) || !all_finite(v, nk) || !all_finite(out, nq) ||
      !all_finite(gout, nq))
    return attention_backward_exact(q, k, v, out, lse, gout, gq, gk, gv, B, Tq, Tk, Hq, Hkv, D, scale,
                                    causal);
#pragma omp parallel if (par)
  {
    const size_t tile = (size_t)(BQ * std::max<i64>(Tk, 1));
    std::vector<float> P(tile), dP(tile), Di(BQ);
#pragma omp for schedule(dynamic)
    for (i64 task = 0; task < nTasks; task++) {
      const i64 b = task / Hkv, g = task % Hkv, kv = (b * Tk * Hkv + g) * D;  // this task's kv head
      const float *kp = k + kv, *vp = v + kv;
      float *gkp = gk + kv, *gvp = gv + kv;
      zero_rows(gkp, Tk, ldk, D);
      zero_rows(gvp, Tk, ldk, D);
      for (i64 h = g * G; h < (g + 1) * G; h++) {
        for (i64 qb = 0; qb < nQB; qb++) {
          const i64 i0 = qb * BQ, i1 = std::min(Tq, i0 + BQ), bq = i1 - i0;
          const i64 kend = key_limit(i1 - 1, Tq, Tk, causal);
          const i64 rowOff = ((b * Tq + i0) * Hq + h) * D;
          const float* qp = q + rowOff;
          const float* op = out + rowOff;
          const float* gop = gout + rowOff;
          float* gqp = gq + rowOff;
          const float* lp = lse + (b * Hq + h) * Tq + i0;
          if (kend == 0) {  // no visible keys: zero gradient for these queries
            sgemm(false, false, bq, D, 0, 1.0f, P.data(), 1, kp, ldk, 0.0f, gqp, ldq);
            continue;
          }
          sgemm(false, true, bq, kend, D, scale, qp, ldq, kp, ldk, 0.0f, P.data(), kend);
          sgemm(false, true, bq, kend, D, 1.0f, gop, ldq, vp, ldk, 0.0f, dP.data(), kend);
          for (i64 r = 0; r < bq; r++) {
            const float* o = op + r * ldq;
            const float* go = gop + r * ldq;
            float d = 0.0f;
#pragma omp simd reduction(+ : d)
            for (i64 c = 0; c < D; c++) d += o[c] * go[c];
            Di[r] = d;
          }
          for (i64 r = 0; r < bq; r++) {
            float* p = P.data() + r * kend;
            float* dp = dP.data() + r * kend;
            const i64 lim = key_limit(i0 + r, Tq, Tk, causal);
            const float L = lp[r], dr = Di[r];
            if (L == -INFINITY) {
              for (i64 j = 0; j < kend; j++) p[j] = dp[j] = 0.0f;
              continue;
            }
            for (i64 j = 0; j < lim; j++) {
              const float pj = exp_fast(p[j] - L);
              p[j] = pj;
              dp[j] = pj * (dp[j] - dr);
            }
            for (i64 j = lim; j < kend; j++) p[j] = dp[j] = 0.0f;
          }
          sgemm(false, false, bq, D, kend, scale, dP.data(), kend, kp, ldk, 0.0f, gqp, ldq);
          sgemm(true, false, kend, D, bq, scale, dP.data(), kend, qp, ldq, 1.0f, gkp, ldk);
          sgemm(true, false, kend, D, bq, 1.0f, P.data(), kend, gop, ldq, 1.0f, gvp, ldk);
        }
      }
    }
  }
}

}  // namespace attnres
