// gemm.cc: row-major single-precision GEMM, thread control and build info.
//
//   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C[M,N]      (row strides lda, ldb, ldc)
//   op(A) is A stored [M,K] or, when transA, A stored [K,M]; op(B) is B [K,N] or, when transB, [N,K].
//
// Two GEMMs, chosen once per process (gemm_kind; ATTNRES_GEMM=blas|builtin overrides the default):
//  - the linked CBLAS (ATTNRES_OPENBLAS / ATTNRES_CBLAS builds): each matrix goes to cblas_sgemm;
//  - the built-in cache-blocked GEMM (always compiled): A and B are packed into MR-row / NR-column
//    micro-panels (alpha folded into A), and an MR x NR register-tile micro-kernel (AVX-512, AVX2+FMA
//    or portable C) accumulates over a K slice of KC packed steps. Blocking: pc (a K slice; op(A)'s
//    slice is packed once) > jc (NC cols of B) > tasks of MC rows x at most NT cols over OpenMP threads,
//    balanced between threads.
//    In float32 with AVX-512, when M is a multiple of MR, op(A) is not packed at all: the micro-kernel
//    broadcasts its MR rows from where they are (a row of A along k, or MR neighbours of a row of a
//    transposed A), and alpha scales the tile. Packing op(A) cost as much as a tenth of these products
//    (the activations [tokens, d] of a step: M large, N = d small), and it ran before the products,
//    at a barrier, instead of overlapping them.
//  - the built-in streamed GEMM (AVX-512 builds) for a Linear over a few rows, x [M, K] @ Wᵀ with
//    8 <= M <= 256 (a prefill, a small batch): x is packed once for all threads (one barrier), and
//    each thread packs its own strips of W as it goes (prefetching the next) under an 8 x 48
//    register tile, with no barrier between W's slices. It runs whichever GEMM is the default,
//    and with ATTNRES_GEMM=builtin; ATTNRES_GEMM=blas sends these products to the BLAS too. It
//    gives each element the blocked GEMM's sums, bit for bit (the rows past the last multiple of 8
//    when alpha = 1, as in a Linear).
//  - bfloat16 operands (set_gemm_bf16, a training setting): the blocked GEMM over bf16 pairs with the
//    AVX-512 BF16 dot product, or, where the CPU has AMX-BF16 tiles, the AMX GEMM (amx_gemm: 32 x 32
//    blocks of four float32 tiles; ATTNRES_AMX=0 keeps the dot product).
// Default: the BLAS, except in an AVX-512 build whose BLAS does not run AVX-512 kernels itself — e.g.
// OpenBLAS held to its AVX2 "Haswell" kernels by OPENBLAS_CORETYPE, or too old to know the CPU —
// where the built-in micro-kernel is about twice as fast (`npm run bench` prints which runs).
// A build without a BLAS (ATTNRES_BUILTIN_GEMM) has the built-in one only.
// Either way beta == 0 never reads C (NaN/Inf in C do not propagate), and K == 0 gives C = beta*C.
// One row times a transposed B (a Linear on one token) goes to decode.cc's gemv_rows with either.
// Called inside an OpenMP parallel region a GEMM runs single-threaded (OpenMP OpenBLAS does the same).
#include <immintrin.h>
#include <omp.h>
#if defined(__AMX_TILE__) && defined(__linux__)
#include <sys/syscall.h>  // arch_prctl: the AMX tile state
#include <unistd.h>
#endif

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

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
constexpr i64 KC = 256;            // packed steps per K slice (float32: 256 k; bfloat16: 512 k)
constexpr i64 MC = 128 / MR * MR;  // rows of A per task: a multiple of MR (126 for the AVX2 tile of 6 rows)
constexpr i64 NT = 256;            // columns of B per task (multiple of NR)
constexpr i64 NC = 4096;           // columns of B packed at once (multiple of NT)
// Tasks start on whole tiles (test/native-portable.test.ts compiles this for the AVX2 and SSE tiles too).
static_assert(MC % MR == 0 && NT % NR == 0 && NC % NT == 0, "GEMM blocks must be whole tiles");

#if defined(__AVX512F__)
// The float32 AVX-512 micro-kernel: tile[MR][NV * 16] = sum_p a(i, p) * Bp[p][0 .. NV * 16) over kp steps,
// with op(A)'s MR rows read where they are: a(i, p) at A[i * lda + p] when kAlongK (A stored [M, K]), at
// A[p * lda + i] when not (A stored [K, M]; a packed strip is that with lda = MR). NV = 2 is the blocked
// GEMM's tile (16 accumulators), NV = 3 the streamed GEMM's (24).
template <int NV, bool kAlongK>
static inline void tile_in_place(i64 kp, const float* __restrict A, i64 lda, const float* __restrict Bp,
                                 float* __restrict tile) {
  __m512 c[MR][NV];
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < NV; v++) c[i][v] = _mm512_setzero_ps();
  const float* r[MR];
  for (int i = 0; i < MR; i++) r[i] = kAlongK ? A + i * lda : A + i;
  for (i64 p = 0; p < kp; p++) {
    __m512 b[NV];
    for (int v = 0; v < NV; v++) b[v] = _mm512_load_ps(Bp + (p * NV + v) * VW);
    for (int i = 0; i < MR; i++) {
      const __m512 a = _mm512_set1_ps(kAlongK ? r[i][p] : r[0][p * lda + i]);
      for (int v = 0; v < NV; v++) c[i][v] = _mm512_fmadd_ps(a, b[v], c[i][v]);
    }
  }
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < NV; v++) _mm512_store_ps(tile + (i * NV + v) * VW, c[i][v]);
}
#endif

