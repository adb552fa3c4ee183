// addon.cc: Node-API glue of the attnres native backend (module attnres_native, NAPI_VERSION 8).
//
// Every export takes positional arguments mirroring src/backend/backend.ts (same order, same names).
// This file owns argument checking: argument count and types, Float32Array (Float64Array is rejected:
// the backend is float32-only), Int32Array ids/targets, non-negative integer sizes, and that every
// extent a kernel touches fits in its buffers. Violations throw a JS Error "<kernel>: <what>";
// nothing reaches a kernel unchecked. Data pointers come from napi_get_typedarray_info (already
// adjusted for the view's byteOffset).
//
// Memory: alloc(n) returns a Float32Array over an external ArrayBuffer, 64-byte aligned (2 MiB-aligned huge
// pages from 2 MiB up), freed by its finalizer; live bytes and buffer count are tracked with atomics
// (memoryStats) and reported to V8 (napi_adjust_external_memory) so that garbage collection sees the native
// memory pressure.
#include <node_api.h>
#include <sys/mman.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

namespace attnres {
namespace {

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::atomic<int64_t> gLiveBytes{0};
std::atomic<int64_t> gLiveBuffers{0};

constexpr int kMaxArgs = 24;
constexpr i64 kMaxSafe = (i64)1 << 53;
constexpr i64 kMaxInt = 2147483647;  // CBLAS dimensions are int

struct F32 {
  float* p;
  i64 n;
};

struct Args {
  napi_env env;
  const char* kernel;
  napi_value v[kMaxArgs];
  size_t argc = kMaxArgs;

  Args(napi_env e, napi_callback_info info, const char* k, size_t expected)
      : Args(e, info, k, expected, expected) {}

  // Between least and most arguments; missing trailing ones read as undefined.
  Args(napi_env e, napi_callback_info info, const char* k, size_t least, size_t most) : env(e), kernel(k) {
    if (napi_get_cb_info(env, info, &argc, v, nullptr, nullptr) != napi_ok) fail("cannot read arguments");
    if (argc < least || argc > most)
      fail("expected " + std::to_string(least) + (least == most ? "" : "-" + std::to_string(most)) +
           " arguments, got " + std::to_string(argc));
    for (size_t i = argc; i < most; i++) napi_get_undefined(env, &v[i]);
    argc = most;
  }

  // Argument i, an object or null/undefined, replaced by its properties keys[0..) in slots i, i+1, ...
  // (undefined where absent), so that they read as positional arguments.
  void spread(size_t i, std::initializer_list<const char*> keys, const char* name) {
    const napi_value obj = v[i];
    const bool none = isNull(i);
    if (!none && type(i) != napi_object) fail(std::string(name) + " must be an object or null");
    size_t j = i;
    for (const char* key : keys) {
      if (none || napi_get_named_property(env, obj, key, &v[j]) != napi_ok) napi_get_undefined(env, &v[j]);
      j++;
    }
    argc = std::max(argc, j);
  }

  [[noreturn]] void fail(const std::string& msg) const {
    throw KernelError(std::string(kernel) + ": " + msg);
  }

  napi_valuetype type(size_t i) const {
    napi_valuetype t;
    if (napi_typeof(env, v[i], &t) != napi_ok) fail("cannot inspect argument " + std::to_string(i));
    return t;
  }

  double num(size_t i, const char* name) const {
    if (type(i) != napi_number) fail(std::string(name) + " must be a number");
    double d;
    napi_get_value_double(env, v[i], &d);
    return d;
  }

  // Any integer in (-2^53, 2^53).
  i64 integer(size_t i, const char* name) const {
    const double d = num(i, name);
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) >= (double)kMaxSafe)
      fail(std::string(name) + " must be an integer, got " + std::to_string(d));
    return (i64)d;
  }

  i64 size(size_t i, const char* name) const {
    const i64 n = integer(i, name);
    if (n < 0) fail(std::string(name) + " must be >= 0, got " + std::to_string(n));
    return n;
  }

  bool boolean(size_t i, const char* name) const {
    if (type(i) != napi_boolean) fail(std::string(name) + " must be a boolean");
    bool b;
    napi_get_value_bool(env, v[i], &b);
    return b;
  }

  std::string str(size_t i, const char* name) const {
    if (type(i) != napi_string) fail(std::string(name) + " must be a string");
    char buf[32];
    size_t len;
    napi_get_value_string_utf8(env, v[i], buf, sizeof(buf), &len);
    return std::string(buf, len);
  }

  bool isNull(size_t i) const {
    const napi_valuetype t = type(i);
    return t == napi_null || t == napi_undefined;
  }

  void typed(size_t i, const char* name, napi_typedarray_type want, const char* wantName, void** data,
             i64* n) const {
    bool is = false;
    napi_is_typedarray(env, v[i], &is);
    if (!is) fail(std::string(name) + " must be a " + wantName);
    napi_typedarray_type t;
    size_t len;
    napi_value ab;
    size_t off;
    napi_get_typedarray_info(env, v[i], &t, &len, data, &ab, &off);
    if (t != want) {
      if (t == napi_float64_array && want == napi_float32_array)
        fail(std::string(name) +
             " is a Float64Array; the native backend is float32-only (use ATTNRES_BACKEND=reference for "
             "float64)");
      fail(std::string(name) + " must be a " + wantName);
    }
    *n = (i64)len;
  }

  F32 f32(size_t i, const char* name) const {
    void* d;
    i64 n;
    typed(i, name, napi_float32_array, "Float32Array", &d, &n);
    return {static_cast<float*>(d), n};
  }

  F32 f32OrNull(size_t i, const char* name) const { return isNull(i) ? F32{nullptr, 0} : f32(i, name); }

  const int32_t* i32(size_t i, const char* name, i64* n) const {
    void* d;
    typed(i, name, napi_int32_array, "Int32Array", &d, n);
    return static_cast<const int32_t*>(d);
  }

  // A short JS array of integers (shape or strides), at most kMaxRank long.
  std::vector<i64> ints(size_t i, const char* name, bool nonNegative) const {
    bool isArr = false;
    napi_is_array(env, v[i], &isArr);
    if (!isArr) fail(std::string(name) + " must be an array of integers");
    uint32_t len;
    napi_get_array_length(env, v[i], &len);
    if (len > (uint32_t)kMaxRank) fail(std::string(name) + " has rank " + std::to_string(len) + " > 8");
    std::vector<i64> out(len);
    for (uint32_t k = 0; k < len; k++) {
      napi_value e;
      napi_get_element(env, v[i], k, &e);
      napi_valuetype t;
      napi_typeof(env, e, &t);
      double d = NAN;
      if (t == napi_number) napi_get_value_double(env, e, &d);
      if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) >= (double)kMaxSafe ||
          (nonNegative && d < 0))
        fail(std::string(name) + "[" + std::to_string(k) + "] must be " +
             (nonNegative ? "a non-negative integer" : "an integer"));
      out[k] = (i64)d;
    }
    return out;
  }

  i64 mul(i64 a, i64 b) const {
    i64 r;
    if (__builtin_mul_overflow(a, b, &r) || r >= kMaxSafe) fail("size overflow");
    return r;
  }
  i64 mul(std::initializer_list<i64> xs) const {
    i64 r = 1;
    for (i64 x : xs) r = mul(r, x);
    return r;
  }

  void need(const char* name, const F32& b, i64 n) const { needLen(name, b.n, n); }
  void needLen(const char* name, i64 have, i64 n) const {
    if (have < n)
      fail(std::string(name) + " has " + std::to_string(have) + " elements, needs " + std::to_string(n));
  }
};

napi_value makeNumber(napi_env env, double d) {
  napi_value r;
  napi_create_double(env, d, &r);
  return r;
}

napi_value undefinedValue(napi_env env) {
  napi_value r;
  napi_get_undefined(env, &r);
  return r;
}

template <typename F>
napi_value guard(napi_env env, F&& f) {
  try {
    return f();
  } catch (const KernelError& e) {
    napi_throw_error(env, nullptr, e.what());
  } catch (const std::bad_alloc&) {
    napi_throw_error(env, nullptr, "attnres native: out of memory");
  } catch (const std::exception& e) {
    napi_throw_error(env, nullptr, e.what());
  }
  return nullptr;
}

