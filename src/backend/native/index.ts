/**
 * The native backend: a Node-API addon (native/*.cc, built to build/Release/attnres_native.node by
 * `node scripts/build-native.mjs`, the package's install script) implementing every kernel of
 * src/backend/backend.ts in float32 with OpenMP threads and OpenBLAS (or a built-in blocked GEMM).
 *
 * The addon's exports take the same positional arguments as the Backend methods and validate them
 * (types, sizes, extents) themselves, so this wrapper only forwards; alloc() additionally rejects
 * float64 here. The addon is located from the package root (the nearest package.json named
 * "attnres" above this file), which works from src/ under tsx and from compiled dist/src/.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

import { packageRoot } from "../../io/paths.js";
import type { Backend, BinaryOp, Buf, DType, MemoryStats, ReduceOp, UnaryOp } from "../backend.js";

export interface NativeInfo {
  /** Which GEMM the addon was built with ("cblas": a non-OpenBLAS CBLAS found via pkg-config). */
  blas: "openblas" | "cblas" | "builtin";
  /**
   * The kernel set OpenBLAS chose for this CPU ("SkylakeX", "Haswell", ...; OPENBLAS_CORETYPE in the
   * environment forces one), or "" without OpenBLAS.
   */
  blasCore: string;
  /**
   * The GEMM that runs: the linked BLAS ("openblas" / "cblas"), or "builtin", the addon's own
   * blocked GEMM. Built with AVX-512, the addon prefers its own GEMM unless OpenBLAS runs AVX-512
   * kernels itself (see native/gemm.cc); ATTNRES_GEMM=blas|builtin overrides.
   */
  gemm: "openblas" | "cblas" | "builtin";
  /**
   * Whether a Linear over a few rows (8 to 256 rows times a transposed weight: a prefill, a small
   * batch) runs the addon's streamed GEMM whichever `gemm` is: true in an AVX-512 build unless
   * ATTNRES_GEMM=blas (or setNativeGemm("blas")) chose the BLAS for every product.
   */
  streamed: boolean;
  /** Whether bfloat16 GEMM operands are available (an AVX-512 BF16 build): setMatmulDtype. */
  bf16: boolean;
  /**
   * Whether bfloat16 GEMMs run on AMX tiles: true where the CPU has AMX-BF16 (Intel Sapphire Rapids
   * and later), the addon was built for it and the OS grants the tile state, unless ATTNRES_AMX=0 or
   * setNativeAmx(false) chose the AVX-512 BF16 kernel.
   */
  amx: boolean;
  /** OpenMP threads used by kernels. */
  threads: number;
  /** Widest SIMD instruction set the addon was compiled for (e.g. "avx512f", "avx2+fma"). */
  simd: string;
}

