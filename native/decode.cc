// decode.cc: kernels for batch-1 generation, where every weight is read once per token and the
// speed limit is memory bandwidth, not FLOPs.
//
//   gemv_rows       y[N] = alpha * W[N, K] x[K] + beta * y     (W row stride ldw; beta == 0 never
//                   reads y). The M = 1, transB case of sgemm (x Wᵀ: a Linear on one token) comes
//                   here: a general GEMM packs the whole weight before using it, which doubles
//                   the bytes moved; this streams each row of W once. Rows are split over the
//                   OpenMP threads in blocks of 4 (each block reads x once per 4 rows).
//   gemv_many       y_i = W_i x for several weights at once (the q, k and v projections of one token):
//                   the rows of all of them are shared out over the threads in one parallel region.
//   gemv_swiglu     out[n] = silu(Wg[n]·x) · (Wu[n]·x): the gate and up projections of one token and
//                   SwiGLU in one pass (no gate/up buffers, one parallel region).
//   decode_attention  one token's attention step over a KV cache (B = 1), in one call: per-head
//                   RMSNorm of q and k (qk-norm, when gains are given), RoPE at position pos, k and v
//                   written into the cache's row pos, then softmax(scale q·Kᵀ) V over rows [0, pos].
//                   Every cached row is read once per kv head for all its query heads; the kv heads
//                   are shared out over the threads when the cache is long enough to pay for it.
//   decode_route    one row's depth routing over N sources stored as the rows of one [N, d] buffer,
//                   plus the stream: out = h + gate · Σ α_i src_i (single-threaded: a few hundred KB).
//   read_bandwidth  measured read bandwidth (GB/s, 1e9 bytes) of a buffer at least twice the
//                   last-level cache (and 1 GiB), every thread streaming its own slice (vector loads
//                   summed into independent accumulators, so loads are the only limit); several
//                   samples of about `seconds` each, so the caller can take their median.
//
// decode_attention and decode_route serve inference under noGrad only: they have no backward.
//
// Accumulation is float32, as in the GEMM this replaces (the order differs, so results agree with
// it to rounding, not bit for bit).
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace attnres {

// Dot products of 4 rows of W with x (K elements each).
static inline void dot4(const float* __restrict w0, const float* __restrict w1, const float* __restrict w2,
                        const float* __restrict w3, const float* __restrict x, i64 K, float out[4]) {
  i64 k = 0;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
         a3 = _mm512_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    const __m512 xv = _mm512_loadu_ps(x + k);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + k), xv, a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + k), xv, a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + k), xv, a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + k), xv, a3);
  }
  if (k < K) {
    const __mmask16 m = first_lanes(K - k);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + k), xv, a0);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w1 + k), xv, a1);
    a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w2 + k), xv, a2);
    a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w3 + k), xv, a3);
    k = K;
  }
  out[0] = hsum(a0);
  out[1] = hsum(a1);
  out[2] = hsum(a2);
  out[3] = hsum(a3);
#else
  float s[4][8] = {};
  for (; k + 8 <= K; k += 8)
    for (int j = 0; j < 8; j++) {
      s[0][j] += w0[k + j] * x[k + j];
      s[1][j] += w1[k + j] * x[k + j];
      s[2][j] += w2[k + j] * x[k + j];
      s[3][j] += w3[k + j] * x[k + j];
    }
  for (int r = 0; r < 4; r++) {
    float t = 0.0f;
    for (int j = 0; j < 8; j++) t += s[r][j];
    out[r] = t;
  }
  for (; k < K; k++) {
    out[0] += w0[k] * x[k];
    out[1] += w1[k] * x[k];
    out[2] += w2[k] * x[k];
    out[3] += w3[k] * x[k];
  }
#endif
}

static inline float dot1(const float* __restrict w, const float* __restrict x, i64 K) {
  float out[4];
  dot4(w, w, w, w, x, K, out);
  return out[0];
}

static inline void store(float* y, i64 n, float v, float alpha, float beta) {
  y[n] = beta == 0.0f ? alpha * v : alpha * v + beta * y[n];
}