#define KERNEL(name) napi_value js_##name(napi_env env, napi_callback_info info)

// ------------------------------------------------------------------ memory / info

void finalizeBuffer(napi_env env, void* data, void* hint) {
  const int64_t bytes = (int64_t)(intptr_t)hint;
  std::free(data);
  gLiveBytes.fetch_sub(bytes);
  gLiveBuffers.fetch_sub(1);
  int64_t ignored;
  napi_adjust_external_memory(env, -bytes, &ignored);
}

KERNEL(alloc) {
  return guard(env, [&] {
    Args a(env, info, "alloc", 1);
    const i64 n = a.size(0, "n");
    const i64 bytes = a.mul(n, 4);
    // Buffers of 2 MiB and more: 2 MiB-aligned and advised as transparent huge pages, so that first
    // touching them faults once per 2 MiB instead of once per 4 KiB (building a 0.6B-parameter model
    // spent most of its time in page faults); smaller ones: 64-byte aligned.
    const size_t kHuge = (size_t)2 << 20;
    const bool huge = (size_t)bytes >= kHuge;
    const size_t align = huge ? kHuge : 64;
    const size_t padded = (size_t)((std::max<i64>(bytes, 1) + (i64)align - 1) / (i64)align * (i64)align);
    void* p = std::aligned_alloc(align, padded);
    if (p != nullptr && huge) madvise(p, padded, MADV_HUGEPAGE);
    if (p == nullptr) a.fail("cannot allocate " + std::to_string(bytes) + " bytes");
    napi_value ab, ta;
    if (napi_create_external_arraybuffer(env, p, (size_t)bytes, finalizeBuffer, (void*)(intptr_t)bytes,
                                         &ab) != napi_ok) {
      std::free(p);
      a.fail("napi_create_external_arraybuffer failed");
    }
    gLiveBytes.fetch_add(bytes);
    gLiveBuffers.fetch_add(1);
    int64_t ignored;
    napi_adjust_external_memory(env, bytes, &ignored);
    if (napi_create_typedarray(env, napi_float32_array, (size_t)n, ab, 0, &ta) != napi_ok)
      a.fail("napi_create_typedarray failed");
    return ta;
  });
}

KERNEL(memoryStats) {
  return guard(env, [&] {
    Args a(env, info, "memoryStats", 0);
    napi_value o;
    napi_create_object(env, &o);
    napi_set_named_property(env, o, "allocatedBytes", makeNumber(env, (double)gLiveBytes.load()));
    napi_set_named_property(env, o, "buffers", makeNumber(env, (double)gLiveBuffers.load()));
    return o;
  });
}

KERNEL(threads) {
  return guard(env, [&] {
    Args a(env, info, "threads", 0);
    return makeNumber(env, num_threads());
  });
}

KERNEL(setThreads) {
  return guard(env, [&] {
    Args a(env, info, "setThreads", 1);
    const i64 n = a.size(0, "n");
    if (n < 1 || n > 1024) a.fail("n must be in [1, 1024], got " + std::to_string(n));
    set_num_threads((int)n);
    return undefinedValue(env);
  });
}

// setGemm("blas" | "builtin" | "default"): choose the GEMM for the rest of the process (tests compare
// both), or go back to the default (as if ATTNRES_GEMM were unset).
KERNEL(setGemm) {
  return guard(env, [&] {
    Args a(env, info, "setGemm", 1);
    const std::string k = a.str(0, "kind");
    if (k != "blas" && k != "builtin" && k != "default")
      a.fail("kind must be \"blas\", \"builtin\" or \"default\", got \"" + k + "\"");
    if (k == "default") {
      reset_gemm_kind();
      return undefinedValue(env);
    }
    if (!set_gemm_kind(k == "blas" ? GemmKind::Blas : GemmKind::Builtin))
      a.fail("this build has no BLAS (built with the built-in GEMM only)");
    return undefinedValue(env);
  });
}

// setGemmBf16(on): bfloat16 GEMM operands with float32 accumulation (AVX-512 BF16 builds only).
KERNEL(setGemmBf16) {
  return guard(env, [&] {
    Args a(env, info, "setGemmBf16", 1);
    const bool on = a.boolean(0, "on");
    if (!set_gemm_bf16(on)) a.fail("this CPU or build has no AVX-512 BF16 instructions");
    return undefinedValue(env);
  });
}

// setGemmAmx(on): bfloat16 GEMMs on AMX tiles (on by default where available) or on AVX-512 BF16.
KERNEL(setGemmAmx) {
  return guard(env, [&] {
    Args a(env, info, "setGemmAmx", 1);
    const bool on = a.boolean(0, "on");
    if (!set_gemm_amx(on)) a.fail("this CPU, build or OS has no AMX-BF16 tiles");
    return undefinedValue(env);
  });
}

KERNEL(info) {
  return guard(env, [&] {
    Args a(env, info, "info", 0);
    napi_value o, s1, s2;
    napi_create_object(env, &o);
    napi_create_string_utf8(env, blas_name(), NAPI_AUTO_LENGTH, &s1);
    napi_create_string_utf8(env, simd_name(), NAPI_AUTO_LENGTH, &s2);
    napi_set_named_property(env, o, "blas", s1);
    napi_value s3;
    napi_create_string_utf8(env, blas_core(), NAPI_AUTO_LENGTH, &s3);
    napi_set_named_property(env, o, "blasCore", s3);
    napi_value s4;
    napi_create_string_utf8(env, gemm_name(), NAPI_AUTO_LENGTH, &s4);
    napi_set_named_property(env, o, "gemm", s4);
    napi_value st;
    napi_get_boolean(env, gemm_streamed(), &st);
    napi_set_named_property(env, o, "streamed", st);
    napi_value bf;
    napi_get_boolean(env, gemm_bf16_available(), &bf);
    napi_set_named_property(env, o, "bf16", bf);
    napi_value amx;
    napi_get_boolean(env, gemm_amx(), &amx);
    napi_set_named_property(env, o, "amx", amx);
    napi_set_named_property(env, o, "threads", makeNumber(env, num_threads()));
    napi_set_named_property(env, o, "simd", s2);
    return o;
  });
}

KERNEL(peakGflops) {
  return guard(env, [&] {
    Args a(env, info, "peakGflops", 1);
    const double s = a.num(0, "seconds");
    if (!(s > 0 && s <= 60)) a.fail("seconds must be in (0, 60]");
    return makeNumber(env, peak_gflops(s));
  });
}

KERNEL(readBandwidth) {
  return guard(env, [&] {
    Args a(env, info, "readBandwidth", 3);
    const double s = a.num(0, "seconds");
    if (!(s > 0 && s <= 60)) a.fail("seconds must be in (0, 60]");
    const i64 repeats = a.size(1, "repeats");
    if (repeats < 1 || repeats > 1000) a.fail("repeats must be in [1, 1000]");
    const i64 bytes = a.size(2, "bytes");
    if (bytes > ((i64)1 << 40)) a.fail("bytes must be at most 2^40");
    std::vector<double> samples((size_t)repeats);
    const size_t used = read_bandwidth(s, (int)repeats, (size_t)bytes, samples.data());
    if (used == 0) a.fail("cannot allocate the buffer");
    napi_value o, arr;
    napi_create_object(env, &o);
    napi_create_array_with_length(env, samples.size(), &arr);
    for (size_t i = 0; i < samples.size(); i++)
      napi_set_element(env, arr, (uint32_t)i, makeNumber(env, samples[i]));
    napi_set_named_property(env, o, "samples", arr);
    napi_set_named_property(env, o, "bytes", makeNumber(env, (double)used));
    return o;
  });
}

// ------------------------------------------------------------------ gemm

