// depth_route.cc: depth routing (docs/methods.md "Routing") of N sources per row, reading sources in place.
//
//   sources: N buffers [rows, d];  w (query), g (key gain) [d];  out [rows, d];  alpha, rstd [rows, N]
//   rstd[r,i] = 1/sqrt(mean_c s_i[r,c]^2 + eps);  l_i = sum_c w_c * s_i[r,c] * rstd[r,i] * g_c
//   alpha[r,:] = softmax_i(l);  out[r] = sum_i alpha[r,i] * s_i[r]
// Backward (per row, da_i = gout . s_i, dl_i = alpha_i (da_i - sum_j alpha_j da_j)), accumulating:
//   gs_i += alpha_i gout + rstd_i dl_i (w o g) - (rstd_i^3 / d) (sum_c dl_i w_c g_c s_ic) s_i
//   gw += g o P,   gg += w o P,   P = sum_rows sum_i dl_i rstd_i s_i   (per-thread partials, summed in order)
// With base (an additive mode's stream h), out = base + sum_i alpha_i s_i in the same pass.
// The deferred backward (depth_route_source_backward) takes one source s and the K routed calls that
// read it, each with its output gradient gout_k and c_k = gout_k . (out_k - base_k) per row, which
// stands in for sum_i alpha_i da_i, so no other source of the call is needed (c_k is computed on
// the call's first source, while gout_k is read anyway, and kept for its other sources):
//   dl = rstd_k alpha_k (gout_k . s - c_k);  gs += alpha_k gout_k + dl (w_k o g_k) - (rstd_k^2 dl q_k / d) s
//   p_k += sum_rows dl s   (q_k = (w_k o g_k) . s; gw_k = g_k o p_k, gg_k = w_k o p_k after all sources)
// One source's block of rows (and its gradient's) stays in cache while the K gradients stream past:
// one read of [rows, d] per (call, source) pair instead of three. Given a second source s2 that the same K
// calls read (src/tensor/ops.ts pairs a source with the one before it), its gradient gs2 is written in the
// same pass while each gout row is in L1: one read of each gout per two sources.
// The forward reads each source row once: per block of kRouteRows rows it walks two sources at a
// time over the block's rows (long sequential runs for the hardware prefetcher), computes each row's
// rstd and logit, and adds both rows at once to a running softmax sum (online: a larger logit
// rescales the sum so far), which stays in cache for the block; out = [base +] sum / z at the end.
// The online softmax's scalar steps (new max, rescale, weights: exponentials) are taken for a group of
// kGroup rows at once, vectorized, between the group's logits and its sums: row by row they were a
// chain of dependent scalar steps costing about a quarter of the kernel.
// The deferred backward walks blocks of kRouteRows rows the same way, one call's gout after another;
// the one-call backward (depth_route_backward) uses blocks of kRowBlock rows, in two passes.
// All of them spread blocks over OpenMP threads. Sums over d accumulate in float across the SIMD
// lanes (64 partial sums with AVX-512: four accumulators of 16), accurate to ~1e-6 relative for d in
// the thousands. The forward's softmax runs in float with exp_fast (~2 ulp); the backward's sums over
// sources (dl) use double.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace attnres {

// The dot products below are explicit `omp simd` reductions: without -ffast-math the compiler may
// not reorder a plain loop-carried sum, and would run these loops one element at a time. Float
// accumulators keep the full SIMD width (float->double conversions halved it).