// float32 panels: one packed element per k; alpha folded into A while packing.
struct F32Panels {
  using P = float;
  static constexpr i64 KS = 1;  // k per packed element
  static constexpr bool kScaleTile = false;
  static constexpr bool kVecPack = false;  // packed by blocked_gemm's generic loops (a, b)
  static P a(float alpha, float x0, float) { return alpha * x0; }
  static P b(float x0, float) { return x0; }
  // tile[MR][NR] = sum_p Ap[p][0..MR) (outer) Bp[p][0..NR), over kp packed steps.
  static inline void kernel(i64 kp, const P* __restrict Ap, const P* __restrict Bp, float* __restrict tile) {
#if defined(__AVX512F__)
    kernel_in_place<false>(kp, Ap, MR, Bp, tile);  // a packed strip is op(A) stored [K, MR]
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 c[MR][2];
    for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (i64 p = 0; p < kp; p++) {
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
    for (i64 p = 0; p < kp; p++)
      for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) c[i][j] += Ap[p * MR + i] * Bp[p * NR + j];
    std::memcpy(tile, c, sizeof(c));
#endif
  }
#if defined(__AVX512F__)
  static constexpr bool kInPlaceA = true;
  // The same tile with op(A)'s MR rows read where they are instead of from a packed strip.
  template <bool kAlongK>
  static inline void kernel_in_place(i64 kp, const float* __restrict A, i64 lda, const P* __restrict Bp,
                                     float* __restrict tile) {
    tile_in_place<NR / VW, kAlongK>(kp, A, lda, Bp, tile);
  }
#else
  static constexpr bool kInPlaceA = false;
  template <bool kAlongK>
  static void kernel_in_place(i64, const float*, i64, const P*, float*) {}
#endif
};

#if defined(__AVX512BF16__) && defined(__AVX512F__)
// bfloat16 panels: one packed element per PAIR of k, two bf16 (k even in the low half), rounded to
// nearest-even from float32; the micro-kernel's dot-product instruction multiplies both pairs and
// accumulates in float32. alpha scales the tile (it is not rounded into A).
// The rounding, of float32 bits u: NaN -> (u >> 16) | 0x40 (stays a quiet NaN); anything else ->
// (u + 0x7fff + ((u >> 16) & 1)) >> 16 (nearest even; overflow goes to infinity; denormals round like
// any other value, where the AVX512-BF16 conversion instructions would flush them to zero).
// Packing is vectorised (16 lanes) for all four layouts; where op(A) or op(B) runs along k in memory
// (A not transposed, B transposed) 16 pairs of each of 8 rows are transposed in registers.
// Shifts and shuffles below avoid the intrinsics built on _mm512_undefined_* (srli, unpack, extract,
// cast to wider), which GCC 12 reports as maybe-uninitialized once inlined.
using u32x16 = uint32_t __attribute__((vector_size(64)));
static inline __m512i srl16(__m512i x) { return (__m512i)((u32x16)x >> 16); }
// The rounding on 16 lanes, the bfloat16 left in the HIGH half of each 32-bit lane (the low half is not
// cleared).
static inline __m512i bf16_hi16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 odd = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000));  // the kept part is odd
  __m512i r = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
  r = _mm512_mask_add_epi32(r, odd, r, _mm512_set1_epi32(1));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
}
// 16 packed pairs: lane j = bf16(x0[j]) | bf16(x1[j]) << 16 (x0 holds the even k, x1 the odd k).
static inline __m512i bf16_pairs(__m512 x0, __m512 x1) {
  return _mm512_mask_blend_epi16(0xAAAAAAAAu, srl16(bf16_hi16(x0)), bf16_hi16(x1));
}
// 16 packed pairs of 32 consecutive k (lo = x[0..16), hi = x[16..32)): lane q = bf16(x[2q]) | bf16(x[2q+1])
// << 16, the high 16-bit word of every 32-bit lane of the two rounded vectors, in order.
static inline __m512i bf16_pairs_seq(__m512 lo, __m512 hi) {
  const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29,
                                       27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_permutex2var_epi16(bf16_hi16(lo), odd, bf16_hi16(hi));
}
// 16 packed pairs of row x at k = 0..32 (n of them present; the rest pack as zero).
static inline __m512i bf16_pairs_row(const float* x, i64 n) {
  return bf16_pairs_seq(_mm512_maskz_loadu_ps(first_lanes(n), x),
                        _mm512_maskz_loadu_ps(first_lanes(n - 16), x + 16));
}
// In-register transpose of 8 rows of 16 packed elements, r[i][p], stored as dst[p * ld + i] for p < np (<=
// 16).
static inline void store_transposed_8x16(const __m512i r[8], uint32_t* dst, i64 ld, i64 np) {
  const __m512i lo32 = _mm512_set_epi32(29, 13, 28, 12, 25, 9, 24, 8, 21, 5, 20, 4, 17, 1, 16, 0);
  const __m512i hi32 = _mm512_set_epi32(31, 15, 30, 14, 27, 11, 26, 10, 23, 7, 22, 6, 19, 3, 18, 2);
  const __m512i lo64 = _mm512_set_epi64(14, 6, 12, 4, 10, 2, 8, 0),
                hi64 = _mm512_set_epi64(15, 7, 13, 5, 11, 3, 9, 1);
  __m512i u[8];  // u[4h + c], 128-bit lane L: r[4h .. 4h+4)[4L + c]
  for (int h = 0; h < 2; h++) {
    const __m512i* q = r + 4 * h;
    const __m512i a0 = _mm512_permutex2var_epi32(q[0], lo32, q[1]),
                  a1 = _mm512_permutex2var_epi32(q[0], hi32, q[1]);
    const __m512i a2 = _mm512_permutex2var_epi32(q[2], lo32, q[3]),
                  a3 = _mm512_permutex2var_epi32(q[2], hi32, q[3]);
    u[4 * h] = _mm512_permutex2var_epi64(a0, lo64, a2);
    u[4 * h + 1] = _mm512_permutex2var_epi64(a0, hi64, a2);
    u[4 * h + 2] = _mm512_permutex2var_epi64(a1, lo64, a3);
    u[4 * h + 3] = _mm512_permutex2var_epi64(a1, hi64, a3);
  }
  const __m512i lanes01 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0),
                lanes23 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  for (int c = 0; c < 4; c++) {
    // o[0] = [p = c | p = 4 + c], o[1] = [p = 8 + c | p = 12 + c], 8 rows each
    const __m512i o[2] = {_mm512_permutex2var_epi64(u[c], lanes01, u[4 + c]),
                          _mm512_permutex2var_epi64(u[c], lanes23, u[4 + c])};
    for (int h = 0; h < 2; h++) {
      const i64 p0 = 8 * h + c, p1 = p0 + 4;  // the upper 8 lanes go to dst + p1 * ld through a masked store
      if (p0 < np) _mm512_mask_storeu_epi32(dst + p0 * ld, (__mmask16)0x00ff, o[h]);
      if (p1 < np) _mm512_mask_storeu_epi32(dst + p1 * ld - 8, (__mmask16)0xff00, o[h]);
    }
  }
}