// Elements needed for `batch` matrices stored [rows, cols] (row stride ld, batch stride) from off.
i64 matrixExtent(const Args& a, const char* name, i64 batch, i64 rows, i64 cols, i64 off, i64 ld,
                 i64 stride) {
  if (batch == 0 || rows == 0 || cols == 0) return 0;
  if (rows > 1 && ld < cols)
    a.fail(std::string("ld of ") + name + " is " + std::to_string(ld) + ", less than its row length " +
           std::to_string(cols));
  if (rows > kMaxInt || cols > kMaxInt || ld > kMaxInt) a.fail(std::string(name) + " dimensions exceed 2^31");
  return off + a.mul(batch - 1, stride) + a.mul(rows - 1, ld) + cols;
}

KERNEL(gemm) {
  return guard(env, [&] {
    Args a(env, info, "gemm", 20);
    const bool tA = a.boolean(0, "transA"), tB = a.boolean(1, "transB");
    const i64 batch = a.size(2, "batch"), M = a.size(3, "M"), N = a.size(4, "N"), K = a.size(5, "K");
    const float alpha = (float)a.num(6, "alpha");
    const F32 A = a.f32(7, "A");
    const i64 offA = a.size(8, "offA"), lda = a.size(9, "lda"), strideA = a.size(10, "strideA");
    const F32 B = a.f32(11, "B");
    const i64 offB = a.size(12, "offB"), ldb = a.size(13, "ldb"), strideB = a.size(14, "strideB");
    const float beta = (float)a.num(15, "beta");
    const F32 C = a.f32(16, "C");
    const i64 offC = a.size(17, "offC"), ldc = a.size(18, "ldc"), strideC = a.size(19, "strideC");
    if (M > kMaxInt || N > kMaxInt || K > kMaxInt) a.fail("M, N, K must be < 2^31");
    if (M > 0 && N > 0) {
      a.need("A", A, matrixExtent(a, "A", batch, tA ? K : M, tA ? M : K, offA, lda, strideA));
      a.need("B", B, matrixExtent(a, "B", batch, tB ? N : K, tB ? K : N, offB, ldb, strideB));
      a.need("C", C, matrixExtent(a, "C", batch, M, N, offC, ldc, strideC));
    }
    if (batch > 0 && M > 0 && N > 0)
      sgemm_batched(tA, tB, batch, M, N, K, alpha, A.p + offA, lda, strideA, B.p + offB, ldb, strideB, beta,
                    C.p + offC, ldc, strideC);
    return undefinedValue(env);
  });
}

// ------------------------------------------------------------------ elementwise

UnaryOp unaryOp(const Args& a, size_t i) {
  const std::string s = a.str(i, "op");
  static const char* names[] = {"neg", "exp", "log", "sqrt", "rsqrt", "sigmoid", "silu", "square", "abs"};
  for (int k = 0; k < 9; k++)
    if (s == names[k]) return (UnaryOp)k;
  a.fail("unknown unary op '" + s + "'");
}

BinaryOp binaryOp(const Args& a, size_t i) {
  const std::string s = a.str(i, "op");
  static const char* names[] = {"add", "sub", "mul", "div", "max", "min", "eq"};
  for (int k = 0; k < 7; k++)
    if (s == names[k]) return (BinaryOp)k;
  a.fail("unknown binary op '" + s + "'");
}

KERNEL(unary) {
  return guard(env, [&] {
    Args a(env, info, "unary", 4);
    const UnaryOp op = unaryOp(a, 0);
    const F32 x = a.f32(1, "x"), out = a.f32(2, "out");
    const i64 n = a.size(3, "n");
    a.need("x", x, n);
    a.need("out", out, n);
    unary(op, x.p, out.p, n);
    return undefinedValue(env);
  });
}

KERNEL(unaryGrad) {
  return guard(env, [&] {
    Args a(env, info, "unaryGrad", 6);
    const UnaryOp op = unaryOp(a, 0);
    const F32 x = a.f32(1, "x"), y = a.f32(2, "y"), gy = a.f32(3, "gy"), gx = a.f32(4, "gx");
    const i64 n = a.size(5, "n");
    a.need("x", x, n);
    a.need("y", y, n);
    a.need("gy", gy, n);
    a.need("gx", gx, n);
    unary_grad(op, x.p, y.p, gy.p, gx.p, n);
    return undefinedValue(env);
  });
}

// Checks that off + sum_k i_k*strides[k] stays inside [0, len) over the index space `shape`.
void checkStrided(const Args& a, const char* name, i64 len, i64 off, const std::vector<i64>& st,
                  const std::vector<i64>& shape) {
  i64 lo = off, hi = off;
  for (size_t k = 0; k < shape.size(); k++) {
    if (shape[k] == 0) return;  // empty index space touches nothing
    const i64 span = a.mul(shape[k] - 1, st[k] < 0 ? -st[k] : st[k]);
    if (st[k] < 0)
      lo -= span;
    else
      hi += span;
  }
  if (lo < 0) a.fail(std::string(name) + " strides reach offset " + std::to_string(lo) + " < 0");
  a.needLen(name, len, hi + 1);
}

KERNEL(binary) {
  return guard(env, [&] {
    Args a(env, info, "binary", 7);
    const BinaryOp op = binaryOp(a, 0);
    const F32 A = a.f32(1, "a");
    const std::vector<i64> aS = a.ints(2, "aStrides", false);
    const F32 B = a.f32(3, "b");
    const std::vector<i64> bS = a.ints(4, "bStrides", false);
    const F32 out = a.f32(5, "out");
    const std::vector<i64> shape = a.ints(6, "outShape", true);
    if (aS.size() != shape.size() || bS.size() != shape.size())
      a.fail("outShape, aStrides and bStrides must have equal length");
    i64 total = 1;
    for (i64 s : shape) total = a.mul(total, s);
    a.need("out", out, total);
    checkStrided(a, "a", A.n, 0, aS, shape);
    checkStrided(a, "b", B.n, 0, bS, shape);
    binary(op, A.p, aS.data(), B.p, bS.data(), out.p, shape.data(), (int)shape.size());
    return undefinedValue(env);
  });
}

KERNEL(reduce) {
  return guard(env, [&] {
    Args a(env, info, "reduce", 5);
    const std::string ops = a.str(0, "op");
    ReduceOp op;
    if (ops == "sum")
      op = ReduceOp::Sum;
    else if (ops == "max")
      op = ReduceOp::Max;
    else
      a.fail("unknown reduce op '" + ops + "'");
    const F32 x = a.f32(1, "x");
    const std::vector<i64> shape = a.ints(2, "shape", true);
    const std::vector<i64> axes = a.ints(3, "axes", true);
    const F32 out = a.f32(4, "out");
    bool red[kMaxRank] = {};
    for (size_t t = 0; t < axes.size(); t++) {
      if (axes[t] >= (i64)shape.size()) a.fail("axis " + std::to_string(axes[t]) + " out of range");
      if (t > 0 && axes[t] <= axes[t - 1]) a.fail("axes must be sorted and distinct");
      red[axes[t]] = true;
    }
    i64 nx = 1, nOut = 1;
    for (size_t k = 0; k < shape.size(); k++) {
      nx = a.mul(nx, shape[k]);
      if (!red[k]) nOut = a.mul(nOut, shape[k]);
    }
    a.need("x", x, nx);
    a.need("out", out, nOut);
    reduce(op, x.p, shape.data(), red, (int)shape.size(), out.p);
    return undefinedValue(env);
  });
}

KERNEL(copy) {
  return guard(env, [&] {
    Args a(env, info, "copy", 8);
    const F32 src = a.f32(0, "src");
    const i64 srcOff = a.size(1, "srcOff");
    const std::vector<i64> sS = a.ints(2, "srcStrides", false);
    const F32 dst = a.f32(3, "dst");
    const i64 dstOff = a.size(4, "dstOff");
    const std::vector<i64> dS = a.ints(5, "dstStrides", false);
    const std::vector<i64> shape = a.ints(6, "shape", true);
    const bool acc = a.boolean(7, "accumulate");
    if (sS.size() != shape.size() || dS.size() != shape.size())
      a.fail("shape, srcStrides and dstStrides must have equal length");
    checkStrided(a, "src", src.n, srcOff, sS, shape);
    checkStrided(a, "dst", dst.n, dstOff, dS, shape);
    copy_strided(src.p + srcOff, sS.data(), dst.p + dstOff, dS.data(), shape.data(), (int)shape.size(), acc);
    return undefinedValue(env);
  });
}

