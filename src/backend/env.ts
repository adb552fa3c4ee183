/**
 * The ATTNRES_* environment settings the backends read, checked before they are used: a value a
 * backend would not understand is an error naming the setting and what it accepts, never silently
 * the default (a misspelt `ATTNRES_GEMM=builtn` would otherwise time the other GEMM). Unset or
 * empty means the default. No imports, so the command line can check before loading anything.
 *
 *   ATTNRES_BACKEND  native | reference
 *   ATTNRES_THREADS  a positive integer: the native backend's thread count
 *   ATTNRES_GEMM     blas | builtin: the native float32 GEMM
 *   ATTNRES_AMX      0 | 1: bfloat16 matmuls on AMX tiles where the CPU has them (1, the default)
 *   ATTNRES_DTYPE    float32 | float64: the default dtype (float64 on backends that have it)
 */
const SETTINGS: Record<string, { accepts: string; ok: (v: string) => boolean }> = {
  ATTNRES_BACKEND: { accepts: '"native" or "reference"', ok: (v) => v === "native" || v === "reference" },
  ATTNRES_THREADS: { accepts: "a positive integer", ok: (v) => /^[1-9][0-9]{0,3}$/.test(v) },
  ATTNRES_GEMM: { accepts: '"blas" or "builtin"', ok: (v) => v === "blas" || v === "builtin" },
  ATTNRES_AMX: { accepts: '"0" or "1"', ok: (v) => v === "0" || v === "1" },
  ATTNRES_DTYPE: { accepts: '"float32" or "float64"', ok: (v) => v === "float32" || v === "float64" },
};

/** Throws one line for the first ATTNRES_* setting whose value would not be understood. */
export function checkBackendEnv(env: NodeJS.ProcessEnv = process.env): void {
  for (const [name, { accepts, ok }] of Object.entries(SETTINGS)) {
    const v = env[name];
    if (v !== undefined && v !== "" && !ok(v)) throw new Error(`${name} must be ${accepts}, not "${v}"`);
  }
}
