// kernels.h: the compute kernels of the attnres native backend, float32 only, behind plain C++ calls.
//
// Everything here takes raw pointers that addon.cc has already validated (extents fit the buffers,
// sizes non-negative, ids in range). Layouts are row-major; shapes are written [dim, ...] as in
// src/backend/backend.ts, which is the binding contract (writes vs accumulates, aliasing rules).
// Threading is OpenMP; kernels stay single-threaded below a size threshold (kParallelMin work items).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace attnres {

using i64 = int64_t;

// Work (in elements or flops/8) below which a kernel runs single-threaded.
constexpr i64 kParallelMin = 1 << 15;

#if defined(__AVX512F__)
// Mask of the first n (clamped to [0, 16]) of 16 lanes (gemm.cc, attention.cc, depth_route.cc).
inline __mmask16 first_lanes(i64 n) {
  return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

// Horizontal sum of 16 lanes (GCC 12's _mm512_reduce_add_ps warns about an uninitialized temporary).
inline float hsum(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  __m128 q = _mm_add_ps(_mm_add_ps(_mm_load_ps(t), _mm_load_ps(t + 4)),
                        _mm_add_ps(_mm_load_ps(t + 8), _mm_load_ps(t + 12)));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
  return _mm_cvtss_f32(q);
}
#endif

#if defined(__AVX512F__)
// GCC 12 reports the unpack/shuffle intrinsics' internal "undefined" pass-through vector as maybe
// uninitialized once inlined here (a false positive: no lane of it is read).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// out[c] = column c of the 16 x 16 block (gemm.cc packing, attention.cc key tiles) whose row r is in[r]:
// 32-bit, then 64-bit interleaves inside 128-bit lanes, then two rounds of lane shuffles.
inline void transpose16x16(const __m512 in[16], __m512 out[16]) {
  const auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  const auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  __m512 u[4][4];  // u[g][c]: lane L holds rows 4g .. 4g+3 of column 4L + c
  for (int g = 0; g < 4; g++) {
    const __m512 t0 = _mm512_unpacklo_ps(in[4 * g], in[4 * g + 1]);
    const __m512 t1 = _mm512_unpackhi_ps(in[4 * g], in[4 * g + 1]);
    const __m512 t2 = _mm512_unpacklo_ps(in[4 * g + 2], in[4 * g + 3]);
    const __m512 t3 = _mm512_unpackhi_ps(in[4 * g + 2], in[4 * g + 3]);
    u[g][0] = lo(t0, t2);
    u[g][1] = hi(t0, t2);
    u[g][2] = lo(t1, t3);
    u[g][3] = hi(t1, t3);
  }
  for (int c = 0; c < 4; c++) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[0][c], u[1][c], 0x88),
                 v1 = _mm512_shuffle_f32x4(u[0][c], u[1][c], 0xdd);
    const __m512 v2 = _mm512_shuffle_f32x4(u[2][c], u[3][c], 0x88),
                 v3 = _mm512_shuffle_f32x4(u[2][c], u[3][c], 0xdd);
    out[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    out[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
    out[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    out[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
  }
}
#pragma GCC diagnostic pop
#endif

// exp(x) for softmax numerators (attention.cc, decode.cc), written to auto-vectorize (Cephes polynomial, ~2
// ulp). NaN -> NaN, x > 88.72 -> +inf, x < -86.6 -> 0 (results below ~2.6e-38 are flushed; irrelevant next to
// the row maximum, whose term is 1).
inline float exp_fast(float x) {
  const float hi = 88.7228f, lo = -86.6f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  // Round to nearest with the 1.5*2^23 trick (no libm call, so the loop vectorizes); |n| < 2^22.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 126) << 23;  // 2^(n-1); n in [-125, 128]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float y = p * scale * 2.0f;
  y = x < lo ? 0.0f : y;
  y = x > hi ? INFINITY : y;
  return x != x ? x : y;
}

// Prefetches the floats [p, p + n) into L2, a 64-byte line at a time (attention.cc, depth_route.cc: the
// next task's or block's inputs, which in L1 would push out the current one's).
inline void prefetch_l2(const float* p, i64 n) {
  for (i64 c = 0; c < n; c += 16) __builtin_prefetch(p + c, 0, 2);
}

// ------------------------------------------------------------------ threads / info (gemm.cc)
int num_threads();
void set_num_threads(int n);
const char* blas_name();  // "openblas" | "cblas" | "builtin"
const char* simd_name();  // widest vector ISA compiled in
// Which GEMM sgemm runs: the linked BLAS or the built-in blocked GEMM (gemm.cc explains the default).
enum class GemmKind { Blas, Builtin };
GemmKind gemm_kind();
bool set_gemm_kind(GemmKind k);  // false (unchanged) when asking for Blas in a build without one
void reset_gemm_kind();          // the default, as if ATTNRES_GEMM were unset
const char* gemm_name();         // "builtin" | "openblas" | "cblas"
// Whether a Linear over few rows (8 <= M <= 256, B transposed) runs the built-in streamed GEMM (gemm.cc):
// in an AVX-512 build, unless a BLAS was chosen by ATTNRES_GEMM=blas or set_gemm_kind.
bool gemm_streamed();
// bfloat16 operands for every GEMM of more than one row (float32 accumulation, built-in GEMM with the
// AVX-512 BF16 dot product). Only in builds for a CPU with AVX-512 BF16: set returns false elsewhere.
bool gemm_bf16_available();
bool set_gemm_bf16(bool on);
bool gemm_bf16();
// bfloat16 GEMMs on AMX tiles (a CPU with AMX-BF16, a build for it, the tile state granted by the OS):
// on by default where available, unless ATTNRES_AMX=0; set_gemm_amx(false) goes back to AVX-512 BF16.
bool gemm_amx_available();
bool set_gemm_amx(bool on);
bool gemm_amx();
const char* blas_core();  // OpenBLAS's kernel set for this CPU ("SkylakeX", "Haswell"), "" otherwise

// ------------------------------------------------------------------ GEMM (gemm.cc)
// One row-major C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C. beta == 0 never reads C.
// Multi-threaded when called outside a parallel region; single-threaded inside one.
void sgemm(bool transA, bool transB, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
           const float* B, i64 ldb, float beta, float* C, i64 ldc);
// The batched strided form of Backend.gemm (offsets already applied to A, B, C).
void sgemm_batched(bool transA, bool transB, i64 batch, i64 M, i64 N, i64 K, float alpha, const float* A,
                   i64 lda, i64 strideA, const float* B, i64 ldb, i64 strideB, float beta, float* C, i64 ldc,
                   i64 strideC);

// ------------------------------------------------------------------ elementwise (kernels_elementwise.cc)
enum class UnaryOp { Neg, Exp, Log, Sqrt, Rsqrt, Sigmoid, Silu, Square, Abs };
enum class BinaryOp { Add, Sub, Mul, Div, Max, Min, Eq };
enum class ReduceOp { Sum, Max };
constexpr int kMaxRank = 8;

void unary(UnaryOp op, const float* x, float* out, i64 n);
void unary_grad(UnaryOp op, const float* x, const float* y, const float* gy, float* gx, i64 n);
// out contiguous [shape]; a/b read at sum_k i_k*stride_k (strides may be 0 or negative).
void binary(BinaryOp op, const float* a, const i64* aStrides, const float* b, const i64* bStrides, float* out,
            const i64* shape, int rank);
// x contiguous [shape]; reduced[k] marks reduced axes; out contiguous, size 1 along reduced axes.
void reduce(ReduceOp op, const float* x, const i64* shape, const bool* reduced, int rank, float* out);
// dst[sum i_k*dstStrides[k]] (= or +=) src[sum i_k*srcStrides[k]] over [shape]; offsets applied.
void copy_strided(const float* src, const i64* srcStrides, float* dst, const i64* dstStrides,
                  const i64* shape, int rank, bool accumulate);
void fill(float* out, float value, i64 n);
void axpy(i64 n, float alpha, const float* x, float* y);
double sum_squares(const float* x, i64 n);

// ------------------------------------------------------------------ model kernels (kernels_model.cc)
// weight [vocab, d], ids [n], out [n, d]
void embedding(const float* weight, const int32_t* ids, float* out, i64 n, i64 d);
// gweight [vocab, d] += scatter of gout [n, d] by ids [n]
void embedding_backward(const float* gout, const int32_t* ids, float* gweight, i64 n, i64 d);
// x, out [rows, d]; w [d] or null; rstd [rows]
void rmsnorm(const float* x, const float* w, float* out, float* rstd, i64 rows, i64 d, float eps);
// gx [rows, d]; gw [d] or null (written when w and gw are both non-null)
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* gy, float* gx,
                      float* gw, i64 rows, i64 d);
// x, out [B, T, H, D]; cos, sin [maxPos, D/2]
void rope(const float* x, float* out, const float* cos, const float* sin, i64 B, i64 T, i64 H, i64 D,
          i64 posOffset, bool inverse);
// logits [rows, V]; targets [rows]; loss, lse [rows]
void cross_entropy(const float* logits, const int32_t* targets, float* loss, float* lse, i64 rows, i64 V,
                   i64 ignoreIndex);
// glogits [rows, V]; gloss [rows]
void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const float* gloss,
                            float* glogits, i64 rows, i64 V, i64 ignoreIndex);
void swiglu(const float* gate, const float* up, float* out, i64 n);
void swiglu_backward(const float* gate, const float* up, const float* gout, float* ggate, float* gup, i64 n);

// ------------------------------------------------------------------ ddl-expanded state (ddl.cc)
void ddl_read(const float* X, const float* C, float* x, i64 rows, i64 d, i64 dv);
void ddl_read_backward(const float* X, const float* C, const float* gx, float* gX, float* gC, i64 rows, i64 d,
                       i64 dv);
// C, x: the next read's mix [d, dv] and its output [rows, d], both null when there is none
void ddl_update(const float* X, const float* k, const float* beta, const float* v, float* Y, const float* C,
                float* x, i64 rows, i64 d, i64 dv);
void ddl_update_backward(const float* X, const float* k, const float* beta, const float* v, const float* gY,
                         float* gX, bool accumulate, float* gk, float* gbeta, float* gv, i64 rows, i64 d,
                         i64 dv);
// ddl's scalar step: x, u, c, y [rows, d]; wb, wv [d]; bb, bv [1]; beta [rows]; aux [rows, 3]
void ddl_step(const float* x, const float* u, const float* c, const float* wb, const float* bb,
              const float* wv, const float* bv, float* y, float* beta, float* aux, i64 rows, i64 d,
              float eps2, bool vFromStream);
// gx, gu, gc [rows, d] or null; accumulate: bits 1, 2, 4 for gx, gu, gc; gwb, gwv [d], gbb, gbv [1] written
void ddl_step_backward(const float* x, const float* u, const float* c, const float* wb, const float* wv,
                       const float* beta, const float* aux, const float* gy, float* gx, float* gu, float* gc,
                       int accumulate, float* gwb, float* gbb, float* gwv, float* gbv, i64 rows, i64 d,
                       bool vFromStream);

// ------------------------------------------------------------------ depth routing (depth_route.cc)
// src: N pointers to [rows, d]; w, g [d]; out [rows, d]; alpha, rstd [rows, N]
// base [rows, d] or null: out = base + sum_i alpha_i s_i
// next (or null): the next routed call (query next->w, gain next->g) reads these N sources and more;
// written for it: logits l2, rstd [rows, N], stats [rows, 2] = (m2 = max_i l2_i, z2 = sum_i e_i) and
// acc [rows, d] = sum_i e_i s_i, e_i = exp(l2_i - m2).  prior (or null; never with next): such a
// summary of src[0 .. n) for this call, whose sources are read from n on (out, alpha, rstd as without).
struct RouteNext {
  const float* w;
  const float* g;
  float* acc;
  float* stats;
  float* logits;
  float* rstd;
};
struct RoutePrior {
  const float* acc;
  const float* stats;
  const float* logits;
  const float* rstd;
  i64 n;
};
void depth_route(const float* const* src, i64 N, const float* w, const float* g, const float* base,
                 float* out, float* alpha, float* rstd, i64 rows, i64 d, float eps,
                 const RouteNext* next = nullptr, const RoutePrior* prior = nullptr);
// gsrc: N pointers to [rows, d] or null (skipped); gw, gg [d] written
void depth_route_backward(const float* const* src, i64 N, const float* w, const float* g, const float* alpha,
                          const float* rstd, const float* gout, float* const* gsrc, float* gw, float* gg,
                          i64 rows, i64 d);
// the deferred backward of one source s [rows, d] for K calls; per call k: gout [rows, d], alpha and rstd
// [rows, n[k]] (s is column col[k]), cv [rows] = gout . out, w, g [d], p [d] (+=); gs [rows, d] or null
// init: gs's starting value when it is written (null: zero); needC[k]: compute cv[k] = gout_k . (outs[k] -
// bases[k]) (bases[k] may be null) per row before using it. With s2 (another source that every one of the
// K calls reads, at column col2[k]; then gs is non-null): gs2 [rows, d] is written with s2's share of the
// same K calls in the same pass, each gout row read once for both sources.
void depth_route_source_backward(const float* s, float* gs, bool accumulate, const float* init, i64 K,
                                 const float* const* gout, const float* const* alpha,
                                 const float* const* rstd, const i64* col, const i64* n, const bool* needC,
                                 float* const* cv, const float* const* outs, const float* const* bases,
                                 const float* const* w, const float* const* g, float* const* p, i64 rows,
                                 i64 d, const float* s2 = nullptr, float* gs2 = nullptr,
                                 const i64* col2 = nullptr);
// out[r] = a[r] . b[r]; a, b [rows, d], out [rows]
void row_dot(const float* a, const float* b, float* out, i64 rows, i64 d);

// ------------------------------------------------------------------ attention (attention.cc)
// q, out [B, Tq, Hq, D]; k, v [B, Tk, Hkv, D]; lse [B, Hq, Tq]
void attention(const float* q, const float* k, const float* v, float* out, float* lse, i64 B, i64 Tq, i64 Tk,
               i64 Hq, i64 Hkv, i64 D, float scale, bool causal);
// gq [B, Tq, Hq, D]; gk, gv [B, Tk, Hkv, D]
void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* lse,
                        const float* gout, float* gq, float* gk, float* gv, i64 B, i64 Tq, i64 Tk, i64 Hq,
                        i64 Hkv, i64 D, float scale, bool causal);

