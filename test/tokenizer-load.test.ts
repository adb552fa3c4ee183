/**
 * Loading a tokenizer needs only src/data/tokenizer.ts: its table of loaders (TOKENIZER_LOADERS)
 * names every kind, nothing registers itself as a side effect of importing another module. This
 * test saves one tokenizer of each kind (byte, bpe, hf, and a bare tokenizer.json), then a fresh
 * Node process that imports ONLY the tokenizer module loads each folder and round-trips a text.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import { countWords, trainBpe } from "../src/data/bpe.js";
import { HfTokenizer, resolveHfTokenizerFile } from "../src/data/hf-tokenizer.js";
import { ByteTokenizer, TOKENIZER_LOADERS } from "../src/data/tokenizer.js";
import { tempDir } from "./helpers.js";

const root = path.resolve(import.meta.dirname, "..");
const TEXT = "the routed stream looks down, the stream looks up";

test("the loader table names every tokenizer kind", () => {
  assert.deepEqual(Object.keys(TOKENIZER_LOADERS).sort(), ["bpe", "byte", "hf"]);
});

test("loadTokenizer alone loads every kind, in a process that imports nothing else", () => {
  const base = tempDir("tokenizers");
  const dirs: Record<string, string> = {};
  const save = (name: string, tok: { save(dir: string): void; vocabSize: number }): void => {
    dirs[name] = path.join(base, name);
    tok.save(dirs[name]);
  };
  save("byte", new ByteTokenizer());
  save("bpe", trainBpe(countWords(TEXT.repeat(20)), 270));
  save("hf", HfTokenizer.fromFile(resolveHfTokenizerFile("qwen3")));
  dirs.bare = path.join(base, "bare");
  fs.mkdirSync(dirs.bare);
  fs.copyFileSync(path.join(dirs.hf, "tokenizer.json"), path.join(dirs.bare, "tokenizer.json"));

  const script = [
    `import { loadTokenizer } from ${JSON.stringify(path.join(root, "src", "data", "tokenizer.ts"))};`,
    `const dirs = ${JSON.stringify(dirs)};`,
    `const out = {};`,
    `for (const [name, dir] of Object.entries(dirs)) {`,
    `  const tok = loadTokenizer(dir);`,
    `  out[name] = { kind: tok.kind, vocab: tok.vocabSize, text: tok.decode(tok.encode(${JSON.stringify(TEXT)})) };`,
    `}`,
    `console.log(JSON.stringify(out));`,
  ].join("\n");
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: root,
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, { kind: string; vocab: number; text: string }>;
  assert.deepEqual(out.byte, { kind: "byte", vocab: 256, text: TEXT });
  assert.deepEqual(out.bpe, { kind: "bpe", vocab: 270, text: TEXT });
  assert.equal(out.hf!.kind, "hf");
  assert.ok(out.hf!.vocab > 150000, `qwen3 vocabulary ${out.hf!.vocab}`);
  assert.equal(out.hf!.text, TEXT);
  assert.deepEqual(out.bare, out.hf);
});

test("an unknown kind is one clear error naming the folder", () => {
  const dir = tempDir("tokenizer-unknown");
  fs.writeFileSync(path.join(dir, "attnres_tokenizer.json"), JSON.stringify({ kind: "sentencepiece" }));
  const script = `import { loadTokenizer } from ${JSON.stringify(path.join(root, "src", "data", "tokenizer.ts"))};
try { loadTokenizer(${JSON.stringify(dir)}); } catch (e) { console.log(e.message); }`;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: root,
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), `${dir}: unknown tokenizer kind "sentencepiece"`);
});
