/**
 * Zero-shot multiple-choice evaluation by log-likelihood (docs/eval-mc.md), scored the way
 * lm-evaluation-harness scores its `multiple_choice` tasks.
 *
 *   parseMcTasks(text, source)   JSONL → items; every format error is one line naming source:line
 *   readMcTasks(file)            the same, from a file
 *   encodeChoice(tok, ctx, ch)   context and continuation ids (the harness's token boundary)
 *   scoreItem(model, tok, item)  summed log-probability of each choice given the context
 *   evaluateMc(model, tok, items, onItem?)  per-item details, acc, acc_norm and standard errors
 *
 * Format: one JSON object per non-blank line, {"context": string, "choices": [string, string, ...]
 * (at least two), "gold": integer index into choices, "id"?: string | number}. A choice is the
 * literal continuation of the context (write its leading space, if any, into the choice).
 *
 * Token boundary (as the harness's _encode_pair): trailing whitespace of the context moves to the
 * front of the continuation; the context is encoded alone and context+continuation as one string;
 * the continuation's tokens are those of the whole after the first len(context ids) — so a BPE merge
 * across the boundary is scored as part of the continuation.
 * Truncation: the scored window is the last max_position_embeddings + 1 tokens of context +
 * continuation (the context loses tokens from the left); the continuation itself must fit.
 * Batching: an item's choices run as one batch, right-padded; the model is causal, so the padding
 * after a row's last token cannot change the logits that are read.
 *
 * Metrics: ll_i = Σ log p(continuation token | everything before it); acc = [argmax_i ll_i = gold];
 * acc_norm = [argmax_i ll_i / bytes_i = gold] with bytes_i the UTF-8 length of choice i (the
 * harness divides by len(choice), which is the same for ASCII text); ties go to the first choice
 * (numpy's argmax). Standard errors are the sample standard deviation over items divided by √n
 * (NaN for a single item).
 */
import * as fs from "node:fs";
import type { Tokenizer } from "../data/tokenizer.js";
import type { DecoderLM } from "../model/decoder.js";
import { tidy } from "../tensor/memory.js";
import { noGrad } from "../tensor/tensor.js";

export interface McItem {
  id?: string | number;
  context: string;
  choices: string[];
  /** Index of the right choice. */
  gold: number;
  /** 1-based line of the item in its file. */
  line: number;
}

const KEYS = new Set(["id", "context", "choices", "gold"]);

/** Parses the JSONL task format; errors name the source and the 1-based line. */
export function parseMcTasks(text: string, source = "tasks"): McItem[] {
  const items: McItem[] = [];
  const lines = text.split("\n");
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, "");
    if (line.trim() === "") return;
    const where = `${source}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new Error(`${where}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    if (typeof v !== "object" || v === null || Array.isArray(v))
      throw new Error(`${where}: expected a JSON object {"context", "choices", "gold"}`);
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (!KEYS.has(k))
        throw new Error(`${where}: unknown field "${k}" (expected context, choices, gold, id)`);
    if (!("context" in o)) throw new Error(`${where}: missing field "context"`);
    if (typeof o.context !== "string") throw new Error(`${where}: "context" must be a string`);
    if (o.context.length === 0) throw new Error(`${where}: "context" is empty`);
    if (!("choices" in o)) throw new Error(`${where}: missing field "choices"`);
    if (!Array.isArray(o.choices)) throw new Error(`${where}: "choices" must be an array of strings`);
    if (o.choices.length < 2)
      throw new Error(`${where}: "choices" has ${o.choices.length} entries; at least 2 are needed`);
    o.choices.forEach((c, j) => {
      if (typeof c !== "string") throw new Error(`${where}: choice ${j} is not a string`);
      if (c.length === 0) throw new Error(`${where}: choice ${j} is empty`);
    });
    if (!("gold" in o)) throw new Error(`${where}: missing field "gold"`);
    if (typeof o.gold !== "number" || !Number.isInteger(o.gold))
      throw new Error(`${where}: "gold" must be an integer index into "choices"`);
    if (o.gold < 0 || o.gold >= o.choices.length)
      throw new Error(
        `${where}: "gold" is ${o.gold} but there are ${o.choices.length} choices (0 to ${o.choices.length - 1})`,
      );
    if ("id" in o && typeof o.id !== "string" && typeof o.id !== "number")
      throw new Error(`${where}: "id" must be a string or a number`);
    const item: McItem = { context: o.context, choices: o.choices as string[], gold: o.gold, line: i + 1 };
    if ("id" in o) item.id = o.id as string | number;
    items.push(item);
  });
  if (items.length === 0) throw new Error(`${source} holds no items`);
  return items;
}

