/**
 * Byte-level BPE, trained here.
 *
 * Text is cut into pieces by PRETOKENIZE_PATTERN (words with their leading space, numbers,
 * punctuation runs, whitespace runs — GPT-2's idea, with whitespace spelled out so that
 * JavaScript and Oniguruma, the regex engine of HF tokenizers, read it identically). Each piece's
 * UTF-8 bytes are the initial symbols, ids 0–255 = the byte values (the same ids as the byte
 * tokenizer). Training repeatedly merges the most frequent adjacent pair of symbols (ties: the
 * smaller pair of ids), counted over the distinct pieces weighted by their counts, with pair
 * counts updated incrementally, until the vocabulary has the size asked for.
 *
 * Saved as an HF `tokenizer.json` (model BPE, GPT-2 byte→unicode symbols, Split + ByteLevel
 * pre-tokenizer, ByteLevel decoder) that HF tools load, plus attnres_tokenizer.json
 * {"kind": "bpe", "vocab_size": N}.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeFileAtomic } from "../io/atomic.js";
import { optionError } from "../io/errors.js";
import { TOKENIZER_META, type Tokenizer } from "./tokenizer-core.js";
import { readRegularFile } from "../io/atomic.js";

/** The Unicode White_Space characters (what Oniguruma's \s matches), as a character-class body. */
const WS = "\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/**
 * The pre-tokenizer: English contractions; letters with an optional leading space; digits with
 * an optional leading space; other symbols with an optional leading space; whitespace ending in
 * line breaks; other whitespace runs (leaving the last space to the word that follows); trailing
 * whitespace.
 */
export const PRETOKENIZE_PATTERN = `'(?:s|t|re|ve|m|ll|d)| ?\\p{L}+| ?\\p{N}+| ?[^${WS}\\p{L}\\p{N}]+|[${WS}]*[\r\n]+|[${WS}]+(?![^${WS}])|[${WS}]+`;

/** Largest vocabulary trainBpe accepts (pair keys pack two ids into one double). */
export const MAX_BPE_VOCAB = 1 << 20;
const KEY = MAX_BPE_VOCAB;

/** GPT-2's reversible byte → printable character map (what HF's ByteLevel uses). */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const out = new Array<string>(256);
  for (const b of bs) out[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (out[b] === undefined) out[b] = String.fromCharCode(256 + n++);
  return out;
})();
const CHAR_TO_BYTE = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** The pieces text is cut into before BPE (exported for tests and word counting). */
export function pretokenize(text: string): string[] {
  return text.match(new RegExp(PRETOKENIZE_PATTERN, "gu")) ?? [];
}

/** Adds the pieces of text to counts (distinct piece → occurrences). */
export function countWords(text: string, counts: Map<string, number> = new Map()): Map<string, number> {
  const re = new RegExp(PRETOKENIZE_PATTERN, "gu");
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    const w = m[0];
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  return counts;
}