/** The raw exports of attnres_native.node. */
interface NativeAddon {
  alloc(n: number): Float32Array;
  memoryStats(): MemoryStats;
  threads(): number;
  setThreads(n: number): void;
  info(): NativeInfo;
  setGemm(kind: "blas" | "builtin" | "default"): void;
  setGemmBf16(on: boolean): void;
  setGemmAmx(on: boolean): void;
  peakGflops(seconds: number): number;
  readBandwidth(seconds: number, repeats: number, bytes: number): { samples: number[]; bytes: number };
  gemm: Backend["gemm"];
  unary(op: UnaryOp, x: Buf, out: Buf, n: number): void;
  unaryGrad(op: UnaryOp, x: Buf, y: Buf, gy: Buf, gx: Buf, n: number): void;
  binary(
    op: BinaryOp,
    a: Buf,
    aStrides: readonly number[],
    b: Buf,
    bStrides: readonly number[],
    out: Buf,
    outShape: readonly number[],
  ): void;
  reduce(op: ReduceOp, x: Buf, shape: readonly number[], axes: readonly number[], out: Buf): void;
  copy: Backend["copy"];
  fill: Backend["fill"];
  axpy: Backend["axpy"];
  sumSquares: Backend["sumSquares"];
  embedding: Backend["embedding"];
  embeddingBackward: Backend["embeddingBackward"];
  rmsnorm: Backend["rmsnorm"];
  rmsnormBackward: Backend["rmsnormBackward"];
  rope: Backend["rope"];
  attention: Backend["attention"];
  attentionBackward: Backend["attentionBackward"];
  crossEntropy: Backend["crossEntropy"];
  crossEntropyBackward: Backend["crossEntropyBackward"];
  swiglu: Backend["swiglu"];
  swigluBackward: Backend["swigluBackward"];
  ddlRead: Backend["ddlRead"];
  ddlReadBackward: Backend["ddlReadBackward"];
  ddlUpdate: Backend["ddlUpdate"];
  ddlUpdateBackward: Backend["ddlUpdateBackward"];
  depthRoute: Backend["depthRoute"];
  depthRouteBackward: Backend["depthRouteBackward"];
  depthRouteSourceBackward: Backend["depthRouteSourceBackward"];
  rowDot: Backend["rowDot"];
  gemvMany: Backend["gemvMany"];
  gemvSwiglu: Backend["gemvSwiglu"];
  adamw: Backend["adamw"];
  decodeAttention: Backend["decodeAttention"];
  decodeRoute: Backend["decodeRoute"];
  ddlStep: Backend["ddlStep"];
  ddlStepBackward: Backend["ddlStepBackward"];
}

const ADDON_RELATIVE = join("build", "Release", "attnres_native.node");

let addon: NativeAddon | null = null;

function loadAddon(): NativeAddon {
  if (addon !== null) return addon;
  const root = packageRoot();
  const path = join(root, ADDON_RELATIVE);
  if (!existsSync(path)) {
    throw new Error(
      `the native addon ${path} is not built: build it with \`npm rebuild attnres\` ` +
        "(in a clone of attnres: `npm run build:native`; needs a C++ compiler, and libopenblas-dev " +
        "for full speed)",
    );
  }
  const require = createRequire(import.meta.url);
  try {
    addon = require(path) as NativeAddon;
  } catch (e) {
    throw new Error(
      `the native addon ${path} does not load (${(e as Error).message}): rebuild it with ` +
        "`npm rebuild attnres` (in a clone of attnres: `npm run build:native`)",
      { cause: e },
    );
  }
  return addon;
}

let backend: Backend | null = null;

/** The native backend (loads the addon on first use; throws with build instructions if it is missing). */
export function loadNativeBackend(): Backend {
  if (backend !== null) return backend;
  const a = loadAddon();
  backend = {
    name: "native",
    dtypes: ["float32"],
    alloc(dtype: DType, n: number): Buf {
      if (dtype !== "float32")
        throw new Error("native backend is float32-only; use ATTNRES_BACKEND=reference for float64");
      return a.alloc(n);
    },
    memoryStats: () => a.memoryStats(),
    threads: () => a.threads(),
    setThreads: (n) => a.setThreads(n),
    setMatmulDtype: (dtype) => {
      if (dtype === "bfloat16" && !a.info().bf16)
        throw new Error(
          "bfloat16 matmuls need a CPU with AVX-512 BF16 instructions (and the addon built on it); this one has none",
        );
      a.setGemmBf16(dtype === "bfloat16");
    },
    gemm: a.gemm,
    unary: a.unary,
    unaryGrad: a.unaryGrad,
    binary: a.binary,
    reduce: a.reduce,
    copy: a.copy,
    fill: a.fill,
    axpy: a.axpy,
    sumSquares: a.sumSquares,
    embedding: a.embedding,
    embeddingBackward: a.embeddingBackward,
    rmsnorm: a.rmsnorm,
    rmsnormBackward: a.rmsnormBackward,
    rope: a.rope,
    attention: a.attention,
    attentionBackward: a.attentionBackward,
    crossEntropy: a.crossEntropy,
    crossEntropyBackward: a.crossEntropyBackward,
    swiglu: a.swiglu,
    swigluBackward: a.swigluBackward,
    ddlRead: a.ddlRead,
    ddlReadBackward: a.ddlReadBackward,
    ddlUpdate: a.ddlUpdate,
    ddlUpdateBackward: a.ddlUpdateBackward,
    depthRoute: a.depthRoute,
    depthRouteBackward: a.depthRouteBackward,
    depthRouteSourceBackward: a.depthRouteSourceBackward,
    rowDot: a.rowDot,
    gemvMany: a.gemvMany,
    gemvSwiglu: a.gemvSwiglu,
    adamw: a.adamw,
    decodeAttention: a.decodeAttention,
    decodeRoute: a.decodeRoute,
    ddlStep: a.ddlStep,
    ddlStepBackward: a.ddlStepBackward,
  };
  return backend;
}

