/**
 * The models behind `attnres view`'s routing and token pages. One loaded model (and its tokenizer)
 * per checkpoint folder, kept while the checkpoint's files are unchanged (keyed by the mtime and
 * size of config.json, model.safetensors and trainer_state.json); at most `capacity` of them, the
 * least recently used disposed first.
 *
 *   routing(run)   the routing report (src/analysis/routing.ts analyzeModel) of the checkpoint on
 *                  `batches` windows of `batchSize × seqLen` validation tokens of the run's data
 *                  (run.json "data"), cached per checkpoint version
 *   passages(run)  validation windows of at most the model's context (≤ 256 tokens), decoded
 *   trace(run, ids) one forward pass [1, T] with the routing trace: α [T, N] per routed call and
 *                  DDL's β [T] per sublayer, as float32 (model.run(…, { trace: true }))
 * All model work runs under noGrad inside tidy: nothing but the cached model outlives a request.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { type AnalysisReport, analyzeModel } from "../analysis/routing.js";
import { evalBatches } from "../data/batches.js";
import { loadPrepared, type PreparedData } from "../data/prepared.js";
import type { Tokenizer } from "../data/tokenizer.js";
import { checkpointTokenizer, loadCheckpoint } from "../model/checkpoint.js";
import type { DecoderLM } from "../model/decoder.js";
import { callLabel, describeCall } from "../model/residual.js";
import { callOrder } from "../model/stats.js";
import { tidy } from "../tensor/memory.js";
import { noGrad } from "../tensor/tensor.js";

export interface LoadedModel {
  dir: string;
  model: DecoderLM;
  tokenizer: Tokenizer | null;
  step: number | null;
  version: string;
}

export interface RoutingOptions {
  batches: number;
  batchSize: number;
  seqLen: number;
}

export interface TraceResult {
  ids: Int32Array;
  calls: {
    key: number | "final";
    label: string;
    kind: "attn" | "mlp" | "final";
    layer: number | null;
    sources: number;
    sourceLabels: string[];
    /** α [T, N] row-major. */
    alpha: Float32Array;
  }[];
  beta: { j: number; label: string; values: Float32Array }[];
  loadMs: number;
  runMs: number;
}

function version(dir: string): string {
  return ["config.json", "model.safetensors", "trainer_state.json", "model.safetensors.index.json"]
    .map((f) => {
      try {
        const s = fs.statSync(path.join(dir, f));
        return `${s.size}:${s.mtimeMs}`;
      } catch {
        return "-";
      }
    })
    .join("|");
}

/** Validation windows of the token explorer: this many passages at most. */
const PASSAGES = 24;

export class ModelCache {
  private models = new Map<string, LoadedModel>();
  private reports = new Map<string, AnalysisReport>();
  private data = new Map<string, { key: string; data: PreparedData }>();

  constructor(readonly capacity = 4) {}

  /** The model of a checkpoint folder (loaded now unless cached) and the ms loading took. */
  get(dir: string): { loaded: LoadedModel; ms: number } {
    const v = version(dir);
    const hit = this.models.get(dir);
    if (hit && hit.version === v) {
      this.models.delete(dir);
      this.models.set(dir, hit); // most recently used last
      return { loaded: hit, ms: 0 };
    }
    if (hit) this.drop(dir);
    const t0 = performance.now();
    const model = loadCheckpoint(dir);
    let tokenizer: Tokenizer | null;
    let step: number | null = null;
    try {
      tokenizer = checkpointTokenizer(dir, model.config, { optional: true });
      const st = path.join(dir, "trainer_state.json");
      if (fs.existsSync(st))
        step = (JSON.parse(fs.readFileSync(st, "utf8")) as { step?: number }).step ?? null;
    } catch (e) {
      model.dispose();
      throw e;
    }
    const loaded: LoadedModel = { dir, model, tokenizer, step, version: v };
    this.models.set(dir, loaded);
    while (this.models.size > this.capacity) this.drop(this.models.keys().next().value!);
    return { loaded, ms: performance.now() - t0 };
  }

  private drop(dir: string): void {
    this.models.get(dir)?.model.dispose();
    this.models.delete(dir);
    for (const k of [...this.reports.keys()]) if (k.startsWith(dir + "\n")) this.reports.delete(k);
  }

