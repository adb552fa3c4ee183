// kernels_elementwise.cc: elementwise ops, broadcasting binary ops, reductions, strided copy, fill,
// axpy, sumSquares. Float32 in and out; sumSquares and contiguous sums accumulate in double.
//
//   unary        x [n] -> out [n]                         (out may alias x)
//   unary_grad   x, y, gy [n] -> gx [n]                   (gx may alias any input)
//   binary       a, b read through strides over [shape] -> out contiguous [shape], rank <= 8.
//                Fast paths: all contiguous (flat loop), b or a a scalar, row broadcast [rows, d] op [d];
//                otherwise a strided odometer over the outer dims with an innermost loop.
//   reduce       x contiguous [shape] -> out [shape with reduced axes = 1]; adjacent axes of the same
//                kind are merged, then either the innermost axis is reduced (row reductions) or kept
//                (column reductions into a per-task accumulator row).
//   copy         dst[strides] (= | +=) src[strides] over [shape]; parallel only when dst addresses are
//                provably distinct.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"

namespace attnres {

// exp_fast (kernels.h, ~2 ulp) rather than std::exp: a libm call per element keeps a loop scalar.
static inline float sigmoidf(float x) { return 1.0f / (1.0f + exp_fast(-x)); }
// NaN-propagating max / min (torch.maximum semantics).
static inline float fmaxp(float a, float b) { return (a != a || a > b) ? a : b; }
static inline float fminp(float a, float b) { return (a != a || a < b) ? a : b; }

// ------------------------------------------------------------------ unary

template <typename F>
static void map1(const float* x, float* out, i64 n, F f) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (i64 i = 0; i < n; i++) out[i] = f(x[i]);
}

void unary(UnaryOp op, const float* x, float* out, i64 n) {
  switch (op) {
    case UnaryOp::Neg:
      return map1(x, out, n, [](float v) { return -v; });
    case UnaryOp::Exp:
      return map1(x, out, n, [](float v) { return exp_fast(v); });
    case UnaryOp::Log:
      return map1(x, out, n, [](float v) { return std::log(v); });
    case UnaryOp::Sqrt:
      return map1(x, out, n, [](float v) { return std::sqrt(v); });
    case UnaryOp::Rsqrt:
      return map1(x, out, n, [](float v) { return 1.0f / std::sqrt(v); });
    case UnaryOp::Sigmoid:
      return map1(x, out, n, [](float v) { return sigmoidf(v); });
    case UnaryOp::Silu:
      return map1(x, out, n, [](float v) { return v * sigmoidf(v); });
    case UnaryOp::Square:
      return map1(x, out, n, [](float v) { return v * v; });
    case UnaryOp::Abs:
      return map1(x, out, n, [](float v) { return std::fabs(v); });
  }
}

template <typename F>
static void map3(const float* x, const float* y, const float* gy, float* gx, i64 n, F f) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (i64 i = 0; i < n; i++) gx[i] = f(x[i], y[i], gy[i]);
}

void unary_grad(UnaryOp op, const float* x, const float* y, const float* gy, float* gx, i64 n) {
  switch (op) {
    case UnaryOp::Neg:
      return map3(x, y, gy, gx, n, [](float, float, float g) { return -g; });
    case UnaryOp::Exp:
      return map3(x, y, gy, gx, n, [](float, float yv, float g) { return g * yv; });
    case UnaryOp::Log:
      return map3(x, y, gy, gx, n, [](float xv, float, float g) { return g / xv; });
    case UnaryOp::Sqrt:
      return map3(x, y, gy, gx, n, [](float, float yv, float g) { return g * 0.5f / yv; });
    case UnaryOp::Rsqrt:  // d/dx x^-1/2 = -1/2 y^3
      return map3(x, y, gy, gx, n, [](float, float yv, float g) { return -0.5f * g * yv * yv * yv; });
    case UnaryOp::Sigmoid:
      return map3(x, y, gy, gx, n, [](float, float yv, float g) { return g * yv * (1.0f - yv); });
    case UnaryOp::Silu:
      return map3(x, y, gy, gx, n, [](float xv, float, float g) {
        const float s = sigmoidf(xv);
        return g * s * (1.0f + xv * (1.0f - s));
      });
    case UnaryOp::Square:
      return map3(x, y, gy, gx, n, [](float xv, float, float g) { return 2.0f * xv * g; });
    case UnaryOp::Abs:
      return map3(x, y, gy, gx, n, [](float xv, float, float g) {
        return xv > 0.0f ? g : (xv < 0.0f ? -g : (xv == 0.0f ? 0.0f * g : xv));
      });
  }
}

