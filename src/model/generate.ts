/**
 * Sampling from a DecoderLM with a KV cache.
 *
 *   generate(model, prompts, opts)   prompts: B rows of P ids each (equal lengths) →
 *                                    per row the new ids (the stop id excluded), and on request the
 *                                    logits [B, vocab] each step sampled from
 *
 * The prompt is run once through the model (prefill, filling the cache with positions [0, P)),
 * then each sampled token is fed alone at the next position. One step's logits are the last
 * position's, as float64 [B · vocab].
 *
 * Beyond the context (C = max_position_embeddings): the model always sees a sliding window, the
 * last min(length, C) tokens of prompt + generated text, at positions 0 … W−1 (a longer prompt is
 * cropped to its last C tokens the same way). While the sequence fits, the cache is used as above;
 * once it is longer than C, every step recomputes the whole window from position 0 into the same
 * cache (positions shift by one each step and every layer's keys depend on the whole window, so no
 * cached entry can be reused): exactly what an uncached forward over the window gives, at the cost
 * of a C-token forward per step. So tokens up to length C are those of an uncropped model. Sampling per row, in this order (the HF convention):
 *   temperature  logits / T; T = 0 is greedy (argmax, ties to the lowest id)
 *   top-k        keep the k most probable ids (0 = off; ties at the boundary go to the lower id)
 *   top-p        keep the smallest most-probable set whose probability reaches p (1 = off)
 * then one draw from the renormalised distribution with the seeded Rng (src/tensor/random.ts),
 * rows in order each step, so a seed reproduces the samples. `cache: false` recomputes the whole
 * sequence every step instead (the reference the tests hold the cached path to).
 */
import { tidy } from "../tensor/memory.js";
import { Rng } from "../tensor/random.js";
import { noGrad, type Tensor } from "../tensor/tensor.js";
import type { DecoderCache, DecoderLM } from "./decoder.js";

export interface SampleOptions {
  /** Softmax temperature; 0 = greedy. Default 1. */
  temperature?: number;
  /** Keep only the k most probable ids; 0 = off (default). */
  topK?: number;
  /** Nucleus sampling: keep the smallest set of ids whose probability reaches p; 1 = off (default). */
  topP?: number;
}

export interface GenerateOptions extends SampleOptions {
  /** How many tokens to sample per row (at most; a stop id ends a row early). */
  maxNewTokens: number;
  /** Seed of the sampling generator. Default 0. */
  seed?: number;
  /** Ids that end a row (not included in its output). */
  stopIds?: readonly number[];
  /** Only ids below this can be sampled (a tokenizer smaller than the model's vocabulary). */
  vocabLimit?: number;
  /** Use the KV cache (default true); false recomputes the whole sequence each step. */
  cache?: boolean;
  /** Return the logits of every step (tests, analysis). */
  returnLogits?: boolean;
  /** Called with each row's new id as soon as it is sampled (streaming). */
  onToken?: (id: number, row: number) => void;
}

export interface GenerateResult {
  /** Per row, the sampled ids (prompt and stop id excluded). */
  ids: Int32Array[];
  /** When returnLogits: per step, the raw logits [B · vocabLimit] (float64) the step sampled from. */
  logits?: Float64Array[];
}