struct Bf16Panels {
  using P = uint32_t;
  static constexpr i64 KS = 2;
  static constexpr bool kScaleTile = true;
  static constexpr bool kVecPack = true;  // packed by pack_a / pack_b below
  static_assert(MR == 8 && NR == 32, "the AVX-512 tile");
  // Strips t0 <= t < t1 of op(B)[k0 : k0+kc, jc : jc+nc] -> Bp + t * NR * kps, each [kp][NR] (pairs of k;
  // columns past nc are zero) followed by kps - kp zero rows (kps = 0: kp, no padding; the AMX GEMM pads
  // strips to whole 16-pair tiles).
  static void pack_b(bool transB, const float* B, i64 ldb, i64 k0, i64 kc, i64 jc, i64 nc, i64 t0, i64 t1,
                     P* Bp, i64 kps = 0) {
    const i64 kp = (kc + 1) / 2;
    if (kps == 0) kps = kp;
    for (i64 t = t0; t < t1; t++) std::memset(Bp + (t * kps + kp) * NR, 0, sizeof(P) * NR * (kps - kp));
    if (!transB) {  // B[k][j]: rows k and k+1, 16 columns at a time; row by row across all the strips
      for (i64 p = 0; p < kp; p++) {
        const float* s0 = B + (k0 + 2 * p) * ldb + jc;
        const bool has1 = 2 * p + 1 < kc;
        for (i64 t = t0; t < t1; t++) {
          P* d = Bp + (t * kps + p) * NR;
          for (i64 h = 0; h < NR; h += VW) {
            const i64 j = t * NR + h;
            const __mmask16 m = first_lanes(nc - j);
            const __m512 x0 = _mm512_maskz_loadu_ps(m, s0 + j),
                         x1 = _mm512_maskz_loadu_ps(has1 ? m : 0, s0 + ldb + j);
            _mm512_store_si512(d + h, bf16_pairs(x0, x1));
          }
        }
      }
    } else {  // B[j][k]: 16 pairs along each of 8 rows, transposed in registers; 4 groups of 8 columns
      for (i64 t = t0; t < t1; t++) {
        P* dst = Bp + t * NR * kps;
        const i64 j0 = jc + t * NR, nr = std::min<i64>(NR, nc - t * NR);
        for (i64 p0 = 0; p0 < kp; p0 += 16) {
          for (int g = 0; g < NR / 8; g++) {
            __m512i r[8];
            for (int i = 0; i < 8; i++) {
              const i64 j = 8 * g + i;
              r[i] = j < nr ? bf16_pairs_row(B + (j0 + j) * ldb + k0 + 2 * p0, kc - 2 * p0)
                            : _mm512_setzero_si512();
            }
            store_transposed_8x16(r, dst + p0 * NR + 8 * g, NR, std::min<i64>(16, kp - p0));
          }
        }
      }
    }
  }
  // Strips s0 <= st < s1 of op(A)[0 : M, k0 : k0+kc] -> Ap + st * MR * kp, each [kp][MR] (rows past M are
  // zero); alpha scales the tile instead.
  static void pack_a(bool transA, const float* A, i64 lda, i64 k0, i64 kc, i64 M, i64 s0, i64 s1, P* Ap) {
    const i64 kp = (kc + 1) / 2;
    if (!transA) {  // A[i][k]: 16 pairs along each of the 8 rows, transposed in registers
      for (i64 st = s0; st < s1; st++) {
        P* dst = Ap + st * MR * kp;
        const i64 i0 = st * MR, mr = std::min<i64>(MR, M - i0);
        for (i64 p0 = 0; p0 < kp; p0 += 16) {
          __m512i r[MR];
          for (int i = 0; i < MR; i++)
            r[i] = i < mr ? bf16_pairs_row(A + (i0 + i) * lda + k0 + 2 * p0, kc - 2 * p0)
                          : _mm512_setzero_si512();
          store_transposed_8x16(r, dst + p0 * MR, MR, std::min<i64>(16, kp - p0));
        }
      }
    } else {  // A[k][i]: rows k, k+1 (8 columns) give one packed step, two steps per vector; row by row
      for (i64 p = 0; p < kp; p += 2) {
        const float* s = A + (k0 + 2 * p) * lda;
        const i64 left = kc - 2 * p;  // rows k0+2p.. present: >= 1
        const __mmask16 last = p + 1 < kp ? (__mmask16)0xffff : (__mmask16)0x00ff;
        for (i64 st = s0; st < s1; st++) {
          const i64 i0 = st * MR;
          const __mmask16 m = first_lanes(std::min<i64>(MR, M - i0)), mh = (__mmask16)(m << 8);
          // lanes 0..8: step p (rows k, k+1 -> x0, x1); lanes 8..16: step p+1 (rows k+2, k+3), merged in by
          // loading 8 lanes early
          const __m512 x0 = _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(m, s + i0), left >= 3 ? mh : 0,
                                                 s + 2 * lda + i0 - 8);
          const __m512 x1 = _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(left >= 2 ? m : 0, s + lda + i0),
                                                 left >= 4 ? mh : 0, s + 3 * lda + i0 - 8);
          _mm512_mask_storeu_epi32(Ap + (st * kp + p) * MR, last, bf16_pairs(x0, x1));
        }
      }
    }
  }
  // Not inlined: inlined into blocked_gemm's OpenMP body, GCC 12 keeps b0/b1 on the stack and reloads
  // them before every dot product (twice the loads, ~1.8x slower); called, it keeps them in registers.
  __attribute__((noinline)) static void kernel(i64 kp, const P* __restrict Ap, const P* __restrict Bp,
                                               float* __restrict tile) {
    __m512 c[MR][2];
    for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (i64 p = 0; p < kp; p++) {
      const __m512bh b0 = (__m512bh)_mm512_load_ps(reinterpret_cast<const float*>(Bp + p * NR));
      const __m512bh b1 = (__m512bh)_mm512_load_ps(reinterpret_cast<const float*>(Bp + p * NR + VW));
      for (int i = 0; i < MR; i++) {
        const __m512bh a = (__m512bh)_mm512_set1_ps(reinterpret_cast<const float*>(Ap)[p * MR + i]);
        c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
        c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
      }
    }
    for (int i = 0; i < MR; i++) {
      _mm512_store_ps(tile + i * NR, c[i][0]);
      _mm512_store_ps(tile + i * NR + VW, c[i][1]);
    }
  }
};
#endif