// ------------------------------------------------------------------ binary

// Merges adjacent dims that are contiguous with each other in every operand; drops size-1 dims.
// Returns the new rank (>= 1). strides[s] are the stride arrays of the nOps operands.
static int collapse(i64* shape, i64** strides, int nOps, int rank) {
  int r = 0;
  for (int k = 0; k < rank; k++) {
    if (shape[k] == 1) continue;
    if (r > 0) {
      bool mergeable = true;
      for (int s = 0; s < nOps; s++)
        if (strides[s][r - 1] != strides[s][k] * shape[k]) mergeable = false;
      if (mergeable) {
        shape[r - 1] *= shape[k];
        for (int s = 0; s < nOps; s++) strides[s][r - 1] = strides[s][k];
        continue;
      }
    }
    shape[r] = shape[k];
    for (int s = 0; s < nOps; s++) strides[s][r] = strides[s][k];
    r++;
  }
  if (r == 0) {
    shape[0] = 1;
    for (int s = 0; s < nOps; s++) strides[s][0] = 0;
    r = 1;
  }
  return r;
}

template <typename F>
static void binary_t(F f, const float* a, const i64* aS0, const float* b, const i64* bS0, float* out,
                     const i64* shape0, int rank0) {
  i64 total = 1;
  for (int k = 0; k < rank0; k++) total *= shape0[k];
  if (total == 0) return;
  i64 shape[kMaxRank + 1], aS[kMaxRank + 1], bS[kMaxRank + 1], oS[kMaxRank + 1];
  i64 acc = 1;
  for (int k = rank0 - 1; k >= 0; k--) {
    shape[k] = shape0[k];
    aS[k] = aS0[k];
    bS[k] = bS0[k];
    oS[k] = acc;
    acc *= shape0[k];
  }
  i64* strides[3] = {aS, bS, oS};
  const int rank = collapse(shape, strides, 3, rank0);
  const bool par = total >= kParallelMin;
  // Fast paths on the collapsed view (out is always contiguous: oS[rank-1] == 1 or a single element).
  if (rank == 1) {
    const i64 n = shape[0], as = aS[0], bs = bS[0];
    if (as == 1 && bs == 1) {
#pragma omp parallel for schedule(static) if (par)
      for (i64 i = 0; i < n; i++) out[i] = f(a[i], b[i]);
    } else if (as == 1 && bs == 0) {
      const float bv = b[0];
#pragma omp parallel for schedule(static) if (par)
      for (i64 i = 0; i < n; i++) out[i] = f(a[i], bv);
    } else if (as == 0 && bs == 1) {
      const float av = a[0];
#pragma omp parallel for schedule(static) if (par)
      for (i64 i = 0; i < n; i++) out[i] = f(av, b[i]);
    } else {
#pragma omp parallel for schedule(static) if (par)
      for (i64 i = 0; i < n; i++) out[i] = f(a[i * as], b[i * bs]);
    }
    return;
  }
  if (rank == 2 && aS[1] == 1 && bS[1] == 1 && (aS[0] == 0 || bS[0] == 0)) {  // row broadcast
    const i64 rows = shape[0], d = shape[1], as = aS[0], bs = bS[0];
#pragma omp parallel for schedule(static) if (par)
    for (i64 r = 0; r < rows; r++) {
      const float* ar = a + r * as;
      const float* br = b + r * bs;
      float* o = out + r * d;
      for (i64 c = 0; c < d; c++) o[c] = f(ar[c], br[c]);
    }
    return;
  }
  // General: iterate over the outer index space (all dims but the last) in parallel.
  const i64 inner = shape[rank - 1], ia = aS[rank - 1], ib = bS[rank - 1];
  const i64 outer = total / inner;
#pragma omp parallel for schedule(static) if (par)
  for (i64 o = 0; o < outer; o++) {
    i64 rem = o, offA = 0, offB = 0;
    for (int k = rank - 2; k >= 0; k--) {
      const i64 idx = rem % shape[k];
      rem /= shape[k];
      offA += idx * aS[k];
      offB += idx * bS[k];
    }
    const float* ar = a + offA;
    const float* br = b + offB;
    float* dst = out + o * inner;
    if (ia == 1 && ib == 1) {
      for (i64 c = 0; c < inner; c++) dst[c] = f(ar[c], br[c]);
    } else {
      for (i64 c = 0; c < inner; c++) dst[c] = f(ar[c * ia], br[c * ib]);
    }
  }
}

