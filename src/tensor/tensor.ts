/**
 * Tensor: a shaped, contiguous, row-major view of a refcounted Storage on one backend, plus the
 * reverse-mode autograd engine.
 *
 * Every op (src/tensor/ops.ts) computes its output eagerly through backend kernels and, when grad
 * mode is on and an input requires grad, attaches a GradFn: the inputs and a closure mapping the
 * output's gradient to the inputs' gradients. `backward()` walks the graph in reverse topological
 * order under no-grad, frees each intermediate gradient as soon as it has been consumed, and
 * accumulates into `.grad` of leaves (parameters), which are persistent buffers reused every step.
 */
import type { Backend, Buf, DType } from "../backend/backend.js";
import { defaultBackend, defaultDType } from "../backend/index.js";
import { allocStorage, Storage, tidy, track, untrack } from "./memory.js";
import { fmt, sizeOf, type Shape } from "./shape.js";

export interface GradFn {
  /** Op name, used in error messages. */
  readonly name: string;
  readonly inputs: readonly Tensor[];
  /** Gradients of the inputs (null where an input needs none) from the output's gradient. */
  backward(g: Tensor): (Tensor | null)[];
  /**
   * Optional, for ops whose input gradients are large and many (depth routing): like backward,
   * but acc[i], when non-null, is input i's running gradient, owned by the engine and shared
   * with nobody; the op may add its contribution into it and return acc[i] itself.
   */
  backwardInto?(g: Tensor, acc: readonly (Tensor | null)[]): (Tensor | null)[];
}

export interface TensorOptions {
  dtype?: DType;
  backend?: Backend;
  requiresGrad?: boolean;
}

let gradEnabled = true;

/** Runs fn with graph recording off (no GradFn is attached to anything created inside). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export function isGradEnabled(): boolean {
  return gradEnabled;
}

export class Tensor {
  readonly shape: readonly number[];
  readonly size: number;
  requiresGrad = false;
  /** Accumulated gradient (leaves only); persistent across scopes. */
  grad: Tensor | null = null;
  gradFn: GradFn | null = null;
  /** Optional name (parameters carry their checkpoint name). */
  name = "";
  /** Set when this tensor escaped the tidy scope that held its graph's intermediates. */
  graphReleased = false;
  private storage: Storage | null;

  /** A shape-only tensor (no buffer), for counting parameters of models too large to allocate. */
  readonly isMeta: boolean;

  constructor(storage: Storage | null, shape: Shape) {
    this.storage = storage;
    this.shape = Object.freeze([...shape]);
    this.size = sizeOf(shape);
    this.isMeta = storage === null;
    if (storage && storage.buf.length < this.size)
      throw new Error(`internal: storage of ${storage.buf.length} elements for shape ${fmt(shape)}`);
    if (storage) track(this);
  }

  get backend(): Backend {
    return this.live().backend;
  }
  get dtype(): DType {
    return this.live().dtype;
  }
  /** The underlying buffer (first `size` elements belong to this tensor). */
  get data(): Buf {
    return this.live().buf;
  }
  get rank(): number {
    return this.shape.length;
  }
  get isDisposed(): boolean {
    return this.storage === null;
  }
  /** True when no other tensor shares this tensor's buffer. */
  get ownsStorage(): boolean {
    return this.live().refs === 1;
  }

  private live(): Storage {
    if (this.isMeta)
      throw new Error(`tensor ${this.name || fmt(this.shape)} is shape-only (meta): it has no data`);
    if (!this.storage)
      throw new Error(
        `tensor ${this.name || fmt(this.shape)} was used after dispose (a tensor created inside tidy() ` +
          `lives only until tidy returns, unless returned or kept)`,
      );
    return this.storage;
  }

  dispose(): void {
    if (!this.storage) return;
    this.storage.release();
    this.storage = null;
    untrack(this);
  }

  /** A new tensor object sharing this one's buffer, with a new shape of the same size. */
  view(shape: Shape = this.shape): Tensor {
    if (sizeOf(shape) !== this.size)
      throw new Error(`view: cannot view ${fmt(this.shape)} (${this.size} elements) as ${fmt(shape)}`);
    return new Tensor(this.live().retain(), shape);
  }

  /** Called by tidy() when this tensor is returned from its scope: its graph is freed. */
  escapeScope(): void {
    if (this.gradFn) {
      this.gradFn = null;
      this.requiresGrad = false;
      this.graphReleased = true;
    }
  }

  /** Marks this tensor as persistent: it leaves the enclosing scope and lives until disposed. */
  keep(): this {
    untrack(this);
    return this;
  }

  toArray(): number[] {
    return Array.from(this.data.subarray(0, this.size));
  }

  toFloat64Array(): Float64Array {
    return Float64Array.from(this.data.subarray(0, this.size));
  }

  item(): number {
    if (this.size !== 1) throw new Error(`item: tensor has shape ${fmt(this.shape)}, not one element`);
    return this.data[0]!;
  }

  /** Reverse-mode differentiation from this tensor (a scalar unless `grad` is given). */
  backward(grad?: Tensor): void {
    runBackward(this, grad);
  }

  toString(): string {
    return `Tensor(${fmt(this.shape)}, ${this.dtype}, ${this.backend.name})`;
  }
}

