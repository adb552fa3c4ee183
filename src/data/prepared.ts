/**
 * Prepared datasets: a folder written by `attnres prepare` holding
 *   meta.json    PreparedMeta (below)
 *   train.bin    token ids, little-endian uint16 (vocab ≤ 65536) or uint32
 *   val.bin      the same for the validation split
 *   tokenizer files (see src/data/tokenizer.ts)
 * Bits per byte need the UTF-8 byte count of each split: bpb = loss_nats · tokens / (bytes · ln 2).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { loadTokenizer, type Tokenizer } from "./tokenizer.js";
// The loaders of the "bpe" and "hf" tokenizer kinds register themselves on import.
import "./bpe.js";
import "./hf-tokenizer.js";

export interface SplitMeta {
  tokens: number;
  /** UTF-8 bytes of the split's text. */
  bytes: number;
  documents: number;
}

export interface PreparedMeta {
  format: 1;
  corpus: string;
  /** How the split was made, in words. */
  split: string;
  tokenizer: { kind: "byte" | "bpe" | "hf"; vocab_size: number; name?: string };
  dtype: "uint16" | "uint32";
  train: SplitMeta;
  val: SplitMeta;
  /** A hash of every input and option: re-running prepare with the same inputs is a no-op. */
  fingerprint: string;
}

export interface PreparedData {
  dir: string;
  meta: PreparedMeta;
  train: Int32Array;
  val: Int32Array;
  tokenizer: Tokenizer;
}

function readTokens(file: string, dtype: PreparedMeta["dtype"], expected: number): Int32Array {
  if (!fs.existsSync(file)) throw new Error(`${file} is missing (re-run attnres prepare)`);
  const buf = fs.readFileSync(file);
  const width = dtype === "uint16" ? 2 : 4;
  if (buf.length !== expected * width)
    throw new Error(
      `${file} has ${buf.length} bytes, expected ${expected * width} (${expected} ${dtype} tokens): re-run attnres prepare`,
    );
  const out = new Int32Array(expected);
  if (dtype === "uint16") for (let i = 0; i < expected; i++) out[i] = buf.readUInt16LE(2 * i);
  else for (let i = 0; i < expected; i++) out[i] = buf.readUInt32LE(4 * i);
  return out;
}

export function readPreparedMeta(dir: string): PreparedMeta {
  const file = path.join(dir, "meta.json");
  if (!fs.existsSync(file))
    throw new Error(`${dir} is not a prepared dataset (no meta.json); run attnres prepare first`);
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as PreparedMeta;
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

export function loadPrepared(dir: string): PreparedData {
  const meta = readPreparedMeta(dir);
  return {
    dir,
    meta,
    train: readTokens(path.join(dir, "train.bin"), meta.dtype, meta.train.tokens),
    val: readTokens(path.join(dir, "val.bin"), meta.dtype, meta.val.tokens),
    tokenizer: loadTokenizer(dir),
  };
}
