/**
 * Memory lifetime of tensor buffers. The design, in three parts (docs/architecture.md explains why):
 *
 * 1. Storage is reference counted. A tensor holds one reference to its Storage; views (reshape)
 *    share it. When the count reaches zero the buffer goes back to the pool, not to the system.
 * 2. A pool per backend keeps released buffers by (dtype, length). A training loop allocates the
 *    same sizes every step, so after the first step every allocation is a pool hit and the
 *    process's memory stays flat. `trimPools()` returns pooled buffers to the system.
 * 3. Scopes decide when tensors die. `tidy(fn)` runs fn, then disposes every tensor created inside
 *    it except those it returns (which move to the enclosing scope). Tensors created outside any
 *    scope (parameters, optimizer state) live until disposed explicitly.
 *
 * Poison mode (tests): every buffer handed out is filled with NaN first, so a kernel that forgets
 * to write an element is caught.
 */
import type { Backend, Buf, DType } from "../backend/backend.js";

export class Storage {
  refs = 1;
  constructor(
    readonly buf: Buf,
    readonly backend: Backend,
    readonly dtype: DType,
  ) {}
  retain(): this {
    this.refs++;
    return this;
  }
  release(): void {
    if (this.refs <= 0) return;
    if (--this.refs === 0) poolFor(this.backend).put(this.dtype, this.buf);
  }
}

export interface PoolStats {
  /** Bytes handed out and not yet returned. */
  liveBytes: number;
  /** Bytes held by the pool for reuse. */
  pooledBytes: number;
  /** Highest liveBytes seen since the last resetPeak(). */
  peakLiveBytes: number;
  hits: number;
  misses: number;
}

class BufferPool {
  private free = new Map<string, Buf[]>();
  stats: PoolStats = { liveBytes: 0, pooledBytes: 0, peakLiveBytes: 0, hits: 0, misses: 0 };
  constructor(private readonly backend: Backend) {}

  get(dtype: DType, n: number): Buf {
    const list = this.free.get(`${dtype}:${n}`);
    let buf = list?.pop();
    if (buf) {
      this.stats.hits++;
      this.stats.pooledBytes -= buf.byteLength;
    } else {
      this.stats.misses++;
      buf = this.backend.alloc(dtype, n);
    }
    this.stats.liveBytes += buf.byteLength;
    if (this.stats.liveBytes > this.stats.peakLiveBytes) this.stats.peakLiveBytes = this.stats.liveBytes;
    if (poison) this.backend.fill(buf, NaN, n);
    return buf;
  }

  put(dtype: DType, buf: Buf): void {
    const key = `${dtype}:${buf.length}`;
    let list = this.free.get(key);
    if (!list) this.free.set(key, (list = []));
    list.push(buf);
    this.stats.liveBytes -= buf.byteLength;
    this.stats.pooledBytes += buf.byteLength;
  }

  trim(): void {
    this.free.clear();
    this.stats.pooledBytes = 0;
  }
}

const pools = new Map<Backend, BufferPool>();
let poison = false;

function poolFor(backend: Backend): BufferPool {
  let p = pools.get(backend);
  if (!p) pools.set(backend, (p = new BufferPool(backend)));
  return p;
}

export function allocStorage(backend: Backend, dtype: DType, n: number): Storage {
  if (!backend.dtypes.includes(dtype))
    throw new Error(
      `the ${backend.name} backend does not compute in ${dtype} (it supports ${backend.dtypes.join(", ")})`,
    );
  return new Storage(poolFor(backend).get(dtype, n), backend, dtype);
}

export function poolStats(backend: Backend): PoolStats {
  return { ...poolFor(backend).stats };
}

export function resetPeak(backend: Backend): void {
  const s = poolFor(backend).stats;
  s.peakLiveBytes = s.liveBytes;
}

export function trimPools(): void {
  for (const p of pools.values()) p.trim();
}

/** Fill every buffer handed out with NaN (tests use this to catch unwritten outputs). */
export function setPoison(on: boolean): void {
  poison = on;
}

// ------------------------------------------------------------------ scopes

export interface Disposable {
  dispose(): void;
  /** Called when the tensor escapes a tidy scope (its graph's intermediates are being freed). */
  escapeScope?(): void;
}

const scopes: Set<Disposable>[] = [];

/** Registers a newly created tensor with the innermost scope, if any. */
export function track(t: Disposable): void {
  scopes[scopes.length - 1]?.add(t);
}

/** Removes a tensor from the innermost scope that holds it: it will outlive that scope. */
export function untrack(t: Disposable): void {
  for (let i = scopes.length - 1; i >= 0; i--) if (scopes[i]!.delete(t)) return;
}

function collect(value: unknown, out: Set<unknown>, depth = 0): void {
  if (value === null || typeof value !== "object" || depth > 4) return;
  if (isDisposable(value) && "shape" in value) {
    out.add(value);
    return;
  }
  if (Array.isArray(value)) for (const v of value) collect(v, out, depth + 1);
  else if (value instanceof Map) for (const v of value.values()) collect(v, out, depth + 1);
  else if (Object.getPrototypeOf(value) === Object.prototype)
    for (const v of Object.values(value)) collect(v, out, depth + 1);
}

function isDisposable(v: object): v is Disposable {
  return typeof (v as Disposable).dispose === "function";
}

/**
 * Runs fn in a new scope. Every tensor created inside and not returned (as the value, or inside
 * an array, Map or plain object it returns) is disposed when fn returns or throws; returned
 * tensors move to the enclosing scope, detached from the (now freed) graph that made them, so
 * backward() must run inside the same tidy as the forward pass. fn must be synchronous.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Disposable>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
    if (result instanceof Promise) throw new Error("tidy: fn must be synchronous (it returned a Promise)");
  } catch (e) {
    scopes.pop();
    for (const t of scope) t.dispose();
    throw e;
  }
  scopes.pop();
  const keep = new Set<unknown>();
  collect(result, keep);
  for (const t of scope) {
    if (keep.has(t)) {
      track(t);
      t.escapeScope?.();
    } else t.dispose();
  }
  return result;
}

/** Number of open scopes (0 outside tidy). */
export function scopeDepth(): number {
  return scopes.length;
}