namespace {
constexpr i64 kRowBlock = 16;
constexpr i64 kRouteRows = 32;  // rows per block in the forward and the deferred backward
constexpr i64 kGroup = 8;       // rows whose softmax steps the forward takes together (a multiple of 8)
constexpr i64 kAhead = 4;       // rows of prefetch distance along a pass's (source, row) order
constexpr i64 kChunk = 64;      // columns summed in registers at once (four AVX-512 vectors)

// sx = sum_c s[c] x[c], sy = sum_c s[c] y[c]: with AVX-512, four independent accumulators per sum
// (a single one would wait on the previous FMA every 16 elements).
inline void dots(const float* s, const float* x, const float* y, i64 d, float* sx, float* sy) {
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  i64 c = 0;
  for (; c + 64 <= d; c += 64) {
    const __m512 s0 = _mm512_loadu_ps(s + c), s1 = _mm512_loadu_ps(s + c + 16);
    const __m512 s2 = _mm512_loadu_ps(s + c + 32), s3 = _mm512_loadu_ps(s + c + 48);
    a0 = _mm512_fmadd_ps(s0, _mm512_loadu_ps(x + c), a0);
    a1 = _mm512_fmadd_ps(s1, _mm512_loadu_ps(x + c + 16), a1);
    a2 = _mm512_fmadd_ps(s2, _mm512_loadu_ps(x + c + 32), a2);
    a3 = _mm512_fmadd_ps(s3, _mm512_loadu_ps(x + c + 48), a3);
    b0 = _mm512_fmadd_ps(s0, _mm512_loadu_ps(y + c), b0);
    b1 = _mm512_fmadd_ps(s1, _mm512_loadu_ps(y + c + 16), b1);
    b2 = _mm512_fmadd_ps(s2, _mm512_loadu_ps(y + c + 32), b2);
    b3 = _mm512_fmadd_ps(s3, _mm512_loadu_ps(y + c + 48), b3);
  }
  for (; c < d; c += 16) {
    const __mmask16 m = first_lanes(d - c);
    const __m512 s0 = _mm512_maskz_loadu_ps(m, s + c);
    a0 = _mm512_fmadd_ps(s0, _mm512_maskz_loadu_ps(m, x + c), a0);
    b0 = _mm512_fmadd_ps(s0, _mm512_maskz_loadu_ps(m, y + c), b0);
  }
  *sx = hsum(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  *sy = hsum(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
#else
  float u = 0.0f, v = 0.0f;
#pragma omp simd reduction(+ : u, v)
  for (i64 c = 0; c < d; c++) {
    u += s[c] * x[c];
    v += s[c] * y[c];
  }
  *sx = u;
  *sy = v;
#endif
}

// ss = s . s, sx = s . x, sy = s . y in one read of s (four accumulators per sum with AVX-512).
inline void dots3(const float* s, const float* x, const float* y, i64 d, float* ss, float* sx, float* sy) {
#if defined(__AVX512F__)
  __m512 a[4], b[4], q[4];
  for (int k = 0; k < 4; k++) a[k] = b[k] = q[k] = _mm512_setzero_ps();
  i64 c = 0;
  for (; c + 64 <= d; c += 64)
    for (int k = 0; k < 4; k++) {
      const __m512 sk = _mm512_loadu_ps(s + c + 16 * k);
      q[k] = _mm512_fmadd_ps(sk, sk, q[k]);
      a[k] = _mm512_fmadd_ps(sk, _mm512_loadu_ps(x + c + 16 * k), a[k]);
      b[k] = _mm512_fmadd_ps(sk, _mm512_loadu_ps(y + c + 16 * k), b[k]);
    }
  for (; c < d; c += 16) {
    const __mmask16 m = first_lanes(d - c);
    const __m512 s0 = _mm512_maskz_loadu_ps(m, s + c);
    q[0] = _mm512_fmadd_ps(s0, s0, q[0]);
    a[0] = _mm512_fmadd_ps(s0, _mm512_maskz_loadu_ps(m, x + c), a[0]);
    b[0] = _mm512_fmadd_ps(s0, _mm512_maskz_loadu_ps(m, y + c), b[0]);
  }
  const auto sum4 = [](const __m512* v) {
    return hsum(_mm512_add_ps(_mm512_add_ps(v[0], v[1]), _mm512_add_ps(v[2], v[3])));
  };
  *ss = sum4(q);
  *sx = sum4(a);
  *sy = sum4(b);
#else
  float u = 0.0f, v = 0.0f, t = 0.0f;
#pragma omp simd reduction(+ : u, v, t)
  for (i64 c = 0; c < d; c++) {
    t += s[c] * s[c];
    u += s[c] * x[c];
    v += s[c] * y[c];
  }
  *ss = t;
  *sx = u;
  *sy = v;
#endif
}

// x . (y - z) (z may be null: x . y); four accumulators with AVX-512, like dots.
inline float dot_diff(const float* x, const float* y, const float* z, i64 d) {
#if defined(__AVX512F__)
  __m512 a[4];
  for (int k = 0; k < 4; k++) a[k] = _mm512_setzero_ps();
  const auto yz = [&](i64 c, __mmask16 m) {
    const __m512 yv = _mm512_maskz_loadu_ps(m, y + c);
    return z == nullptr ? yv : _mm512_sub_ps(yv, _mm512_maskz_loadu_ps(m, z + c));
  };
  i64 c = 0;
  for (; c + 64 <= d; c += 64)
    for (int k = 0; k < 4; k++)
      a[k] = _mm512_fmadd_ps(_mm512_loadu_ps(x + c + 16 * k), yz(c + 16 * k, (__mmask16)0xffff), a[k]);
  for (; c < d; c += 16) {
    const __mmask16 m = first_lanes(d - c);
    a[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + c), yz(c, m), a[0]);
  }
  return hsum(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
#else
  float u = 0.0f;
  if (z != nullptr) {
#pragma omp simd reduction(+ : u)
    for (i64 c = 0; c < d; c++) u += x[c] * (y[c] - z[c]);
  } else {
#pragma omp simd reduction(+ : u)
    for (i64 c = 0; c < d; c++) u += x[c] * y[c];
  }
  return u;
#endif
}

// Prefetches row r of buf (d floats, every 64-byte line); rw: for writing.
inline void prefetch_row(const float* buf, i64 d, bool rw) {
  if (rw)
    for (i64 c = 0; c < d; c += 16) __builtin_prefetch(buf + c, 1, 3);
  else
    for (i64 c = 0; c < d; c += 16) __builtin_prefetch(buf + c, 0, 3);
}

// The row kAhead steps after (i, r) in the order "source i over rows r0..r1-1, then source
// i+step" (step 2: a pass that walks sources two at a time, i and i+1 together); returns false past
// the last source.
inline bool ahead(i64 i, i64 r, i64 r0, i64 r1, i64 N, i64* ia, i64* ra, i64 step = 1) {
  i64 rr = r + kAhead, ii = i;
  while (rr >= r1) {
    rr -= r1 - r0;
    ii += step;
  }
  if (ii >= N) return false;
  *ia = ii;
  *ra = rr;
  return true;
}

// The running softmax-weighted sums of a group of n rows (row j: max m[j], sum z[j], its acc holding
// sum_i exp(l_i - m[j]) s_i) take one or two more sources, with logits l0[j] (and l1[j] when w == 2):
// the factors of the update are written, sc[j] (what the acc so far is scaled by; 0 when the sums start
// here, `first`), e0[j] and e1[j] (the new rows' weights), and m, z updated. Row by row it is a short
// chain of scalar steps with exponentials; over the group's rows it vectorizes (float, exp_fast).
// A larger logit rescales the sum so far by exp(m_old - m). NaN in l stays out of m but reaches z and acc
// through e; an infinite m gives NaN weights (inf - inf), as the two-pass softmax does.
inline void online_factors(const float* l0, const float* l1, i64 w, i64 n, float* m, float* z, bool first,
                           float* sc, float* e0, float* e1) {
#pragma omp simd
  for (i64 j = 0; j < n; j++) {
    const float a = l0[j], b = w == 2 ? l1[j] : a;
    const float mx = w == 2 ? (a < b ? b : a) : a;  // std::max(a, b)
    const float mo = first ? mx : m[j];
    const float mn = mx > mo ? mx : mo;
    const float f = first ? 0.0f : mn == mo ? 1.0f : exp_fast(mo - mn);
    const float x0 = exp_fast(a - mn), x1 = w == 2 ? exp_fast(b - mn) : 0.0f;
    z[j] = first ? x0 + x1 : z[j] * f + x0 + x1;
    m[j] = mn;
    sc[j] = f;
    e0[j] = x0;
    e1[j] = x1;
  }
}

// acc = sc * acc + e0 * s0 + e1 * s1 over d (first: acc = e0 * s0 + e1 * s1, whatever it held, even NaN).
inline void online_apply(float* acc, const float* s0, const float* s1, bool first, float sc, float e0,
                         float e1, i64 d) {
  if (first) {
#pragma omp simd
    for (i64 c = 0; c < d; c++) acc[c] = e0 * s0[c] + e1 * s1[c];
  } else if (sc == 1.0f) {
#pragma omp simd
    for (i64 c = 0; c < d; c++) acc[c] += e0 * s0[c] + e1 * s1[c];
  } else {
#pragma omp simd
    for (i64 c = 0; c < d; c++) acc[c] = acc[c] * sc + e0 * s0[c] + e1 * s1[c];
  }
}
}  // namespace

void depth_route(const float* const* src, i64 N, const float* w, const float* g, const float* base,
                 float* out, float* alpha, float* rstd, i64 rows, i64 d, float eps, const RouteNext* next,
                 const RoutePrior* prior) {
  std::vector<float> wg(d), wg2(next != nullptr ? d : 0);  // w o g, the effective query on the raw source
  for (i64 c = 0; c < d; c++) wg[c] = w[c] * g[c];
  if (next != nullptr)
    for (i64 c = 0; c < d; c++) wg2[c] = next->w[c] * next->g[c];
  const float* q = wg.data();
  const float* q2 = wg2.data();
  const i64 i0 = prior != nullptr ? prior->n : 0;  // sources read here: i0 .. N-1
  const i64 nb = (rows + kRouteRows - 1) / kRouteRows;
#pragma omp parallel if (rows * d * (N - i0 + 1) >= kParallelMin)
  {
    // per row of the block: its logits, and the running (max, sum) of this call and of the next
    std::vector<float> l((size_t)kRouteRows * N);
    float m[kRouteRows], z[kRouteRows], m2[kRouteRows], z2[kRouteRows];
    // per row of a group: the two sources' logits for this call (la) and the next (lb), the factors
    float la[2][kGroup], lb[2][kGroup], f[3][kGroup], f2[3][kGroup];
#pragma omp for schedule(static)
    for (i64 b = 0; b < nb; b++) {
      const i64 r0 = b * kRouteRows, r1 = std::min(rows, r0 + kRouteRows);
      if (prior != nullptr)  // start from the prior's summary of sources 0 .. i0-1
        for (i64 r = r0; r < r1; r++) {
          if (r + kAhead < r1) prefetch_row(prior->acc + (r + kAhead) * d, d, false);
          m[r - r0] = prior->stats[2 * r];
          z[r - r0] = prior->stats[2 * r + 1];
          std::copy(prior->acc + r * d, prior->acc + (r + 1) * d, out + r * d);
          for (i64 i = 0; i < i0; i++) {
            l[(r - r0) * N + i] = prior->logits[r * i0 + i];
            rstd[r * N + i] = prior->rstd[r * i0 + i];
          }
        }
      // one sweep over the sources, two at a time, in groups of kGroup rows: per source row, its rstd
      // and logit (and the next call's); then, over the group's rows at once, the softmax steps (the
      // new max, the rescale, the weights); then both rows added at once to the running sums in out (and
      // next->acc), which stay in cache for the block (one read and write of each sum per two sources).
      // The group's source rows are still in L1 for the last step.
      for (i64 i = i0; i < N; i += 2) {
        const i64 w2 = std::min<i64>(2, N - i);  // sources i .. i + w2 - 1
        const bool first = i == 0;
        for (i64 g0 = r0; g0 < r1; g0 += kGroup) {
          const i64 gn = std::min(kGroup, r1 - g0);
          for (i64 r = g0; r < g0 + gn; r++) {
            i64 ia, ra;
            if (ahead(i, r, r0, r1, N, &ia, &ra, 2))
              for (i64 j = ia; j < std::min(ia + 2, N); j++) prefetch_row(src[j] + ra * d, d, false);
            for (i64 j = 0; j < w2; j++) {
              const float* sr = src[i + j] + r * d;
              float ss, dot, dot2 = 0.0f;
              if (next != nullptr)
                dots3(sr, q, q2, d, &ss, &dot, &dot2);
              else
                dots(sr, sr, q, d, &ss, &dot);
              const float rs = (float)(1.0 / std::sqrt(ss / (double)d + (double)eps));
              rstd[r * N + i + j] = rs;
              const float lv = dot * rs;
              la[j][r - g0] = lv;
              l[(r - r0) * N + i + j] = lv;
              if (next != nullptr) {
                const float l2 = dot2 * rs;
                next->rstd[r * N + i + j] = rs;
                next->logits[r * N + i + j] = l2;
                lb[j][r - g0] = l2;
              }
            }
          }
          float* mg = m + (g0 - r0);
          float* zg = z + (g0 - r0);
          online_factors(la[0], la[1], w2, gn, mg, zg, first, f[0], f[1], f[2]);
          if (next != nullptr)
            online_factors(lb[0], lb[1], w2, gn, m2 + (g0 - r0), z2 + (g0 - r0), first, f2[0], f2[1], f2[2]);
          for (i64 r = g0; r < g0 + gn; r++) {
            const i64 j = r - g0;
            const float* s0 = src[i] + r * d;
            const float* s1 = src[i + w2 - 1] + r * d;
            online_apply(out + r * d, s0, s1, first, f[0][j], f[1][j], f[2][j], d);
            if (next != nullptr)
              online_apply(next->acc + r * d, s0, s1, first, f2[0][j], f2[1][j], f2[2][j], d);
          }
        }
      }
      // per row: alpha = softmax(l), out = [base +] out / z
      for (i64 r = r0; r < r1; r++) {
        if (base != nullptr && r + kAhead < r1) prefetch_row(base + (r + kAhead) * d, d, false);
        const float mx = m[r - r0];
        // an infinite largest logit makes the softmax NaN (inf - inf), as the two-pass form gives
        const float zi = std::isfinite(mx) ? 1.0f / z[r - r0] : NAN;
        const float* lr = l.data() + (r - r0) * N;
        float* ar = alpha + r * N;
#pragma omp simd
        for (i64 i = 0; i < N; i++) ar[i] = exp_fast(lr[i] - mx) * zi;
        float* o = out + r * d;
        if (base != nullptr) {
          const float* br = base + r * d;
#pragma omp simd
          for (i64 c = 0; c < d; c++) o[c] = br[c] + o[c] * zi;
        } else {
#pragma omp simd
          for (i64 c = 0; c < d; c++) o[c] *= zi;
        }
        if (next != nullptr) {
          next->stats[2 * r] = m2[r - r0];
          next->stats[2 * r + 1] = z2[r - r0];
        }
      }
    }
  }
}

void depth_route_backward(const float* const* src, i64 N, const float* w, const float* g, const float* alpha,
                          const float* rstd, const float* gout, float* const* gsrc, float* gw, float* gg,
                          i64 rows, i64 d) {
  const bool par = rows * d * N >= kParallelMin && rows > kRowBlock;
  const int maxT = par ? omp_get_max_threads() : 1;
  std::vector<float> partial((size_t)maxT * d, 0.0f);
  std::vector<float> wgv(d);
  for (i64 c = 0; c < d; c++) wgv[c] = w[c] * g[c];
  const float* wg = wgv.data();
  const i64 nb = (rows + kRowBlock - 1) / kRowBlock;
#pragma omp parallel if (par)
  {
    float* P = partial.data() + (size_t)omp_get_thread_num() * d;
    // per (row of the block, source): da, then dl; the query dot q . s
    std::vector<double> da((size_t)kRowBlock * N);
    std::vector<float> qd((size_t)kRowBlock * N);
#pragma omp for schedule(static)
    for (i64 b = 0; b < nb; b++) {
      const i64 r0 = b * kRowBlock, r1 = std::min(rows, r0 + kRowBlock);
      for (i64 i = 0; i < N; i++)
        for (i64 r = r0; r < r1; r++) {
          i64 ia, ra;
          if (ahead(i, r, r0, r1, N, &ia, &ra)) prefetch_row(src[ia] + ra * d, d, false);
          const float* s = src[i] + r * d;
          const float* go = gout + r * d;
          float dot, dq;
          dots(s, go, wg, d, &dot, &dq);
          da[(r - r0) * N + i] = dot;
          qd[(r - r0) * N + i] = dq;
        }
      for (i64 r = r0; r < r1; r++) {
        double* dr = da.data() + (r - r0) * N;
        double mean = 0.0;
        for (i64 i = 0; i < N; i++) mean += (double)alpha[r * N + i] * dr[i];
        for (i64 i = 0; i < N; i++) dr[i] = alpha[r * N + i] * (dr[i] - mean);  // dl_i
      }
      for (i64 i = 0; i < N; i++) {
        float* gbase = gsrc[i];
        for (i64 r = r0; r < r1; r++) {
          const float* s = src[i] + r * d;
          const float a = alpha[r * N + i], rs = rstd[r * N + i];
          const double dld = da[(r - r0) * N + i];
          const float dl = (float)dld;
          const float dlrs = dl * rs;
#pragma omp simd
          for (i64 c = 0; c < d; c++) P[c] += dlrs * s[c];
          if (gbase == nullptr) continue;
          i64 ia, ra;
          if (ahead(i, r, r0, r1, N, &ia, &ra) && gsrc[ia] != nullptr)
            prefetch_row(gsrc[ia] + ra * d, d, true);
          float* gs = gbase + r * d;
          const float* go = gout + r * d;
          const float coef = (float)((double)dl * qd[(r - r0) * N + i] * rs * rs * rs / (double)d);
#pragma omp simd
          for (i64 c = 0; c < d; c++) gs[c] += a * go[c] + dlrs * wg[c] - coef * s[c];
        }
      }
    }
  }
  for (i64 c = 0; c < d; c++) {
    float p = partial[c];
    for (int t = 1; t < maxT; t++) p += partial[(size_t)t * d + c];
    gw[c] = g[c] * p;
    gg[c] = w[c] * p;
  }
}

void row_dot(const float* a, const float* b, float* out, i64 rows, i64 d) {
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (i64 r = 0; r < rows; r++) {
    const float* x = a + r * d;
    const float* y = b + r * d;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (i64 c = 0; c < d; c++) dot += x[c] * y[c];
    out[r] = dot;
  }
}

void depth_route_source_backward(const float* s, float* gs, bool accumulate, const float* init, i64 K,
                                 const float* const* gout, const float* const* alpha,
                                 const float* const* rstd, const i64* col, const i64* n, const bool* needC,
                                 float* const* cv, const float* const* outs, const float* const* bases,
                                 const float* const* w, const float* const* g, float* const* p, i64 rows,
                                 i64 d, const float* s2, float* gs2, const i64* col2) {
  const bool two = s2 != nullptr;
  std::vector<float> wgv((size_t)K * d);
  for (i64 k = 0; k < K; k++)
    for (i64 c = 0; c < d; c++) wgv[(size_t)k * d + c] = w[k][c] * g[k][c];
  const bool par = rows * d * std::max<i64>(K, 1) >= kParallelMin && rows > kRouteRows;
  const int maxT = par ? omp_get_max_threads() : 1;
  std::vector<float> partial((size_t)maxT * K * d, 0.0f);
  const i64 nb = (rows + kRouteRows - 1) / kRouteRows;
#pragma omp parallel if (par)
  {
    float* P = partial.data() + (size_t)omp_get_thread_num() * K * d;
    double coef[kRouteRows], coef2[kRouteRows];
    float dlb[kRouteRows], dlb2[kRouteRows];
#pragma omp for schedule(static)
    for (i64 b = 0; b < nb; b++) {
      const i64 r0 = b * kRouteRows, r1 = std::min(rows, r0 + kRouteRows);
      if (gs != nullptr && !accumulate) {
        if (init != nullptr)
          std::copy(init + r0 * d, init + r1 * d, gs + r0 * d);
        else
          std::fill(gs + r0 * d, gs + r1 * d, 0.0f);
      }
      if (two) std::fill(gs2 + r0 * d, gs2 + r1 * d, 0.0f);
      for (i64 r = r0; r < r1; r++) coef[r - r0] = coef2[r - r0] = 0.0;
      for (i64 k = 0; k < K; k++) {
        const float* q = wgv.data() + (size_t)k * d;
        float* Pk = P + (size_t)k * d;
        const i64 N = n[k], ck = col[k];
        for (i64 r = r0; r < r1; r++) {
          i64 ka, ra;
          if (ahead(k, r, r0, r1, K, &ka, &ra)) {
            prefetch_row(gout[ka] + ra * d, d, false);
            if (needC[ka]) {  // c's other operands, read once per call (cold otherwise)
              prefetch_row(outs[ka] + ra * d, d, false);
              if (bases[ka] != nullptr) prefetch_row(bases[ka] + ra * d, d, false);
            }
          }
          const float* sr = s + r * d;
          const float* go = gout[k] + r * d;
          if (needC[k])  // c_k = gout_k . (out_k - base_k), on the call's first source
            cv[k][r] = dot_diff(go, outs[k] + r * d, bases[k] == nullptr ? nullptr : bases[k] + r * d, d);
          // one source: alpha is 1 whatever the logit, so dl is exactly 0 (c, taken from out - base,
          // may differ from da by the rounding of out)
          const auto row = [&](const float* srow, i64 column, float* grow, double* cf) {
            float da, dq;
            dots(srow, go, q, d, &da, &dq);
            const float a = alpha[k][r * N + column], rs = rstd[k][r * N + column];
            const double dld = N == 1 ? 0.0 : (double)rs * a * ((double)da - cv[k][r]);
            const float dl = (float)dld;
            if (grow != nullptr) {
              *cf += (double)rs * rs * dld * dq / (double)d;
#pragma omp simd
              for (i64 c = 0; c < d; c++) grow[c] += a * go[c] + dl * q[c];
            }
            return dl;
          };
          dlb[r - r0] = row(sr, ck, gs == nullptr ? nullptr : gs + r * d, &coef[r - r0]);
          // the second source, while gout's row is in L1
          if (two) dlb2[r - r0] = row(s2 + r * d, col2[k], gs2 + r * d, &coef2[r - r0]);
        }
        // p_k += sum over the block's rows of dl s: summed in a register per SIMD lane, so p_k is
        // read and written once per block instead of once per row
        const i64 nr = r1 - r0;
        for (int which = 0; which < (two ? 2 : 1); which++) {
          const float* sb = (which == 0 ? s : s2) + r0 * d;
          const float* dls = which == 0 ? dlb : dlb2;
          i64 c0 = 0;
          for (; c0 + kChunk <= d; c0 += kChunk) {
            float acc[kChunk] = {0};
            for (i64 r = 0; r < nr; r++) {
              const float dl = dls[r];
              const float* sp = sb + r * d + c0;
#pragma omp simd
              for (i64 j = 0; j < kChunk; j++) acc[j] += dl * sp[j];
            }
#pragma omp simd
            for (i64 j = 0; j < kChunk; j++) Pk[c0 + j] += acc[j];
          }
          for (i64 c = c0; c < d; c++) {
            float acc = 0.0f;
            for (i64 r = 0; r < nr; r++) acc += dls[r] * sb[r * d + c];
            Pk[c] += acc;
          }
        }
      }
      if (gs == nullptr) continue;
      for (i64 r = r0; r < r1; r++) {
        const float cf = (float)coef[r - r0];
        const float* sr = s + r * d;
        float* gr = gs + r * d;
#pragma omp simd
        for (i64 c = 0; c < d; c++) gr[c] -= cf * sr[c];
        if (!two) continue;
        const float cf2 = (float)coef2[r - r0];
        const float* s2r = s2 + r * d;
        float* g2 = gs2 + r * d;
#pragma omp simd
        for (i64 c = 0; c < d; c++) g2[c] -= cf2 * s2r[c];
      }
    }
  }
  for (i64 k = 0; k < K; k++)
    for (i64 c = 0; c < d; c++) {
      float v = partial[(size_t)k * d + c];
      for (int t = 1; t < maxT; t++) v += partial[((size_t)t * K + k) * d + c];
      p[k][c] += v;
    }
}

}  // namespace attnres
