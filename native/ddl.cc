// ddl.cc: Deep Delta Learning's expanded state (ddl-expanded), read and update fused per row; and the
// scalar mode's (ddl) whole step of one sublayer fused (ddl_step, at the end of the file).
//
//   X [rows, d, dv]: dv value channels per feature of every row (token);  C [d, dv];  k [rows, d]
//   read:    x[r,i] = sum_c X[r,i,c] C[i,c]
//   update:  kX[r,c] = sum_i k[r,i] X[r,i,c];   Y[r,i,c] = X[r,i,c] + beta[r] k[r,i] (v[r,c] - kX[r,c])
//            and, given the next read's mix C, x[r,i] = sum_c Y[r,i,c] C[i,c] from the row just written
//            (the next sublayer's input without reading the new state back from memory)
// Backward of the update (s[r,c] = sum_i k[r,i] gY[r,i,c], delta = v - kX):
//   gX (+)= gY - beta k (x) s (written, not accumulated, when gX is fresh: no zero-fill pass);   gk = beta
//   sum_c (gY delta - X s);   gbeta = sum_c delta s;   gv = beta s
// Built from generic ops the update materialised five [rows, d, dv] temporaries per sublayer and kept
// three of them for the backward; fused, the only [rows, d, dv] tensor per sublayer is the state.
// Rows are spread over OpenMP threads. The read, its backward and the update's key expansion have a loop
// per dv of 1, 2, 4, 8 and 16 (by_dv: a compile-time dv vectorizes the loop over features). For the update,
// when dv divides 16 the sums over d run as 16-lane float SIMD
// accumulators over the flat row (see laneDots); otherwise a plain loop accumulates in double. gC (a sum over
// rows) uses per-thread partials summed in thread order, so results depend only on the thread count.
#include <omp.h>

#include <cmath>
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

// Calls F<DV>::run(a..., dv) for dv in {1, 2, 4, 8, 16}, F<0>::run(a..., dv) otherwise. The kernels below
// take dv as given when DV = 0; with DV > 0 it is a compile-time constant, so their loops over features
// vectorize, each feature's dv channels read as an interleaved group.
template <template <int> class F, class... A>
void by_dv(i64 dv, A... a) {
  switch (dv) {
    case 1:
      return F<1>::run(a..., dv);
    case 2:
      return F<2>::run(a..., dv);
    case 4:
      return F<4>::run(a..., dv);
    case 8:
      return F<8>::run(a..., dv);
    case 16:
      return F<16>::run(a..., dv);
    default:
      return F<0>::run(a..., dv);
  }
}

// kexp[i * dv + c] = k[i] for i < d, c < dv: the key in the state's flat layout.
template <int DV>
struct ExpandKey {
  static void run(const float* k, float* kexp, i64 d, i64 dvAny) {
    const i64 dv = DV > 0 ? DV : dvAny;
#pragma omp simd
    for (i64 i = 0; i < d; i++)
      for (i64 c = 0; c < dv; c++) kexp[i * dv + c] = k[i];
  }
};

// Rows r0..r1 of the read.
template <int DV>
struct Read {
  static void run(const float* X, const float* C, float* x, i64 r0, i64 r1, i64 d, i64 dvAny) {
    const i64 dv = DV > 0 ? DV : dvAny;
    for (i64 r = r0; r < r1; r++) {
      const float* Xr = X + r * d * dv;
      float* xr = x + r * d;
#pragma omp simd
      for (i64 i = 0; i < d; i++) {
        float acc = 0.0f;
        for (i64 c = 0; c < dv; c++) acc += Xr[i * dv + c] * C[i * dv + c];
        xr[i] = acc;
      }
    }
  }
};

// Rows r0..r1 of the read's backward: pc (this thread's gC partial) and gX accumulated into.
template <int DV>
struct ReadBackward {
  static void run(const float* X, const float* C, const float* gx, float* gX, float* pc, i64 r0, i64 r1,
                  i64 d, i64 dvAny) {
    const i64 dv = DV > 0 ? DV : dvAny;
    for (i64 r = r0; r < r1; r++) {
      const float* Xr = X + r * d * dv;
      const float* gr = gx + r * d;
#pragma omp simd
      for (i64 i = 0; i < d; i++)
        for (i64 c = 0; c < dv; c++) pc[i * dv + c] += gr[i] * Xr[i * dv + c];
      if (gX == nullptr) continue;
      float* gXr = gX + r * d * dv;
#pragma omp simd
      for (i64 i = 0; i < d; i++)
        for (i64 c = 0; c < dv; c++) gXr[i * dv + c] += gr[i] * C[i * dv + c];
    }
  }
};
}  // namespace

void ddl_read(const float* X, const float* C, float* x, i64 rows, i64 d, i64 dv) {
  const bool par = rows * d * dv >= kParallelMin;
  const int nt = par ? omp_get_max_threads() : 1;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    by_dv<Read>(dv, X, C, x, rows * t / n, rows * (t + 1) / n, d);
  }
}

