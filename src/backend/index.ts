/**
 * Backend selection. The default backend is chosen once, at first use:
 *   ATTNRES_BACKEND=reference  forces the pure-TypeScript oracle (float64-capable, slow);
 *   ATTNRES_BACKEND=native     requires the native addon (an error if it is not built);
 *   unset                      native when the addon loads, else reference with a one-line notice.
 * ATTNRES_THREADS=n sets the native backend's thread count (default: all cores). Every ATTNRES_*
 * setting is checked first (env.ts): a value no backend understands is an error, not the default.
 */
import type { Backend, DType } from "./backend.js";
import { checkBackendEnv } from "./env.js";
import { loadNativeBackend } from "./native/index.js";
import { referenceBackend } from "./reference/index.js";

export type { Backend, DType } from "./backend.js";
export { referenceBackend };

let chosen: Backend | null = null;
let native: Backend | null | undefined;

/** The native backend, or null when the addon is not available (the reason is in nativeError()). */
export function nativeBackend(): Backend | null {
  if (native === undefined) {
    checkBackendEnv();
    try {
      native = loadNativeBackend();
      const threads = Number(process.env.ATTNRES_THREADS ?? ""); // checked: unset/empty → 0
      if (threads > 0) native.setThreads(threads);
    } catch (e) {
      native = null;
      nativeLoadError = (e as Error).message;
    }
  }
  return native;
}

let nativeLoadError = "";
export function nativeError(): string {
  return nativeLoadError;
}

export function defaultBackend(): Backend {
  if (chosen) return chosen;
  checkBackendEnv();
  const want = process.env.ATTNRES_BACKEND ?? "";
  if (want === "reference") chosen = referenceBackend;
  else if (want === "native") {
    const n = nativeBackend();
    if (!n) throw new Error(`ATTNRES_BACKEND=native but the native addon is unavailable: ${nativeLoadError}`);
    chosen = n;
  } else {
    // Unset (checkBackendEnv refused anything else): native when it loads.
    const n = nativeBackend();
    if (!n)
      process.stderr.write(
        `attnres: using the slow reference backend because ${nativeLoadError} (ATTNRES_BACKEND=reference hides this notice)\n`,
      );
    chosen = n ?? referenceBackend;
  }
  return chosen;
}

/** Overrides the default backend for this process (tests, benchmarks). */
export function setDefaultBackend(b: Backend): void {
  chosen = b;
}

/** float32 everywhere unless ATTNRES_DTYPE=float64 on a backend that supports it. */
export function defaultDType(backend: Backend): DType {
  const want = process.env.ATTNRES_DTYPE;
  if (want === "float64" && backend.dtypes.includes("float64")) return "float64";
  return "float32";
}
