/**
 * Run discovery for `attnres view`: every training run under RUNS_DIR (a folder holding run.json
 * or metrics.jsonl, found up to 4 levels down, symlinked folders not followed) becomes a RunRow;
 * the folder holding two or more runs, or a results.json, is a compare group whose table (mean ±
 * std per mode, Welch's t-test against standard) is computed from its finished runs.
 *
 * Nothing here throws on a malformed run: run.json that is not JSON, a metrics line cut short, a
 * trainer state or checkpoint that does not parse or whose files do not match their sizes — each
 * becomes the row's `error` (status "error" when the run cannot be read at all). The full weight
 * check (CRC-32 when present) happens when a page loads the model.
 *
 * `safeResolve` is the only way a request path becomes a file path: it decodes, rejects NUL and
 * "..", resolves under RUNS_DIR and checks the real path (symlinks resolved) is still inside it.
 * Metrics files are cached by (size, mtime) so re-scanning 50 runs is cheap.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { modeByKey } from "../model/residual.js";
import { mean, std, welch } from "../train/statistics.js";
import type { GroupModeRow, GroupRow, MetricsRow, RunRow, RunStatus, RunsResponse } from "./api.js";

/** A run is "training" while its metrics.jsonl changed within this many ms. */
export const TRAINING_WINDOW_MS = 60_000;
const MAX_DEPTH = 4;
const SKIP = new Set([
  "node_modules",
  "analysis",
  "figures",
  "checkpoint",
  "checkpoint.old",
  "checkpoint.tmp",
]);

/**
 * The real path of `rel` (a "/"-separated path, URL-encoded when `encoded`) inside `root`, or null
 * when it leaves root (.., absolute, NUL, a symlink pointing out) or does not exist.
 */
export function safeResolve(root: string, rel: string, encoded = false): string | null {
  let p = rel;
  if (encoded) {
    try {
      p = decodeURIComponent(rel);
    } catch {
      return null;
    }
  }
  if (p.includes("\0") || p.includes("\\")) return null;
  const parts = p.split("/").filter((s) => s !== "" && s !== ".");
  if (parts.some((s) => s === "..")) return null;
  const realRoot = fs.realpathSync(root);
  const target = path.resolve(realRoot, ...parts);
  if (target !== realRoot && !target.startsWith(realRoot + path.sep)) return null;
  let real: string;
  try {
    real = fs.realpathSync(target);
  } catch {
    return null;
  }
  return real === realRoot || real.startsWith(realRoot + path.sep) ? real : null;
}

/** The id of a folder under root ("/"-separated, "." for root). */
function idOf(root: string, dir: string): string {
  const r = path.relative(root, dir);
  return r === "" ? "." : r.split(path.sep).join("/");
}

interface MetricsCache {
  size: number;
  mtime: number;
  rows: MetricsRow[];
  error: string | null;
}
const metricsCache = new Map<string, MetricsCache>();

/**
 * The rows of a metrics.jsonl (cached by size and mtime). A last line without its newline is a
 * write in progress while the file is fresh (ignored) and a truncated file once it is older.
 */
export function readMetrics(file: string): { rows: MetricsRow[]; error: string | null; mtime: number } {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return { rows: [], error: null, mtime: 0 };
  }
  const hit = metricsCache.get(file);
  if (hit && hit.size === st.size && hit.mtime === st.mtimeMs)
    return { rows: hit.rows, error: hit.error, mtime: st.mtimeMs };
  const text = fs.readFileSync(file, "utf8");
  const lines = text.split("\n");
  const tail = lines.pop() ?? "";
  const rows: MetricsRow[] = [];
  let error: string | null = null;
  for (let i = 0; i < lines.length && error === null; i++) {
    const l = lines[i]!.trim();
    if (!l) continue;
    const r = parseRow(l);
    if (r) rows.push(r);
    else error = `metrics.jsonl line ${i + 1} is not a metrics record`;
  }
  if (error === null && tail.trim()) {
    const r = parseRow(tail.trim());
    if (r) rows.push(r);
    else if (Date.now() - st.mtimeMs > 5000)
      error = `metrics.jsonl ends in a truncated line (line ${lines.length + 1})`;
  }
  metricsCache.set(file, { size: st.size, mtime: st.mtimeMs, rows, error });
  return { rows, error, mtime: st.mtimeMs };
}

function parseRow(line: string): MetricsRow | null {
  try {
    const r = JSON.parse(line) as unknown;
    if (r && typeof r === "object" && typeof (r as MetricsRow).step === "number") return r as MetricsRow;
  } catch {
    /* fall through */
  }
  return null;
}

function readJson(file: string): unknown {
  return JSON.parse(fs.readFileSync(file, "utf8")) as unknown;
}

interface TrainerStateLike {
  step?: number;
  done?: boolean;
  result?: { valLoss: number; valPerplexity: number; valBpb: number; params: number };
}