void ddl_read_backward(const float* X, const float* C, const float* gx, float* gX, float* gC, i64 rows, i64 d,
                       i64 dv) {
  const bool par = rows * d * dv >= kParallelMin && rows > 1;
  const int maxT = par ? omp_get_max_threads() : 1;
  const i64 m = d * dv;
  std::vector<float> partial((size_t)maxT * m, 0.0f);
#pragma omp parallel num_threads(maxT)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    by_dv<ReadBackward>(dv, X, C, gx, gX, partial.data() + (size_t)t * m, rows * t / n, rows * (t + 1) / n,
                        d);
  }
  for (i64 j = 0; j < m; j++) gC[j] = partial[j];
  for (int t = 1; t < maxT; t++) {
    const float* p = partial.data() + (size_t)t * m;
    for (i64 j = 0; j < m; j++) gC[j] += p[j];
  }
}

void ddl_update(const float* X, const float* k, const float* beta, const float* v, float* Y, const float* C,
                float* x, i64 rows, i64 d, i64 dv) {
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
        by_dv<ExpandKey>(dv, k + r * d, kexp.data(), d);
        laneDots(kexp.data(), Xr, n, dv, kx);
        for (i64 l = 0; l < kLanes; l++) bd[l] = beta[r] * (v[r * dv + l % dv] - kx[l % dv]);
        const float* ke = kexp.data();
        for (i64 j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
          for (i64 l = 0; l < kLanes; l++) Yr[j0 + l] = Xr[j0 + l] + ke[j0 + l] * bd[l];
        if (C != nullptr) by_dv<Read>(dv, Y, C, x, r, r + 1, d);  // the new row, still in L1
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
      if (C != nullptr) by_dv<Read>(dv, Y, C, x, r, r + 1, d);
    }
  }
}

void ddl_update_backward(const float* X, const float* k, const float* beta, const float* v, const float* gY,
                         float* gX, bool accumulate, float* gk, float* gbeta, float* gv, i64 rows, i64 d,
                         i64 dv) {
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
        by_dv<ExpandKey>(dv, k + r * d, kexp.data(), d);
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
          if (accumulate)
            for (i64 j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
              for (i64 l = 0; l < kLanes; l++) gXr[j0 + l] += Gr[j0 + l] - ke[j0 + l] * bsl[l];
          else
            for (i64 j0 = 0; j0 < n; j0 += kLanes)
#pragma omp simd
              for (i64 l = 0; l < kLanes; l++) gXr[j0 + l] = Gr[j0 + l] - ke[j0 + l] * bsl[l];
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
          for (i64 c = 0; c < dv; c++)
            gXr[i * dv + c] = (accumulate ? gXr[i * dv + c] : 0.0f) + Gr[i * dv + c] - kr[i] * bs[c];
      }
    }
  }
}

// ---- ddl's scalar step (one value channel), fused: key, gate, value and update in one pass per row.
//   x (stream), u (sublayer output), c (its pre-norm) [rows, d];  wb, wv [d];  bb, bv [1]
//   r = 1/sqrt(|u|^2 + eps2), k = r u, beta = 2 sigmoid(wb.c + bb), kx = k.x,
//   v = wv.c + bv  (or 4 sigmoid(wv.x + bv) when vFromStream),   y = x + beta (v - kx) k
//   beta [rows];  aux [rows, 3] = (r, v, kx)
// Backward, per row (s = k.gy, delta = v - kx):
//   gx = gy - beta s k (+ gzv wv when vFromStream);  gu = r beta (delta gy - s x - s (delta - kx) r u)
//   gzb = delta s beta (1 - beta/2);  gzv = beta s (times v (1 - v/4) when vFromStream)
//   gc = gzb wb (+ gzv wv when v reads c);  gwb = sum_rows gzb c;  gwv = sum_rows gzv (c or x);  gbb, gbv the
//   sums of gzb, gzv
// Built from generic ops a sublayer took about a dozen kernels (norm, scales, two d->1 projections
// and their backward GEMMs, sigmoid, the update); fused it reads its inputs twice per row (the second
// time from L1) and keeps only three numbers per row besides beta.

namespace {
inline float dot(const float* a, const float* b, i64 d) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (i64 i = 0; i < d; i++) acc += a[i] * b[i];
  return acc;
}
}  // namespace

void ddl_step(const float* x, const float* u, const float* c, const float* wb, const float* bb,
              const float* wv, const float* bv, float* y, float* beta, float* aux, i64 rows, i64 d,
              float eps2, bool vFromStream) {
  const float* vin = vFromStream ? x : c;
#pragma omp parallel for schedule(static) if (rows * d >= kParallelMin)
  for (i64 r = 0; r < rows; r++) {
    const float* xr = x + r * d;
    const float* ur = u + r * d;
    const float* cr = c + r * d;
    const float* vr = vin + r * d;
    float uu = 0.0f, ux = 0.0f, zb = 0.0f, zv = 0.0f;
#pragma omp simd reduction(+ : uu, ux, zb, zv)
    for (i64 i = 0; i < d; i++) {
      uu += ur[i] * ur[i];
      ux += ur[i] * xr[i];
      zb += wb[i] * cr[i];
      zv += wv[i] * vr[i];
    }
    const double rs = 1.0 / std::sqrt((double)uu + (double)eps2);
    const double b = 2.0 / (1.0 + std::exp(-((double)zb + bb[0])));
    const double zvd = (double)zv + bv[0];
    const double v = vFromStream ? 4.0 / (1.0 + std::exp(-zvd)) : zvd;
    const double kx = rs * ux;
    const float f = (float)(b * (v - kx) * rs);
    float* yr = y + r * d;
#pragma omp simd
    for (i64 i = 0; i < d; i++) yr[i] = xr[i] + f * ur[i];
    beta[r] = (float)b;
    aux[3 * r] = (float)rs;
    aux[3 * r + 1] = (float)v;
    aux[3 * r + 2] = (float)kx;
  }
}