KERNEL(fill) {
  return guard(env, [&] {
    Args a(env, info, "fill", 3);
    const F32 out = a.f32(0, "out");
    const float value = (float)a.num(1, "value");
    const i64 n = a.size(2, "n");
    a.need("out", out, n);
    fill(out.p, value, n);
    return undefinedValue(env);
  });
}

KERNEL(axpy) {
  return guard(env, [&] {
    Args a(env, info, "axpy", 4);
    const i64 n = a.size(0, "n");
    const float alpha = (float)a.num(1, "alpha");
    const F32 x = a.f32(2, "x"), y = a.f32(3, "y");
    a.need("x", x, n);
    a.need("y", y, n);
    axpy(n, alpha, x.p, y.p);
    return undefinedValue(env);
  });
}

KERNEL(sumSquares) {
  return guard(env, [&] {
    Args a(env, info, "sumSquares", 2);
    const F32 x = a.f32(0, "x");
    const i64 n = a.size(1, "n");
    a.need("x", x, n);
    return makeNumber(env, sum_squares(x.p, n));
  });
}

// ------------------------------------------------------------------ model kernels

void checkIds(const Args& a, const char* name, const int32_t* ids, i64 n, i64 limit) {
  for (i64 i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= limit)
      a.fail(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
             " is outside [0, " + std::to_string(limit) + ")");
}

KERNEL(embedding) {
  return guard(env, [&] {
    Args a(env, info, "embedding", 6);
    const F32 w = a.f32(0, "weight");
    i64 nIds;
    const int32_t* ids = a.i32(1, "ids", &nIds);
    const F32 out = a.f32(2, "out");
    const i64 n = a.size(3, "n"), d = a.size(4, "d"), vocab = a.size(5, "vocab");
    a.need("weight", w, a.mul(vocab, d));
    a.needLen("ids", nIds, n);
    a.need("out", out, a.mul(n, d));
    checkIds(a, "ids", ids, n, vocab);
    embedding(w.p, ids, out.p, n, d);
    return undefinedValue(env);
  });
}

KERNEL(embeddingBackward) {
  return guard(env, [&] {
    Args a(env, info, "embeddingBackward", 6);
    const F32 gout = a.f32(0, "gout");
    i64 nIds;
    const int32_t* ids = a.i32(1, "ids", &nIds);
    const F32 gw = a.f32(2, "gweight");
    const i64 n = a.size(3, "n"), d = a.size(4, "d"), vocab = a.size(5, "vocab");
    a.need("gout", gout, a.mul(n, d));
    a.needLen("ids", nIds, n);
    a.need("gweight", gw, a.mul(vocab, d));
    checkIds(a, "ids", ids, n, vocab);
    embedding_backward(gout.p, ids, gw.p, n, d);
    return undefinedValue(env);
  });
}

KERNEL(rmsnorm) {
  return guard(env, [&] {
    Args a(env, info, "rmsnorm", 7);
    const F32 x = a.f32(0, "x"), w = a.f32OrNull(1, "w"), out = a.f32(2, "out"), rstd = a.f32(3, "rstd");
    const i64 rows = a.size(4, "rows"), d = a.size(5, "d");
    const float eps = (float)a.num(6, "eps");
    a.need("x", x, a.mul(rows, d));
    if (w.p != nullptr) a.need("w", w, d);
    a.need("out", out, a.mul(rows, d));
    a.need("rstd", rstd, rows);
    rmsnorm(x.p, w.p, out.p, rstd.p, rows, d, eps);
    return undefinedValue(env);
  });
}

KERNEL(rmsnormBackward) {
  return guard(env, [&] {
    Args a(env, info, "rmsnormBackward", 8);
    const F32 x = a.f32(0, "x"), w = a.f32OrNull(1, "w"), rstd = a.f32(2, "rstd"), gy = a.f32(3, "gy");
    const F32 gx = a.f32(4, "gx"), gw = a.f32OrNull(5, "gw");
    const i64 rows = a.size(6, "rows"), d = a.size(7, "d");
    const i64 n = a.mul(rows, d);
    a.need("x", x, n);
    if (w.p != nullptr) a.need("w", w, d);
    a.need("rstd", rstd, rows);
    a.need("gy", gy, n);
    a.need("gx", gx, n);
    if (w.p != nullptr && gw.p != nullptr) a.need("gw", gw, d);
    rmsnorm_backward(x.p, w.p, rstd.p, gy.p, gx.p, gw.p, rows, d);
    return undefinedValue(env);
  });
}

KERNEL(rope) {
  return guard(env, [&] {
    Args a(env, info, "rope", 10);
    const F32 x = a.f32(0, "x"), out = a.f32(1, "out"), cs = a.f32(2, "cos"), sn = a.f32(3, "sin");
    const i64 B = a.size(4, "B"), T = a.size(5, "T"), H = a.size(6, "H"), D = a.size(7, "D");
    const i64 posOffset = a.size(8, "posOffset");
    const bool inverse = a.boolean(9, "inverse");
    if (D % 2 != 0) a.fail("D must be even, got " + std::to_string(D));
    const i64 n = a.mul({B, T, H, D});
    a.need("x", x, n);
    a.need("out", out, n);
    if (n > 0) {
      a.need("cos", cs, a.mul(posOffset + T, D / 2));
      a.need("sin", sn, a.mul(posOffset + T, D / 2));
    }
    rope(x.p, out.p, cs.p, sn.p, B, T, H, D, posOffset, inverse);
    return undefinedValue(env);
  });
}

struct AttnDims {
  i64 B, Tq, Tk, Hq, Hkv, D;
};

AttnDims attnDims(const Args& a, size_t i) {
  AttnDims d{a.size(i, "B"),      a.size(i + 1, "Tq"),  a.size(i + 2, "Tk"),
             a.size(i + 3, "Hq"), a.size(i + 4, "Hkv"), a.size(i + 5, "D")};
  if (d.Hkv == 0 ? d.Hq != 0 : d.Hq % d.Hkv != 0)
    a.fail("Hq (" + std::to_string(d.Hq) + ") must be a multiple of Hkv (" + std::to_string(d.Hkv) + ")");
  if (d.Tq > kMaxInt || d.Tk > kMaxInt || a.mul(d.Hq, d.D) > kMaxInt) a.fail("dimensions exceed 2^31");
  return d;
}

KERNEL(attention) {
  return guard(env, [&] {
    Args a(env, info, "attention", 13);
    const F32 q = a.f32(0, "q"), k = a.f32(1, "k"), v = a.f32(2, "v"), out = a.f32(3, "out");
    const F32 lse = a.f32(4, "lse");
    const AttnDims d = attnDims(a, 5);
    const float scale = (float)a.num(11, "scale");
    const bool causal = a.boolean(12, "causal");
    if (causal && d.Tq > d.Tk)
      a.fail("causal needs Tq <= Tk (got " + std::to_string(d.Tq) + " > " + std::to_string(d.Tk) + ")");
    const i64 nq = a.mul({d.B, d.Tq, d.Hq, d.D}), nk = a.mul({d.B, d.Tk, d.Hkv, d.D});
    a.need("q", q, nq);
    a.need("k", k, nk);
    a.need("v", v, nk);
    a.need("out", out, nq);
    a.need("lse", lse, a.mul({d.B, d.Hq, d.Tq}));
    attention(q.p, k.p, v.p, out.p, lse.p, d.B, d.Tq, d.Tk, d.Hq, d.Hkv, d.D, scale, causal);
    return undefinedValue(env);
  });
}

