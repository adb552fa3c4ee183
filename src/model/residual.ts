/**
 * The registry of residual modes (docs/methods.md "Modes"): how the decoder routes its stream
 * between the 2L sublayers. Each mode is one file in src/model/modes/ (its names, config keys,
 * parameters and initialisation, routing per sublayer, trace records, conversion exactness, source
 * labels), implementing the contract in src/model/modes/mode.ts; this file lists them and answers
 * every question about modes that other code asks (config schema, CLI choices, conversion,
 * analysis, bench, training's parameter groups, the plan's memory model).
 *
 *   standard       h ← h + o_j
 *   attnres-full   x_j = route([h0, o_0 … o_{j−1}]); final routing over all of them (no stream)
 *   attnres-block  sources: completed block sums (b_0 = h0) + the running sum of the current block
 *   delta          h kept; x_j = h + route([h0, o_0 … o_{j−1}]) (j ≥ 1); h ← h + o_j
 *   delta-block    h kept; sources [h0, Δ_1 … Δ_k], Δ_b = h at the end of block b − h at its start
 *   ddl            x ← x + β (v − k·x) k, k = o_j/‖o_j‖, β = 2σ(w_β·c + b_β)
 *   ddl-expanded   state X [d, 4]: x_in = Σ_c C[:,c] X[:,c]; X ← X + β k (vᵀ − kᵀX)
 *
 * The built-in modes are a typed table the compiler checks against the light list of names in
 * src/model/names.ts (which the command line's help reads without loading the engine): every
 * name there has its mode here, with the same config value. More modes can be added at run time
 * with `registerMode` (and removed with `unregisterMode`); nothing registers itself on import.
 */
import type { InitContext } from "../nn/module.js";
import type { ModelConfig } from "./config.js";
import { attnresBlock } from "./modes/attnres-block.js";
import { attnresFull } from "./modes/attnres-full.js";
import { ddl } from "./modes/ddl.js";
import { ddlExpanded } from "./modes/ddl-expanded.js";
import { delta } from "./modes/delta.js";
import { deltaBlock } from "./modes/delta-block.js";
import {
  type CallKey,
  callLabel,
  callPlace,
  type ModeDef,
  type ModeHost,
  type ResidualMode,
} from "./modes/mode.js";
import { standard } from "./modes/standard.js";
import { MODE_NAMES, type ModeName } from "./names.js";

export {
  callLabel,
  callPlace,
  type CallKey,
  type ConvertSpec,
  emptyTrace,
  kindOf,
  layerOf,
  layersPerBlock,
  type MemorySizes,
  type ModeDef,
  type ModeMemory,
  NO_MEMORY,
  opensBlock,
  routedMemory,
  type RoutingSchedule,
  unroutedSchedule,
  type ModeHost,
  type ModeRun,
  type ResidualMode,
  type SublayerResult,
  type Trace,
} from "./modes/mode.js";

/** The built-in modes, one per name of MODE_NAMES, each with that name's config value. */
const BUILTIN: { readonly [N in ModeName]: ModeDef<N, (typeof MODE_NAMES)[N]> } = {
  standard,
  "attnres-full": attnresFull,
  "attnres-block": attnresBlock,
  delta,
  "delta-block": deltaBlock,
  ddl,
  "ddl-expanded": ddlExpanded,
};

const registry = new Map<string, ModeDef>(Object.values(BUILTIN).map((m) => [m.name, m]));

/** Every mode, built-in ones first, in registration order. */
export function modes(): ModeDef[] {
  return [...registry.values()];
}

/**
 * Adds a mode. Its name and config value must be new, and its parameter names must not be those
 * of another mode (isResidualParam and conversion tell them apart by name).
 */
export function registerMode(def: ModeDef): void {
  for (const m of registry.values())
    if (m.name === def.name || m.key === def.key)
      throw new Error(`a residual mode named ${def.name} or keyed ${def.key} is already registered`);
  registry.set(def.name, def);
}

/** Removes a mode added by registerMode (built-in modes stay). */
export function unregisterMode(name: string): void {
  if (name in BUILTIN) throw new Error(`${name} is a built-in residual mode`);
  registry.delete(name);
}

/** The mode whose config value (attnres_mode) is `key`, or undefined. */
export function modeByKey(key: string): ModeDef | undefined {
  for (const m of registry.values()) if (m.key === key) return m;
  return undefined;
}

/** The mode named `name` (user-facing), or undefined. */
export function modeByName(name: string): ModeDef | undefined {
  return registry.get(name);
}

/** The mode of a (validated) config. */
export function modeOf(c: ModelConfig): ModeDef {
  const m = modeByKey(c.attnres_mode);
  if (!m) throw new Error(`unknown residual mode ${JSON.stringify(c.attnres_mode)}`);
  return m;
}

/**
 * User-facing mode name of a config. A mode added with registerMode has a name outside the
 * built-in ModeName union; code that switches on ModeName treats it as "some other mode".
 */
export function modeName(c: ModelConfig): ModeName {
  return modeOf(c).name as ModeName;
}

/** The labels of the N sources of a routed call of c's mode, in order (ModeDef.sourceLabel). */
export function sourceLabels(c: ModelConfig, N: number): string[] {
  const def = modeOf(c);
  return Array.from({ length: N }, (_, p) => def.sourceLabel(p, c));
}

/** What names a routed call of c's mode that reads N sources: its key, label, place and sources. */
export function describeCall(c: ModelConfig, key: CallKey, N: number) {
  return { key, label: callLabel(key), ...callPlace(key), sources: N, sourceLabels: sourceLabels(c, N) };
}

/** Builds the config's residual mode, registering its parameters on the host's modules. */
export function makeResidualMode(c: ModelConfig, host: ModeHost, ctx: InitContext): ResidualMode {
  return modeOf(c).build(c, host, ctx);
}

/** Whether a parameter name is one a residual mode adds (routing queries/gains, null sources, gates, DDL). */
export function isResidualParam(name: string): boolean {
  for (const m of registry.values()) if (m.params.test(name)) return true;
  return false;
}
