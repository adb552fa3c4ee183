/**
 * `attnres prepare`: a corpus (src/data/corpus.ts) and a tokenizer → a prepared folder
 * (src/data/prepared.ts): meta.json, train.bin, val.bin and the tokenizer's files.
 *
 * - Tokenizers: `byte`; `bpe` (byte-level BPE trained here on the training split only, with the
 *   vocabulary size asked for); `qwen3`, `llama3` or any HF tokenizer.json (src/data/hf-tokenizer.ts).
 * - Each document is encoded on its own and followed by a newline when it does not end in one;
 *   the splits' token streams are the documents' tokens back to back.
 * - meta.json carries a fingerprint of every input (the corpus's text and split, the tokenizer and
 *   its options, the format version): when the folder already holds a dataset with the same
 *   fingerprint, prepare returns at once and writes nothing.
 * - Everything is computed in memory, then written into a temporary sibling folder that is
 *   renamed into place, so a failed or interrupted run never leaves a half-written dataset
 *   (a temporary folder left by a killed run is removed by the next run).
 */
import cliProgress from "cli-progress";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { optionError } from "../io/errors.js";
import { countWords, MAX_BPE_VOCAB, trainBpe } from "./bpe.js";
import { documentText, loadCorpus, type Corpus, type Document } from "./corpus.js";
import {
  BUILTIN_HF_TOKENIZERS,
  HfTokenizer,
  hfTokenizerName,
  resolveHfTokenizerFile,
} from "./hf-tokenizer.js";
import { readPreparedMeta, type PreparedMeta, type SplitMeta } from "./prepared.js";
import { ByteTokenizer, TOKENIZER_META, type Tokenizer } from "./tokenizer.js";

/** Bumped whenever the prepared output for the same inputs would change. */
export const PREPARE_VERSION = 1;
export const DEFAULT_BPE_VOCAB = 8192;

export interface PrepareOptions {
  /** sotu (default), brown, moby, or a path to a text file or a folder of .txt/.md files. */
  corpus?: string;
  /** byte (default), bpe, qwen3, llama3, or a path to an HF tokenizer.json (or a folder holding one). */
  tokenizer?: string;
  /** BPE vocabulary size (bpe only; default 8192). */
  vocabSize?: number;
  /** Output folder (default data/<corpus>-<tokenizer>[-<vocab>]). */
  out?: string;
  /** No progress bars or summary. */
  quiet?: boolean;
  /** Accept corpus files with NUL bytes or invalid UTF-8 (see src/data/corpus.ts). */
  allowBinary?: boolean;
}

export interface PrepareResult {
  dir: string;
  meta: PreparedMeta;
  /** True when the folder was already up to date and nothing was written. */
  reused: boolean;
  seconds: number;
}

interface TokenizerSpec {
  kind: "byte" | "bpe" | "hf";
  /** For folder names and meta.json: byte, bpe, qwen3, llama3, or the tokenizer file's name. */
  name: string;
  vocabSize?: number;
  /** hf: the tokenizer.json file. */
  file?: string;
}

const safeName = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, "_") || "x";

/** Checks the tokenizer options before any work is done. */
export function resolveTokenizer(spec: string, vocabSize?: number): TokenizerSpec {
  if (vocabSize !== undefined && !Number.isInteger(vocabSize))
    throw optionError((n) => `${n("vocabSize")} must be an integer, got ${vocabSize}`);
  if (spec === "byte") {
    if (vocabSize !== undefined && vocabSize !== 256)
      throw optionError(
        (n) =>
          `the byte tokenizer has 256 tokens; ${n("vocabSize", vocabSize)} only applies to ${n("tokenizer", "bpe")}`,
      );
    return { kind: "byte", name: "byte" };
  }
  if (spec === "bpe") {
    const v = vocabSize ?? DEFAULT_BPE_VOCAB;
    if (v < 257) throw new Error(`BPE vocabulary size must be at least 257 (256 bytes + 1 merge), got ${v}`);
    if (v > MAX_BPE_VOCAB) throw new Error(`BPE vocabulary size must be at most ${MAX_BPE_VOCAB}, got ${v}`);
    return { kind: "bpe", name: "bpe", vocabSize: v };
  }
  const looksLikePath = /[/\\]|\.json$/i.test(spec) || fs.existsSync(spec);
  if (!(spec in BUILTIN_HF_TOKENIZERS) && !looksLikePath)
    throw new Error(
      `unknown tokenizer "${spec}": expected byte, bpe, ${Object.keys(BUILTIN_HF_TOKENIZERS).join(", ")}, or a path to a tokenizer.json`,
    );
  const file = resolveHfTokenizerFile(spec);
  const name = spec in BUILTIN_HF_TOKENIZERS ? spec : safeName(hfTokenizerName(file));
  return { kind: "hf", name, file, vocabSize };
}

