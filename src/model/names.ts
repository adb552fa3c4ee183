/**
 * The names the command line offers, as plain constants with no dependencies, so that defining
 * the subcommands (and printing their help) loads nothing heavy: residual modes (user-facing name
 * → config value) and their command-line options, the modes `convert` can target, and the storage
 * dtypes it can write. The modes themselves are src/model/modes/ (registry: src/model/residual.ts),
 * which the compiler and test/residual-registry.test.ts hold to these lists.
 */

/** User-facing mode names (CLI, docs) ↔ config values of `attnres_mode` (the authors' keys). */
export const MODE_NAMES = {
  standard: "standard",
  "attnres-full": "full",
  "attnres-block": "block",
  delta: "delta",
  "delta-block": "delta_block",
  ddl: "ddl",
  "ddl-expanded": "ddl_expanded",
} as const;
export type ModeName = keyof typeof MODE_NAMES;

/**
 * The built-in modes' options, for the command line (test/residual-registry.test.ts holds these
 * lists to the modes' own ModeDef in src/model/modes/): the block modes (they need
 * attnres_num_blocks: --blocks) and the additive ones (null source and gate: --null-source, --gate).
 */
export const BLOCK_MODES: readonly ModeName[] = ["attnres-block", "delta-block"];
export const ADDITIVE_MODES: readonly ModeName[] = ["delta", "delta-block"];

/** The routed modes a standard checkpoint can be converted to (ModeDef.convert; src/workflows/convert.ts). */
export const CONVERT_MODES = ["delta", "delta-block", "attnres-full", "attnres-block"] as const;
export type ConvertMode = (typeof CONVERT_MODES)[number];

/** Dtypes `convert` can write the weights in (auto: as in the source). */
export const STORAGE_DTYPES = ["auto", "f32", "bf16", "f16"] as const;
export type StorageDtype = (typeof STORAGE_DTYPES)[number];
