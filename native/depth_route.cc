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
// The deferred backward takes blocks of kRouteRows rows. A first pass over the block's rows, kCallGroup
// calls at a time (each gout row prefetched kGoutAhead rows ahead), keeps 64 columns of each source row
// and of its gradient in registers while the group's gout rows go past: gs += alpha gout, and the sums
// of gout . s and q . s per (call, row), from which the row's dl and coefficient of s follow. Then two
// small register-blocked products over the block: gs += dl Q - coef s (4 rows by 64 columns at a time)
// and p_k += dl^T S (4 calls by 64 columns). Row by row and call by call, with a
// dependent chain of dot products, sums and update per call, the same work took ~1.4x as long.
// The one-call backward (depth_route_backward) uses blocks of kRowBlock rows, in two passes.
// All of them spread blocks over OpenMP threads. Sums over d accumulate in float across the SIMD
// lanes (with AVX-512 64 partial sums, four accumulators of 16; 16 in the deferred backward), accurate
// to ~1e-6 relative for d in the thousands. The forward's softmax runs in float with exp_fast (~2 ulp); the
// backward's sums over sources (dl) use double.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
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
constexpr i64 kCallGroup = 8;   // calls whose gout rows the deferred backward's first pass reads together
constexpr i64 kGoutAhead = 2;   // its prefetch distance in rows (into L1: kCallGroup x 2 rows)

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

