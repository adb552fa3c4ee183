/**
 * What every tokenizer shares (the kinds' own files, src/data/bpe.ts and src/data/hf-tokenizer.ts,
 * build on it; src/data/tokenizer.ts re-exports it with `loadTokenizer`): the `Tokenizer`
 * interface, the name of the file that records a saved tokenizer's kind, and the byte tokenizer.
 *   Tokenizer        text → ids in [0, vocabSize) and back; save(dir) writes what loading needs
 *   TokenizerKind    "byte" | "bpe" | "hf"
 *   TokenizerLoader  (dir, meta) → Tokenizer: restores one kind from a folder (meta: the parsed
 *                    attnres_tokenizer.json, or {kind: "hf"} for a bare tokenizer.json)
 *   ByteTokenizer    UTF-8 bytes as ids 0–255 (saved as attnres_tokenizer.json {"kind": "byte"})
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeFileAtomic } from "../io/atomic.js";

export type TokenizerKind = "byte" | "bpe" | "hf";

export interface Tokenizer {
  readonly kind: TokenizerKind;
  /** Number of ids the model must embed (max id + 1). */
  readonly vocabSize: number;
  encode(text: string): Int32Array;
  decode(ids: ArrayLike<number>): string;
  /** Writes what loadTokenizer needs into dir (tokenizer.json and/or attnres_tokenizer.json). */
  save(dir: string): void;
}

export const TOKENIZER_META = "attnres_tokenizer.json";

export class ByteTokenizer implements Tokenizer {
  readonly kind = "byte";
  readonly vocabSize = 256;
  encode(text: string): Int32Array {
    return Int32Array.from(Buffer.from(text, "utf8"));
  }
  decode(ids: ArrayLike<number>): string {
    const bytes = Buffer.alloc(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const v = ids[i]!;
      if (!Number.isInteger(v) || v < 0 || v > 255) throw new Error(`byte tokenizer: id ${v} is not a byte`);
      bytes[i] = v;
    }
    return bytes.toString("utf8");
  }
  save(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    writeFileAtomic(path.join(dir, TOKENIZER_META), JSON.stringify({ kind: "byte", vocab_size: 256 }) + "\n");
  }
}

/** Restores a saved tokenizer of one kind from `dir`; `meta` is its parsed attnres_tokenizer.json. */
export type TokenizerLoader = (dir: string, meta: Record<string, unknown>) => Tokenizer;

/** The byte tokenizer's loader (it has no files besides attnres_tokenizer.json). */
export const loadByte: TokenizerLoader = () => new ByteTokenizer();