/** Build facts of the loaded addon: BLAS, the GEMM in use, OpenMP threads, SIMD level. */
export function nativeInfo(): NativeInfo {
  return loadAddon().info();
}

/**
 * One line for reports: "BLAS openblas (Haswell kernels), GEMM builtin, SIMD avx512f, 2 threads"
 * (with ", bfloat16 GEMM on AMX" where bfloat16 matmuls run on AMX tiles).
 */
export function describeNative(info: NativeInfo = nativeInfo()): string {
  const core = info.blasCore ? ` (${info.blasCore} kernels)` : "";
  const streamed = info.streamed && info.gemm !== "builtin" ? " (Linears over few rows: builtin)" : "";
  const amx = info.amx ? ", bfloat16 GEMM on AMX" : "";
  return `BLAS ${info.blas}${core}, GEMM ${info.gemm}${streamed}${amx}, SIMD ${info.simd}, ${info.threads} threads`;
}

/**
 * Choose the native GEMM for the rest of this process: the linked BLAS or the addon's own (tests
 * compare the two; users set ATTNRES_GEMM instead), or "default" to go back to the choice made
 * without ATTNRES_GEMM. Throws when asking for "blas" in a build without one.
 */
export function setNativeGemm(kind: "blas" | "builtin" | "default"): void {
  loadAddon().setGemm(kind);
}

/**
 * Run bfloat16 GEMMs on AMX tiles (true, the default where available) or with the AVX-512 BF16 dot
 * product (false) for the rest of this process (tests compare the two; users set ATTNRES_AMX=0
 * instead). Throws when asking for AMX where there is none.
 */
export function setNativeAmx(on: boolean): void {
  loadAddon().setGemmAmx(on);
}

/**
 * Measured float32 FMA peak in GFLOP/s summed over the OpenMP threads: every thread runs independent
 * vector FMA chains with the widest FMA compiled in, for about `seconds`.
 */
export function measurePeakGflops(seconds: number): number {
  return loadAddon().peakGflops(seconds);
}

export interface ReadBandwidth {
  /** The median of the samples, GB/s (1e9 bytes per second). */
  gbPerS: number;
  /** One measurement per repetition, GB/s, in order. */
  samples: number[];
  /** Size of the streamed buffer in bytes. */
  bytes: number;
}

/**
 * Measured memory read bandwidth: every OpenMP thread streams its own slice of one buffer, summing
 * it with vector loads, for about `seconds` per sample, `repeats` samples (the median is reported:
 * on a shared machine single samples swing with the neighbours' traffic). The buffer is `bytes`
 * long, by default at least twice the last-level cache the system reports and at least 1 GiB, so
 * that what is measured is memory, not cache. The limit of a memory-bound kernel such as batch-1
 * decoding (weight bytes per token ÷ this).
 */
export function measureReadBandwidth(seconds: number, repeats = 1, bytes = 0): ReadBandwidth {
  const r = loadAddon().readBandwidth(seconds, repeats, bytes);
  const s = [...r.samples].sort((a, b) => a - b);
  const n = s.length;
  const gbPerS = n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
  return { gbPerS, samples: r.samples, bytes: r.bytes };
}
