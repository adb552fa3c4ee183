// gemm.cc: row-major single-precision GEMM, thread control and build info.
//
//   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C[M,N]      (row strides lda, ldb, ldc)
//   op(A) is A stored [M,K] or, when transA, A stored [K,M]; op(B) is B [K,N] or, when transB, [N,K].
//
// Two GEMMs, chosen once per process (gemm_kind; ATTNRES_GEMM=blas|builtin overrides the default):
//  - the linked CBLAS (ATTNRES_OPENBLAS / ATTNRES_CBLAS builds): each matrix goes to cblas_sgemm;
//  - the built-in cache-blocked GEMM (always compiled): A and B are packed into MR-row / NR-column
//    micro-panels (alpha folded into A), and an MR x NR register-tile micro-kernel (AVX-512, AVX2+FMA
//    or portable C) accumulates over a KC-deep slice. Blocking: jc (NC cols of B) > pc (KC of K) >
//    tasks of MC rows x NT cols distributed over OpenMP threads.
// Default: the BLAS, except in an AVX-512 build whose BLAS does not run AVX-512 kernels itself — e.g.
// OpenBLAS held to its AVX2 "Haswell" kernels by OPENBLAS_CORETYPE, or too old to know the CPU —
// where the built-in micro-kernel is about twice as fast (`npm run bench` prints which runs).
// A build without a BLAS (ATTNRES_BUILTIN_GEMM) has the built-in one only.
// Either way beta == 0 never reads C (NaN/Inf in C do not propagate), and K == 0 gives C = beta*C.
// One row times a transposed B (a Linear on one token) goes to decode.cc's gemv_rows with either.
// Called inside an OpenMP parallel region a GEMM runs single-threaded (OpenMP OpenBLAS does the same).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels.h"

#if defined(ATTNRES_OPENBLAS) || defined(ATTNRES_CBLAS)
#include <cblas.h>
#define ATTNRES_HAVE_CBLAS 1
#endif

namespace attnres {

// ------------------------------------------------------------------ threads / info

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  if (n < 1) n = 1;
  omp_set_num_threads(n);
#if defined(ATTNRES_OPENBLAS)
  openblas_set_num_threads(n);
#endif
}

const char* blas_name() {
#if defined(ATTNRES_OPENBLAS)
  return "openblas";
#elif defined(ATTNRES_CBLAS)
  return "cblas";
#else
  return "builtin";
#endif
}

const char* blas_core() {
#if defined(ATTNRES_OPENBLAS)
  return openblas_get_corename();
#else
  return "";
#endif
}

const char* simd_name() {
#if defined(__AVX512F__)
  return "avx512f";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE2__)
  return "sse2";
#else
  return "scalar";
#endif
}

// C = beta * C over [M, N] (beta == 0 writes zeros without reading).
static void scale_c(i64 M, i64 N, float beta, float* C, i64 ldc) {
  for (i64 i = 0; i < M; i++) {
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      std::memset(c, 0, sizeof(float) * N);
    } else if (beta != 1.0f) {
      for (i64 j = 0; j < N; j++) c[j] *= beta;
    }
  }
}

// One row of C times a transposed B (x Wᵀ: a Linear on one token) is a matrix-vector product
// over the rows of B: decode.cc's gemv_rows streams B once instead of packing it first.
static bool sgemm_as_gemv(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                          const float* B, i64 ldb, float beta, float* C) {
  if (M != 1 || !transB || N == 0 || K == 0 || (transA && lda != 1 && K > 1)) return false;
  gemv_rows(B, ldb, A, C, N, K, alpha, beta);
  return true;
}

#ifdef ATTNRES_HAVE_CBLAS