KERNEL(attentionBackward) {
  return guard(env, [&] {
    Args a(env, info, "attentionBackward", 17);
    const F32 q = a.f32(0, "q"), k = a.f32(1, "k"), v = a.f32(2, "v"), out = a.f32(3, "out");
    const F32 lse = a.f32(4, "lse"), gout = a.f32(5, "gout"), gq = a.f32(6, "gq"), gk = a.f32(7, "gk");
    const F32 gv = a.f32(8, "gv");
    const AttnDims d = attnDims(a, 9);
    const float scale = (float)a.num(15, "scale");
    const bool causal = a.boolean(16, "causal");
    const i64 nq = a.mul({d.B, d.Tq, d.Hq, d.D}), nk = a.mul({d.B, d.Tk, d.Hkv, d.D});
    a.need("q", q, nq);
    a.need("k", k, nk);
    a.need("v", v, nk);
    a.need("out", out, nq);
    a.need("lse", lse, a.mul({d.B, d.Hq, d.Tq}));
    a.need("gout", gout, nq);
    a.need("gq", gq, nq);
    a.need("gk", gk, nk);
    a.need("gv", gv, nk);
    attention_backward(q.p, k.p, v.p, out.p, lse.p, gout.p, gq.p, gk.p, gv.p, d.B, d.Tq, d.Tk, d.Hq, d.Hkv,
                       d.D, scale, causal);
    return undefinedValue(env);
  });
}

void checkTargets(const Args& a, const int32_t* t, i64 rows, i64 V, i64 ignoreIndex) {
  for (i64 r = 0; r < rows; r++)
    if (t[r] != ignoreIndex && (t[r] < 0 || t[r] >= V))
      a.fail("targets[" + std::to_string(r) + "] = " + std::to_string(t[r]) + " is outside [0, " +
             std::to_string(V) + ") and is not the ignore index " + std::to_string(ignoreIndex));
}

KERNEL(crossEntropy) {
  return guard(env, [&] {
    Args a(env, info, "crossEntropy", 7);
    const F32 logits = a.f32(0, "logits");
    i64 nT;
    const int32_t* t = a.i32(1, "targets", &nT);
    const F32 loss = a.f32(2, "loss"), lse = a.f32(3, "lse");
    const i64 rows = a.size(4, "rows"), V = a.size(5, "V"), ignore = a.integer(6, "ignoreIndex");
    a.need("logits", logits, a.mul(rows, V));
    a.needLen("targets", nT, rows);
    a.need("loss", loss, rows);
    a.need("lse", lse, rows);
    checkTargets(a, t, rows, V, ignore);
    cross_entropy(logits.p, t, loss.p, lse.p, rows, V, ignore);
    return undefinedValue(env);
  });
}

KERNEL(crossEntropyBackward) {
  return guard(env, [&] {
    Args a(env, info, "crossEntropyBackward", 8);
    const F32 logits = a.f32(0, "logits");
    i64 nT;
    const int32_t* t = a.i32(1, "targets", &nT);
    const F32 lse = a.f32(2, "lse"), gloss = a.f32(3, "gloss"), gl = a.f32(4, "glogits");
    const i64 rows = a.size(5, "rows"), V = a.size(6, "V"), ignore = a.integer(7, "ignoreIndex");
    a.need("logits", logits, a.mul(rows, V));
    a.needLen("targets", nT, rows);
    a.need("lse", lse, rows);
    a.need("gloss", gloss, rows);
    a.need("glogits", gl, a.mul(rows, V));
    checkTargets(a, t, rows, V, ignore);
    cross_entropy_backward(logits.p, t, lse.p, gloss.p, gl.p, rows, V, ignore);
    return undefinedValue(env);
  });
}

KERNEL(swiglu) {
  return guard(env, [&] {
    Args a(env, info, "swiglu", 4);
    const F32 g = a.f32(0, "gate"), u = a.f32(1, "up"), out = a.f32(2, "out");
    const i64 n = a.size(3, "n");
    a.need("gate", g, n);
    a.need("up", u, n);
    a.need("out", out, n);
    swiglu(g.p, u.p, out.p, n);
    return undefinedValue(env);
  });
}

KERNEL(swigluBackward) {
  return guard(env, [&] {
    Args a(env, info, "swigluBackward", 6);
    const F32 g = a.f32(0, "gate"), u = a.f32(1, "up"), go = a.f32(2, "gout"), gg = a.f32(3, "ggate");
    const F32 gu = a.f32(4, "gup");
    const i64 n = a.size(5, "n");
    a.need("gate", g, n);
    a.need("up", u, n);
    a.need("gout", go, n);
    a.need("ggate", gg, n);
    a.need("gup", gu, n);
    swiglu_backward(g.p, u.p, go.p, gg.p, gu.p, n);
    return undefinedValue(env);
  });
}

// A JS array of Float32Array (or, when allowNull, null entries) named "<name> i" in errors.
std::vector<F32> f32List(const Args& a, size_t i, const char* name, bool allowNull) {
  bool isArr = false;
  napi_is_array(a.env, a.v[i], &isArr);
  if (!isArr) a.fail(std::string(name) + " must be an array of Float32Array");
  uint32_t len;
  napi_get_array_length(a.env, a.v[i], &len);
  if (len > 4096) a.fail(std::string(name) + " has more than 4096 entries");
  std::vector<F32> out(len);
  for (uint32_t k = 0; k < len; k++) {
    napi_value e;
    napi_get_element(a.env, a.v[i], k, &e);
    napi_valuetype t;
    napi_typeof(a.env, e, &t);
    if (allowNull && (t == napi_null || t == napi_undefined)) {
      out[k] = {nullptr, 0};
      continue;
    }
    const std::string nm = std::string(name) + " " + std::to_string(k);
    bool is = false;
    napi_is_typedarray(a.env, e, &is);
    napi_typedarray_type tt = napi_int8_array;
    size_t n = 0;
    void* d = nullptr;
    if (is) napi_get_typedarray_info(a.env, e, &tt, &n, &d, nullptr, nullptr);
    if (tt == napi_float64_array)
      a.fail(nm +
             " is a Float64Array; the native backend is float32-only (use ATTNRES_BACKEND=reference for "
             "float64)");
    if (!is || tt != napi_float32_array) a.fail(nm + " must be a Float32Array");
    out[k] = {static_cast<float*>(d), (i64)n};
  }
  return out;
}

KERNEL(ddlRead) {
  return guard(env, [&] {
    Args a(env, info, "ddlRead", 6);
    const F32 X = a.f32(0, "X"), C = a.f32(1, "C"), x = a.f32(2, "x");
    const i64 rows = a.size(3, "rows"), d = a.size(4, "d"), dv = a.size(5, "dv");
    a.need("X", X, a.mul(a.mul(rows, d), dv));
    a.need("C", C, a.mul(d, dv));
    a.need("x", x, a.mul(rows, d));
    ddl_read(X.p, C.p, x.p, rows, d, dv);
    return undefinedValue(env);
  });
}

KERNEL(ddlReadBackward) {
  return guard(env, [&] {
    Args a(env, info, "ddlReadBackward", 8);
    const F32 X = a.f32(0, "X"), C = a.f32(1, "C"), gx = a.f32(2, "gx"), gX = a.f32OrNull(3, "gX");
    const F32 gC = a.f32(4, "gC");
    const i64 rows = a.size(5, "rows"), d = a.size(6, "d"), dv = a.size(7, "dv");
    const i64 n = a.mul(a.mul(rows, d), dv);
    a.need("X", X, n);
    a.need("C", C, a.mul(d, dv));
    a.need("gx", gx, a.mul(rows, d));
    if (gX.p != nullptr) a.need("gX", gX, n);
    a.need("gC", gC, a.mul(d, dv));
    ddl_read_backward(X.p, C.p, gx.p, gX.p, gC.p, rows, d, dv);
    return undefinedValue(env);
  });
}

