// ddl.cc: Deep Delta Learning's expanded state (ddl-expanded), read and update fused per row.
//
//   X [rows, d, dv]: dv value channels per feature of every row (token);  C [d, dv];  k [rows, d]
//   read:    x[r,i] = sum_c X[r,i,c] C[i,c]
//   update:  kX[r,c] = sum_i k[r,i] X[r,i,c];   Y[r,i,c] = X[r,i,c] + beta[r] k[r,i] (v[r,c] - kX[r,c])
// Backward of the update (s[r,c] = sum_i k[r,i] gY[r,i,c], delta = v - kX):
//   gX += gY - beta k (x) s;   gk = beta sum_c (gY delta - X s);   gbeta = sum_c delta s;   gv = beta s
// Built from generic ops the update materialised five [rows, d, dv] temporaries per sublayer and kept
// three of them for the backward; fused, the only [rows, d, dv] tensor per sublayer is the state.
// Rows are spread over OpenMP threads; the sums over d for each channel accumulate in double (dv is
// small, so the per-row scratch is dv doubles). gC (a sum over rows) uses per-thread partials summed
// in thread order, so results depend only on the thread count.
#include <omp.h>

#include <vector>

#include "kernels.h"

namespace attnres {

void ddl_read(const float* X, const float* C, float* x, i64 rows, i64 d, i64 dv) {
#pragma omp parallel for schedule(static) if (rows * d * dv >= kParallelMin)
  for (i64 r = 0; r < rows; r++) {
    const float* Xr = X + r * d * dv;
    float* xr = x + r * d;
    for (i64 i = 0; i < d; i++) {
      const float* xi = Xr + i * dv;
      const float* ci = C + i * dv;
      float acc = 0.0f;
      for (i64 c = 0; c < dv; c++) acc += xi[c] * ci[c];
      xr[i] = acc;
    }
  }
}

void ddl_read_backward(const float* X, const float* C, const float* gx, float* gX, float* gC, i64 rows, i64 d,
                       i64 dv) {
  const bool par = rows * d * dv >= kParallelMin && rows > 1;
  const int maxT = par ? omp_get_max_threads() : 1;
  const i64 m = d * dv;
  std::vector<float> partial((size_t)maxT * m, 0.0f);
#pragma omp parallel if (par)
  {
    float* pc = partial.data() + (size_t)omp_get_thread_num() * m;
#pragma omp for schedule(static)
    for (i64 r = 0; r < rows; r++) {
      const float* Xr = X + r * m;
      const float* gr = gx + r * d;
      float* gXr = gX == nullptr ? nullptr : gX + r * m;
      for (i64 i = 0; i < d; i++) {
        const float g = gr[i];
        for (i64 c = 0; c < dv; c++) pc[i * dv + c] += g * Xr[i * dv + c];
        if (gXr != nullptr)
          for (i64 c = 0; c < dv; c++) gXr[i * dv + c] += g * C[i * dv + c];
      }
    }
  }
  for (i64 j = 0; j < m; j++) gC[j] = partial[j];
  for (int t = 1; t < maxT; t++) {
    const float* p = partial.data() + (size_t)t * m;
    for (i64 j = 0; j < m; j++) gC[j] += p[j];
  }
}

void ddl_update(const float* X, const float* k, const float* beta, const float* v, float* Y, i64 rows, i64 d,
                i64 dv) {
#pragma omp parallel if (rows * d * dv >= kParallelMin)
  {
    std::vector<double> kx(dv);
    std::vector<float> bdelta(dv);
#pragma omp for schedule(static)
    for (i64 r = 0; r < rows; r++) {
      const float* Xr = X + r * d * dv;
      const float* kr = k + r * d;
      float* Yr = Y + r * d * dv;
      for (i64 c = 0; c < dv; c++) kx[c] = 0.0;
      for (i64 i = 0; i < d; i++)
        for (i64 c = 0; c < dv; c++) kx[c] += (double)kr[i] * Xr[i * dv + c];
      for (i64 c = 0; c < dv; c++) bdelta[c] = (float)((double)beta[r] * ((double)v[r * dv + c] - kx[c]));
      for (i64 i = 0; i < d; i++)
        for (i64 c = 0; c < dv; c++) Yr[i * dv + c] = Xr[i * dv + c] + kr[i] * bdelta[c];
    }
  }
}

void ddl_update_backward(const float* X, const float* k, const float* beta, const float* v, const float* gY,
                         float* gX, float* gk, float* gbeta, float* gv, i64 rows, i64 d, i64 dv) {
#pragma omp parallel if (rows * d * dv >= kParallelMin)
  {
    std::vector<double> kx(dv), s(dv);
    std::vector<float> delta(dv), sf(dv), bs(dv);
#pragma omp for schedule(static)
    for (i64 r = 0; r < rows; r++) {
      const float* Xr = X + r * d * dv;
      const float* Gr = gY + r * d * dv;
      const float* kr = k + r * d;
      for (i64 c = 0; c < dv; c++) kx[c] = s[c] = 0.0;
      for (i64 i = 0; i < d; i++)
        for (i64 c = 0; c < dv; c++) {
          kx[c] += (double)kr[i] * Xr[i * dv + c];
          s[c] += (double)kr[i] * Gr[i * dv + c];
        }
      const float b = beta[r];
      double gb = 0.0;
      for (i64 c = 0; c < dv; c++) {
        delta[c] = (float)((double)v[r * dv + c] - kx[c]);
        sf[c] = (float)s[c];
        bs[c] = (float)((double)b * s[c]);
        gb += (double)delta[c] * s[c];
        gv[r * dv + c] = bs[c];
      }
      gbeta[r] = (float)gb;
      float* gkr = gk + r * d;
      float* gXr = gX == nullptr ? nullptr : gX + r * d * dv;
      for (i64 i = 0; i < d; i++) {
        float acc = 0.0f;
        for (i64 c = 0; c < dv; c++) acc += Gr[i * dv + c] * delta[c] - Xr[i * dv + c] * sf[c];
        gkr[i] = b * acc;
        if (gXr != nullptr)
          for (i64 c = 0; c < dv; c++) gXr[i * dv + c] += Gr[i * dv + c] - kr[i] * bs[c];
      }
    }
  }
}

}  // namespace attnres