namespace {
// A float vector for the deferred backward: an AVX-512 register (16 lanes), or else GCC's generic
// 8-lane vector (an AVX2 register, or two SSE ones). `lanes` selects the leading lanes of a load or
// store. Its register tiles hold kV vectors per row: 64 columns in 32 registers, or 16 in 16.
#if defined(__AVX512F__)
using vf = __m512;
using lanes = __mmask16;
constexpr lanes kAll = 0xffff;
constexpr int kLanes = 16, kV = 4;  // lanes per vector, vectors per chunk of columns
inline lanes lanes_first(i64 n) { return first_lanes(n); }
inline vf v_load(const float* p, lanes m) { return _mm512_maskz_loadu_ps(m, p); }
inline void v_store(float* p, vf x, lanes m) { _mm512_mask_storeu_ps(p, m, x); }
inline vf v_set1(float x) { return _mm512_set1_ps(x); }
inline vf v_zero() { return _mm512_setzero_ps(); }
inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
inline vf v_fnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
inline float v_sum(vf a) { return hsum(a); }
#else
// (these helpers are inline: the ABI of passing a 32-byte vector by value, which GCC warns about
// without AVX, never applies)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(32)));  // GCC's generic vectors (AVX2 registers, or pairs of SSE)
using lanes = i64;                                  // the number of leading lanes
constexpr lanes kAll = 8;
constexpr int kLanes = 8, kV = 2;  // lanes per vector, vectors per chunk of columns (16 registers, not 32)
inline lanes lanes_first(i64 n) { return n < 0 ? 0 : n > 8 ? 8 : n; }
inline vf v_load(const float* p, lanes m) {
  vf r = {};
  if (m == kAll)
    std::memcpy(&r, p, sizeof(r));
  else
    for (i64 i = 0; i < m; i++) r[i] = p[i];
  return r;
}
inline void v_store(float* p, vf x, lanes m) {
  if (m == kAll)
    std::memcpy(p, &x, sizeof(x));
  else
    for (i64 i = 0; i < m; i++) p[i] = x[i];
}
inline vf v_set1(float a) { return vf{} + a; }
inline vf v_zero() { return vf{}; }
inline vf v_add(vf a, vf b) { return a + b; }
inline vf v_mul(vf a, vf b) { return a * b; }
inline vf v_fma(vf a, vf b, vf c) { return a * b + c; }
inline vf v_fnma(vf a, vf b, vf c) { return c - a * b; }
inline float v_sum(vf a) {
  float t = 0.0f;
  for (int i = 0; i < kLanes; i++) t += a[i];
  return t;
}
#pragma GCC diagnostic pop
#endif

// The deferred backward's operands for NS (1 or 2) sources: source j is s[j], read by call k at column
// col[j][k]; gs[j] its gradient (null: p only), start[j] what gs[j] starts from (null: zero).
struct SourceBack {
  i64 K, d, rows;
  const float* const* gout;
  const float* const* alpha;
  const float* const* rstd;
  const i64* n;
  const bool* needC;
  float* const* cv;
  const float* const* outs;
  const float* const* bases;
  const float* q;  // [K, d]: w_k o g_k
  const float* s[2];
  float* gs[2];
  const float* start[2];
  const i64* col[2];
};

// Per thread, for one block: the block's alphas, rstds and c, and dl per (call, row, source); coef
// [kRouteRows, NS], the coefficient of s in gs; acc [kCallGroup, NS, 2], one row's running sums of
// gout . s and q . s (a vector each).
struct VSlot {  // a vector in a std::vector (which would drop __m512's alignment attribute)
  vf v;
};
struct SourceScratch {
  std::vector<VSlot> acc;
  std::vector<float> dl, al, rs, c;  // [K, kRouteRows, NS] but c [K, kRouteRows]
  double coef[kRouteRows * 2];
  explicit SourceScratch(i64 K)
      : acc((size_t)kCallGroup * 4),
        dl((size_t)K * kRouteRows * 2),
        al((size_t)K * kRouteRows * 2),
        rs((size_t)K * kRouteRows * 2),
        c((size_t)K * kRouteRows) {}
};

// Pass A on columns [c0, c0 + kLanes V) of row r (the last vector's lanes m): gs_j += sum_k alpha_kj gout_k,
// and the partial sums gout_k . s_j and q_k . s_j into acc (written on the first chunk, added after).
template <int NS, int V>
inline void sb_chunk(const SourceBack& x, i64 k0, i64 k1, i64 r, i64 c0, lanes m, bool first,
                     SourceScratch& w) {
  const i64 d = x.d, off = r * d + c0, rr = r % kRouteRows;
  vf sv[NS][V], gv[NS][V];
#pragma GCC unroll 8
  for (int j = 0; j < NS; j++)
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) {
      const lanes mv = v == V - 1 ? m : kAll;
      sv[j][v] = v_load(x.s[j] + off + kLanes * v, mv);
      const float* from = k0 > 0 ? x.gs[j] : x.start[j];  // later groups continue from gs
      gv[j][v] = from != nullptr ? v_load(from + off + kLanes * v, mv) : v_zero();
    }
  for (i64 k = k0; k < k1; k++) {
    const float* go = x.gout[k] + off;
    const float* q = x.q + k * d + c0;
    if (r + kGoutAhead < x.rows)  // the same columns kGoutAhead rows on
#pragma GCC unroll 8
      for (int v = 0; v < V; v++) __builtin_prefetch(go + kGoutAhead * d + kLanes * v, 0, 3);
    vf gov[V], qv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) {
      const lanes mv = v == V - 1 ? m : kAll;
      gov[v] = v_load(go + kLanes * v, mv);
      qv[v] = v_load(q + kLanes * v, mv);
    }
#pragma GCC unroll 8
    for (int j = 0; j < NS; j++) {
      const vf a = v_set1(w.al[(k * kRouteRows + rr) * NS + j]);
      vf t = v_mul(sv[j][0], gov[0]), u = v_mul(sv[j][0], qv[0]);
      gv[j][0] = v_fma(a, gov[0], gv[j][0]);
#pragma GCC unroll 8
      for (int v = 1; v < V; v++) {
        t = v_fma(sv[j][v], gov[v], t);
        u = v_fma(sv[j][v], qv[v], u);
        gv[j][v] = v_fma(a, gov[v], gv[j][v]);
      }
      VSlot* acc = w.acc.data() + ((k - k0) * NS + j) * 2;
      acc[0].v = first ? t : v_add(acc[0].v, t);
      acc[1].v = first ? u : v_add(acc[1].v, u);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NS; j++)
    if (x.gs[j] != nullptr)
#pragma GCC unroll 8
      for (int v = 0; v < V; v++) v_store(x.gs[j] + off + kLanes * v, gv[j][v], v == V - 1 ? m : kAll);
}