KERNEL(ddlUpdate) {
  return guard(env, [&] {
    Args a(env, info, "ddlUpdate", 10);
    const F32 X = a.f32(0, "X"), k = a.f32(1, "k"), beta = a.f32(2, "beta"), v = a.f32(3, "v");
    const F32 Y = a.f32(4, "Y");
    const i64 rows = a.size(5, "rows"), d = a.size(6, "d"), dv = a.size(7, "dv");
    const F32 C = a.f32OrNull(8, "C"), x = a.f32OrNull(9, "x");
    const i64 n = a.mul(a.mul(rows, d), dv);
    a.need("X", X, n);
    a.need("k", k, a.mul(rows, d));
    a.need("beta", beta, rows);
    a.need("v", v, a.mul(rows, dv));
    a.need("Y", Y, n);
    if ((C.p == nullptr) != (x.p == nullptr)) a.fail("C and x must both be given or both be null");
    if (C.p != nullptr) {
      a.need("C", C, a.mul(d, dv));
      a.need("x", x, a.mul(rows, d));
    }
    ddl_update(X.p, k.p, beta.p, v.p, Y.p, C.p, x.p, rows, d, dv);
    return undefinedValue(env);
  });
}

KERNEL(ddlUpdateBackward) {
  return guard(env, [&] {
    Args a(env, info, "ddlUpdateBackward", 13);
    const F32 X = a.f32(0, "X"), k = a.f32(1, "k"), beta = a.f32(2, "beta"), v = a.f32(3, "v");
    const F32 gY = a.f32(4, "gY"), gX = a.f32OrNull(5, "gX");
    const bool accumulate = a.boolean(6, "accumulate");
    const F32 gk = a.f32(7, "gk"), gbeta = a.f32(8, "gbeta"), gv = a.f32(9, "gv");
    const i64 rows = a.size(10, "rows"), d = a.size(11, "d"), dv = a.size(12, "dv");
    const i64 n = a.mul(a.mul(rows, d), dv);
    a.need("X", X, n);
    a.need("k", k, a.mul(rows, d));
    a.need("beta", beta, rows);
    a.need("v", v, a.mul(rows, dv));
    a.need("gY", gY, n);
    if (gX.p != nullptr) a.need("gX", gX, n);
    a.need("gk", gk, a.mul(rows, d));
    a.need("gbeta", gbeta, rows);
    a.need("gv", gv, a.mul(rows, dv));
    ddl_update_backward(X.p, k.p, beta.p, v.p, gY.p, gX.p, accumulate, gk.p, gbeta.p, gv.p, rows, d, dv);
    return undefinedValue(env);
  });
}

KERNEL(depthRoute) {
  return guard(env, [&] {
    Args a(env, info, "depthRoute", 10, 12);
    // next (slot 10) and prior (slot 11) are objects: their fields become slots 10-15 and 16-20
    const bool hasNext = !a.isNull(10), hasPrior = !a.isNull(11);
    a.v[16] = a.v[11];
    a.spread(16, {"acc", "stats", "logits", "rstd", "n"}, "prior");
    a.spread(10, {"w", "g", "acc", "stats", "logits", "rstd"}, "next");
    const std::vector<F32> srcs = f32List(a, 0, "source", false);
    const F32 w = a.f32(1, "w"), g = a.f32(2, "g"), out = a.f32(3, "out"), alpha = a.f32(4, "alpha");
    const F32 rstd = a.f32(5, "rstd");
    const i64 rows = a.size(6, "rows"), d = a.size(7, "d");
    const float eps = (float)a.num(8, "eps");
    const F32 base = a.f32OrNull(9, "base");
    if (base.p != nullptr) a.need("base", base, a.mul(rows, d));
    const i64 N = (i64)srcs.size();
    if (N == 0) a.fail("no sources");
    std::vector<const float*> ptrs(N);
    for (i64 i = 0; i < N; i++) {
      a.needLen(("source " + std::to_string(i)).c_str(), srcs[i].n, a.mul(rows, d));
      ptrs[i] = srcs[i].p;
    }
    a.need("w", w, d);
    a.need("g", g, d);
    a.need("out", out, a.mul(rows, d));
    a.need("alpha", alpha, a.mul(rows, N));
    a.need("rstd", rstd, a.mul(rows, N));
    if (hasNext && hasPrior) a.fail("a call cannot both continue a prior sum and start the next call's");
    RouteNext next{};
    RoutePrior prior{};
    if (hasNext) {
      const F32 nw = a.f32(10, "next.w"), ng = a.f32(11, "next.g"), acc = a.f32(12, "next.acc");
      const F32 stats = a.f32(13, "next.stats"), logits = a.f32(14, "next.logits"),
                nr = a.f32(15, "next.rstd");
      a.need("next.w", nw, d);
      a.need("next.g", ng, d);
      a.need("next.acc", acc, a.mul(rows, d));
      a.need("next.stats", stats, a.mul(rows, 2));
      a.need("next.logits", logits, a.mul(rows, N));
      a.need("next.rstd", nr, a.mul(rows, N));
      next = {nw.p, ng.p, acc.p, stats.p, logits.p, nr.p};
    }
    if (hasPrior) {
      const F32 acc = a.f32(16, "prior.acc"), stats = a.f32(17, "prior.stats");
      const F32 logits = a.f32(18, "prior.logits"), pr = a.f32(19, "prior.rstd");
      const i64 n = a.size(20, "prior.n");
      if (n < 1 || n > N)
        a.fail("prior.n must be in [1, " + std::to_string(N) + "], got " + std::to_string(n));
      a.need("prior.acc", acc, a.mul(rows, d));
      a.need("prior.stats", stats, a.mul(rows, 2));
      a.need("prior.logits", logits, a.mul(rows, n));
      a.need("prior.rstd", pr, a.mul(rows, n));
      prior = {acc.p, stats.p, logits.p, pr.p, n};
    }
    depth_route(ptrs.data(), N, w.p, g.p, base.p, out.p, alpha.p, rstd.p, rows, d, eps,
                hasNext ? &next : nullptr, hasPrior ? &prior : nullptr);
    return undefinedValue(env);
  });
}