void gemv_rows(const float* W, i64 ldw, const float* x, float* y, i64 N, i64 K, float alpha, float beta) {
  if (N == 0) return;
  if (K == 0) {
    for (i64 n = 0; n < N; n++) y[n] = beta == 0.0f ? 0.0f : beta * y[n];
    return;
  }
  const i64 blocks = (N + 3) / 4;
  const bool par = !omp_in_parallel() && omp_get_max_threads() > 1 && N * K >= kParallelMin;
  // Dynamic chunks of 16 blocks (64 rows): on a loaded machine a thread that is running takes the
  // work of one that is not, instead of the whole call waiting for the slower one's fixed half.
#pragma omp parallel for schedule(dynamic, 16) if (par)
  for (i64 b = 0; b < blocks; b++) {
    const i64 n0 = b * 4;
    if (n0 + 4 <= N) {
      float r[4];
      dot4(W + n0 * ldw, W + (n0 + 1) * ldw, W + (n0 + 2) * ldw, W + (n0 + 3) * ldw, x, K, r);
      for (int j = 0; j < 4; j++) store(y, n0 + j, r[j], alpha, beta);
    } else {
      for (i64 n = n0; n < N; n++) store(y, n, dot1(W + n * ldw, x, K), alpha, beta);
    }
  }
}

void gemv_many(const float* x, i64 K, int count, const float* const* W, float* const* y, const i64* N) {
  std::vector<i64> start((size_t)count + 1, 0);  // first 4-row block of each matrix
  for (int i = 0; i < count; i++) start[(size_t)i + 1] = start[(size_t)i] + (N[i] + 3) / 4;
  const i64 blocks = start[(size_t)count];
  i64 rows = 0;
  for (int i = 0; i < count; i++) rows += N[i];
  if (K == 0) {
    for (int i = 0; i < count; i++)
      for (i64 n = 0; n < N[i]; n++) y[i][n] = 0.0f;
    return;
  }
  const bool par = !omp_in_parallel() && omp_get_max_threads() > 1 && rows * K >= kParallelMin;
#pragma omp parallel for schedule(dynamic, 16) if (par)
  for (i64 b = 0; b < blocks; b++) {
    int i = 0;
    while (start[(size_t)i + 1] <= b) i++;
    const float* w = W[i];
    float* out = y[i];
    const i64 n0 = (b - start[(size_t)i]) * 4;
    if (n0 + 4 <= N[i]) {
      float r[4];
      dot4(w + n0 * K, w + (n0 + 1) * K, w + (n0 + 2) * K, w + (n0 + 3) * K, x, K, r);
      for (int j = 0; j < 4; j++) out[n0 + j] = r[j];
    } else {
      for (i64 n = n0; n < N[i]; n++) out[n] = dot1(w + n * K, x, K);
    }
  }
}

void gemv_swiglu(const float* x, const float* Wg, const float* Wu, float* out, i64 N, i64 K) {
  const i64 blocks = (N + 3) / 4;
  const bool par = !omp_in_parallel() && omp_get_max_threads() > 1 && 2 * N * K >= kParallelMin;
  auto act = [](float g, float u) { return g / (1.0f + std::exp(-g)) * u; };
#pragma omp parallel for schedule(dynamic, 8) if (par)
  for (i64 b = 0; b < blocks; b++) {
    const i64 n0 = b * 4;
    if (n0 + 4 <= N) {
      float g[4], u[4];
      dot4(Wg + n0 * K, Wg + (n0 + 1) * K, Wg + (n0 + 2) * K, Wg + (n0 + 3) * K, x, K, g);
      dot4(Wu + n0 * K, Wu + (n0 + 1) * K, Wu + (n0 + 2) * K, Wu + (n0 + 3) * K, x, K, u);
      for (int j = 0; j < 4; j++) out[n0 + j] = act(g[j], u[j]);
    } else {
      for (i64 n = n0; n < N; n++) out[n] = act(dot1(Wg + n * K, x, K), dot1(Wu + n * K, x, K));
    }
  }
}

// ------------------------------------------------------------------ decode_attention