/** Max-heap of pair keys ordered by count (desc), then key (asc) — the deterministic tie-break. */
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];
  get size(): number {
    return this.keys.length;
  }
  private above(i: number, j: number): boolean {
    const ci = this.counts[i]!,
      cj = this.counts[j]!;
    return ci > cj || (ci === cj && this.keys[i]! < this.keys[j]!);
  }
  private swap(i: number, j: number): void {
    const c = this.counts[i]!,
      k = this.keys[i]!;
    this.counts[i] = this.counts[j]!;
    this.keys[i] = this.keys[j]!;
    this.counts[j] = c;
    this.keys[j] = k;
  }
  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.keys.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.above(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  /** Removes the top; returns [count, key]. */
  pop(): [number, number] {
    const top: [number, number] = [this.counts[0]!, this.keys[0]!];
    const lastC = this.counts.pop()!,
      lastK = this.keys.pop()!;
    const n = this.keys.length;
    if (n > 0) {
      this.counts[0] = lastC;
      this.keys[0] = lastK;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1,
          r = l + 1;
        let m = i;
        if (l < n && this.above(l, m)) m = l;
        if (r < n && this.above(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

export interface BpeTrainOptions {
  /** Called now and then with (tokens so far, vocabulary size asked for). */
  onProgress?: (done: number, total: number) => void;
  /** Pairs seen fewer times than this are never merged (default 2). */
  minPairCount?: number;
}

/**
 * Trains a byte-level BPE with exactly `vocabSize` tokens on distinct pieces and their counts
 * (from countWords). Throws when the data cannot support that many tokens.
 */
export function trainBpe(
  counts: Map<string, number>,
  vocabSize: number,
  opts: BpeTrainOptions = {},
): BpeTokenizer {
  if (!Number.isInteger(vocabSize) || vocabSize < 257)
    throw new Error(
      `BPE vocabulary size must be an integer ≥ 257 (256 bytes + at least one merge), got ${vocabSize}`,
    );
  if (vocabSize > MAX_BPE_VOCAB)
    throw new Error(`BPE vocabulary size ${vocabSize} exceeds the maximum ${MAX_BPE_VOCAB}`);
  const minCount = opts.minPairCount ?? 2;

  // Distinct pieces as mutable symbol arrays, in first-seen order (deterministic).
  const nWords = counts.size;
  const syms: Int32Array[] = new Array(nWords);
  const lens = new Int32Array(nWords);
  const freq = new Float64Array(nWords);
  let w = 0;
  for (const [word, c] of counts) {
    const bytes = Buffer.from(word, "utf8");
    syms[w] = Int32Array.from(bytes);
    lens[w] = bytes.length;
    freq[w] = c;
    w++;
  }

  const pairCount = new Map<number, number>();
  const where = new Map<number, number[]>();
  const add = (a: number, b: number, c: number, word: number): void => {
    const key = a * KEY + b;
    pairCount.set(key, (pairCount.get(key) ?? 0) + c);
    const list = where.get(key);
    if (list === undefined) where.set(key, [word]);
    else if (list[list.length - 1] !== word) list.push(word);
  };
  const sub = (a: number, b: number, c: number): void => {
    const key = a * KEY + b;
    const v = (pairCount.get(key) ?? 0) - c;
    if (v > 0) pairCount.set(key, v);
    else pairCount.delete(key);
  };
  for (let i = 0; i < nWords; i++) {
    const s = syms[i]!,
      c = freq[i]!;
    for (let j = 0; j + 1 < lens[i]!; j++) add(s[j]!, s[j + 1]!, c, i);
  }
  const heap = new PairHeap();
  for (const [key, c] of pairCount) heap.push(c, key);

  // Token strings (GPT-2 byte symbols) and ids; a merge whose string already exists reuses its id.
  const strings: string[] = BYTE_TO_CHAR.slice();
  const idOf = new Map<string, number>(strings.map((s, i) => [s, i]));
  const merges: number[] = []; // a, b, result triples
  const seen = new Int32Array(nWords).fill(-1);
  const touched = new Set<number>();
  let step = 0;
  const report = Math.max(1, Math.floor((vocabSize - 256) / 200));

  while (strings.length < vocabSize) {
    // The most frequent current pair (stale heap entries re-queued with their current count).
    let best = -1;
    while (heap.size > 0) {
      const [c, key] = heap.pop();
      const cur = pairCount.get(key) ?? 0;
      if (cur === c) {
        best = key;
        break;
      }
      if (cur > 0) heap.push(cur, key);
    }
    if (best < 0 || (pairCount.get(best) ?? 0) < minCount) {
      throw optionError(
        (n) =>
          `BPE vocabulary size ${vocabSize} is too large for this corpus: its training text supports at most ` +
          `${strings.length} tokens (every pair seen at least ${minCount} times is already merged); choose a smaller ${n("vocabSize")}`,
      );
    }
    const a = Math.floor(best / KEY),
      b = best - a * KEY;
    const str = strings[a]! + strings[b]!;
    let z = idOf.get(str);
    if (z === undefined) {
      z = strings.length;
      strings.push(str);
      idOf.set(str, z);
    }
    merges.push(a, b, z);

    touched.clear();
    const list = where.get(best)!;
    where.delete(best);
    for (const wi of list) {
      if (seen[wi] === step) continue;
      seen[wi] = step;
      const s = syms[wi]!,
        n = lens[wi]!,
        c = freq[wi]!;
      let i = 0,
        j = 0;
      let hit = false;
      while (i < n) {
        if (i + 1 < n && s[i] === a && s[i + 1] === b) {
          hit = true;
          if (j > 0) {
            const l = s[j - 1]!;
            sub(l, a, c);
            add(l, z, c, wi);
            touched.add(l * KEY + z);
          }
          if (i + 2 < n) {
            const r = s[i + 2]!;
            sub(b, r, c);
            add(z, r, c, wi);
            touched.add(z * KEY + r);
          }
          s[j++] = z;
          i += 2;
        } else s[j++] = s[i++]!;
      }
      if (hit) lens[wi] = j;
    }
    pairCount.delete(best);
    for (const key of touched) {
      const c = pairCount.get(key);
      if (c !== undefined && c > 0) heap.push(c, key);
    }
    step++;
    if (opts.onProgress && step % report === 0) opts.onProgress(strings.length, vocabSize);
  }
  opts.onProgress?.(strings.length, vocabSize);
  return new BpeTokenizer(strings, Int32Array.from(merges));
}

/** A trained byte-level BPE: ids 0–255 are bytes, then merged tokens. */
export class BpeTokenizer implements Tokenizer {
  readonly kind = "bpe";
  readonly vocabSize: number;
  /** Token strings in GPT-2 byte symbols (HF vocab keys), by id. */
  readonly tokens: readonly string[];
  /** Merges in rank order as (a, b, result) triples. */
  readonly merges: Int32Array;
  private readonly bytesOf: Uint8Array[];
  private readonly rank = new Map<number, number>();
  private readonly cache = new Map<string, Int32Array>();
  private readonly byteIds: Int32Array;

  constructor(tokens: readonly string[], merges: Int32Array) {
    this.tokens = tokens;
    this.vocabSize = tokens.length;
    this.merges = merges;
    this.bytesOf = tokens.map((t, id) => {
      const out = new Uint8Array(t.length);
      for (let i = 0; i < t.length; i++) {
        const b = CHAR_TO_BYTE.get(t[i]!);
        if (b === undefined)
          throw new Error(`BPE token ${id} (${JSON.stringify(t)}) is not in byte-level symbols`);
        out[i] = b;
      }
      return out;
    });
    this.byteIds = new Int32Array(256).fill(-1);
    tokens.forEach((t, id) => {
      if (t.length === 1 && this.byteIds[CHAR_TO_BYTE.get(t)!] === -1)
        this.byteIds[CHAR_TO_BYTE.get(t)!] = id;
    });
    for (let b = 0; b < 256; b++)
      if (this.byteIds[b] === -1) throw new Error(`BPE vocabulary has no token for byte ${b}`);
    for (let r = 0; r < merges.length / 3; r++) {
      const key = merges[3 * r]! * KEY + merges[3 * r + 1]!;
      if (!this.rank.has(key)) this.rank.set(key, r);
    }
  }

  /** Token ids of one pre-tokenized piece (lowest-rank pair first, leftmost first). */
  private encodeWord(word: string): Int32Array {
    const bytes = Buffer.from(word, "utf8");
    let s = new Int32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) s[i] = this.byteIds[bytes[i]!]!;
    let n = s.length;
    const m = this.merges;
    while (n > 1) {
      let bestRank = Infinity;
      for (let i = 0; i + 1 < n; i++) {
        const r = this.rank.get(s[i]! * KEY + s[i + 1]!);
        if (r !== undefined && r < bestRank) bestRank = r;
      }
      if (bestRank === Infinity) break;
      const a = m[3 * bestRank]!,
        b = m[3 * bestRank + 1]!,
        z = m[3 * bestRank + 2]!;
      let i = 0,
        j = 0;
      while (i < n) {
        if (i + 1 < n && s[i] === a && s[i + 1] === b) {
          s[j++] = z;
          i += 2;
        } else s[j++] = s[i++]!;
      }
      n = j;
    }
    if (n !== s.length) s = s.slice(0, n);
    return s;
  }

  encode(text: string): Int32Array {
    let out = new Int32Array(Math.max(16, text.length >> 1));
    let at = 0;
    const re = new RegExp(PRETOKENIZE_PATTERN, "gu");
    for (let mt = re.exec(text); mt !== null; mt = re.exec(text)) {
      const w = mt[0];
      let ids = this.cache.get(w);
      if (ids === undefined) {
        ids = this.encodeWord(w);
        if (this.cache.size > 1_000_000) this.cache.clear();
        this.cache.set(w, ids);
      }
      if (at + ids.length > out.length) {
        const bigger = new Int32Array(Math.max(out.length * 2, at + ids.length));
        bigger.set(out.subarray(0, at));
        out = bigger;
      }
      if (ids.length === 1) out[at++] = ids[0]!;
      else {
        out.set(ids, at);
        at += ids.length;
      }
    }
    return out.slice(0, at);
  }

  decode(ids: ArrayLike<number>): string {
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const v = ids[i]!;
      if (!Number.isInteger(v) || v < 0 || v >= this.vocabSize)
        throw new Error(`bpe tokenizer: id ${v} is outside [0, ${this.vocabSize})`);
      total += this.bytesOf[v]!.length;
    }
    const buf = Buffer.alloc(total);
    let at = 0;
    for (let i = 0; i < ids.length; i++) {
      const t = this.bytesOf[ids[i]!]!;
      buf.set(t, at);
      at += t.length;
    }
    return buf.toString("utf8");
  }

  /** The HF tokenizer.json object. */
  toHfJson(): Record<string, unknown> {
    const vocab: Record<string, number> = {};
    this.tokens.forEach((t, id) => (vocab[t] = id));
    const merges: string[] = [];
    for (let r = 0; r < this.merges.length / 3; r++)
      merges.push(`${this.tokens[this.merges[3 * r]!]} ${this.tokens[this.merges[3 * r + 1]!]}`);
    const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false };
    return {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: {
        type: "Sequence",
        pretokenizers: [
          { type: "Split", pattern: { Regex: PRETOKENIZE_PATTERN }, behavior: "Isolated", invert: false },
          byteLevel,
        ],
      },
      post_processor: null,
      decoder: byteLevel,
      model: {
        type: "BPE",
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: false,
        vocab,
        merges,
      },
    };
  }

  save(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    writeFileAtomic(path.join(dir, "tokenizer.json"), JSON.stringify(this.toHfJson()) + "\n");
    writeFileAtomic(
      path.join(dir, TOKENIZER_META),
      JSON.stringify({ kind: "bpe", vocab_size: this.vocabSize }) + "\n",
    );
  }

  /** Rebuilds a BpeTokenizer from a tokenizer.json written by save(). */
  static fromHfJson(json: unknown, where = "tokenizer.json"): BpeTokenizer {
    const j = json as {
      model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
      pre_tokenizer?: { pretokenizers?: { type?: string; pattern?: { Regex?: string } }[] };
      added_tokens?: unknown[];
    };
    const model = j.model;
    if (!model || model.type !== "BPE" || !model.vocab || !Array.isArray(model.merges))
      throw new Error(`${where}: not a BPE tokenizer.json`);
    const pattern = j.pre_tokenizer?.pretokenizers?.find((p) => p.type === "Split")?.pattern?.Regex;
    if (pattern !== PRETOKENIZE_PATTERN)
      throw new Error(
        `${where}: not written by attnres's BPE trainer (different pre-tokenizer); load it as kind "hf"`,
      );
    if (j.added_tokens && j.added_tokens.length > 0)
      throw new Error(`${where}: attnres BPE tokenizers have no added tokens; load it as kind "hf"`);
    const tokens: string[] = [];
    for (const [t, id] of Object.entries(model.vocab)) {
      if (!Number.isInteger(id) || id < 0)
        throw new Error(`${where}: bad id ${id} for token ${JSON.stringify(t)}`);
      if (tokens[id] !== undefined) throw new Error(`${where}: id ${id} is used twice`);
      tokens[id] = t;
    }
    for (let i = 0; i < tokens.length; i++)
      if (tokens[i] === undefined) throw new Error(`${where}: id ${i} is missing`);
    const idOf = new Map(tokens.map((t, i) => [t, i]));
    const merges = new Int32Array(model.merges.length * 3);
    model.merges.forEach((m, r) => {
      const [x, y] = typeof m === "string" ? (m.split(" ") as [string, string]) : m;
      const a = idOf.get(x),
        b = idOf.get(y),
        z = idOf.get(x + y);
      if (a === undefined || b === undefined || z === undefined)
        throw new Error(`${where}: merge ${r} (${JSON.stringify(m)}) uses tokens not in the vocabulary`);
      merges[3 * r] = a;
      merges[3 * r + 1] = b;
      merges[3 * r + 2] = z;
    });
    return new BpeTokenizer(tokens, merges);
  }
}

/** Loads the BPE tokenizer saved in dir. */
export function loadBpe(dir: string, meta: Record<string, unknown> = {}): BpeTokenizer {
  const file = path.join(dir, "tokenizer.json");
  if (!fs.existsSync(file))
    throw new Error(`${dir}: ${TOKENIZER_META} says "bpe" but tokenizer.json is missing`);
  let json: unknown;
  try {
    json = JSON.parse(readRegularFile(file).toString("utf8"));
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const tok = BpeTokenizer.fromHfJson(json, file);
  if (meta.vocab_size !== undefined && meta.vocab_size !== tok.vocabSize)
    throw new Error(
      `${dir}: ${TOKENIZER_META} says vocab_size ${String(meta.vocab_size)}, tokenizer.json has ${tok.vocabSize}`,
    );
  return tok;
}