export function readMcTasks(file: string): McItem[] {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(
      code === "ENOENT"
        ? `the task file ${file} does not exist`
        : `cannot read ${file}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  return parseMcTasks(text, file);
}

/** Context and continuation ids with the harness's boundary (see the contract above). */
export function encodeChoice(
  tok: Tokenizer,
  context: string,
  choice: string,
): { context: Int32Array; continuation: Int32Array } {
  const trimmed = context.replace(/\s+$/u, "");
  const ctx = trimmed.length > 0 ? trimmed : context; // an all-blank context stays as it is
  const cont = context.slice(ctx.length) + choice;
  const ctxIds = tok.encode(ctx);
  const whole = tok.encode(ctx + cont);
  return { context: ctxIds, continuation: whole.slice(ctxIds.length) };
}

/** Summed log-probability of each choice of the item given its context (nats). */
export function scoreItem(model: DecoderLM, tok: Tokenizer, item: McItem): number[] {
  const L = model.config.max_position_embeddings;
  const V = model.config.vocab_size;
  const where =
    item.id !== undefined ? `item ${JSON.stringify(item.id)} (line ${item.line})` : `line ${item.line}`;
  const rows = item.choices.map((choice, j) => {
    const { context, continuation } = encodeChoice(tok, item.context, choice);
    if (continuation.length === 0)
      throw new Error(`${where}: choice ${j} adds no tokens after the context's`);
    if (context.length === 0) throw new Error(`${where}: the context encodes to no tokens`);
    if (continuation.length > L)
      throw new Error(
        `${where}: choice ${j} is ${continuation.length} tokens, more than the model's context of ${L} (max_position_embeddings)`,
      );
    const all = new Int32Array(context.length + continuation.length);
    all.set(context);
    all.set(continuation, context.length);
    for (const id of all)
      if (id >= V) throw new Error(`${where}: token id ${id} is outside the model's vocabulary of ${V}`);
    const window = all.subarray(Math.max(0, all.length - (L + 1)));
    return { input: window.subarray(0, window.length - 1), continuation };
  });
  const B = rows.length;
  const T = Math.max(...rows.map((r) => r.input.length));
  const ids = new Int32Array(B * T); // right-padded with id 0
  rows.forEach((r, b) => ids.set(r.input, b * T));
  return noGrad(() =>
    tidy(() => {
      const logits = model.forward(ids, B, T).data;
      return rows.map((r, b) => {
        const n = r.continuation.length;
        const first = r.input.length - n; // the logits at this position predict continuation[0]
        let ll = 0;
        for (let k = 0; k < n; k++) {
          const off = (b * T + first + k) * V;
          let mx = -Infinity;
          for (let v = 0; v < V; v++) mx = Math.max(mx, logits[off + v]!);
          let z = 0;
          for (let v = 0; v < V; v++) z += Math.exp(logits[off + v]! - mx);
          ll += logits[off + r.continuation[k]!]! - mx - Math.log(z);
        }
        return ll;
      });
    }),
  );
}

export interface McItemResult {
  id?: string | number;
  line: number;
  gold: number;
  /** Summed log-likelihood of each choice (nats). */
  loglikelihoods: number[];
  /** UTF-8 length of each choice (the acc_norm divisor). */
  bytes: number[];
  pred: number;
  predNorm: number;
  acc: number;
  accNorm: number;
}

export interface McResult {
  items: number;
  acc: number;
  accStderr: number;
  accNorm: number;
  accNormStderr: number;
  details: McItemResult[];
}

/** Index of the largest value; the first on ties (as numpy's argmax). */
function argmaxFirst(xs: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

/** Mean and its standard error (sample standard deviation / √n; NaN when n = 1). */
export function meanStderr(xs: readonly number[]): { mean: number; stderr: number } {
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { mean, stderr: NaN };
  const v = xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1);
  return { mean, stderr: Math.sqrt(v / n) };
}

export function scoreToResult(item: McItem, loglikelihoods: number[]): McItemResult {
  const bytes = item.choices.map((c) => Buffer.byteLength(c, "utf8"));
  const pred = argmaxFirst(loglikelihoods);
  const predNorm = argmaxFirst(loglikelihoods.map((ll, i) => ll / bytes[i]!));
  const r: McItemResult = {
    line: item.line,
    gold: item.gold,
    loglikelihoods,
    bytes,
    pred,
    predNorm,
    acc: pred === item.gold ? 1 : 0,
    accNorm: predNorm === item.gold ? 1 : 0,
  };
  return item.id !== undefined ? { id: item.id, ...r } : r;
}

/** Scores every item; onItem(done, total, details so far) after each (for progress bars). */
export function evaluateMc(
  model: DecoderLM,
  tok: Tokenizer,
  items: readonly McItem[],
  onItem?: (done: number, total: number, details: readonly McItemResult[]) => void,
): McResult {
  if (items.length === 0) throw new Error("no items to evaluate");
  const details: McItemResult[] = [];
  for (const item of items) {
    details.push(scoreToResult(item, scoreItem(model, tok, item)));
    onItem?.(details.length, items.length, details);
  }
  const acc = meanStderr(details.map((d) => d.acc));
  const accNorm = meanStderr(details.map((d) => d.accNorm));
  return {
    items: details.length,
    acc: acc.mean,
    accStderr: acc.stderr,
    accNorm: accNorm.mean,
    accNormStderr: accNorm.stderr,
    details,
  };
}