// A float32 panel whose source rows run along k: dst[p * W + j] = scale * src[j * ld + p] for p < kc,
// j < n, zero for n <= j < W (W = NR for op(B) when transB, W = MR for op(A) when not transA).
// With AVX-512, 16 rows x 16 k at a time are loaded along the rows and transposed in registers
// (the products are the scalar loop's, bit for bit); returns false without it (the caller packs).
static bool pack_rows_transposed(float* dst, i64 W, const float* src, i64 ld, i64 n, i64 kc, float scale) {
#if defined(__AVX512F__)
  const __m512 sc = _mm512_set1_ps(scale);
  for (i64 j0 = 0; j0 < W; j0 += 16) {
    const i64 jn = std::min<i64>(16, W - j0);  // 16, or 8 for an MR = 8 panel (its upper half dropped)
    i64 p0 = 0;
    for (; p0 + 16 <= kc; p0 += 16) {
      __m512 in[16], out[16];
      for (i64 r = 0; r < 16; r++) {
        if (r >= jn || j0 + r >= n) {
          in[r] = _mm512_setzero_ps();
          continue;
        }
        const __m512 x = _mm512_loadu_ps(src + (j0 + r) * ld + p0);
        in[r] = scale == 1.0f ? x : _mm512_mul_ps(sc, x);
      }
      transpose16x16(in, out);
      for (i64 c = 0; c < 16; c++) {
        float* d = dst + (p0 + c) * W + j0;
        _mm512_mask_storeu_ps(d, jn == 16 ? (__mmask16)0xffff : (__mmask16)0x00ff, out[c]);
      }
    }
    for (; p0 < kc; p0++)
      for (i64 j = j0; j < j0 + jn; j++) dst[p0 * W + j] = j < n ? scale * src[j * ld + p0] : 0.0f;
  }
  return true;
#else
  (void)dst, (void)W, (void)src, (void)ld, (void)n, (void)kc, (void)scale;
  return false;
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

// One row of a finished tile into C: c[j] = beta * c[j] + scale * t[j] over j < n for a product's first
// K slice (beta 0 never reads c; beta 1 adds), c[j] += scale * t[j] for the slices after it.
static inline void merge_tile_row(float* c, const float* t, i64 n, bool firstSlice, float beta, float scale) {
  if (!firstSlice || beta == 1.0f) {
    for (i64 j = 0; j < n; j++) c[j] += scale * t[j];
  } else if (beta == 0.0f) {
    for (i64 j = 0; j < n; j++) c[j] = scale * t[j];
  } else {
    for (i64 j = 0; j < n; j++) c[j] = beta * c[j] + scale * t[j];
  }
}

// A GEMM's tasks over the rows [0, M) and columns [0, nc) of a block of C, shared by the threads of the
// enclosing parallel region (an orphaned omp for; its barrier ends the call): task(i0, i1, j0, j1) for
// MC rows x ntc columns, ntc <= NT a whole number of NR-column strips, as many tasks as make every
// thread's share equal where the row blocks alone do not (a prefill's 128 rows are one row block: N =
// 256 in NT columns was one task, and one thread idled).
template <class Task>
static void for_each_task(i64 M, i64 nc, const Task& task) {
  const i64 mBlocks = (M + MC - 1) / MC, nStrips = (nc + NR - 1) / NR, threads = omp_get_num_threads();
  i64 nTasks = (nc + NT - 1) / NT;
  while (nTasks < nStrips && (mBlocks * nTasks) % threads != 0) nTasks++;
  const i64 ntc = (nStrips + nTasks - 1) / nTasks * NR, nBlocks = (nc + ntc - 1) / ntc;
#pragma omp for schedule(static) collapse(2)
  for (i64 mb = 0; mb < mBlocks; mb++)
    for (i64 nb = 0; nb < nBlocks; nb++)
      task(mb * MC, std::min(M, (mb + 1) * MC), nb * ntc, std::min(nc, (nb + 1) * ntc));
}

// The built-in blocked GEMM over Panels' packed format (M, N, K > 0, alpha != 0). A K slice of
// kc <= KC * KS k is kp = ceil(kc / KS) packed steps; a pair's missing second k (odd kc) packs as zero.
template <class Panels>
static void blocked_gemm(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                         const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  using P = typename Panels::P;
  static_assert(sizeof(P) == sizeof(float), "packed elements are 4 bytes");
  constexpr i64 KS = Panels::KS;
  static thread_local Scratch sa, sb;
  const i64 mStrips = (M + MR - 1) / MR;
  constexpr i64 KCp = KC * KS;  // k per slice: KC packed steps, whichever the element
  const i64 kpMax = KC;
  P* Ap = reinterpret_cast<P*>(sa.get(size_t(mStrips * MR * kpMax)));
  P* Bp = reinterpret_cast<P*>(sb.get(size_t(std::min(N, NC) + NR) * kpMax));
  // op(A) read in place (no packed copy) when its strips are whole; alpha then scales the tile.
  bool inPlaceA = false;
  if constexpr (std::is_same_v<Panels, F32Panels>) inPlaceA = Panels::kInPlaceA && M % MR == 0;
  const float tileScale = Panels::kScaleTile || inPlaceA ? alpha : 1.0f;
  const bool par = !omp_in_parallel() && omp_get_max_threads() > 1 && M * N * K >= (i64)1 << 18;

#pragma omp parallel if (par)
  {
    alignas(64) float tile[MR * NR];
    for (i64 pc = 0; pc < K; pc += KCp) {
      const i64 kc = std::min(KCp, K - pc);
      const i64 kp = (kc + KS - 1) / KS;
      const bool first = pc == 0;
      for (i64 jc = 0; jc < N; jc += NC) {
        const i64 nc = std::min(NC, N - jc);
        const i64 nStrips = (nc + NR - 1) / NR;
        // op(A)'s K slice is packed once, for every jc block
        const i64 aStrips = jc == 0 && !inPlaceA ? mStrips : 0;
        if constexpr (Panels::kVecPack) {
          // Each thread packs one contiguous run of B strips and of A strips (the row-by-row layouts then
          // read long runs of each row).
          const i64 nt = omp_get_num_threads(), id = omp_get_thread_num();
          Panels::pack_b(transB, B, ldb, pc, kc, jc, nc, nStrips * id / nt, nStrips * (id + 1) / nt, Bp);
          Panels::pack_a(transA, A, lda, pc, kc, M, aStrips * id / nt, aStrips * (id + 1) / nt, Ap);
#pragma omp barrier
        } else {
#pragma omp for schedule(static)
          for (i64 t = 0; t < nStrips; t++) {  // pack op(B)[pc:pc+kc, jc+t*NR : +NR] -> Bp strip t
            P* dst = Bp + t * NR * kp;
            const i64 j0 = jc + t * NR, nr = std::min<i64>(NR, jc + nc - j0);
            if constexpr (KS == 1)
              if (transB && pack_rows_transposed(reinterpret_cast<float*>(dst), NR, B + j0 * ldb + pc, ldb,
                                                 nr, kc, 1.0f))
                continue;
            if constexpr (KS == 1)
              if (!transB && nr == NR) {  // a whole strip of rows along n: NR-float copies
                for (i64 p = 0; p < kp; p++)
                  std::memcpy(dst + p * NR, B + (pc + p) * ldb + j0, sizeof(float) * NR);
                continue;
              }
            for (i64 p = 0; p < kp; p++) {
              P* d = dst + p * NR;
              const i64 k = pc + p * KS;
              const bool has1 = KS == 2 && k + 1 < pc + kc;  // the pair's second k exists
              if (!transB) {
                const float* s0 = B + k * ldb + j0;
                if (has1)
                  for (i64 j = 0; j < nr; j++) d[j] = Panels::b(s0[j], s0[ldb + j]);
                else
                  for (i64 j = 0; j < nr; j++) d[j] = Panels::b(s0[j], 0.0f);
              } else {
                const float* s0 = B + j0 * ldb + k;
                if (has1)
                  for (i64 j = 0; j < nr; j++) d[j] = Panels::b(s0[j * ldb], s0[j * ldb + 1]);
                else
                  for (i64 j = 0; j < nr; j++) d[j] = Panels::b(s0[j * ldb], 0.0f);
              }
              for (i64 j = nr; j < NR; j++) d[j] = P(0);
            }
          }
#pragma omp for schedule(static)
          for (i64 st = 0; st < aStrips; st++) {  // pack op(A)[st*MR : +MR, pc:pc+kc] -> Ap strip st
            P* dst = Ap + st * MR * kp;
            const i64 i0 = st * MR, mr = std::min<i64>(MR, M - i0);
            if constexpr (KS == 1)
              if (!transA && pack_rows_transposed(reinterpret_cast<float*>(dst), MR, A + i0 * lda + pc, lda,
                                                  mr, kc, alpha))
                continue;
            if constexpr (KS == 1)
              if (transA && mr == MR) {  // a whole strip of columns along m: MR scaled floats per k
                for (i64 p = 0; p < kp; p++) {
                  const float* s0 = A + (pc + p) * lda + i0;
                  float* d = reinterpret_cast<float*>(dst) + p * MR;
                  for (int i = 0; i < MR; i++) d[i] = alpha * s0[i];
                }
                continue;
              }
            if (!transA) {
              for (i64 i = 0; i < mr; i++) {
                const float* src = A + (i0 + i) * lda + pc;
                for (i64 p = 0; p < kp; p++) {
                  const i64 k = p * KS;
                  dst[p * MR + i] = Panels::a(alpha, src[k], KS == 2 && k + 1 < kc ? src[k + 1] : 0.0f);
                }
              }
            } else {
              for (i64 p = 0; p < kp; p++) {
                const i64 k = pc + p * KS;
                const float* s0 = A + k * lda + i0;
                if (KS == 2 && k + 1 < pc + kc)
                  for (i64 i = 0; i < mr; i++) dst[p * MR + i] = Panels::a(alpha, s0[i], s0[lda + i]);
                else
                  for (i64 i = 0; i < mr; i++) dst[p * MR + i] = Panels::a(alpha, s0[i], 0.0f);
              }
            }
            for (i64 i = mr; i < MR; i++)
              for (i64 p = 0; p < kp; p++) dst[p * MR + i] = P(0);
          }
        }
        for_each_task(M, nc, [&](i64 iStart, i64 iEnd, i64 jStart, i64 jEnd) {
          for (i64 j0 = jStart; j0 < jEnd; j0 += NR) {
            const i64 nr = std::min<i64>(NR, jEnd - j0);
            const P* bp = Bp + (j0 / NR) * NR * kp;
            for (i64 i0 = iStart; i0 < iEnd; i0 += MR) {
              const i64 mr = std::min<i64>(MR, iEnd - i0);
              if (!inPlaceA) {
                Panels::kernel(kp, Ap + (i0 / MR) * MR * kp, bp, tile);
              } else if constexpr (std::is_same_v<Panels, F32Panels>) {  // inPlaceA is only ever set here
                if (transA)
                  Panels::template kernel_in_place<false>(kp, A + pc * lda + i0, lda, bp, tile);
                else
                  Panels::template kernel_in_place<true>(kp, A + i0 * lda + pc, lda, bp, tile);
              }
              for (i64 i = 0; i < mr; i++)
                merge_tile_row(C + (i0 + i) * ldc + jc + j0, tile + i * NR, nr, first, beta, tileScale);
            }
          }
        });
      }
    }
  }
}

#if defined(__AVX512F__)
// A Linear over a few rows (C [M, N] = alpha * A [M, K] @ W [N, K]ᵀ, MR <= M <= SM): a prefill's or a
// small batch's projections. blocked_gemm packs a K slice of W for all threads, then meets at a
// barrier, then multiplies; here W streams from memory once and the threads meet only once, after
// packing A: A (M x K, small) is packed first, shared, into MR-row groups [K][MR] (rows past M
// zero), so a tile's MR broadcasts per k come from one cache line instead of MR rows' (rows whose
// stride is a multiple of 4 KB land in one L1 set; docs/benchmarks.md, "The streamed GEMM", has
// what it gained). Then each thread owns a contiguous run of SNR-column strips, packs one strip's
// whole K itself (into L2), runs every row group over it slice by slice, and prefetches the next
// strip's rows of W meanwhile. Each C element sees the same products in the same order as in
// blocked_gemm (KC slices, fused multiply-adds along k, slices added to C in order, alpha scaling
// the tile), so the two agree bit for bit (the rows past the last multiple of MR too when alpha =
// 1: there blocked_gemm folds alpha into its packed A).
constexpr i64 SM = 256;
constexpr int SV = 3;         // vectors per strip row: an MR x SV*16 tile (24 accumulators)
constexpr i64 SNR = SV * VW;  // columns per strip
static bool streamed_gemm_applies(bool transA, bool transB, i64 M, i64 N, i64 K) {
  return !transA && transB && M >= MR && M <= SM && N >= 2 * SNR && K >= 64;
}

static void streamed_gemm(i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda, const float* B, i64 ldb,
                          float beta, float* C, i64 ldc) {
  const i64 nStrips = (N + SNR - 1) / SNR;
  const bool par = !omp_in_parallel() && omp_get_max_threads() > 1 && M * N * K >= (i64)1 << 18;
  const i64 rowLines = (K * 4 + 63) / 64;
  const i64 groups = (M + MR - 1) / MR;
  static thread_local Scratch sa;               // the caller's: shared by the threads below
  float* Ap = sa.get(size_t(groups * MR * K));  // group g: op(A)[g*MR : +MR, 0:K] as K steps of MR
#pragma omp parallel if (par)
  {
    static thread_local Scratch sb;
    float* strip = sb.get(size_t(K * SNR));  // op(B)[0:K, j0 : j0 + SNR] as K rows of SNR
    alignas(64) float tile[MR * SNR];
    const i64 nt = omp_get_num_threads(), id = omp_get_thread_num();
    for (i64 g = groups * id / nt, ge = groups * (id + 1) / nt; g < ge; g++)
      pack_rows_transposed(Ap + g * MR * K, MR, A + g * MR * lda, lda, std::min<i64>(MR, M - g * MR), K,
                           1.0f);
#pragma omp barrier
    const i64 s0 = nStrips * id / nt, s1 = nStrips * (id + 1) / nt;
    for (i64 st = s0; st < s1; st++) {
      const i64 j0 = st * SNR, nr = std::min<i64>(SNR, N - j0);
      pack_rows_transposed(strip, SNR, B + j0 * ldb, ldb, nr, K, 1.0f);
      // The next strip's rows of W, spread over this strip's micro-kernel calls.
      const i64 nextRows = st + 1 < s1 ? std::min<i64>(SNR, N - j0 - SNR) : 0;
      const i64 lines = nextRows * rowLines, calls = ((K + KC - 1) / KC) * groups;
      const i64 perCall = (lines + calls - 1) / calls;
      i64 line = 0;
      for (i64 pc = 0; pc < K; pc += KC) {
        const i64 kc = std::min(KC, K - pc);
        const float* bp = strip + pc * SNR;
        for (i64 i0 = 0; i0 < M; i0 += MR) {
          for (const i64 e = std::min(lines, line + perCall); line < e; line++)
            _mm_prefetch(reinterpret_cast<const char*>(B + (j0 + SNR + line / rowLines) * ldb +
                                                       (line % rowLines) * 16),
                         _MM_HINT_T1);
          tile_in_place<SV, false>(kc, Ap + i0 * K + pc * MR, MR, bp, tile);
          for (i64 i = 0, mr = std::min<i64>(MR, M - i0); i < mr; i++)
            merge_tile_row(C + (i0 + i) * ldc + j0, tile + i * SNR, nr, pc == 0, beta, alpha);
        }
      }
    }
  }
}
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512F__) && \
    defined(__linux__)