void ddl_step_backward(const float* x, const float* u, const float* c, const float* wb, const float* wv,
                       const float* beta, const float* aux, const float* gy, float* gx, float* gu, float* gc,
                       int accumulate, float* gwb, float* gbb, float* gwv, float* gbv, i64 rows, i64 d,
                       bool vFromStream) {
  const bool par = rows * d >= kParallelMin && rows > 1;
  const int maxT = par ? omp_get_max_threads() : 1;
  // per thread: [gwb partial d | gwv partial d]; bias sums in double
  std::vector<float> partial((size_t)maxT * 2 * d, 0.0f);
  std::vector<double> bsum((size_t)maxT * 2, 0.0);
  const float* vin = vFromStream ? x : c;
  const bool ax = accumulate & 1, au = accumulate & 2, ac = accumulate & 4;
#pragma omp parallel if (par)
  {
    const int t = omp_get_thread_num();
    float* Pb = partial.data() + (size_t)t * 2 * d;
    float* Pv = Pb + d;
    double sb = 0.0, sv = 0.0;
#pragma omp for schedule(static)
    for (i64 r = 0; r < rows; r++) {
      const float* xr = x + r * d;
      const float* ur = u + r * d;
      const float* cr = c + r * d;
      const float* vr = vin + r * d;
      const float* gr = gy + r * d;
      const double rs = aux[3 * r], v = aux[3 * r + 1], kx = aux[3 * r + 2], b = beta[r];
      const double s = rs * dot(ur, gr, d);
      const double delta = v - kx;
      const double gzbd = delta * s * b * (1.0 - b / 2.0);
      const double gzvd = vFromStream ? b * s * v * (1.0 - v / 4.0) : b * s;
      sb += gzbd;
      sv += gzvd;
      const float gzb = (float)gzbd, gzv = (float)gzvd;
      const float bsk = (float)(b * s * rs);  // beta s r: gx's k term on u
      if (gx != nullptr) {
        float* o = gx + r * d;
        const float fv = vFromStream ? gzv : 0.0f;
        if (ax) {
#pragma omp simd
          for (i64 i = 0; i < d; i++) o[i] += gr[i] - bsk * ur[i] + fv * wv[i];
        } else {
#pragma omp simd
          for (i64 i = 0; i < d; i++) o[i] = gr[i] - bsk * ur[i] + fv * wv[i];
        }
      }
      if (gu != nullptr) {
        float* o = gu + r * d;
        const float fg = (float)(rs * b * delta), fx = (float)(rs * b * s),
                    fu = (float)(rs * b * s * (delta - kx) * rs);
        if (au) {
#pragma omp simd
          for (i64 i = 0; i < d; i++) o[i] += fg * gr[i] - fx * xr[i] - fu * ur[i];
        } else {
#pragma omp simd
          for (i64 i = 0; i < d; i++) o[i] = fg * gr[i] - fx * xr[i] - fu * ur[i];
        }
      }
      if (gc != nullptr) {
        float* o = gc + r * d;
        const float fv = vFromStream ? 0.0f : gzv;
        if (ac) {
#pragma omp simd
          for (i64 i = 0; i < d; i++) o[i] += gzb * wb[i] + fv * wv[i];
        } else {
#pragma omp simd
          for (i64 i = 0; i < d; i++) o[i] = gzb * wb[i] + fv * wv[i];
        }
      }
#pragma omp simd
      for (i64 i = 0; i < d; i++) {
        Pb[i] += gzb * cr[i];
        Pv[i] += gzv * vr[i];
      }
    }
    bsum[2 * t] = sb;
    bsum[2 * t + 1] = sv;
  }
  double sb = 0.0, sv = 0.0;
  for (int t = 0; t < maxT; t++) {
    sb += bsum[2 * t];
    sv += bsum[2 * t + 1];
  }
  gbb[0] = (float)sb;
  gbv[0] = (float)sv;
  for (i64 i = 0; i < d; i++) {
    float pb = partial[i], pv = partial[d + i];
    for (int t = 1; t < maxT; t++) {
      pb += partial[(size_t)t * 2 * d + i];
      pv += partial[(size_t)t * 2 * d + d + i];
    }
    gwb[i] = pb;
    gwv[i] = pv;
  }
}

}  // namespace attnres