// o [D] = RoPE(x · rstd(x) · w) (w == nullptr: x as is), the rotation at one position (cos, sin [D/2]).
static void norm_rope(const float* x, const float* w, float eps, const float* cs, const float* sn, float* o,
                      i64 D) {
  if (w != nullptr) {
    double ss = 0.0;
    for (i64 c = 0; c < D; c++) ss += (double)x[c] * x[c];
    const float rs = (float)(1.0 / std::sqrt(ss / (double)D + (double)eps));
    for (i64 c = 0; c < D; c++) o[c] = x[c] * rs * w[c];
  } else {
    std::memcpy(o, x, sizeof(float) * D);
  }
  const i64 h = D / 2;
  for (i64 c = 0; c < h; c++) {
    const float a = o[c], b = o[c + h];
    o[c] = a * cs[c] - b * sn[c];
    o[c + h] = b * cs[c] + a * sn[c];
  }
}

static inline float dot(const float* __restrict a, const float* __restrict b, i64 n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (i64 c = 0; c < n; c++) acc += a[c] * b[c];
  return acc;
}

void decode_attention(const float* q, const float* k, const float* v, const float* qw, const float* kw,
                      float eps, const float* cos, const float* sin, float* kc, float* vc, i64 pos,
                      float* out, i64 Hq, i64 Hkv, i64 D, float scale) {
  if (Hq == 0 || D == 0) return;
  const i64 row = Hkv * D, Tk = pos + 1, G = Hq / Hkv;
  const float* cs = cos + pos * (D / 2);
  const float* sn = sin + pos * (D / 2);
  for (i64 g = 0; g < Hkv; g++) {
    norm_rope(k + g * D, kw, eps, cs, sn, kc + pos * row + g * D, D);
    std::memcpy(vc + pos * row + g * D, v + g * D, sizeof(float) * D);
  }
  std::vector<float> qr((size_t)(Hq * D));
  for (i64 h = 0; h < Hq; h++) norm_rope(q + h * D, qw, eps, cs, sn, qr.data() + h * D, D);
  std::vector<float> S((size_t)(Hq * Tk));  // scores, then probabilities: row h is query head h
  // Threads over kv heads once Hq · Tk · D ≥ 2^15 (at 12 heads of 64, from 43 cached keys on): the
  // cache streams from memory during decoding (the weights in between evict it), and two threads read
  // it faster than one. Below that a parallel region costs more than it saves.
  const bool par =
      !omp_in_parallel() && omp_get_max_threads() > 1 && Hkv > 1 && Hq * Tk * D >= ((i64)1 << 15);
#pragma omp parallel for schedule(static) if (par)
  for (i64 g = 0; g < Hkv; g++) {
    float* s = S.data() + g * G * Tk;
    const float* qg = qr.data() + g * G * D;
    for (i64 j = 0; j < Tk; j++) {
      const float* kj = kc + j * row + g * D;
      for (i64 i = 0; i < G; i++) s[i * Tk + j] = scale * dot(qg + i * D, kj, D);
    }
    for (i64 i = 0; i < G; i++) {
      float* si = s + i * Tk;
      float m = -INFINITY;
      for (i64 j = 0; j < Tk; j++) m = si[j] > m ? si[j] : m;  // NaN scores are skipped here …
      if (m == -INFINITY) m = 0.0f;                            // (every score NaN or -inf)
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (i64 j = 0; j < Tk; j++) {
        const float e = exp_fast(si[j] - m);  // … and give NaN here, which reaches the output
        si[j] = e;
        sum += e;
      }
      const float inv = 1.0f / sum;
      for (i64 j = 0; j < Tk; j++) si[j] *= inv;
    }
    float* og = out + g * G * D;
    for (i64 c = 0; c < G * D; c++) og[c] = 0.0f;
    for (i64 j = 0; j < Tk; j++) {
      const float* vj = vc + j * row + g * D;
      for (i64 i = 0; i < G; i++) {
        const float p = s[i * Tk + j];
        float* o = og + i * D;
#pragma omp simd
        for (i64 c = 0; c < D; c++) o[c] += p * vj[c];
      }
    }
  }
}

// ------------------------------------------------------------------ decode_route