// The linked CBLAS (M, N, K > 0, alpha != 0).
static void blas_sgemm(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                       const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  // CBLAS insists on ld >= row length even for a single row; such a row is read once anyway.
  const i64 aCols = transA ? M : K, aRows = transA ? K : M;
  const i64 bCols = transB ? K : N, bRows = transB ? N : K;
  if (aRows == 1) lda = std::max(lda, aCols);
  if (bRows == 1) ldb = std::max(ldb, bCols);
  if (M == 1) ldc = std::max(ldc, N);
#if !defined(ATTNRES_OPENBLAS)
  // Unknown CBLAS: make sure NaN in C cannot leak when beta == 0. (OpenBLAS was verified not to read C
  // when beta == 0, for every transpose and size class; test/native-kernels.test.ts checks it.)
  if (beta == 0.0f) scale_c(M, N, 0.0f, C, ldc);
#endif
  cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, (int)M,
              (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

#endif  // ATTNRES_HAVE_CBLAS

// ------------------------------------------------------------------ built-in GEMM

#if defined(__AVX512F__)
constexpr int VW = 16;
constexpr int MR = 8;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int VW = 8;
constexpr int MR = 6;
#else
constexpr int VW = 4;
constexpr int MR = 4;
#endif
constexpr int NR = 2 * VW;
constexpr i64 KC = 256;
constexpr i64 MC = 128;   // rows of A per task (multiple of MR)
constexpr i64 NT = 256;   // columns of B per task (multiple of NR)
constexpr i64 NC = 4096;  // columns of B packed at once (multiple of NT)

// The register tile: tile[MR][NR] = sum_p Ap[p][0..MR) (outer) Bp[p][0..NR).
static inline void micro_kernel(i64 kc, const float* __restrict Ap, const float* __restrict Bp,
                                float* __restrict tile) {
#if defined(__AVX512F__)
  __m512 c[MR][2];
  for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (i64 p = 0; p < kc; p++) {
    const __m512 b0 = _mm512_load_ps(Bp + p * NR);
    const __m512 b1 = _mm512_load_ps(Bp + p * NR + VW);
    for (int i = 0; i < MR; i++) {
      const __m512 a = _mm512_set1_ps(Ap[p * MR + i]);
      c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
    }
  }
  for (int i = 0; i < MR; i++) {
    _mm512_store_ps(tile + i * NR, c[i][0]);
    _mm512_store_ps(tile + i * NR + VW, c[i][1]);
  }
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 c[MR][2];
  for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (i64 p = 0; p < kc; p++) {
    const __m256 b0 = _mm256_load_ps(Bp + p * NR);
    const __m256 b1 = _mm256_load_ps(Bp + p * NR + VW);
    for (int i = 0; i < MR; i++) {
      const __m256 a = _mm256_broadcast_ss(Ap + p * MR + i);
      c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
    }
  }
  for (int i = 0; i < MR; i++) {
    _mm256_store_ps(tile + i * NR, c[i][0]);
    _mm256_store_ps(tile + i * NR + VW, c[i][1]);
  }
#else
  float c[MR][NR] = {};
  for (i64 p = 0; p < kc; p++)
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < NR; j++) c[i][j] += Ap[p * MR + i] * Bp[p * NR + j];
  std::memcpy(tile, c, sizeof(c));
#endif
}

// Grow-only 64-byte aligned scratch, one per calling thread.
struct Scratch {
  float* p = nullptr;
  size_t n = 0;
  float* get(size_t want) {
    if (want > n) {
      std::free(p);
      n = (want + 15) & ~size_t(15);
      p = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
      if (p == nullptr) std::abort();
    }
    return p;
  }
  ~Scratch() { std::free(p); }
};

// The built-in blocked GEMM (M, N, K > 0, alpha != 0).
static void builtin_sgemm(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                          const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  static thread_local Scratch sa, sb;
  const i64 mStrips = (M + MR - 1) / MR;
  float* Ap = sa.get(size_t(mStrips * MR * KC));
  float* Bp = sb.get(size_t(std::min(N, NC) + NR) * KC);
  const bool par = !omp_in_parallel() && omp_get_max_threads() > 1 && M * N * K >= (i64)1 << 18;

#pragma omp parallel if (par)
  {
    alignas(64) float tile[MR * NR];
    for (i64 jc = 0; jc < N; jc += NC) {
      const i64 nc = std::min(NC, N - jc);
      const i64 nStrips = (nc + NR - 1) / NR;
      for (i64 pc = 0; pc < K; pc += KC) {
        const i64 kc = std::min(KC, K - pc);
        const bool first = pc == 0;
#pragma omp for schedule(static)
        for (i64 t = 0; t < nStrips; t++) {  // pack B[pc:pc+kc, jc+t*NR : +NR] -> Bp strip t
          float* dst = Bp + t * NR * kc;
          const i64 j0 = jc + t * NR, nr = std::min<i64>(NR, jc + nc - j0);
          for (i64 p = 0; p < kc; p++) {
            float* d = dst + p * NR;
            if (!transB) {
              const float* s = B + (pc + p) * ldb + j0;
              for (i64 j = 0; j < nr; j++) d[j] = s[j];
            } else {
              const float* s = B + j0 * ldb + (pc + p);
              for (i64 j = 0; j < nr; j++) d[j] = s[j * ldb];
            }
            for (i64 j = nr; j < NR; j++) d[j] = 0.0f;
          }
        }
#pragma omp for schedule(static)
        for (i64 s = 0; s < mStrips; s++) {  // pack alpha * A[s*MR : +MR, pc:pc+kc] -> Ap strip s
          float* dst = Ap + s * MR * kc;
          const i64 i0 = s * MR, mr = std::min<i64>(MR, M - i0);
          if (!transA) {
            for (i64 i = 0; i < mr; i++) {
              const float* src = A + (i0 + i) * lda + pc;
              for (i64 p = 0; p < kc; p++) dst[p * MR + i] = alpha * src[p];
            }
          } else {
            for (i64 p = 0; p < kc; p++) {
              const float* src = A + (pc + p) * lda + i0;
              for (i64 i = 0; i < mr; i++) dst[p * MR + i] = alpha * src[i];
            }
          }
          for (i64 i = mr; i < MR; i++)
            for (i64 p = 0; p < kc; p++) dst[p * MR + i] = 0.0f;
        }
        const i64 mBlocks = (M + MC - 1) / MC, nBlocks = (nc + NT - 1) / NT;
#pragma omp for schedule(static) collapse(2)
        for (i64 mb = 0; mb < mBlocks; mb++) {
          for (i64 nb = 0; nb < nBlocks; nb++) {
            const i64 iEnd = std::min(M, (mb + 1) * MC), jEnd = std::min(nc, (nb + 1) * NT);
            for (i64 j0 = nb * NT; j0 < jEnd; j0 += NR) {
              const i64 nr = std::min<i64>(NR, jEnd - j0);
              const float* bp = Bp + (j0 / NR) * NR * kc;
              for (i64 i0 = mb * MC; i0 < iEnd; i0 += MR) {
                const i64 mr = std::min<i64>(MR, iEnd - i0);
                micro_kernel(kc, Ap + (i0 / MR) * MR * kc, bp, tile);
                for (i64 i = 0; i < mr; i++) {
                  float* c = C + (i0 + i) * ldc + jc + j0;
                  const float* t = tile + i * NR;
                  if (!first || beta == 1.0f) {
                    for (i64 j = 0; j < nr; j++) c[j] += t[j];
                  } else if (beta == 0.0f) {
                    for (i64 j = 0; j < nr; j++) c[j] = t[j];
                  } else {
                    for (i64 j = 0; j < nr; j++) c[j] = beta * c[j] + t[j];
                  }
                }
              }
            }
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------ which GEMM runs

static bool blas_runs_avx512() {
#if defined(ATTNRES_OPENBLAS)
  std::string core = openblas_get_corename();
  for (char& ch : core) ch = (char)std::tolower((unsigned char)ch);
  return core.find("skylakex") != std::string::npos || core.find("cooperlake") != std::string::npos ||
         core.find("sapphire") != std::string::npos;
#else
  return false;
#endif
}

// The default: the linked BLAS, except on an AVX-512 build whose BLAS does not run AVX-512 kernels
// (OpenBLAS forced to, or only knowing, AVX2 kernels on this CPU; or another CBLAS): there the
// built-in AVX-512 micro-kernel is the faster GEMM. ATTNRES_GEMM=blas|builtin overrides.
static GemmKind default_gemm() {
#if defined(ATTNRES_HAVE_CBLAS)
  const char* env = std::getenv("ATTNRES_GEMM");
  if (env != nullptr && std::string(env) == "builtin") return GemmKind::Builtin;
  if (env != nullptr && std::string(env) == "blas") return GemmKind::Blas;
#if defined(__AVX512F__)
  return blas_runs_avx512() ? GemmKind::Blas : GemmKind::Builtin;
#else
  (void)blas_runs_avx512;
  return GemmKind::Blas;
#endif
#else
  (void)blas_runs_avx512;
  return GemmKind::Builtin;
#endif
}

static GemmKind& current_gemm() {
  static GemmKind kind = default_gemm();
  return kind;
}

GemmKind gemm_kind() { return current_gemm(); }

bool set_gemm_kind(GemmKind k) {
#if !defined(ATTNRES_HAVE_CBLAS)
  if (k == GemmKind::Blas) return false;
#endif
  current_gemm() = k;
  return true;
}

const char* gemm_name() {
  if (current_gemm() == GemmKind::Builtin) return "builtin";
  return blas_name();
}

void sgemm(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
           const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (sgemm_as_gemv(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C)) return;
#if defined(ATTNRES_HAVE_CBLAS)
  if (current_gemm() == GemmKind::Blas) {
    blas_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  builtin_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemm_batched(bool transA, bool transB, i64 batch, i64 M, i64 N, i64 K, float alpha, const float* A,
                   i64 lda, i64 strideA, const float* B, i64 ldb, i64 strideB, float beta, float* C, i64 ldc,
                   i64 strideC) {
  if (batch == 1) {
    sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Small matrices: one single-threaded GEMM per batch item, items spread over threads. Only when the
  // C blocks are disjoint (strideC covers a whole C block), else items must run in order.
  const bool disjoint = M == 0 || N == 0 || strideC >= (M - 1) * ldc + N;
  const bool small = M * N * K <= (i64)96 * 96 * 96;
  if (disjoint && small && batch * M * N * K >= kParallelMin * 8) {
#pragma omp parallel for schedule(dynamic)
    for (i64 b = 0; b < batch; b++)
      sgemm(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb, beta, C + b * strideC,
            ldc);
    return;
  }
  for (i64 b = 0; b < batch; b++)
    sgemm(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb, beta, C + b * strideC,
          ldc);
}

}  // namespace attnres