/** The default output folder: data/<corpus>-<tokenizer>[-<vocab>] (relative to the working directory). */
export function defaultOutDir(corpusName: string, tok: TokenizerSpec): string {
  return path.join(
    "data",
    `${safeName(corpusName)}-${tok.name}${tok.kind === "bpe" ? `-${tok.vocabSize}` : ""}`,
  );
}

function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** A hash of every input that determines the output. */
function fingerprint(corpus: Corpus, tok: TokenizerSpec): string {
  const h = createHash("sha256");
  h.update(JSON.stringify({ prepare: PREPARE_VERSION, corpus: corpus.name, split: corpus.split }));
  for (const [split, docs] of [
    ["train", corpus.train],
    ["val", corpus.val],
  ] as const) {
    h.update(`\0${split}\0${docs.length}`);
    for (const d of docs) h.update(`\0${d.id}\0`).update(d.text);
  }
  const t: Record<string, unknown> = { kind: tok.kind, vocab_size: tok.vocabSize ?? null };
  if (tok.file) {
    t.file = sha256(fs.readFileSync(tok.file));
    const cfg = path.join(path.dirname(tok.file), "tokenizer_config.json");
    if (fs.existsSync(cfg)) t.config = sha256(fs.readFileSync(cfg));
  }
  h.update(`\0tokenizer\0${JSON.stringify(t)}`);
  return h.digest("hex");
}

/** True when dir holds a complete dataset with this fingerprint. */
function upToDate(dir: string, fp: string): PreparedMeta | null {
  if (!fs.existsSync(path.join(dir, "meta.json"))) return null;
  let meta: PreparedMeta;
  try {
    meta = readPreparedMeta(dir);
  } catch {
    return null;
  }
  if (meta.fingerprint !== fp) return null;
  const width = meta.dtype === "uint16" ? 2 : 4;
  for (const split of ["train", "val"] as const) {
    const f = path.join(dir, `${split}.bin`);
    if (!fs.existsSync(f) || fs.statSync(f).size !== meta[split].tokens * width) return null;
  }
  if (!fs.existsSync(path.join(dir, TOKENIZER_META))) return null;
  if (meta.tokenizer.kind !== "byte" && !fs.existsSync(path.join(dir, "tokenizer.json"))) return null;
  return meta;
}

