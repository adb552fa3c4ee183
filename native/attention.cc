// attention.cc: scaled-dot-product attention with grouped-query heads, flash-style memory.
//
//   q, out, gq, gout [B, Tq, Hq, D]   k, v, gk, gv [B, Tk, Hkv, D]   lse [B, Hq, Tq]
//   query head h reads kv head g = h / (Hq / Hkv); causal: query i sees keys j <= i + (Tk - Tq).
//
// Work is split into query blocks of up to BQ rows of one (b, h). For a block, the score tile
// S [bq, kend] = scale * Q_blk K^T is one GEMM reading q/k in place (row strides Hq*D and Hkv*D: no
// transposing copies); kend stops at the last key the block's last query can see (causal). Only lse
// is kept; the backward recomputes P = exp(S - lse) and runs
//   dP = dO V^T,  dS = P o (dP - rowsum(dO o O)),  dQ = scale dS K,  dK += scale dS^T Q,  dV += P^T dO.
// Forward tasks are (b, h, query block); backward tasks are (b, kv head), which own their gk/gv slices
// (all query heads of the group are processed by the same task: no races). Score tiles are per-thread
// scratch allocated once per call. Non-finite scores propagate as in exp(s - max) / sum: a row whose
// visible scores are all NaN or -inf gives NaN (only a row with no visible key gives zeros). Inputs
// holding a NaN or Inf take an exact scalar path (attention_exact*, double accumulators) that skips
// masked pairs, because the tile GEMMs would spread 0 * NaN into positions a mask hides. GEMMs inside the
// parallel region run single-threaded; when there are fewer tasks than threads the loop runs serially and the
// GEMMs use all threads instead.
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

// True when x[0..n) holds no NaN or Inf (x * 0 is NaN exactly for those).
static bool all_finite(const float* x, i64 n) {
  float s = 0.0f;
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

void attention(const float* q, const float* k, const float* v, float* out, float* lse, i64 B, i64 Tq, i64 Tk,
               i64 Hq, i64 Hkv, i64 D, float scale, bool causal) {
  if (B == 0 || Tq == 0 || Hq == 0) return;
  // One query row per (b, h) (decoding a token over a KV cache) masks no key, so the tiles below
  // compute exactly the exact path's math: instead of scanning the whole cache for non-finite
  // values first, the result is checked afterwards and only a non-finite one is recomputed.
  const bool single = Tq == 1;
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
  if (!all_finite(q, nq) || !all_finite(k, nk) || !all_finite(v, nk) || !all_finite(out, nq) ||
      !all_finite(gout, nq))
    return attention_backward_exact(q, k, v, out, lse, gout, gq, gk, gv, B, Tq, Tk, Hq, Hkv, D, scale,
                                    causal);
  const i64 G = Hq / Hkv, nQB = (Tq + BQ - 1) / BQ, nTasks = B * Hkv;
  const i64 ldq = Hq * D, ldk = Hkv * D;
  const bool par = nTasks >= omp_get_max_threads() && B * Hq * Tq * Tk * D >= kParallelMin;
#pragma omp parallel if (par)
  {
    const size_t tile = (size_t)(BQ * std::max<i64>(Tk, 1));
    std::vector<float> P(tile), dP(tile), Di(BQ);
#pragma omp for schedule(dynamic)
    for (i64 task = 0; task < nTasks; task++) {
      const i64 b = task / Hkv, g = task % Hkv;
      const float* kp = k + (b * Tk * Hkv + g) * D;
      const float* vp = v + (b * Tk * Hkv + g) * D;
      float* gkp = gk + (b * Tk * Hkv + g) * D;
      float* gvp = gv + (b * Tk * Hkv + g) * D;
      for (i64 t = 0; t < Tk; t++) {
        std::memset(gkp + t * ldk, 0, sizeof(float) * D);
        std::memset(gvp + t * ldk, 0, sizeof(float) * D);
      }
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