void decode_route(const float* src, i64 N, const float* w, const float* g, const float* h, float gate,
                  float* out, i64 d, float eps) {
  std::vector<double> l((size_t)N);
  double mx = -INFINITY;
  for (i64 i = 0; i < N; i++) {
    const float* s = src + i * d;
    float ss = 0.0f, dt = 0.0f;
#pragma omp simd reduction(+ : ss, dt)
    for (i64 c = 0; c < d; c++) {
      ss += s[c] * s[c];
      dt += w[c] * g[c] * s[c];
    }
    const float rs = (float)(1.0 / std::sqrt(ss / (double)d + (double)eps));
    l[(size_t)i] = (double)(dt * rs);
    mx = std::max(mx, l[(size_t)i]);
  }
  double z = 0.0;
  for (i64 i = 0; i < N; i++) z += (l[(size_t)i] = std::exp(l[(size_t)i] - mx));
  std::vector<float> r((size_t)d, 0.0f);
  for (i64 i = 0; i < N; i++) {
    const float a = (float)(l[(size_t)i] / z);
    const float* s = src + i * d;
#pragma omp simd
    for (i64 c = 0; c < d; c++) r[(size_t)c] += a * s[c];
  }
  for (i64 c = 0; c < d; c++) out[c] = h[c] + gate * r[(size_t)c];
}

// ------------------------------------------------------------------ read_bandwidth

// Results land here so the loads cannot be optimized away.
volatile float gBandwidthSink[256];

size_t read_bandwidth(double seconds, int repeats, size_t bytes, double* samples) {
  const int threads = std::max(1, omp_get_max_threads());
  if (bytes == 0) {
    // Twice the last-level cache as the system reports it (the whole package's, on a VM that
    // shows the host's), and at least 1 GiB: a slice that stays partly cached inflates the result.
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    bytes = std::max<size_t>((size_t)1 << 30, l3 > 0 ? 2 * (size_t)l3 : 0);
    bytes = std::min<size_t>(bytes, (size_t)4 << 30);
  }
  const size_t unit = (size_t)threads * 128 * sizeof(float);  // whole 128-float blocks per thread
  bytes = std::max(unit, bytes / unit * unit);
  const size_t n = bytes / sizeof(float);
  float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (buf == nullptr) return 0;
  const size_t slice = n / (size_t)threads;
  std::vector<double> moved((size_t)threads);
  double elapsed = 0.0;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    float* p = buf + slice * (size_t)t;
    for (size_t i = 0; i < slice; i++) p[i] = (float)(i & 1023) * 1e-3f;  // first touch by the reader
    float sink = 0.0f;
    // One untimed pass first: the first read of freshly written memory is slower on some systems
    // (measured here: a VM whose first sample after the writes came out at a fraction of the rest).
    for (size_t i = 0; i < slice; i += 16) sink += p[i];
    for (int rep = 0; rep < repeats; rep++) {
#pragma omp barrier
      const double t0 = omp_get_wtime();
      long passes = 0;
      do {
#if defined(__AVX512F__)
        __m512 a[8];
        for (int j = 0; j < 8; j++) a[j] = _mm512_setzero_ps();
        for (size_t i = 0; i + 128 <= slice; i += 128)
          for (int j = 0; j < 8; j++) a[j] = _mm512_add_ps(a[j], _mm512_load_ps(p + i + 16 * j));
        for (int j = 1; j < 8; j++) a[0] = _mm512_add_ps(a[0], a[j]);
        sink += hsum(a[0]);
#else
        float a[8] = {};
        for (size_t i = 0; i + 8 <= slice; i += 8)
          for (int j = 0; j < 8; j++) a[j] += p[i + j];
        for (int j = 0; j < 8; j++) sink += a[j];
#endif
        passes++;
      } while (omp_get_wtime() - t0 < seconds);
      moved[(size_t)t] = (double)passes * (double)(slice * sizeof(float));
#pragma omp barrier
#pragma omp master
      {
        elapsed = omp_get_wtime() - t0;
        double total = 0.0;
        for (double m : moved) total += m;
        samples[rep] = elapsed > 0 ? total / elapsed * 1e-9 : 0.0;
      }
    }
    gBandwidthSink[t % 256] = sink;
  }
  std::free(buf);
  return bytes;
}

}  // namespace attnres
