// ddl.cc: Deep Delta Learning's expanded state (ddl-expanded), read and update fused per row.
//
//   X [rows, d, dv]: dv value channels per feature of every row (token);  C [d, dv];  k [rows, d]
//   read:    x[r,i] = sum_c X[r,i,c] C[i,c]
//   update:  kX[r,c] = sum_i k[r,i] X[r,i,c];   Y[r,i,c] = X[r,i,c] + beta[r] k[r,i] (v[r,c] - kX[r,c])
// Backward of the update (s[r,c] = sum_i k[r,i] gY[r,i,c], delta = v - kX):
//   gX += gY - beta k (x) s;   gk = beta sum_c (gY delta - X s);   gbeta = sum_c delta s;   gv = beta s
// Built from generic ops the update materialised five [rows, d, dv] temporaries per sublayer and kept
// three of them for the backward; fused, the only [rows, d, dv] tensor per sublayer is the state.
// Rows are spread over OpenMP threads. When dv divides 16 the sums over d run as 16-lane float SIMD
// accumulators over the flat row (see laneDots); otherwise a plain loop accumulates in double. gC (a sum over
// rows) uses per-thread partials summed in thread order, so results depend only on the thread count.
#include <omp.h>

#include <vector>

#include "kernels.h"

namespace attnres {

namespace {

// Fast paths for dv dividing kLanes (1, 2, 4, 8, 16: every practical channel count): a row's state is
// walked flat (j = i*dv + c), so channel c of element j is lane j % kLanes modulo dv, and every loop
// is a plain SIMD loop over j with per-lane accumulators. The key is expanded to the flat layout once
// per row (d*dv floats of scratch).
constexpr i64 kLanes = 16;
inline bool lanesFit(i64 d, i64 dv) { return dv > 0 && kLanes % dv == 0 && (d * dv) % kLanes == 0; }

// acc[l] = sum over flat j = l (mod kLanes) of a[j] * b[j]; returns per-channel sums in out[c].
inline void laneDots(const float* a, const float* b, i64 n, i64 dv, float* out) {
  float acc[kLanes] = {0};
  for (i64 j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
    for (i64 l = 0; l < kLanes; l++) acc[l] += a[j0 + l] * b[j0 + l];
  for (i64 c = 0; c < dv; c++) out[c] = 0.0f;
  for (i64 l = 0; l < kLanes; l++) out[l % dv] += acc[l];
}

}  // namespace

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
  if (lanesFit(d, dv)) {
    const i64 n = d * dv;
#pragma omp parallel if (rows * n >= kParallelMin)
    {
      std::vector<float> kexp(n);
      float kx[kLanes], bd[kLanes];
#pragma omp for schedule(static)
      for (i64 r = 0; r < rows; r++) {
        const float* Xr = X + r * n;
        float* Yr = Y + r * n;
        for (i64 i = 0; i < d; i++)
          for (i64 c = 0; c < dv; c++) kexp[i * dv + c] = k[r * d + i];
        laneDots(kexp.data(), Xr, n, dv, kx);
        for (i64 l = 0; l < kLanes; l++) bd[l] = beta[r] * (v[r * dv + l % dv] - kx[l % dv]);
        const float* ke = kexp.data();
        for (i64 j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
          for (i64 l = 0; l < kLanes; l++) Yr[j0 + l] = Xr[j0 + l] + ke[j0 + l] * bd[l];
      }
    }
    return;
  }
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
  if (lanesFit(d, dv)) {
    const i64 n = d * dv;
#pragma omp parallel if (rows * n >= kParallelMin)
    {
      std::vector<float> kexp(n), t(n);
      float kx[kLanes], s[kLanes], dl[kLanes], sl[kLanes], bsl[kLanes];
#pragma omp for schedule(static)
      for (i64 r = 0; r < rows; r++) {
        const float* Xr = X + r * n;
        const float* Gr = gY + r * n;
        for (i64 i = 0; i < d; i++)
          for (i64 c = 0; c < dv; c++) kexp[i * dv + c] = k[r * d + i];
        const float* ke = kexp.data();
        laneDots(ke, Xr, n, dv, kx);
        laneDots(ke, Gr, n, dv, s);
        const float b = beta[r];
        float gb = 0.0f;
        for (i64 c = 0; c < dv; c++) {
          const float delta = v[r * dv + c] - kx[c];
          gb += delta * s[c];
          gv[r * dv + c] = b * s[c];
        }
        gbeta[r] = gb;
        for (i64 l = 0; l < kLanes; l++) {
          dl[l] = v[r * dv + l % dv] - kx[l % dv];
          sl[l] = s[l % dv];
          bsl[l] = b * sl[l];
        }
        float* tt = t.data();
        for (i64 j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
          for (i64 l = 0; l < kLanes; l++) tt[j0 + l] = Gr[j0 + l] * dl[l] - Xr[j0 + l] * sl[l];
        for (i64 i = 0; i < d; i++) {
          float acc = 0.0f;
          for (i64 c = 0; c < dv; c++) acc += tt[i * dv + c];
          gk[r * d + i] = b * acc;
        }
        if (gX != nullptr) {
          float* gXr = gX + r * n;
          for (i64 j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
            for (i64 l = 0; l < kLanes; l++) gXr[j0 + l] += Gr[j0 + l] - ke[j0 + l] * bsl[l];
        }
      }
    }
    return;
  }
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