KERNEL(depthRouteSourceBackward) {
  return guard(env, [&] {
    Args a(env, info, "depthRouteSourceBackward", 16, 17);
    a.spread(16, {"source", "gsource", "cols"}, "pair");
    const F32 s = a.f32(0, "source");
    const F32 gs = a.f32OrNull(1, "gsource");
    const bool accumulate = a.boolean(2, "accumulate");
    const std::vector<F32> gouts = f32List(a, 3, "gout", false);
    const std::vector<F32> alphas = f32List(a, 4, "alpha", false);
    const std::vector<F32> rstds = f32List(a, 5, "rstd", false);
    i64 nMeta;
    const int32_t* meta = a.i32(6, "meta", &nMeta);
    const std::vector<F32> cs = f32List(a, 7, "c", false);
    const std::vector<F32> ws = f32List(a, 8, "w", false);
    const std::vector<F32> gains = f32List(a, 9, "g", false);
    const std::vector<F32> ps = f32List(a, 10, "p", false);
    const i64 rows = a.size(11, "rows"), d = a.size(12, "d");
    const F32 init = a.f32OrNull(13, "init");
    const std::vector<F32> outs = f32List(a, 14, "out", false);
    const std::vector<F32> bases = f32List(a, 15, "base", true);
    const F32 s2 = a.f32OrNull(16, "pair source");
    const F32 gs2 = a.f32OrNull(17, "pair gsource");
    i64 nCols2 = 0;
    const int32_t* cols2 = a.isNull(18) ? nullptr : a.i32(18, "pair cols", &nCols2);
    const i64 K = (i64)gouts.size();
    for (const auto& [name, list] : {std::pair<const char*, const std::vector<F32>*>{"alphas", &alphas},
                                     {"rstds", &rstds},
                                     {"cs", &cs},
                                     {"ws", &ws},
                                     {"gs", &gains},
                                     {"ps", &ps},
                                     {"outs", &outs},
                                     {"bases", &bases}})
      if ((i64)list->size() != K)
        a.fail(std::to_string(list->size()) + " " + name + " for " + std::to_string(K) + " gradients");
    a.needLen("meta", nMeta, 3 * K);
    a.need("source", s, a.mul(rows, d));
    if (gs.p != nullptr) a.need("gsource", gs, a.mul(rows, d));
    if (init.p != nullptr) a.need("init", init, a.mul(rows, d));
    std::vector<const float*> go(K), al(K), rs(K), w(K), g(K), op(K), bp(K);
    std::vector<float*> p(K), cv(K);
    std::vector<i64> col(K), n(K);
    std::unique_ptr<bool[]> needC(new bool[K > 0 ? K : 1]);
    const bool two = s2.p != nullptr;
    if (two != (gs2.p != nullptr) || two != (cols2 != nullptr))
      a.fail("the pair's source, gsource and cols must be given together");
    std::vector<i64> col2(two ? K : 0);
    if (two) {
      if (gs.p == nullptr) a.fail("a pair needs the first source's gsource too");
      a.need("pair source", s2, a.mul(rows, d));
      a.need("pair gsource", gs2, a.mul(rows, d));
      a.needLen("pair cols", nCols2, K);
    }
    for (i64 k = 0; k < K; k++) {
      col[k] = meta[3 * k];
      n[k] = meta[3 * k + 1];
      needC[k] = meta[3 * k + 2] != 0;
      const std::string kk = " " + std::to_string(k);
      if (needC[k]) a.needLen(("out" + kk).c_str(), outs[k].n, a.mul(rows, d));
      if (needC[k] && bases[k].p != nullptr) a.needLen(("base" + kk).c_str(), bases[k].n, a.mul(rows, d));
      op[k] = outs[k].p;
      bp[k] = bases[k].p;
      if (!(n[k] > 0 && col[k] >= 0 && col[k] < n[k]))
        a.fail("consumer " + std::to_string(k) + " has column " + std::to_string(col[k]) + " of " +
               std::to_string(n[k]));
      const std::string ks = " " + std::to_string(k);
      a.needLen(("gout" + ks).c_str(), gouts[k].n, a.mul(rows, d));
      a.needLen(("alpha" + ks).c_str(), alphas[k].n, a.mul(rows, n[k]));
      a.needLen(("rstd" + ks).c_str(), rstds[k].n, a.mul(rows, n[k]));
      a.needLen(("c" + ks).c_str(), cs[k].n, rows);
      a.needLen(("w" + ks).c_str(), ws[k].n, d);
      a.needLen(("g" + ks).c_str(), gains[k].n, d);
      a.needLen(("p" + ks).c_str(), ps[k].n, d);
      go[k] = gouts[k].p;
      al[k] = alphas[k].p;
      rs[k] = rstds[k].p;
      if (two) {
        col2[k] = cols2[k];
        if (!(col2[k] >= 0 && col2[k] < n[k] && col2[k] != col[k]))
          a.fail("consumer " + std::to_string(k) + " has pair column " + std::to_string(col2[k]) + " of " +
                 std::to_string(n[k]) + " (column " + std::to_string(col[k]) + " is the first source's)");
      }
      cv[k] = cs[k].p;
      w[k] = ws[k].p;
      g[k] = gains[k].p;
      p[k] = ps[k].p;
    }
    depth_route_source_backward(s.p, gs.p, accumulate, init.p, K, go.data(), al.data(), rs.data(), col.data(),
                                n.data(), needC.get(), cv.data(), op.data(), bp.data(), w.data(), g.data(),
                                p.data(), rows, d, s2.p, gs2.p, two ? col2.data() : nullptr);
    return undefinedValue(env);
  });
}

KERNEL(rowDot) {
  return guard(env, [&] {
    Args a(env, info, "rowDot", 5);
    const F32 x = a.f32(0, "a"), y = a.f32(1, "b"), out = a.f32(2, "out");
    const i64 rows = a.size(3, "rows"), d = a.size(4, "d");
    a.need("a", x, a.mul(rows, d));
    a.need("b", y, a.mul(rows, d));
    a.need("out", out, rows);
    row_dot(x.p, y.p, out.p, rows, d);
    return undefinedValue(env);
  });
}

KERNEL(depthRouteBackward) {
  return guard(env, [&] {
    Args a(env, info, "depthRouteBackward", 11);
    const std::vector<F32> srcs = f32List(a, 0, "source", false);
    const F32 w = a.f32(1, "w"), g = a.f32(2, "g"), alpha = a.f32(3, "alpha"), rstd = a.f32(4, "rstd");
    const F32 gout = a.f32(5, "gout");
    const std::vector<F32> gsrcs = f32List(a, 6, "gsource", true);
    const F32 gw = a.f32(7, "gw"), gg = a.f32(8, "gg");
    const i64 rows = a.size(9, "rows"), d = a.size(10, "d");
    const i64 N = (i64)srcs.size();
    if (N == 0) a.fail("no sources");
    if ((i64)gsrcs.size() != N)
      a.fail(std::to_string(gsrcs.size()) + " gradient buffers for " + std::to_string(N) + " sources");
    std::vector<const float*> ptrs(N);
    std::vector<float*> gptrs(N);
    for (i64 i = 0; i < N; i++) {
      a.needLen(("source " + std::to_string(i)).c_str(), srcs[i].n, a.mul(rows, d));
      ptrs[i] = srcs[i].p;
      if (gsrcs[i].p != nullptr)
        a.needLen(("gsource " + std::to_string(i)).c_str(), gsrcs[i].n, a.mul(rows, d));
      gptrs[i] = gsrcs[i].p;
    }
    a.need("w", w, d);
    a.need("g", g, d);
    a.need("alpha", alpha, a.mul(rows, N));
    a.need("rstd", rstd, a.mul(rows, N));
    a.need("gout", gout, a.mul(rows, d));
    a.need("gw", gw, d);
    a.need("gg", gg, d);
    depth_route_backward(ptrs.data(), N, w.p, g.p, alpha.p, rstd.p, gout.p, gptrs.data(), gw.p, gg.p, rows,
                         d);
    return undefinedValue(env);
  });
}

KERNEL(gemvMany) {
  return guard(env, [&] {
    Args a(env, info, "gemvMany", 5);
    const F32 x = a.f32(0, "x");
    const std::vector<F32> ws = f32List(a, 1, "weight", false);
    const std::vector<F32> outs = f32List(a, 2, "out", false);
    const std::vector<i64> ns = a.ints(3, "ns", true);
    const i64 K = a.size(4, "K");
    if (ws.empty()) a.fail("no weights");
    if (outs.size() != ws.size() || ns.size() != ws.size())
      a.fail(std::to_string(ws.size()) + " weights, " + std::to_string(outs.size()) + " outputs and " +
             std::to_string(ns.size()) + " row counts must be equal in number");
    a.need("x", x, K);
    std::vector<const float*> wp(ws.size());
    std::vector<float*> yp(ws.size());
    for (size_t i = 0; i < ws.size(); i++) {
      a.needLen(("weight " + std::to_string(i)).c_str(), ws[i].n, a.mul(ns[i], K));
      a.needLen(("out " + std::to_string(i)).c_str(), outs[i].n, ns[i]);
      wp[i] = ws[i].p;
      yp[i] = outs[i].p;
    }
    gemv_many(x.p, K, (int)ws.size(), wp.data(), yp.data(), ns.data());
    return undefinedValue(env);
  });
}

KERNEL(gemvSwiglu) {
  return guard(env, [&] {
    Args a(env, info, "gemvSwiglu", 6);
    const F32 x = a.f32(0, "x"), wg = a.f32(1, "wg"), wu = a.f32(2, "wu"), out = a.f32(3, "out");
    const i64 N = a.size(4, "N"), K = a.size(5, "K");
    a.need("x", x, K);
    a.need("wg", wg, a.mul(N, K));
    a.need("wu", wu, a.mul(N, K));
    a.need("out", out, N);
    gemv_swiglu(x.p, wg.p, wu.p, out.p, N, K);
    return undefinedValue(env);
  });
}