/** A progress bar on a terminal (stderr); elsewhere one line when the phase ends. */
function phase(label: string, total: number, unit: "MB" | "tokens", quiet: boolean, start = 0) {
  const t0 = performance.now();
  const tty = !quiet && process.stderr.isTTY === true;
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format: `  ${label.padEnd(15)} [{bar}] {percentage}% | {value}/{total} ${unit} | {duration_formatted} (ETA {eta_formatted})`,
          formatValue: (v: number, _o: unknown, type: string) =>
            unit === "MB" && (type === "value" || type === "total") ? (v / 1e6).toFixed(1) : String(v),
          hideCursor: true,
          clearOnComplete: false,
          etaBuffer: 50,
          fps: 10,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  bar?.start(total, start);
  return {
    update(done: number) {
      bar?.update(Math.min(done, total));
    },
    stop(summary: string) {
      if (bar) {
        bar.update(total);
        bar.stop();
      }
      if (!quiet && !tty)
        process.stdout.write(`  ${label}: ${summary} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
    },
  };
}

const LINE_BOUNDARY =
  /[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]\n(?=[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])/g;

/**
 * Cuts a long text into pieces of about `size` characters, only after a line break that sits
 * between two non-space characters: no pre-tokenizer merges across such a point, so encoding
 * the pieces gives the same tokens as encoding the whole.
 */
function* pieces(text: string, size = 1 << 18): Generator<string> {
  let start = 0;
  while (text.length - start > size) {
    LINE_BOUNDARY.lastIndex = start + size;
    const m = LINE_BOUNDARY.exec(text);
    if (!m) break;
    const cut = m.index + 2;
    yield text.slice(start, cut);
    start = cut;
  }
  yield text.slice(start);
}

function encodeSplit(
  tok: Tokenizer,
  docs: readonly Document[],
  onBytes: (n: number) => void,
): { ids: Int32Array; meta: SplitMeta } {
  const parts: Int32Array[] = [];
  let tokens = 0,
    bytes = 0;
  for (const d of docs) {
    for (const piece of pieces(documentText(d))) {
      const ids = tok.encode(piece);
      parts.push(ids);
      tokens += ids.length;
      bytes += Buffer.byteLength(piece, "utf8");
      onBytes(bytes);
    }
  }
  const ids = new Int32Array(tokens);
  let at = 0;
  for (const p of parts) {
    ids.set(p, at);
    at += p.length;
  }
  return { ids, meta: { tokens, bytes, documents: docs.length } };
}

function toBin(ids: Int32Array, dtype: PreparedMeta["dtype"]): Buffer {
  const width = dtype === "uint16" ? 2 : 4;
  const buf = Buffer.alloc(ids.length * width);
  if (os.endianness() === "LE") {
    const view =
      dtype === "uint16"
        ? new Uint16Array(buf.buffer, buf.byteOffset, ids.length)
        : new Uint32Array(buf.buffer, buf.byteOffset, ids.length);
    view.set(ids);
  } else if (dtype === "uint16") for (let i = 0; i < ids.length; i++) buf.writeUInt16LE(ids[i]!, 2 * i);
  else for (let i = 0; i < ids.length; i++) buf.writeUInt32LE(ids[i]!, 4 * i);
  return buf;
}

const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
};

/** Removes temporary folders that killed runs left beside `out`. */
function removeStale(out: string): void {
  const parent = path.dirname(out);
  if (!fs.existsSync(parent)) return;
  const prefix = `.${path.basename(out)}.`;
  for (const e of fs.readdirSync(parent)) {
    if (!e.startsWith(prefix)) continue;
    const m = /^(?:tmp|old)-(\d+)-[0-9a-f]+$/.exec(e.slice(prefix.length));
    if (m && !processAlive(Number(m[1]))) fs.rmSync(path.join(parent, e), { recursive: true, force: true });
  }
}

/** Writes the dataset into a temporary sibling folder and renames it into place. */
function writeAtomically(out: string, write: (dir: string) => void): void {
  const parent = path.dirname(path.resolve(out));
  const madeParent = !fs.existsSync(parent);
  const tag = `${process.pid}-${Math.floor(Math.random() * 0xffffffff).toString(16)}`;
  const tmp = path.join(parent, `.${path.basename(out)}.tmp-${tag}`);
  const old = path.join(parent, `.${path.basename(out)}.old-${tag}`);
  try {
    fs.mkdirSync(tmp, { recursive: true });
    write(tmp);
    const replacing = fs.existsSync(out);
    if (replacing) fs.renameSync(out, old);
    try {
      fs.renameSync(tmp, out);
    } catch (e) {
      if (replacing) fs.renameSync(old, out);
      throw e;
    }
    if (replacing) fs.rmSync(old, { recursive: true, force: true });
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (madeParent)
      try {
        fs.rmdirSync(parent); // only if still empty
      } catch {
        /* not ours to remove */
      }
    throw e;
  }
}

const fmtBytes = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);

/** Prepares (or finds already prepared) a dataset; returns the folder and what happened. */
export async function prepareDetailed(opts: PrepareOptions = {}): Promise<PrepareResult> {
  const t0 = performance.now();
  const quiet = opts.quiet ?? false;
  const tokSpec = resolveTokenizer(opts.tokenizer ?? "byte", opts.vocabSize);
  const corpus = loadCorpus(opts.corpus ?? "sotu", { allowBinary: opts.allowBinary ?? false });
  if (!quiet) for (const n of corpus.notes ?? []) process.stderr.write(`attnres prepare: ${n}\n`);
  if (corpus.train.length === 0 || corpus.val.length === 0)
    throw new Error(
      `corpus ${corpus.name} has an empty ${corpus.train.length === 0 ? "training" : "validation"} split`,
    );
  const out = opts.out ?? defaultOutDir(corpus.name, tokSpec);

  if (fs.existsSync(out)) {
    if (!fs.statSync(out).isDirectory())
      throw optionError((n) => `${n("out", out)} exists and is not a folder`);
    if (fs.readdirSync(out).length > 0 && !fs.existsSync(path.join(out, "meta.json")))
      throw optionError(
        (n) =>
          `${n("out", out)} exists and is not a prepared dataset (no meta.json); choose another folder or remove it`,
      );
  }
  const fp = fingerprint(corpus, tokSpec);
  const existing = upToDate(out, fp);
  if (existing) {
    const seconds = (performance.now() - t0) / 1000;
    if (!quiet)
      process.stdout.write(
        `attnres prepare: ${out} is up to date (${corpus.name}, ${existing.tokenizer.kind} tokenizer); nothing to do\n`,
      );
    return { dir: out, meta: existing, reused: true, seconds };
  }
  removeStale(out);

  const source = opts.corpus ?? "sotu";
  if (!quiet)
    process.stdout.write(
      `attnres prepare: ${source} (${corpus.train.length} training / ${corpus.val.length} validation documents) with the ` +
        `${tokSpec.name}${tokSpec.kind === "bpe" ? ` (${tokSpec.vocabSize} tokens)` : ""} tokenizer → ${out}\n`,
    );

  // The tokenizer.
  let tok: Tokenizer;
  if (tokSpec.kind === "byte") tok = new ByteTokenizer();
  else if (tokSpec.kind === "hf") {
    tok = HfTokenizer.fromFile(tokSpec.file!, tokSpec.name);
    if (tokSpec.vocabSize !== undefined && tokSpec.vocabSize !== tok.vocabSize)
      throw optionError(
        (n) =>
          `the ${tokSpec.name} tokenizer has ${tok.vocabSize} tokens; ${n("vocabSize", tokSpec.vocabSize)} only applies to ${n("tokenizer", "bpe")}`,
      );
  } else {
    const texts = corpus.train.map(documentText);
    const count = phase(
      "counting words",
      texts.reduce((n, t) => n + Buffer.byteLength(t, "utf8"), 0),
      "MB",
      quiet,
    );
    const counts = new Map<string, number>();
    let done = 0;
    for (const t of texts) {
      countWords(t, counts);
      done += Buffer.byteLength(t, "utf8");
      count.update(done);
    }
    count.stop(`${counts.size.toLocaleString("en-US")} distinct words`);
    const train = phase("training BPE", tokSpec.vocabSize!, "tokens", quiet, 256);
    tok = trainBpe(counts, tokSpec.vocabSize!, { onProgress: (n) => train.update(n) });
    train.stop(`${tok.vocabSize} tokens`);
  }

  // The token streams.
  const totalBytes = [...corpus.train, ...corpus.val].reduce(
    (n, d) => n + Buffer.byteLength(documentText(d), "utf8"),
    0,
  );
  const enc = phase("tokenizing", totalBytes, "MB", quiet);
  const train = encodeSplit(tok, corpus.train, (n) => enc.update(n));
  const val = encodeSplit(tok, corpus.val, (n) => enc.update(train.meta.bytes + n));
  enc.stop(`${(train.meta.tokens + val.meta.tokens).toLocaleString("en-US")} tokens`);
  for (const s of [train, val])
    for (let i = 0; i < s.ids.length; i++)
      if (s.ids[i]! < 0 || s.ids[i]! >= tok.vocabSize)
        throw new Error(`tokenizer produced id ${s.ids[i]} outside its vocabulary of ${tok.vocabSize}`);

  const dtype: PreparedMeta["dtype"] = tok.vocabSize <= 65536 ? "uint16" : "uint32";
  const meta: PreparedMeta = {
    format: 1,
    corpus: source,
    split: corpus.split,
    tokenizer: { kind: tok.kind, vocab_size: tok.vocabSize, name: tokSpec.name },
    dtype,
    train: train.meta,
    val: val.meta,
    fingerprint: fp,
  };
  writeAtomically(out, (dir) => {
    fs.writeFileSync(path.join(dir, "train.bin"), toBin(train.ids, dtype));
    fs.writeFileSync(path.join(dir, "val.bin"), toBin(val.ids, dtype));
    tok.save(dir);
    fs.writeFileSync(path.join(dir, "meta.json"), JSON.stringify(meta, null, 2) + "\n");
  });

  const seconds = (performance.now() - t0) / 1000;
  if (!quiet)
    process.stdout.write(
      `prepared ${out} in ${seconds.toFixed(1)} s: train ${train.meta.tokens.toLocaleString("en-US")} tokens ` +
        `(${fmtBytes(train.meta.bytes)}), val ${val.meta.tokens.toLocaleString("en-US")} tokens (${fmtBytes(val.meta.bytes)}), ` +
        `${((train.meta.bytes + val.meta.bytes) / (train.meta.tokens + val.meta.tokens)).toFixed(2)} bytes/token, ` +
        `vocabulary ${tok.vocabSize}\n  split: ${corpus.split}\n`,
    );
  return { dir: out, meta, reused: false, seconds };
}

/** Prepares (or finds already prepared) a dataset; returns its folder. */
export async function prepare(opts: PrepareOptions = {}): Promise<string> {
  return (await prepareDetailed(opts)).dir;
}

/** The name src/cli/common.ts uses. */
export const prepareDataset = prepare;