function checkSampleOptions(o: SampleOptions): Required<SampleOptions> {
  const temperature = o.temperature ?? 1;
  const topK = o.topK ?? 0;
  const topP = o.topP ?? 1;
  if (!Number.isFinite(temperature) || temperature < 0)
    throw new Error(`temperature must be a number ≥ 0 (0 = greedy), not ${temperature}`);
  if (!Number.isInteger(topK) || topK < 0)
    throw new Error(`top-k must be an integer ≥ 0 (0 = off), not ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new Error(`top-p must be in (0, 1] (1 = off), not ${topP}`);
  return { temperature, topK, topP };
}

/** Index of the largest value (the lowest index among ties). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/**
 * The distribution one sampling step draws from: probabilities over the ids of `logits` after
 * temperature, top-k and top-p, renormalised (zeros outside the kept set). Temperature 0 puts
 * all the mass on the argmax.
 */
export function samplingDistribution(logits: ArrayLike<number>, opts: SampleOptions = {}): Float64Array {
  const { temperature, topK, topP } = checkSampleOptions(opts);
  const V = logits.length;
  if (V === 0) throw new Error("sampling: no logits");
  const p = new Float64Array(V);
  if (temperature === 0) {
    p[argmax(logits)] = 1;
    return p;
  }
  let mx = -Infinity;
  for (let i = 0; i < V; i++) mx = Math.max(mx, logits[i]!);
  if (!Number.isFinite(mx)) throw new Error(`sampling: the largest logit is ${mx}`);
  let z = 0;
  for (let i = 0; i < V; i++) z += p[i] = Math.exp((logits[i]! - mx) / temperature);
  for (let i = 0; i < V; i++) p[i]! /= z;
  if ((topK === 0 || topK >= V) && topP === 1) return p;
  // Most probable first; equal probabilities keep id order (the lower id is kept first).
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => p[b]! - p[a]! || a - b);
  let keep = topK === 0 ? V : Math.min(topK, V);
  let kept = 0;
  for (let r = 0; r < keep; r++) kept += p[order[r]!]!;
  if (topP < 1) {
    // Top-p applies to the top-k distribution: the shortest prefix of `order` reaching p · kept.
    let mass = 0;
    let n = 0;
    while (n < keep) {
      mass += p[order[n++]!]!;
      if (mass >= topP * kept) break;
    }
    keep = n;
    kept = mass;
  }
  const q = new Float64Array(V);
  for (let r = 0; r < keep; r++) q[order[r]!] = p[order[r]!]! / kept;
  return q;
}

/** One draw from samplingDistribution(logits, opts) with rng (greedy draws nothing). */
export function sampleToken(logits: ArrayLike<number>, opts: SampleOptions, rng: Rng): number {
  if ((opts.temperature ?? 1) === 0) return argmax(logits);
  const p = samplingDistribution(logits, opts);
  const u = rng.uniform();
  let c = 0;
  let last = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i]! === 0) continue;
    last = i;
    c += p[i]!;
    if (u < c) return i;
  }
  return last; // u within rounding of 1
}

/** The last position's logits of [B, T, V] (T = 1 after lastOnly) as float64 [B · V], at most `limit` ids per row. */
function lastLogits(logits: Tensor, limit: number): Float64Array {
  const [B, T, V] = logits.shape as [number, number, number];
  const out = new Float64Array(B * limit);
  const d = logits.data;
  for (let b = 0; b < B; b++) {
    const at = (b * T + T - 1) * V;
    for (let i = 0; i < limit; i++) out[b * limit + i] = d[at + i]!;
  }
  return out;
}

/**
 * Samples up to maxNewTokens ids after each prompt row. prompts: one Int32Array (B = 1) or B of
 * equal length ≥ 1, any length: the model reads the last max_position_embeddings tokens (above).
 */
export function generate(
  model: DecoderLM,
  prompts: Int32Array | readonly Int32Array[],
  opts: GenerateOptions,
): GenerateResult {
  const rowsIn = prompts instanceof Int32Array ? [prompts] : prompts;
  const B = rowsIn.length;
  const c = model.config;
  if (B === 0) throw new Error("generate: no prompts");
  const P = rowsIn[0]!.length;
  if (P === 0) throw new Error("generate: the prompt is empty");
  if (rowsIn.some((r) => r.length !== P))
    throw new Error(`generate: prompts of different lengths (${rowsIn.map((r) => r.length).join(", ")})`);
  const N = opts.maxNewTokens;
  if (!Number.isInteger(N) || N < 0) throw new Error(`max new tokens must be an integer ≥ 0, not ${N}`);
  const C = c.max_position_embeddings;
  const sample = checkSampleOptions(opts);
  const V = opts.vocabLimit ?? c.vocab_size;
  if (!Number.isInteger(V) || V < 1 || V > c.vocab_size)
    throw new Error(`vocabulary limit ${V} must be between 1 and the model's ${c.vocab_size} ids`);
  const stop = new Set(opts.stopIds ?? []);
  const rng = new Rng(opts.seed ?? 0);
  const useCache = opts.cache ?? true;

  const out: number[][] = rowsIn.map(() => []);
  const stepLogits: Float64Array[] = [];
  const done = new Array<boolean>(B).fill(false);
  const seq = new Int32Array(B * (P + N)); // [B, P + N]: prompt, then what was fed
  rowsIn.forEach((r, b) => seq.set(r, b * (P + N)));
  if (N === 0)
    return { ids: out.map((r) => Int32Array.from(r)), ...(opts.returnLogits ? { logits: [] } : {}) };

  const cache: DecoderCache | null = useCache ? model.newCache(B, Math.min(P + N, C)) : null;
  /** Logits after seq[start, start + T) fed at position `pos` (through the cache when there is one). */
  const forward = (start: number, T: number, pos: number): Float64Array =>
    noGrad(() =>
      tidy(() => {
        const ids = new Int32Array(B * T);
        for (let b = 0; b < B; b++)
          ids.set(seq.subarray(b * (P + N) + start, b * (P + N) + start + T), b * T);
        const at = cache ? { cache, posOffset: pos } : {};
        return lastLogits(model.forward(ids, B, T, { ...at, lastOnly: true }), V);
      }),
    );
  /** Logits for the next token when the sequence holds `len` tokens (the window rule above). */
  const next = (len: number): Float64Array => {
    if (len > C) return forward(len - C, C, 0); // slide: recompute the window from position 0
    return cache && len > P ? forward(len - 1, 1, len - 1) : forward(0, len, 0);
  };
  try {
    // Cached: the prompt once, then one token at a time. Uncached: the whole window every step.
    let logits = next(P);
    for (let s = 0; s < N; s++) {
      if (opts.returnLogits) stepLogits.push(logits);
      for (let b = 0; b < B; b++) {
        const id = done[b]
          ? seq[b * (P + N) + P + s - 1]!
          : sampleToken(logits.subarray(b * V, (b + 1) * V), sample, rng);
        seq[b * (P + N) + P + s] = id;
        if (done[b]) continue;
        if (stop.has(id)) {
          done[b] = true;
          continue;
        }
        out[b]!.push(id);
        opts.onToken?.(id, b);
      }
      if (s === N - 1 || done.every(Boolean)) break;
      logits = next(P + s + 1);
    }
  } finally {
    cache?.dispose();
  }
  return {
    ids: out.map((r) => Int32Array.from(r)),
    ...(opts.returnLogits ? { logits: stepLogits } : {}),
  };
}
