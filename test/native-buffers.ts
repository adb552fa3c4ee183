/**
 * Inputs for the native-kernel tests (test/native-kernels.test.ts, test/decode-kernels.test.ts,
 * test/bf16.test.ts): a seeded uniform generator (the seed differs per run and is printed in failure
 * messages), native float32 buffers of random values or NaN, float64 copies for the reference
 * backend, and max|x|.
 */
import { loadNativeBackend } from "../src/backend/native/index.js";

const nat = loadNativeBackend();

/** This run's seed: failure messages print it. */
export const SEED = (Date.now() ^ (process.pid << 10)) >>> 0;
let state = SEED;

/** mulberry32: uniform in [0, 1). */
export function rand(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
export function randInt(n: number): number {
  return Math.floor(rand() * n);
}

/** A native buffer of n random values in [lo, hi). */
export function rnd(n: number, lo = -1, hi = 1): Float32Array {
  const a = nat.alloc("float32", n) as Float32Array;
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * rand();
  return a;
}
/** A native buffer of n NaNs. */
export function nans(n: number): Float32Array {
  const a = nat.alloc("float32", n) as Float32Array;
  a.fill(NaN);
  return a;
}
export function f64(a: Float32Array): Float64Array {
  return Float64Array.from(a);
}
/** max |a[i]| over i < n. */
export function maxAbs(a: ArrayLike<number>, n = a.length): number {
  let m = 0;
  for (let i = 0; i < n; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}