KERNEL(decodeAttention) {
  return guard(env, [&] {
    Args a(env, info, "decodeAttention", 16);
    const F32 q = a.f32(0, "q"), k = a.f32(1, "k"), v = a.f32(2, "v");
    const F32 qw = a.f32OrNull(3, "qNorm"), kw = a.f32OrNull(4, "kNorm");
    const float eps = (float)a.num(5, "eps");
    const F32 cs = a.f32(6, "cos"), sn = a.f32(7, "sin"), kc = a.f32(8, "kCache"), vc = a.f32(9, "vCache");
    const i64 pos = a.size(10, "pos");
    const F32 out = a.f32(11, "out");
    const i64 Hq = a.size(12, "Hq"), Hkv = a.size(13, "Hkv"), D = a.size(14, "D");
    const float scale = (float)a.num(15, "scale");
    if (Hkv == 0 || Hq % Hkv != 0)
      a.fail(std::to_string(Hq) + " query heads are not a multiple of " + std::to_string(Hkv) + " kv heads");
    if (D % 2 != 0) a.fail("D must be even, got " + std::to_string(D));
    a.need("q", q, a.mul(Hq, D));
    a.need("k", k, a.mul(Hkv, D));
    a.need("v", v, a.mul(Hkv, D));
    if (qw.p != nullptr) a.need("qNorm", qw, D);
    if (kw.p != nullptr) a.need("kNorm", kw, D);
    a.need("cos", cs, a.mul(pos + 1, D / 2));
    a.need("sin", sn, a.mul(pos + 1, D / 2));
    a.need("kCache", kc, a.mul({pos + 1, Hkv, D}));
    a.need("vCache", vc, a.mul({pos + 1, Hkv, D}));
    a.need("out", out, a.mul(Hq, D));
    decode_attention(q.p, k.p, v.p, qw.p, kw.p, eps, cs.p, sn.p, kc.p, vc.p, pos, out.p, Hq, Hkv, D, scale);
    return undefinedValue(env);
  });
}

KERNEL(decodeRoute) {
  return guard(env, [&] {
    Args a(env, info, "decodeRoute", 9);
    const F32 src = a.f32(0, "sources");
    const i64 N = a.size(1, "N");
    const F32 w = a.f32(2, "w"), g = a.f32(3, "g"), h = a.f32(4, "h");
    const float gate = (float)a.num(5, "gate");
    const F32 out = a.f32(6, "out");
    const i64 d = a.size(7, "d");
    const float eps = (float)a.num(8, "eps");
    if (N == 0) a.fail("no sources");
    a.need("sources", src, a.mul(N, d));
    a.need("w", w, d);
    a.need("g", g, d);
    a.need("h", h, d);
    a.need("out", out, d);
    decode_route(src.p, N, w.p, g.p, h.p, gate, out.p, d, eps);
    return undefinedValue(env);
  });
}

KERNEL(adamw) {
  return guard(env, [&] {
    Args a(env, info, "adamw", 12);
    const F32 p = a.f32(0, "p"), g = a.f32(1, "g"), m = a.f32(2, "m"), v = a.f32(3, "v");
    const i64 n = a.size(4, "n");
    const double lr = a.num(5, "lr"), b1 = a.num(6, "beta1"), b2 = a.num(7, "beta2"), eps = a.num(8, "eps");
    const double wd = a.num(9, "wd"), bc1 = a.num(10, "bc1"), bc2 = a.num(11, "bc2");
    a.need("p", p, n);
    a.need("g", g, n);
    a.need("m", m, n);
    a.need("v", v, n);
    adamw(p.p, g.p, m.p, v.p, n, lr, b1, b2, eps, wd, bc1, bc2);
    return undefinedValue(env);
  });
}

// ---- ddl's fused scalar step (ddl.cc)

KERNEL(ddlStep) {
  return guard(env, [&] {
    Args a(env, info, "ddlStep", 14);
    const F32 x = a.f32(0, "x"), u = a.f32(1, "u"), c = a.f32(2, "c"), wb = a.f32(3, "wb"),
              bb = a.f32(4, "bb");
    const F32 wv = a.f32(5, "wv"), bv = a.f32(6, "bv"), y = a.f32(7, "y"), beta = a.f32(8, "beta");
    const F32 aux = a.f32(9, "aux");
    const i64 rows = a.size(10, "rows"), d = a.size(11, "d");
    const float eps2 = (float)a.num(12, "eps2");
    const bool vFromStream = a.boolean(13, "vFromStream");
    const i64 n = a.mul(rows, d);
    a.need("x", x, n);
    a.need("u", u, n);
    a.need("c", c, n);
    a.need("wb", wb, d);
    a.need("bb", bb, 1);
    a.need("wv", wv, d);
    a.need("bv", bv, 1);
    a.need("y", y, n);
    a.need("beta", beta, rows);
    a.need("aux", aux, a.mul(rows, 3));
    ddl_step(x.p, u.p, c.p, wb.p, bb.p, wv.p, bv.p, y.p, beta.p, aux.p, rows, d, eps2, vFromStream);
    return undefinedValue(env);
  });
}

KERNEL(ddlStepBackward) {
  return guard(env, [&] {
    Args a(env, info, "ddlStepBackward", 19);
    const F32 x = a.f32(0, "x"), u = a.f32(1, "u"), c = a.f32(2, "c"), wb = a.f32(3, "wb"),
              wv = a.f32(4, "wv");
    const F32 beta = a.f32(5, "beta"), aux = a.f32(6, "aux"), gy = a.f32(7, "gy");
    const F32 gx = a.f32OrNull(8, "gx"), gu = a.f32OrNull(9, "gu"), gc = a.f32OrNull(10, "gc");
    const i64 accumulate = a.size(11, "accumulate");
    const F32 gwb = a.f32(12, "gwb"), gbb = a.f32(13, "gbb"), gwv = a.f32(14, "gwv"), gbv = a.f32(15, "gbv");
    const i64 rows = a.size(16, "rows"), d = a.size(17, "d");
    const bool vFromStream = a.boolean(18, "vFromStream");
    const i64 n = a.mul(rows, d);
    a.need("x", x, n);
    a.need("u", u, n);
    a.need("c", c, n);
    a.need("wb", wb, d);
    a.need("wv", wv, d);
    a.need("beta", beta, rows);
    a.need("aux", aux, a.mul(rows, 3));
    a.need("gy", gy, n);
    if (gx.p != nullptr) a.need("gx", gx, n);
    if (gu.p != nullptr) a.need("gu", gu, n);
    if (gc.p != nullptr) a.need("gc", gc, n);
    a.need("gwb", gwb, d);
    a.need("gbb", gbb, 1);
    a.need("gwv", gwv, d);
    a.need("gbv", gbv, 1);
    if (accumulate > 7) a.fail("accumulate must be a bit mask below 8");
    ddl_step_backward(x.p, u.p, c.p, wb.p, wv.p, beta.p, aux.p, gy.p, gx.p, gu.p, gc.p, (int)accumulate,
                      gwb.p, gbb.p, gwv.p, gbv.p, rows, d, vFromStream);
    return undefinedValue(env);
  });
}

napi_value Init(napi_env env, napi_value exports) {
#define FN(name) {#name, nullptr, js_##name, nullptr, nullptr, nullptr, napi_enumerable, nullptr}
  napi_property_descriptor props[] = {
      FN(alloc),
      FN(memoryStats),
      FN(threads),
      FN(setThreads),
      FN(info),
      FN(setGemm),
      FN(setGemmBf16),
      FN(setGemmAmx),
      FN(peakGflops),
      FN(readBandwidth),
      FN(gemm),
      FN(unary),
      FN(unaryGrad),
      FN(binary),
      FN(reduce),
      FN(copy),
      FN(fill),
      FN(axpy),
      FN(sumSquares),
      FN(embedding),
      FN(embeddingBackward),
      FN(rmsnorm),
      FN(rmsnormBackward),
      FN(rope),
      FN(attention),
      FN(attentionBackward),
      FN(crossEntropy),
      FN(crossEntropyBackward),
      FN(swiglu),
      FN(swigluBackward),
      FN(ddlRead),
      FN(ddlReadBackward),
      FN(ddlUpdate),
      FN(ddlUpdateBackward),
      FN(depthRoute),
      FN(depthRouteBackward),
      FN(depthRouteSourceBackward),
      FN(rowDot),
      FN(gemvMany),
      FN(gemvSwiglu),
      FN(adamw),
      FN(decodeAttention),
      FN(decodeRoute),
      FN(ddlStep),
      FN(ddlStepBackward),
  };
#undef FN
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

}  // namespace
}  // namespace attnres

NAPI_MODULE(NODE_GYP_MODULE_NAME, attnres::Init)