/**
 * Checks a checkpoint folder cheaply: config.json and trainer_state.json parse, every
 * safetensors file's header parses and its size matches the header, and (checkpoint protocol)
 * every file a manifest.json lists has its size. Returns a problem, or null.
 */
export function checkCheckpoint(dir: string): string | null {
  const name = path.basename(dir);
  try {
    readJson(path.join(dir, "config.json"));
  } catch (e) {
    return `${name}/config.json: ${msg(e)}`;
  }
  const manifest = path.join(dir, "manifest.json");
  if (fs.existsSync(manifest)) {
    try {
      const m = readJson(manifest) as { files?: Record<string, { bytes?: number }> };
      for (const [f, info] of Object.entries(m.files ?? {})) {
        const p = path.join(dir, f);
        if (!fs.existsSync(p)) return `${name}/${f} is missing (listed in manifest.json)`;
        if (typeof info.bytes === "number" && fs.statSync(p).size !== info.bytes)
          return `${name}/${f} has ${fs.statSync(p).size} bytes, manifest.json says ${info.bytes}`;
      }
    } catch (e) {
      return `${name}/manifest.json: ${msg(e)}`;
    }
  }
  for (const f of fs.readdirSync(dir)) {
    if (!f.endsWith(".safetensors")) continue;
    const p = path.join(dir, f);
    const problem = checkSafetensorsSize(p);
    if (problem) return `${name}/${f}: ${problem}`;
  }
  if (!fs.readdirSync(dir).some((f) => f.endsWith(".safetensors")))
    return `${name} holds no model.safetensors`;
  return null;
}

function checkSafetensorsSize(file: string): string | null {
  const fd = fs.openSync(file, "r");
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) return "shorter than a safetensors header";
    const head = Buffer.alloc(8);
    fs.readSync(fd, head, 0, 8, 0);
    const n = Number(head.readBigUInt64LE(0));
    if (n > size - 8 || n > 100 << 20) return "the header length is past the end of the file";
    const hb = Buffer.alloc(n);
    fs.readSync(fd, hb, 0, n, 8);
    let header: Record<string, { data_offsets?: [number, number] }>;
    try {
      header = JSON.parse(hb.toString("utf8")) as typeof header;
    } catch {
      return "the header is not valid JSON";
    }
    let end = 0;
    for (const [k, v] of Object.entries(header))
      if (k !== "__metadata__" && v.data_offsets) end = Math.max(end, v.data_offsets[1]);
    if (8 + n + end !== size) return `${size} bytes, the header describes ${8 + n + end} (truncated?)`;
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

const msg = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** The checkpoint folder a run's pages use: checkpoint, else checkpoint.old, else a complete .tmp. */
export function runCheckpoint(runDir: string): string | null {
  for (const name of ["checkpoint", "checkpoint.old", "checkpoint.tmp"]) {
    const d = path.join(runDir, name);
    if (!fs.existsSync(path.join(d, "config.json"))) continue;
    if (name === "checkpoint.tmp" && !fs.existsSync(path.join(d, "manifest.json"))) continue;
    return d;
  }
  return null;
}

/** The user-facing mode name of a config's attnres_mode (absent = standard). */
function modeOf(model: Record<string, unknown>): string {
  const m = String(model.attnres_mode ?? "standard");
  return modeByKey(m)?.name ?? m;
}

