/**
 * Prepared datasets: a folder written by `attnres prepare` holding
 *   meta.json    PreparedMeta (below)
 *   train.bin    token ids, little-endian uint16 (vocab ≤ 65536) or uint32
 *   val.bin      the same for the validation split
 *   tokenizer files (see src/data/tokenizer.ts)
 * Bits per byte need the UTF-8 byte count of each split: bpb = loss_nats · tokens / (bytes · ln 2).
 * Loading checks meta.json's fields (positive token and byte counts, known dtype), the .bin sizes,
 * and that every token id is below the tokenizer's vocabulary size (an error naming the file, the
 * count of bad ids and the first offset).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { loadTokenizer, type Tokenizer } from "./tokenizer.js";
import { readRegularFile } from "../io/atomic.js";

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

const count = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const SplitSchema = z.object({ tokens: count, bytes: count, documents: z.number().int().nonnegative() });
const MetaSchema = z.looseObject({
  format: z.literal(1),
  corpus: z.string(),
  split: z.string(),
  tokenizer: z.looseObject({
    kind: z.enum(["byte", "bpe", "hf"]),
    vocab_size: z
      .number()
      .int()
      .positive()
      .max(2 ** 31),
    name: z.string().optional(),
  }),
  dtype: z.enum(["uint16", "uint32"]),
  train: SplitSchema,
  val: SplitSchema,
  fingerprint: z.string(),
});

function readTokens(
  file: string,
  dtype: PreparedMeta["dtype"],
  expected: number,
  vocab = Infinity,
): Int32Array {
  if (!fs.existsSync(file)) throw new Error(`${file} is missing (re-run attnres prepare)`);
  if (!fs.statSync(file).isFile()) throw new Error(`${file} is not a regular file`);
  const width = dtype === "uint16" ? 2 : 4;
  const size = fs.statSync(file).size;
  if (size !== expected * width)
    throw new Error(
      `${file} has ${size} bytes, expected ${expected * width} (${expected} ${dtype} tokens): re-run attnres prepare`,
    );
  const buf = fs.readFileSync(file);
  if (buf.length !== expected * width)
    throw new Error(
      `${file} has ${buf.length} bytes, expected ${expected * width} (${expected} ${dtype} tokens): re-run attnres prepare`,
    );
  const out = new Int32Array(expected);
  if (dtype === "uint16") for (let i = 0; i < expected; i++) out[i] = buf.readUInt16LE(2 * i);
  else for (let i = 0; i < expected; i++) out[i] = buf.readUInt32LE(4 * i);
  let bad = 0;
  let first = -1;
  for (let i = 0; i < expected; i++)
    if (out[i]! >= vocab || out[i]! < 0) {
      bad++;
      if (first < 0) first = i;
    }
  if (bad)
    throw new Error(
      `${file}: ${bad} token id${bad > 1 ? "s are" : " is"} outside the tokenizer's vocabulary of ${vocab} (the first, ${dtype === "uint16" ? buf.readUInt16LE(2 * first) : buf.readUInt32LE(4 * first)}, at token ${first}): re-run attnres prepare`,
    );
  return out;
}

export function readPreparedMeta(dir: string): PreparedMeta {
  const file = path.join(dir, "meta.json");
  if (!fs.existsSync(file))
    throw new Error(`${dir} is not a prepared dataset (no meta.json); run attnres prepare first`);
  let raw: unknown;
  try {
    raw = JSON.parse(readRegularFile(file).toString("utf8"));
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const r = MetaSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new Error(
      `${file} is not a prepared dataset's meta.json: ${i.path.length ? i.path.join(".") + ": " : ""}${i.message}`,
    );
  }
  return r.data as PreparedMeta;
}

export function loadPrepared(dir: string): PreparedData {
  const meta = readPreparedMeta(dir);
  const tokenizer = loadTokenizer(dir);
  const vocab = Math.min(tokenizer.vocabSize, meta.tokenizer.vocab_size);
  return {
    dir,
    meta,
    train: readTokens(path.join(dir, "train.bin"), meta.dtype, meta.train.tokens, vocab),
    val: readTokens(path.join(dir, "val.bin"), meta.dtype, meta.val.tokens, vocab),
    tokenizer,
  };
}