// Rows RB at a time: gs_j[r] += sum_k dl_kj[r] q_k - coef_j[r] s_j[r] on columns [c0, c0 + kLanes V).
template <int NS, int RB, int V>
inline void sb_dlq(const SourceBack& x, int j, i64 r0, i64 rr, i64 c0, lanes m, const SourceScratch& w) {
  const i64 d = x.d;
  float* gs = x.gs[j] + (r0 + rr) * d + c0;
  const float* sj = x.s[j] + (r0 + rr) * d + c0;
  vf acc[RB][V];
#pragma GCC unroll 8
  for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) acc[i][v] = v_load(gs + i * d + kLanes * v, v == V - 1 ? m : kAll);
  for (i64 k = 0; k < x.K; k++) {
    vf qv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) qv[v] = v_load(x.q + k * d + c0 + kLanes * v, v == V - 1 ? m : kAll);
    const float* dl = w.dl.data() + (k * kRouteRows + rr) * NS + j;
#pragma GCC unroll 8
    for (int i = 0; i < RB; i++) {
      const vf b = v_set1(dl[i * NS]);
#pragma GCC unroll 8
      for (int v = 0; v < V; v++) acc[i][v] = v_fma(b, qv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < RB; i++) {
    const vf cf = v_set1((float)w.coef[(rr + i) * NS + j]);
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) {
      const lanes mv = v == V - 1 ? m : kAll;
      v_store(gs + i * d + kLanes * v, v_fnma(cf, v_load(sj + i * d + kLanes * v, mv), acc[i][v]), mv);
    }
  }
}

// Calls KB at a time: P_k += sum over the block's nr rows of dl_kj[r] s_j[r], columns [c0, c0 + kLanes V).
template <int NS, int KB, int V>
inline void sb_p(const SourceBack& x, int j, i64 r0, i64 nr, i64 k0, i64 c0, lanes m, const SourceScratch& w,
                 float* P) {
  const i64 d = x.d;
  vf acc[KB][V];
#pragma GCC unroll 8
  for (int i = 0; i < KB; i++)
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) acc[i][v] = v_zero();
  for (i64 rr = 0; rr < nr; rr++) {
    vf sv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; v++)
      sv[v] = v_load(x.s[j] + (r0 + rr) * d + c0 + kLanes * v, v == V - 1 ? m : kAll);
#pragma GCC unroll 8
    for (int i = 0; i < KB; i++) {
      const vf b = v_set1(w.dl[((k0 + i) * kRouteRows + rr) * NS + j]);
#pragma GCC unroll 8
      for (int v = 0; v < V; v++) acc[i][v] = v_fma(b, sv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < KB; i++)
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) {
      const lanes mv = v == V - 1 ? m : kAll;
      float* pk = P + (k0 + i) * d + c0 + kLanes * v;
      v_store(pk, v_add(v_load(pk, mv), acc[i][v]), mv);
    }
}

// f<kV>(c0, all lanes) over whole chunks of kV vectors, then f<1>(c0, lanes) over the remaining vectors.
template <typename F>
inline void over_columns(i64 d, F&& f) {
  i64 c0 = 0;
  for (; c0 + kV * kLanes <= d; c0 += kV * kLanes) f(std::integral_constant<int, kV>(), c0, kAll);
  for (; c0 < d; c0 += kLanes) f(std::integral_constant<int, 1>(), c0, lanes_first(d - c0));
}