#define ATTNRES_AMX 1
// ------------------------------------------------------------------ AMX bfloat16 GEMM
// Where the CPU has AMX-BF16 (Intel Sapphire Rapids and later), the build was compiled for it and
// Linux grants the process the tile state (arch_prctl, Linux >= 5.16), the bfloat16 GEMM runs on the
// tile unit instead of the AVX-512 BF16 micro-kernel (set_gemm_amx / ATTNRES_AMX=0 turn it off).
//   op(B): Bf16Panels::pack_b's strips of NR = 32 columns, [kps][32] pairs, padded with zero pairs to
//          kps, a whole number of 16-pair chunks; a B tile is 16 pairs x 16 columns (row stride 128 B).
//   op(A): packed here in groups of 16 rows, [kps / 16][16 rows][16 pairs]: one contiguous A tile per
//          chunk (rows past M and pairs past kc are zero).
//   C: a 32 x 32 block is four 16 x 16 float32 tiles (tmm0..3) over two A tiles (tmm4, 5) and two B
//      tiles (tmm6, 7): per chunk (32 k) 4 tile loads and 4 TDPBF16PS.
// The operands are rounded exactly as in the AVX-512 BF16 GEMM (the same packing code); only the
// float32 order of additions differs (the tile unit adds a pair's two products in its own order), so
// results agree with it to float32 rounding, not bit for bit. Blocking and tasks are blocked_gemm's.
constexpr i64 AKC = 1024;  // k per K slice (512 pairs, 32 chunks)
constexpr i64 AMB = 32;    // rows of a C block: two A tiles
static_assert(MC % AMB == 0 && NR == 32, "AMX blocks must be whole tiles");