// ------------------------------------------------------------------ optimizer (optim.cc)
void adamw(float* p, const float* g, float* m, float* v, i64 n, double lr, double beta1, double beta2,
           double eps, double wd, double bc1, double bc2);

// ------------------------------------------------------------------ batch-1 decoding (decode.cc)
// y[N] = alpha * W[N, K] x[K] + beta * y (W row stride ldw); beta == 0 never reads y.
void gemv_rows(const float* W, i64 ldw, const float* x, float* y, i64 N, i64 K, float alpha, float beta);
// y[i] [N[i]] = W[i] [N[i], K] x [K] for i < count (rows of all matrices in one parallel region).
void gemv_many(const float* x, i64 K, int count, const float* const* W, float* const* y, const i64* N);
// out [N] = silu(Wg [N, K] x) * (Wu [N, K] x)
void gemv_swiglu(const float* x, const float* Wg, const float* Wu, float* out, i64 N, i64 K);
// Read bandwidth of all threads streaming their slices of one buffer of `bytes` (0: the default,
// at least twice the last-level cache and 1 GiB): `repeats` samples of about `seconds` each, GB/s
// into samples[0, repeats). Returns the buffer's size in bytes (0 when it cannot be allocated).
size_t read_bandwidth(double seconds, int repeats, size_t bytes, double* samples);
// One token's attention step over a KV cache (B = 1): q [Hq, D], k, v [Hkv, D]; qw, kw [D] or null
// (per-head RMSNorm gains); cos, sin [D/2] (the rotary row of position pos); kc, vc [>= pos + 1, Hkv, D]
// get row pos; out [Hq, D] = softmax(scale q'·K'[0..pos]) V[0..pos] (q', k' normed and rotated).
void decode_attention(const float* q, const float* k, const float* v, const float* qw, const float* kw,
                      float eps, const float* cos, const float* sin, float* kc, float* vc, i64 pos,
                      float* out, i64 Hq, i64 Hkv, i64 D, float scale);
// One row's depth routing plus the stream: src [N, d] (rows are sources), w, g, h, out [d]:
// out = h + gate * sum_i softmax_i((w o g) . src_i * rstd_i) src_i, rstd_i = (mean src_i^2 + eps)^-1/2.
void decode_route(const float* src, i64 N, const float* w, const float* g, const float* h, float gate,
                  float* out, i64 d, float eps);

// ------------------------------------------------------------------ peak (peak.cc)
// Measured FMA throughput summed over all threads, GFLOP/s, after running about `seconds`.
double peak_gflops(double seconds);

}  // namespace attnres