// One block of rows [r0, r1).
template <int NS>
void sb_block(const SourceBack& x, i64 r0, i64 r1, SourceScratch& w, float* P) {
  const i64 K = x.K, d = x.d, nr = r1 - r0;
  for (i64 rr = 0; rr < nr * NS; rr++) w.coef[rr] = 0.0;
  // the block's alphas, rstds and c, call by call (sequential reads), and the next block's into L2
  for (i64 k = 0; k < K; k++) {
    const i64 N = x.n[k];
    for (i64 r = r0; r < r1; r++)
      for (int j = 0; j < NS; j++) {
        w.al[(k * kRouteRows + r - r0) * NS + j] = x.alpha[k][r * N + x.col[j][k]];
        w.rs[(k * kRouteRows + r - r0) * NS + j] = x.rstd[k][r * N + x.col[j][k]];
      }
    if (!x.needC[k]) std::copy(x.cv[k] + r0, x.cv[k] + r1, w.c.data() + k * kRouteRows);
    const i64 n1 = std::min(x.rows, r1 + kRouteRows);
    if (r1 < n1) {
      prefetch_l2(x.alpha[k] + r1 * N, (n1 - r1) * N);
      prefetch_l2(x.rstd[k] + r1 * N, (n1 - r1) * N);
      prefetch_l2(x.cv[k] + r1, n1 - r1);
    }
  }
  // pass A, kCallGroup calls at a time (fewer streams of gout rows at once)
  for (i64 k0 = 0; k0 == 0 || k0 < K; k0 += kCallGroup) {  // once with no calls: gs = its start
    const i64 k1 = std::min(K, k0 + kCallGroup);
    for (i64 r = r0; r < r1; r++) {
      const i64 rr = r - r0;
      for (i64 k = k0; k < k1; k++)
        if (x.needC[k]) {  // c_k = gout_k . (out_k - base_k), on the call's first source
          const float* b = x.bases[k] == nullptr ? nullptr : x.bases[k] + r * d;
          x.cv[k][r] = w.c[k * kRouteRows + rr] = dot_diff(x.gout[k] + r * d, x.outs[k] + r * d, b, d);
        }
      bool first = true;
      over_columns(d, [&](auto V, i64 c0, lanes m) {
        sb_chunk<NS, decltype(V)::value>(x, k0, k1, r, c0, m, first, w);
        first = false;
      });
      // dl and the row's coefficient of s, from the group's sums (c is this row's, computed above or copied)
      for (i64 k = k0; k < k1; k++)
        for (int j = 0; j < NS; j++) {
          const VSlot* acc = w.acc.data() + ((k - k0) * NS + j) * 2;
          const float da = v_sum(acc[0].v), dq = v_sum(acc[1].v);
          const i64 e = (k * kRouteRows + rr) * NS + j;
          const float a = w.al[e], rs = w.rs[e];
          // one source: alpha is 1 whatever the logit, so dl is exactly 0 (c, taken from out - base,
          // may differ from da by the rounding of out)
          const double dld = x.n[k] == 1 ? 0.0 : (double)rs * a * ((double)da - w.c[k * kRouteRows + rr]);
          w.dl[e] = (float)dld;
          w.coef[rr * NS + j] += (double)rs * rs * dld * dq / (double)d;
        }
    }
  }
  for (int j = 0; j < NS; j++) {
    if (x.gs[j] != nullptr) {
      i64 rr = 0;
      for (; rr + 4 <= nr; rr += 4)
        over_columns(
            d, [&](auto V, i64 c0, lanes m) { sb_dlq<NS, 4, decltype(V)::value>(x, j, r0, rr, c0, m, w); });
      for (; rr < nr; rr++)
        over_columns(
            d, [&](auto V, i64 c0, lanes m) { sb_dlq<NS, 1, decltype(V)::value>(x, j, r0, rr, c0, m, w); });
    }
    i64 k0 = 0;
    for (; k0 + 4 <= K; k0 += 4)
      over_columns(d, [&](auto V, i64 c0, lanes m) {
        sb_p<NS, 4, decltype(V)::value>(x, j, r0, nr, k0, c0, m, w, P);
      });
    for (; k0 < K; k0++)
      over_columns(d, [&](auto V, i64 c0, lanes m) {
        sb_p<NS, 1, decltype(V)::value>(x, j, r0, nr, k0, c0, m, w, P);
      });
  }
}
}  // namespace

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
  SourceBack x{
      K,          d,          rows,    gout,      alpha,
      rstd,       n,          needC,   cv,        outs,
      bases,      wgv.data(), {s, s2}, {gs, gs2}, {gs == nullptr ? nullptr : accumulate ? gs : init, nullptr},
      {col, col2}};
  const bool par = rows * d * std::max<i64>(K, 1) >= kParallelMin && rows > kRouteRows;
  const int maxT = par ? omp_get_max_threads() : 1;
  std::vector<float> partial((size_t)maxT * K * d, 0.0f);
  const i64 nb = (rows + kRouteRows - 1) / kRouteRows;
#pragma omp parallel if (par)
  {
    float* P = partial.data() + (size_t)omp_get_thread_num() * K * d;
    SourceScratch scratch(K);
#pragma omp for schedule(static)
    for (i64 b = 0; b < nb; b++) {
      const i64 r0 = b * kRouteRows, r1 = std::min(rows, r0 + kRouteRows);
      if (two)
        sb_block<2>(x, r0, r1, scratch, P);
      else
        sb_block<1>(x, r0, r1, scratch, P);
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
