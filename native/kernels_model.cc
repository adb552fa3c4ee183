// kernels_model.cc: fused model kernels, float32.
//
//   embedding           weight [vocab, d], ids [n] -> out [n, d]
//   embedding_backward  gout [n, d], ids [n] -> gweight [vocab, d] += (scatter-add). Parallel without
//                       races: thread t owns the rows id % nthreads == t and scans all n ids.
//   rmsnorm             x [rows, d], w [d]|null -> out [rows, d], rstd [rows]  (mean of squares in double)
//   rmsnorm_backward    x, gy [rows, d], w [d]|null, rstd [rows] -> gx [rows, d], gw [d] (per-thread
//                       partial sums over rows, added in thread order)
//   rope                x, out [B, T, H, D], cos, sin [maxPos, D/2]  (HF rotate_half; inverse = -sin)
//   cross_entropy       logits [rows, V], targets [rows] -> loss [rows], lse [rows]
//   cross_entropy_bwd   logits [rows, V], targets, lse, gloss [rows] -> glogits [rows, V]
//   swiglu(_backward)   gate, up, out [n]: out = silu(gate) * up (outputs may alias inputs)
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace attnres {

// ------------------------------------------------------------------ embedding

void embedding(const float* weight, const int32_t* ids, float* out, i64 n, i64 d) {
#pragma omp parallel for schedule(static) if (n * d >= kParallelMin)
  for (i64 i = 0; i < n; i++) std::memcpy(out + i * d, weight + (i64)ids[i] * d, sizeof(float) * d);
}

void embedding_backward(const float* gout, const int32_t* ids, float* gweight, i64 n, i64 d) {
  const bool par = n * d >= kParallelMin && omp_get_max_threads() > 1;
#pragma omp parallel if (par)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    for (i64 i = 0; i < n; i++) {
      const i64 id = ids[i];
      if (id % nt != t) continue;
      float* gw = gweight + id * d;
      const float* g = gout + i * d;
      for (i64 c = 0; c < d; c++) gw[c] += g[c];
    }
  }
}

// ------------------------------------------------------------------ rmsnorm

void rmsnorm(const float* x, const float* w, float* out, float* rstd, i64 rows, i64 d, float eps) {
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (i64 r = 0; r < rows; r++) {
    const float* xr = x + r * d;
    float* o = out + r * d;
    double ss = 0.0;  // in double across the SIMD lanes: a fixed order for a fixed build, no long chain
#pragma omp simd reduction(+ : ss)
    for (i64 c = 0; c < d; c++) ss += (double)xr[c] * xr[c];
    const float rs = (float)(1.0 / std::sqrt(ss / (double)d + (double)eps));
    rstd[r] = rs;
    if (w != nullptr) {
      for (i64 c = 0; c < d; c++) o[c] = xr[c] * rs * w[c];
    } else {
      for (i64 c = 0; c < d; c++) o[c] = xr[c] * rs;
    }
  }
}

// y = x * rstd * w, rstd = (mean x^2 + eps)^-1/2:
//   gx[c] = rstd * (gy[c] w[c]) - x[c] * rstd^3 / d * sum_c' gy[c'] w[c'] x[c']
//   gw[c] = sum_r gy[r,c] x[r,c] rstd[r]
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* gy, float* gx,
                      float* gw, i64 rows, i64 d) {
  const bool wantGw = w != nullptr && gw != nullptr;
  const bool par = rows * d >= kParallelMin && rows > 1;
  const int maxT = par ? omp_get_max_threads() : 1;
  std::vector<float> partial(wantGw ? (size_t)maxT * d : 0, 0.0f);
#pragma omp parallel if (par)
  {
    float* myGw = wantGw ? partial.data() + (size_t)omp_get_thread_num() * d : nullptr;
#pragma omp for schedule(static)
    for (i64 r = 0; r < rows; r++) {
      const float* xr = x + r * d;
      const float* g = gy + r * d;
      float* o = gx + r * d;
      const float rs = rstd[r];
      double dot = 0.0;  // in double across the SIMD lanes, as in rmsnorm
      if (w != nullptr) {
#pragma omp simd reduction(+ : dot)
        for (i64 c = 0; c < d; c++) dot += (double)g[c] * w[c] * xr[c];
      } else {
#pragma omp simd reduction(+ : dot)
        for (i64 c = 0; c < d; c++) dot += (double)g[c] * xr[c];
      }
      const float k = (float)(dot * rs * rs * rs / (double)d);
      if (w != nullptr) {
        for (i64 c = 0; c < d; c++) o[c] = rs * (g[c] * w[c]) - xr[c] * k;
      } else {
        for (i64 c = 0; c < d; c++) o[c] = rs * g[c] - xr[c] * k;
      }
      if (myGw != nullptr)
        for (i64 c = 0; c < d; c++) myGw[c] += g[c] * xr[c] * rs;
    }
  }
  if (wantGw) {
    for (i64 c = 0; c < d; c++) gw[c] = partial[c];
    for (int t = 1; t < maxT; t++) {
      const float* p = partial.data() + (size_t)t * d;
      for (i64 c = 0; c < d; c++) gw[c] += p[c];
    }
  }
}