  /** The prepared dataset a run trained on (run.json "data", relative to the working directory). */
  runData(runDir: string): PreparedData {
    const spec = JSON.parse(fs.readFileSync(path.join(runDir, "run.json"), "utf8")) as { data?: string };
    if (typeof spec.data !== "string") throw new Error("run.json names no data folder");
    const dataDir = path.resolve(spec.data);
    if (!fs.existsSync(path.join(dataDir, "meta.json")))
      throw new Error(
        `the run's data folder ${spec.data} is not here (run attnres view from the folder the run was trained in)`,
      );
    const key = version(dataDir) + fs.statSync(path.join(dataDir, "meta.json")).mtimeMs;
    const hit = this.data.get(dataDir);
    if (hit && hit.key === key) return hit.data;
    const data = loadPrepared(dataDir);
    this.data.set(dataDir, { key, data });
    return data;
  }

  /** The routing report of a run's checkpoint on validation windows (cached per checkpoint version). */
  routing(
    runDir: string,
    ckDir: string,
    o: RoutingOptions,
  ): { report: AnalysisReport; loaded: LoadedModel; seqLen: number; batchSize: number } {
    const { loaded } = this.get(ckDir);
    const data = this.runData(runDir);
    const T = Math.min(o.seqLen, loaded.model.config.max_position_embeddings);
    const key = `${ckDir}\n${loaded.version}\n${o.batches}x${o.batchSize}x${T}`;
    let report = this.reports.get(key);
    if (!report) {
      if (data.tokenizer.vocabSize > loaded.model.config.vocab_size)
        throw new Error(
          `the run's data has ${data.tokenizer.vocabSize} token ids but the model embeds ${loaded.model.config.vocab_size}`,
        );
      const batches = evalBatches(data.val, o.batchSize, T, o.batches);
      report = analyzeModel(loaded.model, batches, { rankTokens: 16 });
      this.reports.set(key, report);
    }
    return { report, loaded, seqLen: T, batchSize: o.batchSize };
  }

  /** Up to 24 validation passages of the run's data, each at most the context (≤ 256 tokens). */
  passages(runDir: string, ckDir: string): { tokens: Int32Array[]; tokenizer: Tokenizer } {
    const { loaded } = this.get(ckDir);
    const data = this.runData(runDir);
    const T = Math.min(256, loaded.model.config.max_position_embeddings);
    const val = data.val;
    const n = Math.max(1, Math.min(PASSAGES, Math.floor(val.length / T)));
    const stride = Math.max(T, Math.floor(val.length / n));
    const tokens: Int32Array[] = [];
    for (let k = 0; k < n && k * stride < val.length; k++)
      tokens.push(val.slice(k * stride, Math.min(val.length, k * stride + T)));
    return { tokens, tokenizer: data.tokenizer };
  }

  /** One forward pass [1, T] with the routing trace. */
  trace(ckDir: string, ids: Int32Array): TraceResult & { loaded: LoadedModel } {
    const { loaded, ms } = this.get(ckDir);
    const m = loaded.model;
    const c = m.config;
    if (ids.length === 0) throw new Error("there is no token to run");
    for (const id of ids)
      if (id < 0 || id >= c.vocab_size) throw new Error(`token id ${id} is outside the model's vocabulary`);
    const t0 = performance.now();
    const T = ids.length;
    const out = noGrad(() =>
      tidy(() => {
        const { trace } = m.run(ids, 1, T, { trace: true });
        const calls: TraceResult["calls"] = [...trace!.alphas.entries()]
          .sort(([p], [q]) => callOrder(p, q))
          .map(([key, a]) => {
            const N = a.shape[a.rank - 1]!;
            return { ...describeCall(c, key, N), alpha: Float32Array.from(a.data) };
          });
        const beta = [...trace!.betas.entries()]
          .sort(([p], [q]) => p - q)
          .map(([j, b]) => ({ j, label: callLabel(j), values: Float32Array.from(b.data) }));
        return { calls, beta };
      }),
    );
    return { ids, ...out, loadMs: ms, runMs: performance.now() - t0, loaded };
  }

  dispose(): void {
    for (const d of [...this.models.keys()]) this.drop(d);
    this.reports.clear();
    this.data.clear();
  }
}

/**
 * The text of each token: the growth of the decoded prefix (a token whose prefix does not decode
 * to whole characters yet gets "", and the characters go to the token that completes them).
 */
export function tokenPieces(tok: Tokenizer, ids: Int32Array): string[] {
  const pieces: string[] = [];
  let done = "";
  for (let i = 0; i < ids.length; i++) {
    const cur = tok.decode(ids.subarray(0, i + 1));
    if (cur.endsWith("\uFFFD") && i + 1 < ids.length) {
      pieces.push("");
      continue;
    }
    pieces.push(cur.startsWith(done) ? cur.slice(done.length) : tok.decode(ids.subarray(i, i + 1)));
    done = cur;
  }
  return pieces;
}