struct TileConfig {  // the LDTILECFG operand, palette 1
  uint8_t palette = 1, startRow = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

static bool amx_granted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// Every tile 16 rows x 64 bytes (tile state is per thread: each thread loads it before use).
static void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
}

// Groups g0 <= g < g1 of 16 rows of op(A)[:, k0 : k0+kc] -> Ap + g * 16 * kps, each [kps/16][16][16]
// (rows past M and pairs past kc are zero).
static void pack_a_amx(bool transA, const float* A, i64 lda, i64 k0, i64 kc, i64 M, i64 g0, i64 g1, i64 kps,
                       uint32_t* Ap) {
  const i64 kp = (kc + 1) / 2;
  // chunks outer: with A stored [K, M], the 32 rows of a chunk are read across every group before the
  // next (group by group, each read would stride down all kc rows: a cache and TLB miss per load)
  for (i64 p0 = 0; p0 < kps; p0 += 16) {
    for (i64 g = g0; g < g1; g++) {
      const i64 i0 = g * 16, mr = std::min<i64>(16, M - i0);
      uint32_t* d = Ap + g * 16 * kps + p0 * 16;
      if (p0 >= kp || mr <= 0) {
        std::memset(d, 0, sizeof(uint32_t) * 256);
      } else if (!transA) {  // A[i][k]: a row's 16 pairs are one tile row
        for (i64 i = 0; i < 16; i++)
          _mm512_store_si512(d + i * 16, i < mr
                                             ? bf16_pairs_row(A + (i0 + i) * lda + k0 + 2 * p0, kc - 2 * p0)
                                             : _mm512_setzero_si512());
      } else {  // A[k][i]: rows k, k+1 give one pair for 16 rows; 16 pairs transposed in registers
        const __mmask16 m = first_lanes(mr);
        __m512i r[16];
        for (i64 q = 0; q < 16; q++) {
          const i64 k = 2 * (p0 + q);
          const float* src = A + (k0 + k) * lda + i0;
          r[q] = bf16_pairs(_mm512_maskz_loadu_ps(k < kc ? m : 0, src),
                            _mm512_maskz_loadu_ps(k + 1 < kc ? m : 0, src + lda));
        }
        store_transposed_8x16(r, d, 16, 16);
        store_transposed_8x16(r + 8, d + 8, 16, 16);
      }
    }
  }
}