function scanRun(root: string, dir: string, group: string | null): RunRow {
  const id = idOf(root, dir);
  const row: RunRow = {
    id,
    group,
    mode: null,
    seed: null,
    preset: null,
    layers: null,
    hidden: null,
    steps: 0,
    totalSteps: null,
    trainLoss: null,
    valLoss: null,
    valStep: null,
    status: "interrupted",
    error: null,
    checkpoint: null,
    checkpointStep: null,
    result: null,
    updated: null,
  };
  const problems: string[] = [];
  let fatal = false;
  const specFile = path.join(dir, "run.json");
  if (fs.existsSync(specFile)) {
    try {
      const spec = readJson(specFile) as { model?: Record<string, unknown>; train?: Record<string, unknown> };
      if (!spec || typeof spec !== "object" || !spec.model || !spec.train)
        throw new Error("it has no model or train section");
      row.mode = modeOf(spec.model);
      row.seed = typeof spec.train.seed === "number" ? spec.train.seed : 0;
      row.totalSteps = typeof spec.train.steps === "number" ? spec.train.steps : null;
      row.layers = typeof spec.model.num_hidden_layers === "number" ? spec.model.num_hidden_layers : null;
      row.hidden = typeof spec.model.hidden_size === "number" ? spec.model.hidden_size : null;
    } catch (e) {
      problems.push(`run.json is damaged: ${msg(e)}`);
      fatal = true;
    }
  }
  const base = path.basename(dir);
  if (row.mode !== null && row.seed !== null) {
    const suffix = `${row.mode}-s${row.seed}`;
    if (base.endsWith(`-${suffix}`)) row.preset = base.slice(0, -suffix.length - 1);
    else if (base === suffix && group) row.preset = path.basename(group).replace(/^compare-/, "");
  }
  const metrics = readMetrics(path.join(dir, "metrics.jsonl"));
  if (metrics.error) {
    problems.push(metrics.error);
    fatal = true;
  }
  if (metrics.mtime) row.updated = metrics.mtime;
  const rows = metrics.rows;
  if (rows.length) {
    const last = rows[rows.length - 1]!;
    row.steps = last.step;
    row.trainLoss = typeof last.loss === "number" ? last.loss : null;
    for (let i = rows.length - 1; i >= 0; i--)
      if (typeof rows[i]!.val_loss === "number") {
        row.valLoss = rows[i]!.val_loss!;
        row.valStep = rows[i]!.step;
        break;
      }
  }
  let done = false;
  const ck = runCheckpoint(dir);
  if (ck) {
    row.checkpoint = idOf(root, ck);
    const problem = checkCheckpoint(ck);
    if (problem) {
      problems.push(`checkpoint: ${problem}`);
      fatal = true;
    }
    const stFile = path.join(ck, "trainer_state.json");
    if (fs.existsSync(stFile)) {
      try {
        const st = readJson(stFile) as TrainerStateLike;
        row.checkpointStep = typeof st.step === "number" ? st.step : null;
        done = st.done === true;
        if (done && st.result) row.result = st.result;
      } catch (e) {
        problems.push(`trainer_state.json is damaged: ${msg(e)}`);
        fatal = true;
      }
    }
  }
  let status: RunStatus;
  if (fs.existsSync(path.join(dir, "diverged.json"))) status = "diverged";
  else if (done) status = "finished";
  else if (row.updated !== null && Date.now() - row.updated < TRAINING_WINDOW_MS) status = "training";
  else status = "interrupted";
  if (fatal) status = "error";
  row.status = status;
  row.error = problems.length ? problems.join("; ") : null;
  return row;
}

function isRunDir(dir: string): boolean {
  return fs.existsSync(path.join(dir, "run.json")) || fs.existsSync(path.join(dir, "metrics.jsonl"));
}

function groupTable(runs: RunRow[]): GroupModeRow[] {
  const finished = runs.filter((r) => r.status === "finished" && r.result && r.mode);
  const modes = [...new Set(finished.map((r) => r.mode!))];
  const std0 = finished.filter((r) => r.mode === "standard").map((r) => r.result!.valLoss);
  const pair = (xs: number[]): [number, number | null] => {
    const s = std(xs);
    return [mean(xs), Number.isFinite(s) ? s : null];
  };
  return modes.map((m) => {
    const rs = finished.filter((r) => r.mode === m).map((r) => r.result!);
    const vl = rs.map((r) => r.valLoss);
    const w = m === "standard" ? null : welch(vl, std0);
    return {
      mode: m,
      runs: rs.length,
      valLoss: pair(vl),
      perplexity: pair(rs.map((r) => r.valPerplexity)),
      bpb: pair(rs.map((r) => r.valBpb)),
      params: rs[0]!.params,
      vsStandard: w && std0.length ? { delta: mean(vl) - mean(std0), t: w.t, df: w.df, p: w.p } : null,
    };
  });
}

/** The row of one run folder under root (no group), or null when it is not a run folder. */
export function scanOne(root: string, dir: string): RunRow | null {
  return isRunDir(dir) ? scanRun(fs.realpathSync(root), dir, null) : null;
}

/** Every run and compare group under root. */
export function scanRuns(root: string): RunsResponse {
  const t0 = performance.now();
  const realRoot = fs.realpathSync(root);
  const runs: RunRow[] = [];
  const resultsDirs = new Set<string>();
  const walk = (dir: string, depth: number, parentGroup: string | null): void => {
    if (isRunDir(dir)) {
      runs.push(scanRun(realRoot, dir, parentGroup));
      return;
    }
    if (depth >= MAX_DEPTH) return;
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    const here = dir === realRoot ? null : idOf(realRoot, dir);
    if (here && entries.some((e) => e.isFile() && e.name === "results.json")) resultsDirs.add(here);
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name)))
      if (e.isDirectory() && !e.name.startsWith(".") && !SKIP.has(e.name))
        walk(path.join(dir, e.name), depth + 1, here);
  };
  walk(realRoot, 0, null);
  const byGroup = new Map<string, RunRow[]>();
  for (const r of runs) if (r.group) byGroup.set(r.group, [...(byGroup.get(r.group) ?? []), r]);
  const groups: GroupRow[] = [];
  for (const [g, rs] of byGroup) {
    if (rs.length < 2 && !resultsDirs.has(g)) {
      for (const r of rs) r.group = null;
      continue;
    }
    groups.push({ id: g, runs: rs.map((r) => r.id), hasResults: resultsDirs.has(g), table: groupTable(rs) });
  }
  return { root: realRoot, runs, groups, scanMs: performance.now() - t0 };
}