// ------------------------------------------------------------------ creation

export function empty(shape: Shape, opts: TensorOptions = {}): Tensor {
  for (const s of shape) if (!Number.isInteger(s) || s < 0) throw new Error(`empty: bad shape ${fmt(shape)}`);
  const backend = opts.backend ?? defaultBackend();
  const dtype = opts.dtype ?? defaultDType(backend);
  const t = new Tensor(allocStorage(backend, dtype, sizeOf(shape)), shape);
  if (opts.requiresGrad) t.requiresGrad = true;
  return t;
}

export function full(shape: Shape, value: number, opts: TensorOptions = {}): Tensor {
  const t = empty(shape, opts);
  t.backend.fill(t.data, value, t.size);
  return t;
}

export function zeros(shape: Shape, opts: TensorOptions = {}): Tensor {
  return full(shape, 0, opts);
}

export function ones(shape: Shape, opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}

export function tensor(values: ArrayLike<number>, shape: Shape, opts: TensorOptions = {}): Tensor {
  if (values.length !== sizeOf(shape))
    throw new Error(`tensor: ${values.length} values do not fill shape ${fmt(shape)}`);
  const t = empty(shape, opts);
  const d = t.data;
  for (let i = 0; i < values.length; i++) d[i] = values[i]!;
  return t;
}

export function scalar(value: number, like: Tensor): Tensor {
  return full([], value, { backend: like.backend, dtype: like.dtype });
}

/** A detached copy with its own storage. */
export function clone(t: Tensor, opts: TensorOptions = {}): Tensor {
  const out = empty(t.shape, { backend: t.backend, dtype: t.dtype, ...opts });
  if (out.backend === t.backend && out.dtype === t.dtype) {
    out.backend.copy(t.data, 0, [1], out.data, 0, [1], [t.size], false);
  } else {
    const src = t.data;
    const dst = out.data;
    for (let i = 0; i < t.size; i++) dst[i] = src[i]!;
  }
  return out;
}

/** The same values on another backend and/or dtype (a detached copy). */
export function to(t: Tensor, backend: Backend, dtype: DType = t.dtype): Tensor {
  return clone(t, { backend, dtype });
}

/** Attaches a GradFn to `out` when grad mode is on and some input requires grad. Returns out. */
export function record(
  out: Tensor,
  name: string,
  inputs: readonly Tensor[],
  backward: GradFn["backward"],
  backwardInto?: GradFn["backwardInto"],
): Tensor {
  if (gradEnabled && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.gradFn = backwardInto ? { name, inputs, backward, backwardInto } : { name, inputs, backward };
  }
  return out;
}

