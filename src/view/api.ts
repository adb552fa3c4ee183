/**
 * The JSON shapes `attnres view` serves (src/view/server.ts) and its browser front end reads
 * (src/view/web/). Types only, no imports: the front end is bundled from this file too.
 *
 *   GET  /api/runs                       → RunsResponse (every run and compare group under RUNS_DIR)
 *   GET  /api/metrics?run=ID             → MetricsResponse (the run's metrics.jsonl rows)
 *   GET  /api/events?run=ID&run=ID…      → server-sent events "metrics": MetricsEvent (all rows first,
 *                                          then only new ones; reset=true when the file was rewritten)
 *   GET  /api/routing?run=ID             → RoutingResponse (routing report of its checkpoint on
 *                                          validation windows)
 *   GET  /api/passages?run=ID            → PassagesResponse (validation passages for the token explorer)
 *   POST /api/trace   {run, text}|{run, passage} → TraceResponse (one forward pass with the routing trace)
 *   GET  /files/PATH                     → a file under RUNS_DIR (figures, results.md …)
 * Errors: a bad request (unknown run, bad body, …) is status 4xx with ErrorResponse; a problem of the
 * run itself (a corrupt checkpoint, missing data) is status 200 with RunProblem, shown on the page.
 */

export type RunStatus = "training" | "finished" | "interrupted" | "diverged" | "error";

export interface RunRow {
  /** Path of the run folder relative to RUNS_DIR, "/"-separated ("." for RUNS_DIR itself). */
  id: string;
  /** The compare folder holding it (its id), or null for a run directly under RUNS_DIR. */
  group: string | null;
  mode: string | null;
  seed: number | null;
  /** The preset, from the folder name `<preset>-<mode>-s<seed>`, or the group's `compare-<preset>`. */
  preset: string | null;
  layers: number | null;
  hidden: number | null;
  /** Last step in metrics.jsonl, and train.steps of run.json. */
  steps: number;
  totalSteps: number | null;
  trainLoss: number | null;
  valLoss: number | null;
  /** The step of the last validation. */
  valStep: number | null;
  status: RunStatus;
  /** What is wrong with the run folder (status "error", or a problem beside a usable status). */
  error: string | null;
  /** The checkpoint folder (relative id) the routing and token pages load, or null. */
  checkpoint: string | null;
  /** Step of that checkpoint (trainer_state.json), when known. */
  checkpointStep: number | null;
  /** Final results of a finished run (trainer_state.json). */
  result: { valLoss: number; valPerplexity: number; valBpb: number; params: number } | null;
  /** Last modification of metrics.jsonl (ms since the epoch), or null. */
  updated: number | null;
}

export interface GroupModeRow {
  mode: string;
  runs: number;
  /** [mean, sample std] over the group's finished runs of this mode (std NaN → null). */
  valLoss: [number, number | null];
  perplexity: [number, number | null];
  bpb: [number, number | null];
  params: number;
  /** Welch's t-test of val loss against standard's, two-sided; null without ≥ 2 runs of both. */
  vsStandard: { delta: number; t: number; df: number; p: number } | null;
}

export interface GroupRow {
  id: string;
  runs: string[];
  /** Whether the folder holds a results.json (written by attnres compare). */
  hasResults: boolean;
  /** Summary of the finished runs, computed live from their trainer states. */
  table: GroupModeRow[];
}

export interface RunsResponse {
  root: string;
  runs: RunRow[];
  groups: GroupRow[];
  /** Milliseconds the server spent scanning. */
  scanMs: number;
}

/** One metrics.jsonl record (extra fields, e.g. time/elapsed_s, are passed through). */
export interface MetricsRow {
  step: number;
  loss?: number;
  val_loss?: number;
  [field: string]: unknown;
}

export interface MetricsResponse {
  run: string;
  rows: MetricsRow[];
  /** A problem reading the file (e.g. a malformed line); the rows before it are returned. */
  error: string | null;
}

export interface MetricsEvent extends MetricsResponse {
  /** true: `rows` replace everything known of the run; false: they follow the last rows sent. */
  reset: boolean;
}

export interface RoutingCall {
  key: number | "final";
  label: string;
  layer: number | null;
  kind: "attn" | "mlp" | "final";
  sources: number;
  sourceLabels: string[];
  meanAlpha: number[];
  meanMaxWeight: number;
  uniformWeight: number;
  meanEntropy: number;
  normalizedEntropy: number | null;
}

export interface RoutingBeta {
  j: number;
  label: string;
  kind: "attn" | "mlp";
  mean: number;
  std: number;
  min: number;
  max: number;
}

export interface RoutingResponse {
  run: string;
  checkpoint: string;
  checkpointStep: number | null;
  mode: string;
  layers: number;
  hidden: number;
  routed: boolean;
  /** Windows analysed: batches of batchSize × seqLen validation tokens. */
  sample: { batches: number; batchSize: number; seqLen: number; tokens: number };
  calls: RoutingCall[];
  columns: string[];
  beta: RoutingBeta[];
  stream: { j: number; label: string; meanNorm: number }[];
  notes: string[];
  ms: number;
}

export interface PassagesResponse {
  run: string;
  /** Decoded validation passages (at most the model's context each). */
  passages: { index: number; tokens: number; preview: string }[];
  error: string | null;
}

export interface TraceCall {
  key: number | "final";
  label: string;
  kind: "attn" | "mlp" | "final";
  layer: number | null;
  sources: number;
  sourceLabels: string[];
  /** α [T, N] row-major as little-endian float32, base64. */
  alpha: string;
}

export interface TraceResponse {
  run: string;
  mode: string;
  ids: number[];
  /** The text of each token (empty for a token that only completes with the next ones). */
  pieces: string[];
  /** The text was cut to the model's context. */
  truncated: boolean;
  calls: TraceCall[];
  /** DDL β per sublayer: values [T] as base64 float32. */
  beta: { j: number; label: string; values: string }[];
  /** Server milliseconds: model load (0 when cached) and the forward pass. */
  loadMs: number;
  runMs: number;
}

/** The run exists, but its checkpoint or data cannot be used (e.g. a corrupt checkpoint). */
export interface RunProblem {
  run: string;
  error: string;
}

export interface ErrorResponse {
  error: string;
}
