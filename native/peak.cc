// peak.cc: measured peak float32 FMA throughput (GFLOP/s summed over OpenMP threads).
//
// Every thread runs NCHAIN independent vector FMA chains (acc = acc * a + b, latency-bound per chain,
// throughput-bound overall) with the widest FMA compiled in (AVX-512, AVX2+FMA, else scalar C), in
// rounds of ROUND iterations until `seconds` have passed. Flops = 2 * lanes * NCHAIN * iterations.
// The constants keep the values finite and normal (a slightly below 1, b small).
#include <immintrin.h>
#include <omp.h>

#include "kernels.h"

namespace attnres {

constexpr int NCHAIN = 12;
constexpr long ROUND = 1 << 16;

// Results land here (one slot per thread) so the FMA chains cannot be optimized away.
volatile float gSink[256];

static double run_thread(double seconds) {
  const double t0 = omp_get_wtime();
  long rounds = 0;
#if defined(__AVX512F__)
  constexpr int lanes = 16;
  __m512 acc[NCHAIN];
  for (int c = 0; c < NCHAIN; c++) acc[c] = _mm512_set1_ps(1.0f + 0.01f * c);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  do {
    for (long it = 0; it < ROUND; it++)
      for (int c = 0; c < NCHAIN; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    rounds++;
  } while (omp_get_wtime() - t0 < seconds);
  float s = 0.0f;
  alignas(64) float tmp[16];
  for (int c = 0; c < NCHAIN; c++) {
    _mm512_store_ps(tmp, acc[c]);
    for (int u = 0; u < 16; u++) s += tmp[u];
  }
#elif defined(__AVX2__) && defined(__FMA__)
  constexpr int lanes = 8;
  __m256 acc[NCHAIN];
  for (int c = 0; c < NCHAIN; c++) acc[c] = _mm256_set1_ps(1.0f + 0.01f * c);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  do {
    for (long it = 0; it < ROUND; it++)
      for (int c = 0; c < NCHAIN; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    rounds++;
  } while (omp_get_wtime() - t0 < seconds);
  float s = 0.0f;
  alignas(32) float tmp[8];
  for (int c = 0; c < NCHAIN; c++) {
    _mm256_store_ps(tmp, acc[c]);
    for (int u = 0; u < 8; u++) s += tmp[u];
  }
#else
  constexpr int lanes = 1;
  float acc[NCHAIN];
  for (int c = 0; c < NCHAIN; c++) acc[c] = 1.0f + 0.01f * c;
  do {
    for (long it = 0; it < ROUND; it++)
      for (int c = 0; c < NCHAIN; c++) acc[c] = acc[c] * 0.999999f + 1e-6f;
    rounds++;
  } while (omp_get_wtime() - t0 < seconds);
  float s = 0.0f;
  for (int c = 0; c < NCHAIN; c++) s += acc[c];
#endif
  const double elapsed = omp_get_wtime() - t0;
  gSink[omp_get_thread_num() % 256] = s;
  return 2.0 * lanes * NCHAIN * (double)ROUND * (double)rounds / elapsed * 1e-9;
}

double peak_gflops(double seconds) {
  double total = 0.0;
#pragma omp parallel reduction(+ : total)
  total += run_thread(seconds);
  return total;
}

}  // namespace attnres