void binary(BinaryOp op, const float* a, const i64* aS, const float* b, const i64* bS, float* out,
            const i64* shape, int rank) {
  switch (op) {
    case BinaryOp::Add:
      return binary_t([](float x, float y) { return x + y; }, a, aS, b, bS, out, shape, rank);
    case BinaryOp::Sub:
      return binary_t([](float x, float y) { return x - y; }, a, aS, b, bS, out, shape, rank);
    case BinaryOp::Mul:
      return binary_t([](float x, float y) { return x * y; }, a, aS, b, bS, out, shape, rank);
    case BinaryOp::Div:
      return binary_t([](float x, float y) { return x / y; }, a, aS, b, bS, out, shape, rank);
    case BinaryOp::Max:
      return binary_t([](float x, float y) { return fmaxp(x, y); }, a, aS, b, bS, out, shape, rank);
    case BinaryOp::Min:
      return binary_t([](float x, float y) { return fminp(x, y); }, a, aS, b, bS, out, shape, rank);
    case BinaryOp::Eq:
      return binary_t([](float x, float y) { return x == y ? 1.0f : 0.0f; }, a, aS, b, bS, out, shape, rank);
  }
}

// ------------------------------------------------------------------ reduce

void reduce(ReduceOp op, const float* x, const i64* shape0, const bool* reduced0, int rank0, float* out) {
  const bool isSum = op == ReduceOp::Sum;
  const float init = isSum ? 0.0f : -std::numeric_limits<float>::infinity();
  // Merge adjacent dims of the same kind, drop size-1 dims.
  i64 shape[kMaxRank + 1];
  bool red[kMaxRank + 1];
  int rank = 0;
  i64 outN = 1, redN = 1;
  for (int k = 0; k < rank0; k++) {
    if (reduced0[k])
      redN *= shape0[k];
    else
      outN *= shape0[k];
    if (shape0[k] == 1) continue;
    if (rank > 0 && red[rank - 1] == reduced0[k]) {
      shape[rank - 1] *= shape0[k];
    } else {
      shape[rank] = shape0[k];
      red[rank] = reduced0[k];
      rank++;
    }
  }
  if (outN == 0) return;
  if (redN == 0) {
    for (i64 i = 0; i < outN; i++) out[i] = init;
    return;
  }
  if (rank == 0 || redN == 1) {  // nothing actually reduced: a copy
    std::memcpy(out, x, sizeof(float) * outN);
    return;
  }
  // x strides (contiguous) and the decomposition of dims into kept / reduced.
  i64 xS[kMaxRank + 1];
  i64 acc = 1;
  for (int k = rank - 1; k >= 0; k--) {
    xS[k] = acc;
    acc *= shape[k];
  }
  int keptIdx[kMaxRank + 1], redIdx[kMaxRank + 1];
  int nKept = 0, nRed = 0;
  for (int k = 0; k < rank; k++) (red[k] ? redIdx[nRed++] : keptIdx[nKept++]) = k;
  const bool par = outN * redN >= kParallelMin;

  // Offset in x of the multi-index over the first nk kept dims whose linear index is o.
  auto keptOffset = [&](i64 o, int nk) {
    i64 off = 0;
    for (int t = nk - 1; t >= 0; t--) {
      const int k = keptIdx[t];
      off += (o % shape[k]) * xS[k];
      o /= shape[k];
    }
    return off;
  };
  if (red[rank - 1]) {
    // Innermost dim reduced: each out element reduces contiguous runs of length `inner`.
    const i64 inner = shape[rank - 1];
    const i64 runs = redN / inner;
#pragma omp parallel for schedule(static) if (par)
    for (i64 o = 0; o < outN; o++) {
      const i64 base = keptOffset(o, nKept);
      double s = 0.0;
      float m = init;
      for (i64 r = 0; r < runs; r++) {
        i64 rem = r, off = base;
        for (int t = nRed - 2; t >= 0; t--) {
          const int k = redIdx[t];
          off += (rem % shape[k]) * xS[k];
          rem /= shape[k];
        }
        const float* xr = x + off;
        if (isSum) {
          float s4[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          i64 c = 0;
          for (; c + 8 <= inner; c += 8)
            for (int u = 0; u < 8; u++) s4[u] += xr[c + u];
          double part = 0.0;
          for (int u = 0; u < 8; u++) part += s4[u];
          for (; c < inner; c++) part += xr[c];
          s += part;
        } else {
          for (i64 c = 0; c < inner; c++) m = fmaxp(m, xr[c]);
        }
      }
      out[o] = isSum ? (float)s : m;
    }
    return;
  }
  // Innermost dim kept (length C): out rows of C accumulate rows of x over the reduced index space.
  const i64 C = shape[rank - 1];
  const i64 outer = outN / C;
  const i64 chunk = 512;
  const i64 nChunks = (C + chunk - 1) / chunk;
#pragma omp parallel if (par)
  {
    std::vector<double> accd(isSum ? chunk : 0);
#pragma omp for schedule(static) collapse(2)
    for (i64 o = 0; o < outer; o++) {
      for (i64 ch = 0; ch < nChunks; ch++) {
        const i64 c0 = ch * chunk, c1 = std::min(C, c0 + chunk);
        const i64 base = keptOffset(o, nKept - 1) + c0;
        float* dst = out + o * C + c0;
        if (isSum) std::fill(accd.begin(), accd.end(), 0.0);
        if (!isSum)
          for (i64 c = c0; c < c1; c++) dst[c - c0] = init;
        for (i64 r = 0; r < redN; r++) {
          i64 rem = r, off = base;
          for (int t = nRed - 1; t >= 0; t--) {
            const int k = redIdx[t];
            off += (rem % shape[k]) * xS[k];
            rem /= shape[k];
          }
          const float* xr = x + off;
          if (isSum) {
            for (i64 c = 0; c < c1 - c0; c++) accd[c] += xr[c];
          } else {
            for (i64 c = 0; c < c1 - c0; c++) dst[c] = fmaxp(dst[c], xr[c]);
          }
        }
        if (isSum)
          for (i64 c = 0; c < c1 - c0; c++) dst[c] = (float)accd[c];
      }
    }
  }
}

// ------------------------------------------------------------------ copy

// True when distinct multi-indices map to distinct dst offsets (sufficient test: sorted by |stride|,
// each stride is at least the span of the smaller dims).
static bool injective(const i64* shape, const i64* st, int rank) {
  std::vector<std::pair<i64, i64>> dims;
  for (int k = 0; k < rank; k++)
    if (shape[k] > 1) dims.push_back({st[k] < 0 ? -st[k] : st[k], shape[k]});
  std::sort(dims.begin(), dims.end());
  i64 span = 1;
  for (auto& [s, n] : dims) {
    if (s < span) return false;
    span = s * (n - 1) + span;
  }
  return true;
}

void copy_strided(const float* src, const i64* sS0, float* dst, const i64* dS0, const i64* shape0, int rank0,
                  bool accumulate) {
  i64 total = 1;
  for (int k = 0; k < rank0; k++) total *= shape0[k];
  if (total == 0) return;
  i64 shape[kMaxRank + 1], sS[kMaxRank + 1], dS[kMaxRank + 1];
  for (int k = 0; k < rank0; k++) {
    shape[k] = shape0[k];
    sS[k] = sS0[k];
    dS[k] = dS0[k];
  }
  i64* strides[2] = {sS, dS};
  const int rank = collapse(shape, strides, 2, rank0);
  const bool par = total >= kParallelMin && (!accumulate || injective(shape, dS, rank));
  const i64 inner = shape[rank - 1], is = sS[rank - 1], id = dS[rank - 1];
  const i64 outer = total / inner;
  if (!par) {
    for (i64 o = 0; o < outer; o++) {
      i64 rem = o, offS = 0, offD = 0;
      for (int k = rank - 2; k >= 0; k--) {
        const i64 idx = rem % shape[k];
        rem /= shape[k];
        offS += idx * sS[k];
        offD += idx * dS[k];
      }
      const float* s = src + offS;
      float* d = dst + offD;
      if (accumulate) {
        for (i64 c = 0; c < inner; c++) d[c * id] += s[c * is];
      } else if (is == 1 && id == 1) {
        std::memcpy(d, s, sizeof(float) * inner);
      } else {
        for (i64 c = 0; c < inner; c++) d[c * id] = s[c * is];
      }
    }
    return;
  }
  // Parallel: split the flat index space into chunks; each chunk walks its own odometer.
  const i64 chunkN = std::max<i64>(inner, 4096);
  const i64 nChunks = (total + chunkN - 1) / chunkN;
#pragma omp parallel for schedule(static)
  for (i64 ch = 0; ch < nChunks; ch++) {
    const i64 begin = ch * chunkN, end = std::min(total, begin + chunkN);
    i64 i = begin;
    while (i < end) {
      const i64 o = i / inner, c0 = i % inner;
      const i64 c1 = std::min(inner, c0 + (end - i));
      i64 rem = o, offS = 0, offD = 0;
      for (int k = rank - 2; k >= 0; k--) {
        const i64 idx = rem % shape[k];
        rem /= shape[k];
        offS += idx * sS[k];
        offD += idx * dS[k];
      }
      const float* s = src + offS;
      float* d = dst + offD;
      if (accumulate) {
        if (is == 1 && id == 1) {
          for (i64 c = c0; c < c1; c++) d[c] += s[c];
        } else {
          for (i64 c = c0; c < c1; c++) d[c * id] += s[c * is];
        }
      } else if (is == 1 && id == 1) {
        std::memcpy(d + c0, s + c0, sizeof(float) * (c1 - c0));
      } else {
        for (i64 c = c0; c < c1; c++) d[c * id] = s[c * is];
      }
      i += c1 - c0;
    }
  }
}

// ------------------------------------------------------------------ fill / axpy / sumSquares

void fill(float* out, float value, i64 n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin * 4)
  for (i64 i = 0; i < n; i++) out[i] = value;
}

void axpy(i64 n, float alpha, const float* x, float* y) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (i64 i = 0; i < n; i++) y[i] += alpha * x[i];
}

double sum_squares(const float* x, i64 n) {
  // 4096-element blocks, each summed in double, then the block sums added in double.
  const i64 block = 4096, nBlocks = (n + block - 1) / block;
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (n >= kParallelMin)
  for (i64 bI = 0; bI < nBlocks; bI++) {
    const i64 i0 = bI * block, i1 = std::min(n, i0 + block);
    double s = 0.0;  // across SIMD lanes (a fixed order for a fixed build), not one long dependent chain
#pragma omp simd reduction(+ : s)
    for (i64 i = i0; i < i1; i++) s += (double)x[i] * (double)x[i];
    total += s;
  }
  return total;
}

}  // namespace attnres
