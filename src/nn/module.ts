/**
 * Module: a named tree of parameters, mirroring the HF checkpoint layout so that
 * `namedParameters()` yields exactly the HF tensor names (model.layers.0.self_attn.q_proj.weight…).
 * Parameters are persistent tensors (outside any scope) with requiresGrad set.
 */
import type { Backend, DType } from "../backend/backend.js";
import { Rng } from "../tensor/random.js";
import { fmt } from "../tensor/shape.js";
import { empty, Tensor } from "../tensor/tensor.js";

export interface InitContext {
  backend: Backend;
  dtype: DType;
  rng: Rng;
  /** Create shape-only parameters (no memory): for counting and checking shapes. */
  meta?: boolean;
  /**
   * false: do not draw "normal" initial values (they are zero-filled; constants are still set).
   * For models whose every weight is loaded right after: drawing 600M normals costs far more than
   * reading them, and loadWeights rejects a missing tensor, so no zero survives.
   */
  random?: boolean;
  /** Every parameter created is appended here, in creation order (see `adopt`). */
  created?: Tensor[];
  /**
   * Parameters of another model, in its creation order: the first `adopt.length` parameters created
   * are views of these (same shape, shared buffers, nothing allocated or initialised). A model
   * whose parameters start with another's (a standard model and its routed conversion, whose
   * residual parameters come after the backbone) can so run on the other's weights.
   */
  adopt?: readonly Tensor[];
}

export type Init = { kind: "normal"; std: number } | { kind: "const"; value: number };

export abstract class Module {
  private readonly params_ = new Map<string, Tensor>();
  private readonly children_ = new Map<string, Module>();

  /** Creates and registers a parameter, initialised from ctx.rng in creation order. */
  param(name: string, shape: readonly number[], init: Init, ctx: InitContext): Tensor {
    const k = ctx.created?.length ?? 0;
    const from = ctx.adopt && k < ctx.adopt.length ? ctx.adopt[k]! : null;
    if (from && (from.shape.length !== shape.length || from.shape.some((s, i) => s !== shape[i])))
      throw new Error(
        `internal: parameter ${name} ${fmt(shape)} cannot adopt ${from.name} ${fmt(from.shape)}`,
      );
    const t = from
      ? from.view().keep()
      : ctx.meta
        ? new Tensor(null, shape)
        : empty(shape, { backend: ctx.backend, dtype: ctx.dtype }).keep();
    ctx.created?.push(t);
    if (!ctx.meta && !from) {
      const d = t.data;
      if (init.kind === "const") d.fill(init.value, 0, t.size);
      else if (ctx.random === false) d.fill(0, 0, t.size);
      else for (let i = 0; i < t.size; i++) d[i] = ctx.rng.normal() * init.std;
    }
    t.requiresGrad = true;
    t.name = name;
    if (this.children_.has(name) || this.params_.has(name))
      throw new Error(`module already has a member named ${name}`);
    this.params_.set(name, t);
    return t;
  }

  /** Registers a submodule under `name` (its parameters are named `name.…`). */
  child<M extends Module>(name: string, m: M): M {
    if (this.children_.has(name) || this.params_.has(name))
      throw new Error(`module already has a member named ${name}`);
    this.children_.set(name, m);
    return m;
  }

  /** [name, tensor] for every parameter below this module, in registration order. */
  namedParameters(prefix = ""): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, t] of this.params_) out.push([prefix + n, t]);
    for (const [n, m] of this.children_) out.push(...m.namedParameters(`${prefix}${n}.`));
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  numParameters(): number {
    return this.parameters().reduce((p, t) => p + t.size, 0);
  }

  /** Sets every parameter's gradient to zero (keeping the buffers). */
  zeroGrad(): void {
    for (const p of this.parameters()) if (p.grad) p.backend.fill(p.grad.data, 0, p.grad.size);
  }

  /** Frees every parameter and gradient buffer. The module is unusable afterwards. */
  dispose(): void {
    for (const p of this.parameters()) {
      if (p.isMeta) continue;
      p.grad?.dispose();
      p.dispose();
    }
  }
}