// A 32 x 32 block of C, out[32][ldo], from A rows (groups a0, a1) x one B strip over nq chunks: added to
// what out holds (acc) or written over it.
static inline void amx_block(i64 nq, const uint32_t* a0, const uint32_t* a1, const uint32_t* b, float* out,
                             i64 ldo, bool acc) {
  const i64 so = ldo * 4;
  if (acc) {
    _tile_loadd(0, out, so);
    _tile_loadd(1, out + 16, so);
    _tile_loadd(2, out + 16 * ldo, so);
    _tile_loadd(3, out + 16 * ldo + 16, so);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (i64 q = 0; q < nq; q++) {
    _tile_loadd(4, a0 + q * 256, 64);
    _tile_loadd(6, b + q * 16 * NR, NR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b + q * 16 * NR + 16, NR * 4);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + q * 256, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, so);
  _tile_stored(1, out + 16, so);
  _tile_stored(2, out + 16 * ldo, so);
  _tile_stored(3, out + 16 * ldo + 16, so);
}

// The AMX GEMM (M, N, K > 0, alpha != 0): blocked_gemm's loops over K slices of AKC k, NC-column blocks
// and balanced tasks, with AMX blocks of 32 x 32.
static void amx_gemm(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                     const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  static thread_local Scratch sa, sb;
  const i64 mBlocks = (M + AMB - 1) / AMB, kpsMax = AKC / 2;
  uint32_t* Ap = reinterpret_cast<uint32_t*>(sa.get(size_t(mBlocks * AMB * kpsMax)));
  uint32_t* Bp = reinterpret_cast<uint32_t*>(sb.get(size_t(std::min(N, NC) + NR) * kpsMax));
  const bool par = !omp_in_parallel() && omp_get_max_threads() > 1 && M * N * K >= (i64)1 << 20;
  // alpha 1, beta 0 or 1 (a Linear, a gradient accumulated): whole blocks accumulate in C itself
  const bool direct = alpha == 1.0f && (beta == 0.0f || beta == 1.0f);

#pragma omp parallel if (par)
  {
    amx_configure();
    alignas(64) float tile[AMB * NR];
    const i64 nt = omp_get_num_threads(), id = omp_get_thread_num();
    for (i64 pc = 0; pc < K; pc += AKC) {
      const i64 kc = std::min(AKC, K - pc), kps = ((kc + 1) / 2 + 15) / 16 * 16;
      const bool first = pc == 0;
      for (i64 jc = 0; jc < N; jc += NC) {
        const i64 nc = std::min(NC, N - jc), nStrips = (nc + NR - 1) / NR;
        const i64 aGroups = jc == 0 ? 2 * mBlocks : 0;  // op(A)'s K slice is packed once, for every jc
        Bf16Panels::pack_b(transB, B, ldb, pc, kc, jc, nc, nStrips * id / nt, nStrips * (id + 1) / nt, Bp,
                           kps);
        pack_a_amx(transA, A, lda, pc, kc, M, aGroups * id / nt, aGroups * (id + 1) / nt, kps, Ap);
#pragma omp barrier
        // row blocks outer: C is written 32 rows x ntc columns at a time (down a column of blocks, every
        // 32 x 32 block lands on 32 far-apart rows: 3-5x slower writes)
        for_each_task(M, nc, [&](i64 iStart, i64 iEnd, i64 jStart, i64 jEnd) {
          for (i64 i0 = iStart; i0 < iEnd; i0 += AMB) {
            const uint32_t* a0 = Ap + i0 * kps;
            const i64 mr = std::min<i64>(AMB, iEnd - i0);
            for (i64 j0 = jStart; j0 < jEnd; j0 += NR) {
              const i64 nr = std::min<i64>(NR, jEnd - j0);
              const uint32_t* bp = Bp + (j0 / NR) * NR * kps;
              float* c = C + i0 * ldc + jc + j0;
              if (direct && mr == AMB && nr == NR) {  // whole block, C += or = the sum: tiles to and from C
                amx_block(kps / 16, a0, a0 + 16 * kps, bp, c, ldc, !first || beta == 1.0f);
                continue;
              }
              amx_block(kps / 16, a0, a0 + 16 * kps, bp, tile, NR, false);
              for (i64 i = 0; i < mr; i++) merge_tile_row(c + i * ldc, tile + i * NR, nr, first, beta, alpha);
            }
          }
        });
      }
    }
    _tile_release();
  }
}
#endif

// ------------------------------------------------------------------ which GEMM runs

[[maybe_unused]] static bool blas_runs_avx512() {
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
// ATTNRES_GEMM's choice: "blas" or "builtin", or "" when unset or anything else.
static std::string env_gemm() {
  const char* env = std::getenv("ATTNRES_GEMM");
  const std::string v = env != nullptr ? env : "";
  return v == "blas" || v == "builtin" ? v : "";
}

static GemmKind default_gemm(bool readEnv = true) {
#if defined(ATTNRES_HAVE_CBLAS)
  const std::string env = readEnv ? env_gemm() : "";
  if (env == "builtin") return GemmKind::Builtin;
  if (env == "blas") return GemmKind::Blas;
#if defined(__AVX512F__)
  return blas_runs_avx512() ? GemmKind::Blas : GemmKind::Builtin;
#else
  return GemmKind::Blas;
#endif
#else
  (void)readEnv;
  return GemmKind::Builtin;
#endif
}

static GemmKind& current_gemm() {
  static GemmKind kind = default_gemm();
  return kind;
}

// Whether the GEMM was chosen (ATTNRES_GEMM, set_gemm_kind) rather than defaulted: a chosen BLAS runs
// every product; a defaulted one leaves the Linears over few rows to streamed_gemm.
static bool& gemm_chosen() {
  static bool chosen = !env_gemm().empty();
  return chosen;
}

bool gemm_streamed() {
#if defined(__AVX512F__)
  return current_gemm() == GemmKind::Builtin || !gemm_chosen();
#else
  return false;
#endif
}

GemmKind gemm_kind() { return current_gemm(); }

bool set_gemm_kind(GemmKind k) {
#if !defined(ATTNRES_HAVE_CBLAS)
  if (k == GemmKind::Blas) return false;
#endif
  current_gemm() = k;
  gemm_chosen() = true;
  return true;
}

void reset_gemm_kind() {
  current_gemm() = default_gemm(false);
  gemm_chosen() = false;
}

// bfloat16 GEMM operands (set_gemm_bf16): every sgemm with more than one row rounds op(A) and op(B)
// to bfloat16 and accumulates in float32 with the built-in GEMM, whichever GEMM is chosen.
static bool g_bf16 = false;

bool gemm_bf16_available() {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

bool set_gemm_bf16(bool on) {
  if (on && !gemm_bf16_available()) return false;
  g_bf16 = on;
  return true;
}

bool gemm_bf16() { return g_bf16; }

// The bfloat16 GEMM on AMX tiles: on by default where available, unless ATTNRES_AMX=0.
bool gemm_amx_available() {
#if defined(ATTNRES_AMX)
  return amx_granted();
#else
  return false;
#endif
}

// Whether AMX is wanted (ATTNRES_AMX, set_gemm_amx); the tile state is requested from the OS only when
// first asked whether AMX runs, not when the addon loads.
static bool g_amx_wanted = [] {
  const char* e = std::getenv("ATTNRES_AMX");
  return !(e != nullptr && std::string(e) == "0");
}();

bool set_gemm_amx(bool on) {
  if (on && !gemm_amx_available()) return false;
  g_amx_wanted = on;
  return true;
}

bool gemm_amx() { return g_amx_wanted && gemm_amx_available(); }

const char* gemm_name() {
  if (current_gemm() == GemmKind::Builtin) return "builtin";
  return blas_name();
}

// A long-K product with few output blocks (a weight gradient: C [M, N] over K = tokens). Split over output
// blocks, each thread would get one or two and wait at a barrier after every K slice; instead thread t
// multiplies its own contiguous share of K alone (into C for t = 0, into scratch for the others), and the
// shares are added in thread order, so a fixed thread count gives fixed results. Returns false when the
// product does not have that shape.
using GemmFn = void (*)(bool, bool, i64, i64, i64, float, const float*, i64, const float*, i64, float, float*,
                        i64);
static bool split_k_gemm(GemmFn gemm, bool transA, bool transB, i64 M, i64 N, i64 K, float alpha,
                         const float* A, i64 lda, const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  const int nt = omp_get_max_threads();
  const i64 blocks = ((M + MC - 1) / MC) * ((N + NT - 1) / NT);
  if (nt < 2 || omp_in_parallel() || K < 2 * KC * nt || K < 2 * std::max(M, N) || blocks >= 4 * nt)
    return false;
  static thread_local Scratch parts;  // nt - 1 partial products [M, N]
  float* scratch = parts.get(size_t((nt - 1) * M * N));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    // shares on 16-k boundaries (whole bfloat16 pairs)
    const i64 k0 = (K * t / n) & ~(i64)15, k1 = t + 1 == n ? K : (K * (t + 1) / n) & ~(i64)15;
    if (k1 > k0) {
      const float* a = transA ? A + k0 * lda : A + k0;
      const float* b = transB ? B + k0 : B + k0 * ldb;
      if (t == 0)
        gemm(transA, transB, M, N, k1 - k0, alpha, a, lda, b, ldb, beta, C, ldc);
      else
        gemm(transA, transB, M, N, k1 - k0, alpha, a, lda, b, ldb, 0.0f, scratch + (t - 1) * M * N, N);
    } else if (t == 0) {
      scale_c(M, N, beta, C, ldc);
    } else {
      std::memset(scratch + (t - 1) * M * N, 0, sizeof(float) * M * N);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (i64 i = 0; i < M; i++)
      for (int u = 1; u < n; u++) {
        const float* s = scratch + ((u - 1) * M + i) * N;
        float* c = C + i * ldc;
        for (i64 j = 0; j < N; j++) c[j] += s[j];
      }
  }
  return true;
}

void sgemm(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
           const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (sgemm_as_gemv(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C)) return;
#if defined(__AVX512F__)
  if (!g_bf16 && streamed_gemm_applies(transA, transB, M, N, K) && gemm_streamed()) {
    streamed_gemm(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
#if defined(ATTNRES_HAVE_CBLAS)
  if (current_gemm() == GemmKind::Blas && !g_bf16) {
    blas_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  if (g_bf16) {
    GemmFn g = blocked_gemm<Bf16Panels>;
#if defined(ATTNRES_AMX)
    if (gemm_amx()) g = amx_gemm;
#endif
    if (!split_k_gemm(g, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
      g(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  if (!split_k_gemm(blocked_gemm<F32Panels>, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
    blocked_gemm<F32Panels>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
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
