/**
 * Copying named weights into a model and out of it. Names are the HF checkpoint names that
 * `Module.namedParameters()` yields; shape mismatches, missing and unexpected tensors are errors
 * naming the tensor and the expected shape; a NaN or ±Inf value is an error naming the tensor and
 * the index (no model may start from non-finite weights).
 */
import type { Module } from "../nn/module.js";
import { fmt } from "../tensor/shape.js";

export interface NamedArray {
  shape: readonly number[];
  data: ArrayLike<number>;
}

export interface LoadOptions {
  /** Source name for error messages (a file or folder). */
  source?: string;
  /** Tensors in the source that the model does not have: error (default) or ignore. */
  allowUnexpected?: boolean | ((name: string) => boolean);
}

export function loadWeights(
  model: Module,
  tensors: ReadonlyMap<string, NamedArray>,
  opts: LoadOptions = {},
): void {
  const src = opts.source ?? "checkpoint";
  checkWeightShapes(model, tensors, opts);
  for (const [name, p] of model.namedParameters()) {
    const from = tensors.get(name)!.data;
    const d = p.data;
    for (let i = 0; i < p.size; i++) d[i] = from[i]!;
    checkFinite(src, name, d, p.size);
  }
}

/**
 * The checks of `loadWeights` that need only names and shapes (the model may be shape-only):
 * every parameter present with its shape, nothing unexpected. Throws one line naming the problems.
 */
export function checkWeightShapes(
  model: Module,
  tensors: ReadonlyMap<string, { shape: readonly number[] }>,
  opts: LoadOptions = {},
): void {
  const src = opts.source ?? "checkpoint";
  const params = new Map(model.namedParameters());
  const problems: string[] = [];
  for (const [name, p] of params) {
    const t = tensors.get(name);
    if (!t) problems.push(`missing tensor ${name} (expected shape ${fmt(p.shape)})`);
    else if (t.shape.length !== p.shape.length || t.shape.some((s, i) => s !== p.shape[i]))
      problems.push(`tensor ${name} has shape ${fmt(t.shape)}, expected ${fmt(p.shape)}`);
  }
  const allow = opts.allowUnexpected ?? false;
  for (const name of tensors.keys())
    if (!params.has(name) && !(typeof allow === "function" ? allow(name) : allow))
      problems.push(`unexpected tensor ${name} (not part of this model's configuration)`);
  if (problems.length)
    throw new Error(
      `${src} does not match the model: ${problems.slice(0, 3).join("; ")}` +
        (problems.length > 3 ? ` (and ${problems.length - 3} more problems)` : ""),
    );
}

/** Throws `${src}: tensor ${name} holds NaN at index i` for the first non-finite of d[0…size). */
export function checkFinite(src: string, name: string, d: ArrayLike<number>, size = d.length): void {
  for (let i = 0; i < size; i++)
    if (!Number.isFinite(d[i]!)) throw new Error(`${src}: tensor ${name} holds ${d[i]} at index ${i}`);
}

/** The model's parameters as plain float arrays, in registration order. */
export function exportWeights(model: Module): [string, NamedArray][] {
  return model.namedParameters().map(([n, p]) => [n, { shape: p.shape, data: p.data.subarray(0, p.size) }]);
}
