/**
 * `attnres plan`: per-device memory and FLOPs per token of a training step, on paper, for a model
 * (a named size, a preset, or an HF config.json) in one or every residual mode, at a world size,
 * dtype, sharding strategy and micro-batch [B, T]. Prints a settings line and a table with one row
 * per mode (src/plan/estimate.ts says what each column counts), or JSON.
 */
import * as fs from "node:fs";
import type { ModeName } from "../model/config.js";
import { modeByName, modes } from "../model/residual.js";
import {
  type AttentionKernel,
  plan,
  type PlanDType,
  withMode,
  type PlanEngine,
  type PlanRow,
  type RoutingKernel,
  type Sharding,
} from "../plan/estimate.js";
import { NAMED_SIZES, SIZE_NAMES, type SizeName } from "../plan/sizes.js";
import { MODE_LIST, modeArg } from "./common.js";
import { loadPreset } from "./preset.js";

export interface PlanFlags {
  size?: string;
  preset?: string;
  config?: string;
  modes?: string;
  worldSize?: number;
  dtype?: string;
  sharding?: string;
  engine?: string;
  attention?: string;
  routing?: string;
  batchSize?: number;
  seqLen?: number;
  blocks?: number;
  vocabSize?: number;
}

export interface PlanReport {
  model: string;
  settings: {
    engine: PlanEngine;
    world_size: number;
    dtype: PlanDType;
    sharding: Sharding;
    batch_size: number;
    seq_len: number;
    attention: AttentionKernel | null;
    routing: RoutingKernel | null;
    blocks: number;
  };
  rows: PlanRow[];
}

function choice<T extends string>(flag: string, v: string | undefined, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(allowed as readonly string[]).includes(v))
    throw new Error(`${flag} must be one of ${allowed.join(", ")}, not "${v}"`);
  return v as T;
}

/** The modes --modes names: built-in names, or any mode added with registerMode; "all" = built-ins. */
function parseModes(v: string | undefined): ModeName[] {
  if (v === undefined || v === "all") return [...MODE_LIST];
  return v.split(",").map((raw) => {
    const m = raw.trim();
    if (modeByName(m)) return m as ModeName; // a registered mode outside the built-in union
    try {
      return modeArg(m);
    } catch (e) {
      const known = modes().map((d) => d.name);
      throw new Error(`--modes: "${m}" is not a mode (expected one of ${known.join(", ")}, or all)`, {
        cause: e,
      });
    }
  });
}

/** The model config and default micro-batch of what the flags name. */
function source(f: PlanFlags): { name: string; model: Record<string, unknown>; B: number; T: number } {
  const given = [f.size, f.preset, f.config].filter((x) => x !== undefined).length;
  if (given !== 1) throw new Error("name one model: --size, --preset or --config");
  if (f.size !== undefined) {
    const key = f.size.toLowerCase();
    if (!(key in NAMED_SIZES)) throw new Error(`unknown size "${f.size}" (sizes: ${SIZE_NAMES.join(", ")})`);
    const s = NAMED_SIZES[key as SizeName];
    return { name: `size ${key}: ${s.source}`, model: { ...s.config }, B: 8, T: 2048 };
  }
  if (f.preset !== undefined) {
    const p = loadPreset(f.preset);
    const model: Record<string, unknown> = { ...p.model };
    if (model.vocab_size === undefined && typeof p.data !== "string") {
      if (p.data.tokenizer === "byte") model.vocab_size = 256;
      else if (p.data.vocab_size !== undefined) model.vocab_size = p.data.vocab_size;
    }
    return { name: `preset ${f.preset}`, model, B: p.train.batch_size, T: p.train.seq_len };
  }
  const file = f.config!;
  if (!fs.existsSync(file)) throw new Error(`config file ${file} does not exist`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw))
    throw new Error(`${file} must hold a JSON object (an HF config.json)`);
  const model = raw as Record<string, unknown>;
  const T = Math.min(2048, Number(model.max_position_embeddings ?? 2048));
  return { name: `config ${file}`, model, B: 8, T };
}