// ------------------------------------------------------------------ rope

void rope(const float* x, float* out, const float* cos, const float* sin, i64 B, i64 T, i64 H, i64 D,
          i64 posOffset, bool inverse) {
  const i64 h = D / 2;
  const float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) collapse(2) if (B * T * H * D >= kParallelMin)
  for (i64 b = 0; b < B; b++) {
    for (i64 t = 0; t < T; t++) {
      const float* cr = cos + (t + posOffset) * h;
      const float* sr = sin + (t + posOffset) * h;
      for (i64 hd = 0; hd < H; hd++) {
        const i64 base = ((b * T + t) * H + hd) * D;
        const float* xr = x + base;
        float* o = out + base;
        for (i64 c = 0; c < h; c++) {
          const float x1 = xr[c], x2 = xr[c + h], cv = cr[c], s = sgn * sr[c];
          o[c] = x1 * cv - x2 * s;
          o[c + h] = x2 * cv + x1 * s;
        }
      }
    }
  }
}

// ------------------------------------------------------------------ cross-entropy

void cross_entropy(const float* logits, const int32_t* targets, float* loss, float* lse, i64 rows, i64 V,
                   i64 ignoreIndex) {
#pragma omp parallel for schedule(static) if (rows * V >= kParallelMin)
  for (i64 r = 0; r < rows; r++) {
    const float* l = logits + r * V;
    float m = -INFINITY;  // NaN is skipped here (and makes s NaN below)
#pragma omp simd reduction(max : m)
    for (i64 c = 0; c < V; c++) m = l[c] > m ? l[c] : m;
    double s = 0.0;  // exp_fast vectorizes (a libm call per logit did not); summed in double across lanes
    if (m == -INFINITY) m = 0.0f;  // all -inf (or V == 0): lse = -inf below
#pragma omp simd reduction(+ : s)
    for (i64 c = 0; c < V; c++) s += (double)exp_fast(l[c] - m);
    const float L = (float)(m + std::log(s));
    lse[r] = L;
    const i64 t = targets[r];
    loss[r] = t == ignoreIndex ? 0.0f : L - l[t];
  }
}

void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const float* gloss,
                            float* glogits, i64 rows, i64 V, i64 ignoreIndex) {
#pragma omp parallel for schedule(static) if (rows * V >= kParallelMin)
  for (i64 r = 0; r < rows; r++) {
    const float* l = logits + r * V;
    float* g = glogits + r * V;
    const i64 t = targets[r];
    if (t == ignoreIndex) {
      std::memset(g, 0, sizeof(float) * V);
      continue;
    }
    const float L = lse[r], gl = gloss[r];
#pragma omp simd
    for (i64 c = 0; c < V; c++) g[c] = gl * exp_fast(l[c] - L);
    g[t] = gl * (std::exp(l[t] - L) - 1.0f);  // not g[t] - gl: an infinite gl must give -inf, not NaN
  }
}

// ------------------------------------------------------------------ swiglu

// exp_fast (kernels.h) instead of std::exp lets these loops vectorize (a libm call per element made
// them several times slower than their memory traffic).
void swiglu(const float* gate, const float* up, float* out, i64 n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (i64 i = 0; i < n; i++) {
    const float g = gate[i];
    out[i] = g / (1.0f + exp_fast(-g)) * up[i];
  }
}

void swiglu_backward(const float* gate, const float* up, const float* gout, float* ggate, float* gup, i64 n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (i64 i = 0; i < n; i++) {
    const float g = gate[i], u = up[i], go = gout[i];
    const float s = 1.0f / (1.0f + exp_fast(-g));
    ggate[i] = go * u * s * (1.0f + g * (1.0f - s));
    gup[i] = go * g * s;
  }
}

}  // namespace attnres
