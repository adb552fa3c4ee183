/**
 * Tensor: a shaped, contiguous, row-major view of a refcounted Storage on one backend, plus the
 * reverse-mode autograd engine.
 *
 * Every op (src/tensor/ops.ts) computes its output eagerly through backend kernels and, when grad
 * mode is on and an input requires grad, attaches a GradFn: the inputs and a closure mapping the
 * output's gradient to the inputs' gradients. `backward()` walks the graph in reverse topological
 * order under no-grad, frees each intermediate gradient as soon as it has been consumed, and
 * accumulates into `.grad` of leaves (parameters), which are persistent buffers reused every step.
 *
 * Deferred contributions (the one rule beyond plain reverse-mode; used by depth routing): an op's
 * backwardInto may return, for an input, a `Deferred` {group, item} instead of a tensor. The
 * engine collects them per input. When the walk reaches a non-leaf tensor t, every op that read t
 * has run its backward (they come later in the forward), so just before t's gradient is used the
 * engine calls each group's combine(t, items, acc) once, with all of that group's items for t (in
 * the order they were made) and acc, t's gradient accumulated so far (owned by the engine alone;
 * null when there is none): the group adds into acc in place and returns it, or returns a new
 * tensor when acc is null. A leaf's deferred contributions are combined after the walk (in the
 * order the walk reached the leaves), so a group may complete them from work done at non-leaves
 * reached later (e.g. a sum over rows that needs several sources). Leaves without deferred
 * contributions accumulate when reached, as always. After the walk, even when it fails, every
 * group's end() runs once, so a group can free what it kept between backward and combine.
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
   * with nobody; the op may add its contribution into it and return acc[i] itself. An entry may
   * also be a Deferred contribution (see the file comment).
   */
  backwardInto?(g: Tensor, acc: readonly (Tensor | null)[]): (Tensor | Deferred | null)[];
}

/** Combines deferred gradient contributions (see the file comment). */
export interface DeferGroup {
  /**
   * Adds the contributions `items` (all of this group's for t) to t's gradient: into acc when it
   * is non-null (returning acc), else into a new tensor of t's shape (or null when none is due).
   * When the group sets acceptsBase, t's gradient so far may come as base instead (acc null): a
   * tensor the group may read but not write (a view shared with another gradient); it then
   * returns a new tensor holding base plus the contributions.
   */
  combine(t: Tensor, items: readonly unknown[], acc: Tensor | null, base?: Tensor): Tensor | null;
  acceptsBase?: boolean;
  /** Called once after every backward pass the group took part in (also when it failed). */
  end?(): void;
}

/** A gradient contribution to one input, combined later by its group. */
export interface Deferred {
  readonly group: DeferGroup;
  readonly item: unknown;
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
  const groups = new Set<DeferGroup>();
  try {
    noGrad(() => tidy(() => walk(root, grad, groups)));
  } finally {
    for (const group of groups) group.end?.();
  }
}

function walk(root: Tensor, grad: Tensor | undefined, groups: Set<DeferGroup>): void {
  const order = topoOrder(root);
  const grads = new Map<Tensor, Tensor>();
  /** Deferred contributions per tensor, by group (in the order first seen). */
  const deferred = new Map<Tensor, Map<DeferGroup, unknown[]>>();
  /** Leaves with deferred contributions, in the order reached, with their gradient so far. */
  const lateLeaves: [Tensor, Map<DeferGroup, unknown[]>, Tensor | null][] = [];
  grads.set(root, grad ? grad.view() : full(root.shape, 1, { backend: root.backend, dtype: root.dtype }));
  for (let n = order.length - 1; n >= 0; n--) {
    const t = order[n]!;
    let g = grads.get(t);
    const late = deferred.get(t);
    if (late) {
      deferred.delete(t);
      if (!t.gradFn) {
        grads.delete(t);
        lateLeaves.push([t, late, g ?? null]);
        continue;
      }
      g = combineDeferred(t, late, g ?? null) ?? undefined;
    }
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
    fn.inputs.forEach((input, i) => {
      const gi = gs[i];
      if (!gi || gi instanceof Tensor || !input.requiresGrad) return;
      groups.add(gi.group);
      let byGroup = deferred.get(input);
      if (!byGroup) deferred.set(input, (byGroup = new Map()));
      const items = byGroup.get(gi.group);
      if (items) items.push(gi.item);
      else byGroup.set(gi.group, [gi.item]);
    });
    // First give every input that needs a gradient its own tensor object (a view where the
    // backward returned one tensor for several inputs), then accumulate: disposing one
    // object never frees a buffer another input still holds.
    const used = new Set<Tensor>();
    const mine = fn.inputs.map((input, i) => {
      const gi = gs[i];
      if (!(gi instanceof Tensor) || !input.requiresGrad) return null;
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
    for (const gi of gs) if (gi instanceof Tensor && !used.has(gi) && gi !== g) gi.dispose();
    if (!used.has(g)) g.dispose();
  }
  for (const [t, late, g] of lateLeaves) {
    const total = combineDeferred(t, late, g);
    if (total) accumulateLeaf(t, total);
  }
}

/** t's gradient g (or null) plus its deferred contributions, each group's combined at once. */
function combineDeferred(t: Tensor, late: Map<DeferGroup, unknown[]>, g: Tensor | null): Tensor | null {
  let acc = g;
  // a gradient shared with another (a view): the first group takes it as a read-only base when it
  // can (adding it in its own kernel), else it is copied first
  let base = acc && !acc.ownsStorage ? acc : null;
  if (base) acc = null;
  for (const [group, items] of late) {
    if (base && !group.acceptsBase) {
      acc = clone(base);
      base.dispose();
      base = null;
    }
    const before = acc;
    const b = base;
    const out = tidy(() => (b ? group.combine(t, items, null, b) : group.combine(t, items, before)));
    if (before && out !== before)
      throw new Error("internal: a deferred gradient group did not add into the gradient it was given");
    if (b) {
      if (!out || out === b)
        throw new Error("internal: a deferred gradient group did not return a new gradient for its base");
      b.dispose();
      base = null;
    }
    acc = out;
  }
  return acc;
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