// ------------------------------------------------------------------ backward engine

function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  seen.add(root);
  while (stack.length) {
    const top = stack[stack.length - 1]!;
    const [t, i] = top;
    const ins = t.gradFn?.inputs ?? [];
    if (i < ins.length) {
      top[1]++;
      const next = ins[i]!;
      if (next.requiresGrad && !seen.has(next)) {
        seen.add(next);
        stack.push([next, 0]);
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }
  return order; // inputs before outputs
}

function addInto(dst: Tensor, src: Tensor): void {
  dst.backend.axpy(dst.size, 1, src.data, dst.data);
}

function runBackward(root: Tensor, grad?: Tensor): void {
  if (root.graphReleased)
    throw new Error(
      "backward: the graph behind this tensor was freed when the tidy() that created it returned; call backward() inside that tidy",
    );
  if (!root.requiresGrad)
    throw new Error(
      "backward: this tensor does not require grad (no parameter or input that needs grad led to it)",
    );
  if (!grad && root.size !== 1)
    throw new Error(`backward: the root has shape ${fmt(root.shape)}; pass a gradient for a non-scalar root`);
  noGrad(() =>
    tidy(() => {
      const order = topoOrder(root);
      const grads = new Map<Tensor, Tensor>();
      grads.set(root, grad ? grad.view() : full(root.shape, 1, { backend: root.backend, dtype: root.dtype }));
      for (let n = order.length - 1; n >= 0; n--) {
        const t = order[n]!;
        const g = grads.get(t);
        if (!g) continue;
        grads.delete(t);
        const fn = t.gradFn;
        if (!fn) {
          accumulateLeaf(t, g);
          continue;
        }
        let acc: (Tensor | null)[] | null = null;
        if (fn.backwardInto) {
          const seen = new Set<Tensor>();
          acc = fn.inputs.map((input) => {
            const prev = grads.get(input);
            const ok = prev && prev.ownsStorage && !seen.has(input);
            seen.add(input);
            return ok ? prev! : null;
          });
        }
        const gs = tidy(() => (acc && fn.backwardInto ? fn.backwardInto(g, acc) : fn.backward(g)));
        // First give every input that needs a gradient its own tensor object (a view where the
        // backward returned one tensor for several inputs), then accumulate: disposing one
        // object never frees a buffer another input still holds.
        const used = new Set<Tensor>();
        const mine = fn.inputs.map((input, i) => {
          const gi = gs[i];
          if (!gi || !input.requiresGrad) return null;
          if (gi.shape.length !== input.shape.length || gi.shape.some((s, k) => s !== input.shape[k]))
            throw new Error(
              `internal: ${fn.name} backward gave a gradient of shape ${fmt(gi.shape)} for an input of shape ${fmt(input.shape)}`,
            );
          const own = used.has(gi) ? gi.view() : gi;
          used.add(gi);
          return own;
        });
        fn.inputs.forEach((input, i) => {
          const gi = mine[i];
          if (!gi || gi === acc?.[i]) return; // null, or already accumulated in place
          const prev = grads.get(input);
          if (!prev) grads.set(input, gi);
          else if (prev.ownsStorage) {
            addInto(prev, gi);
            gi.dispose();
          } else {
            const sum = clone(prev);
            addInto(sum, gi);
            prev.dispose();
            gi.dispose();
            grads.set(input, sum);
          }
        });
        for (const gi of gs) if (gi && !used.has(gi) && gi !== g) gi.dispose();
        if (!used.has(g)) g.dispose();
      }
    }),
  );
}

function accumulateLeaf(t: Tensor, g: Tensor): void {
  if (t.grad && !t.grad.isDisposed) {
    addInto(t.grad, g);
    g.dispose();
  } else if (g.ownsStorage) {
    t.grad = g.keep();
  } else {
    t.grad = clone(g).keep();
    g.dispose();
  }
}