export function planCommand(f: PlanFlags): PlanReport {
  const src = source(f);
  const model = { ...src.model };
  if (f.vocabSize !== undefined) model.vocab_size = f.vocabSize;
  if (model.vocab_size === undefined)
    throw new Error("the model has no vocab_size (its tokenizer decides it); pass --vocab-size");
  withMode(model, "standard");
  const engine = choice("--engine", f.engine, ["torch", "ts"] as const, "torch");
  const settings = {
    engine,
    world_size: f.worldSize ?? 1,
    dtype: choice("--dtype", f.dtype, ["float32", "bfloat16"] as const, "float32"),
    sharding: choice("--sharding", f.sharding, ["ddp", "fsdp"] as const, "ddp"),
    batch_size: f.batchSize ?? src.B,
    seq_len: f.seqLen ?? src.T,
    attention:
      engine === "torch" ? choice("--attention", f.attention, ["flash", "math"] as const, "flash") : null,
    routing:
      engine === "torch" ? choice("--routing", f.routing, ["stacked", "fused"] as const, "stacked") : null,
    blocks: Math.min(f.blocks ?? Number(model.attnres_num_blocks ?? 8), Number(model.num_hidden_layers)),
  };
  if (engine === "ts" && (f.attention !== undefined || f.routing !== undefined))
    throw new Error(
      "--attention and --routing describe the torch engine; the TypeScript engine's kernels are fused",
    );
  const mpe = Number(model.max_position_embeddings ?? 0);
  if (mpe < settings.seq_len) model.max_position_embeddings = settings.seq_len;
  const rows = plan(model, parseModes(f.modes), {
    batch: settings.batch_size,
    seq: settings.seq_len,
    worldSize: settings.world_size,
    dtype: settings.dtype,
    sharding: settings.sharding,
    engine,
    blocks: settings.blocks,
    ...(settings.attention ? { attention: settings.attention } : {}),
    ...(settings.routing ? { routing: settings.routing } : {}),
  });
  return { model: src.name, settings, rows };
}

/** Bytes in binary units with three significant digits (KiB … TiB). */
export function formatBytes(b: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) {
    b /= 1024;
    i++;
  }
  return `${b >= 100 || i === 0 ? b.toFixed(0) : b >= 10 ? b.toFixed(1) : b.toFixed(2)} ${units[i]}`;
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

function formatFlops(f: number): string {
  return f >= 1e9 ? `${(f / 1e9).toFixed(1)} G` : `${(f / 1e6).toFixed(1)} M`;
}

/** The report as text: a settings line and an aligned table, one row per mode. */
export function formatPlan(r: PlanReport): string {
  const s = r.settings;
  const ck = s.engine === "torch";
  const kernels = ck ? `, ${s.attention} attention, ${s.routing} routing` : "";
  const lines = [
    `${r.model}`,
    `engine ${s.engine}${kernels}; ${s.world_size} device${s.world_size > 1 ? "s" : ""}, ${s.sharding}, ${s.dtype}; ` +
      `micro-batch ${s.batch_size} × ${s.seq_len} tokens per device; block modes: ${s.blocks} blocks`,
    "",
  ];
  const head = [
    "mode",
    "params",
    "weights",
    "grads",
    "AdamW",
    "other",
    "activations",
    "(routing)",
    "backward",
    "peak",
    ...(ck ? ["act ckpt", "peak ckpt"] : []),
    "FLOP/token",
    ...(ck ? ["FLOP ckpt"] : []),
  ];
  const body = r.rows.map((w) => [
    w.mode,
    formatCount(w.params),
    formatBytes(w.paramBytes),
    formatBytes(w.gradBytes),
    formatBytes(w.adamBytes),
    w.extraBytes ? formatBytes(w.extraBytes) : "-",
    formatBytes(w.activationBytes),
    w.routingStateBytes ? formatBytes(w.routingStateBytes) : "-",
    formatBytes(w.workingBytes),
    formatBytes(w.peakBytes),
    ...(ck ? [formatBytes(w.checkpointedActivationBytes!), formatBytes(w.checkpointedPeakBytes!)] : []),
    formatFlops(w.flopsPerToken),
    ...(ck ? [formatFlops(w.checkpointedFlopsPerToken!)] : []),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const fmt = (row: string[]) =>
    row
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join("  ")
      .trimEnd();
  lines.push(fmt(head), ...body.map(fmt));
  lines.push(
    "",
    "per device; weights/grads/AdamW: float32 (sharded under fsdp); other: bf16 weight copies or FSDP's gathered units;",
    "activations: kept for backward (routing: the sources/state a mode keeps across the depth); backward: its working set;",
    `peak = weights + grads + AdamW + other + activations + backward${ck ? "; ckpt: per-layer activation checkpointing" : ""}`,
  );
  return lines.join("\n") + "\n";
}
export { registerPlan } from "./commands/plan.js";
