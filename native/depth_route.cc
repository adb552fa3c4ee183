// depth_route.cc: depth routing (docs/methods.md "Routing") of N sources per row, reading sources in place.
//
//   sources: N buffers [rows, d];  w (query), g (key gain) [d];  out [rows, d];  alpha, rstd [rows, N]
//   rstd[r,i] = 1/sqrt(mean_c s_i[r,c]^2 + eps);  l_i = sum_c w_c * s_i[r,c] * rstd[r,i] * g_c
//   alpha[r,:] = softmax_i(l);  out[r] = sum_i alpha[r,i] * s_i[r]
// Backward (per row, da_i = gout . s_i, dl_i = alpha_i (da_i - sum_j alpha_j da_j)), accumulating:
//   gs_i += alpha_i gout + rstd_i dl_i (w o g) - (rstd_i^3 / d) (sum_c dl_i w_c g_c s_ic) s_i
//   gw += dl_i rstd_i (s_i o g),   gg += dl_i rstd_i (s_i o w)     (per-thread partials, summed in order)
// Rows are spread over OpenMP threads. Sums over d accumulate in float across the SIMD lanes (16
// partial sums with AVX-512), accurate to ~1e-6 relative for d in the thousands; sums over sources
// (softmax, dl) use double.
#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels.h"

namespace attnres {

// The dot products below are explicit `omp simd` reductions: without -ffast-math the compiler may
// not reorder a plain loop-carried sum, and would run these loops one element at a time. Float
// accumulators keep the full SIMD width (float->double conversions halved it).

void depth_route(const float* const* src, i64 N, const float* w, const float* g, float* out, float* alpha,
                 float* rstd, i64 rows, i64 d, float eps) {
  std::vector<float> wg(d);  // w o g, the effective query on the un-normalised source
  for (i64 c = 0; c < d; c++) wg[c] = w[c] * g[c];
  const float* q = wg.data();
#pragma omp parallel if (rows * d * N >= kParallelMin)
  {
    std::vector<double> l(N);
#pragma omp for schedule(static)
    for (i64 r = 0; r < rows; r++) {
      double mx = -INFINITY;
      for (i64 i = 0; i < N; i++) {
        const float* s = src[i] + r * d;
        float ss = 0.0f, dot = 0.0f;
#pragma omp simd reduction(+ : ss, dot)
        for (i64 c = 0; c < d; c++) {
          ss += s[c] * s[c];
          dot += q[c] * s[c];
        }
        const float rs = (float)(1.0 / std::sqrt(ss / (double)d + (double)eps));
        rstd[r * N + i] = rs;
        l[i] = dot * rs;
        if (l[i] > mx) mx = l[i];
      }
      double z = 0.0;
      for (i64 i = 0; i < N; i++) z += std::exp(l[i] - mx);
      for (i64 i = 0; i < N; i++) alpha[r * N + i] = (float)(std::exp(l[i] - mx) / z);
      float* o = out + r * d;
      const float a0 = alpha[r * N];
      const float* s0 = src[0] + r * d;
#pragma omp simd
      for (i64 c = 0; c < d; c++) o[c] = a0 * s0[c];
      for (i64 i = 1; i < N; i++) {
        const float a = alpha[r * N + i];
        const float* s = src[i] + r * d;
#pragma omp simd
        for (i64 c = 0; c < d; c++) o[c] += a * s[c];
      }
    }
  }
}

void depth_route_backward(const float* const* src, i64 N, const float* w, const float* g, const float* alpha,
                          const float* rstd, const float* gout, float* const* gsrc, float* gw, float* gg,
                          i64 rows, i64 d) {
  const bool par = rows * d * N >= kParallelMin && rows > 1;
  const int maxT = par ? omp_get_max_threads() : 1;
  std::vector<float> partial((size_t)maxT * 2 * d, 0.0f);
  std::vector<float> wgv(d);
  for (i64 c = 0; c < d; c++) wgv[c] = w[c] * g[c];
  const float* wg = wgv.data();
#pragma omp parallel if (par)
  {
    float* pw = partial.data() + (size_t)omp_get_thread_num() * 2 * d;
    float* pg = pw + d;
    std::vector<double> da(N);
#pragma omp for schedule(static)
    for (i64 r = 0; r < rows; r++) {
      const float* go = gout + r * d;
      double mean = 0.0;
      for (i64 i = 0; i < N; i++) {
        const float* s = src[i] + r * d;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (i64 c = 0; c < d; c++) dot += go[c] * s[c];
        da[i] = dot;
        mean += (double)alpha[r * N + i] * dot;
      }
      for (i64 i = 0; i < N; i++) {
        const float* s = src[i] + r * d;
        const float a = alpha[r * N + i], rs = rstd[r * N + i];
        const float dl = (float)(a * (da[i] - mean));
        const float dlrs = dl * rs;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (i64 c = 0; c < d; c++) {
          pw[c] += dlrs * s[c] * g[c];
          pg[c] += dlrs * s[c] * w[c];
          dot += wg[c] * s[c];
        }
        float* gs = gsrc[i];
        if (gs == nullptr) continue;
        gs += r * d;
        const float coef = (float)((double)dl * dot * rs * rs * rs / (double)d);
#pragma omp simd
        for (i64 c = 0; c < d; c++) gs[c] += a * go[c] + dlrs * wg[c] - coef * s[c];
      }
    }
  }
  for (i64 c = 0; c < d; c++) {
    gw[c] = partial[c];
    gg[c] = partial[d + c];
  }
  for (int t = 1; t < maxT; t++) {
    const float* p = partial.data() + (size_t)t * 2 * d;
    for (i64 c = 0; c < d; c++) {
      gw[c] += p[c];
      gg[c] += p[d + c];
    }
  }
}

}  // namespace attnres
