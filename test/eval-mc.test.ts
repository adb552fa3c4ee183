/**
 * Zero-shot multiple-choice evaluation (src/eval/mc.ts) and `attnres eval-mc` (src/cli/eval-mc.ts).
 *
 * - The JSONL format: bad JSON, missing or mistyped fields, gold out of range and fewer than two
 *   choices are one-line errors naming the file's 1-based line (blank lines counted).
 * - The harness's token boundary: trailing context whitespace moves into the continuation, and a
 *   merge across the boundary is scored with the continuation.
 * - Cross-check: on random models (standard and routed residuals, float64 reference backend) a
 *   choice's score equals the sum over its tokens of log(softmax(logits)) from an independent,
 *   unbatched forward over the same (left-truncated) window, for choices of different lengths
 *   batched together and contexts longer than the model's context.
 * - Known answers: a one-layer model with attention and MLP outputs zeroed, one-hot embeddings and
 *   a hand-set lm_head is an exact bigram model (a→b, b→c, c→a with logit s, all else 0), so every
 *   log-likelihood has a closed form: right-gold items score acc 1, wrong-gold ones acc 0, and a
 *   long likely choice against a short unlikely one separates acc from acc_norm.
 * - The command: --limit, --out, --json, and clear errors (no tokenizer, tokenizer larger than the
 *   model's vocabulary, missing task file, bad lines, --limit 0); the shipped example parses.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { Command } from "commander";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { evalMcCommand, formatMcResult, registerEvalMc } from "../src/cli/eval-mc.js";
import { ByteTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import {
  encodeChoice,
  evaluateMc,
  type McItem,
  meanStderr,
  parseMcTasks,
  readMcTasks,
  scoreItem,
} from "../src/eval/mc.js";
import { saveCheckpoint } from "../src/model/checkpoint.js";
import { DecoderLM } from "../src/model/decoder.js";
import { tidy } from "../src/tensor/memory.js";
import { log, softmax } from "../src/tensor/ops.js";
import { Rng } from "../src/tensor/random.js";
import { noGrad } from "../src/tensor/tensor.js";
import { assertClose, tempDir } from "./helpers.js";
import type { DecoderLMConfig } from "../src/model/config.js";

const tok = new ByteTokenizer();
const item = (context: string, choices: string[], gold: number, line = 1): McItem => ({
  context,
  choices,
  gold,
  line,
});

describe("task format", () => {
  const good = '{"context": "a", "choices": ["b", "c"], "gold": 1, "id": "q1"}';
  test("valid lines parse; blank lines are skipped but counted", () => {
    const items = parseMcTasks(`${good}\n\n{"context":"x","choices":["y","z","w"],"gold":0}\n`, "t.jsonl");
    assert.equal(items.length, 2);
    assert.deepEqual(items[0], { context: "a", choices: ["b", "c"], gold: 1, line: 1, id: "q1" });
    assert.equal(items[1]!.line, 3);
    assert.equal(items[1]!.id, undefined);
  });
  const bad: [string, string, RegExp][] = [
    ["bad JSON", '{"context": "a", "choices": ["b", "c"], "gold": 1', /^t\.jsonl:3: not valid JSON/],
    ["not an object", '["a"]', /^t\.jsonl:3: expected a JSON object/],
    ["missing context", '{"choices": ["b", "c"], "gold": 0}', /^t\.jsonl:3: missing field "context"$/],
    [
      "context not a string",
      '{"context": 1, "choices": ["b", "c"], "gold": 0}',
      /t\.jsonl:3: "context" must/,
    ],
    ["missing choices", '{"context": "a", "gold": 0}', /^t\.jsonl:3: missing field "choices"$/],
    ["missing gold", '{"context": "a", "choices": ["b", "c"]}', /^t\.jsonl:3: missing field "gold"$/],
    [
      "one choice",
      '{"context": "a", "choices": ["b"], "gold": 0}',
      /t\.jsonl:3: "choices" has 1 entries; at least 2/,
    ],
    [
      "a choice not a string",
      '{"context": "a", "choices": ["b", 2], "gold": 0}',
      /t\.jsonl:3: choice 1 is not/,
    ],
    ["empty choice", '{"context": "a", "choices": ["b", ""], "gold": 0}', /t\.jsonl:3: choice 1 is empty/],
    [
      "gold too large",
      '{"context": "a", "choices": ["b", "c"], "gold": 2}',
      /t\.jsonl:3: "gold" is 2 but there are 2 choices/,
    ],
    ["gold negative", '{"context": "a", "choices": ["b", "c"], "gold": -1}', /t\.jsonl:3: "gold" is -1/],
    [
      "gold not an integer",
      '{"context": "a", "choices": ["b", "c"], "gold": 0.5}',
      /t\.jsonl:3: "gold" must be an integer/,
    ],
    [
      "gold a string",
      '{"context": "a", "choices": ["b", "c"], "gold": "0"}',
      /t\.jsonl:3: "gold" must be an integer/,
    ],
    [
      "unknown field",
      '{"context": "a", "choices": ["b", "c"], "gold": 0, "label": 1}',
      /t\.jsonl:3: unknown field "label"/,
    ],
  ];
  for (const [what, line, re] of bad)
    test(`error: ${what}`, () => {
      assert.throws(
        () => parseMcTasks(`${good}\n\n${line}\n${good}\n`, "t.jsonl"),
        (e: Error) => {
          assert.match(e.message, re);
          assert.ok(!e.message.includes("\n"), "one line");
          return true;
        },
      );
    });
  test("an empty file is an error", () => {
    assert.throws(() => parseMcTasks("\n\n", "e.jsonl"), /e\.jsonl holds no items/);
  });
  test("the shipped example parses", () => {
    const items = readMcTasks(path.join(import.meta.dirname, "..", "examples", "tasks", "tiny-mc.jsonl"));
    assert.ok(items.length >= 4);
  });
});

describe("token boundary", () => {
  test("trailing whitespace of the context moves into the continuation", () => {
    const r = encodeChoice(tok, "Paris is in ", "France");
    assert.equal(tok.decode(r.context), "Paris is in");
    assert.equal(tok.decode(r.continuation), " France");
  });
  test("a merge across the boundary is scored with the continuation (the harness's slicing)", () => {
    // A toy tokenizer that spells "bc" as one token (id 300) and every other byte as itself.
    const merging: Tokenizer = {
      kind: "bpe",
      vocabSize: 301,
      encode(text) {
        const out: number[] = [];
        for (let i = 0; i < text.length; i++)
          if (text.startsWith("bc", i)) {
            out.push(300);
            i++;
          } else out.push(text.charCodeAt(i));
        return Int32Array.from(out);
      },
      decode: () => "",
      save() {},
    };
    const r = encodeChoice(merging, "ab", "cd");
    assert.deepEqual([...r.context], [97, 98]);
    assert.deepEqual(
      [...r.continuation],
      [100],
      "the whole is [a, bc, d]; the continuation is what follows 2 tokens",
    );
  });
});

/** log p(token | prefix) from log(softmax) of one unbatched forward over `window` (B = 1). */
function independentScore(m: DecoderLM, context: string, choice: string): number {
  const { context: c, continuation: k } = encodeChoice(tok, context, choice);
  const all = [...c, ...k];
  const L = m.config.max_position_embeddings;
  const window = all.slice(Math.max(0, all.length - (L + 1)));
  const input = Int32Array.from(window.slice(0, -1));
  return noGrad(() =>
    tidy(() => {
      const lp = log(softmax(m.forward(input, 1, input.length), -1)).toArray();
      const V = m.config.vocab_size;
      let s = 0;
      for (let t = input.length - k.length; t < input.length; t++) s += lp[t * V + window[t + 1]!]!;
      return s;
    }),
  );
}

describe("scores are sums of log-softmax (cross-check)", () => {
  const base: DecoderLMConfig = {
    model_type: "qwen3",
    vocab_size: 256,
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 12,
  };
  for (const [name, extra] of [
    ["standard", {}],
    ["attnres-full", { attnres_mode: "full" }],
    ["delta-block", { attnres_mode: "delta_block", attnres_num_blocks: 2 }],
  ] as [string, Record<string, unknown>][])
    test(name, () => {
      const m = new DecoderLM({ ...base, ...extra }, { backend: ref, dtype: "float64", seed: 5 });
      const rng = new Rng(9);
      for (const [n, p] of m.namedParameters())
        if (/proj\.weight|embed_tokens|lm_head|res_proj/.test(n))
          for (let i = 0; i < p.size; i++) p.data[i] = rng.normal() * (n.includes("res_proj") ? 1 : 0.5);
      try {
        const cases: McItem[] = [
          item("the cat ", ["sat", "is on the", "é"], 0), // lengths 4, 9 (+ space), 3 bytes (2-byte UTF-8)
          item("a much longer context than twelve bytes,", [" then", " x", " and the end"], 1), // truncated
          item("ab", ["cdefghijkl", "c"], 0), // a continuation of 10 bytes in a window of 13
        ];
        for (const it of cases) {
          const got = scoreItem(m, tok, it);
          const want = it.choices.map((c) => independentScore(m, it.context, c));
          assertClose(got, want, { rtol: 1e-10, atol: 1e-10 }, `${name}: ${it.context}`);
          assert.ok(got.every((x) => x < 0 && Number.isFinite(x)));
        }
        const long = item("ab", ["c".repeat(13), "d"], 1, 7);
        assert.throws(
          () => scoreItem(m, tok, long),
          /line 7: choice 0 is 13 tokens, more than the model's context of 12/,
        );
      } finally {
        m.dispose();
      }
    });
});

/**
 * An exact bigram model over bytes: a→b, b→c, c→a get logit s, every other next byte logit 0
 * (attention and MLP outputs are zero, embeddings one-hot, eps 0 so the final norm gives 16·e_x).
 */
function bigramModel(s: number, maxLen = 32): DecoderLM {
  const m = new DecoderLM(
    {
      model_type: "qwen3",
      vocab_size: 256,
      hidden_size: 256,
      intermediate_size: 8,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      num_key_value_heads: 2,
      max_position_embeddings: maxLen,
      rms_norm_eps: 0,
    },
    { backend: ref, dtype: "float64", seed: 1 },
  );
  const next: Record<string, string> = { a: "b", b: "c", c: "a" };
  for (const [n, p] of m.namedParameters()) {
    const d = p.data;
    if (/o_proj|down_proj|embed_tokens|lm_head/.test(n)) d.fill(0);
    if (n === "model.embed_tokens.weight") for (let x = 0; x < 256; x++) d[x * 256 + x] = 1;
    if (n === "lm_head.weight")
      for (const [x, y] of Object.entries(next)) d[y.charCodeAt(0) * 256 + x.charCodeAt(0)] = s / 16;
  }
  return m;
}

describe("known answers (exact bigram model)", () => {
  const s = 3;
  const Z = Math.log(Math.exp(s) + 255);
  const hit = s - Z; // log p of the preferred next byte after a, b or c
  const miss = -Z; // any other byte after a, b or c
  const flat = -Math.log(256); // anything after another byte
  const m = bigramModel(s);

  test("log-likelihoods have their closed form", () => {
    const ll = scoreItem(m, tok, item("xab", ["c", "a", "cab", "cz", "zq"], 0));
    assertClose(ll, [hit, miss, 3 * hit, hit + miss, miss + flat], { rtol: 1e-12, atol: 1e-12 }, "ll");
  });

  test("acc is 1 when the gold follows the pattern and 0 when it does not", () => {
    const right = evaluateMc(m, tok, [item("abcab", ["c", "a", "b"], 0), item("xyzc", ["b", "a"], 1)]);
    assert.equal(right.acc, 1);
    assert.equal(right.accNorm, 1);
    assert.equal(right.accStderr, 0);
    const wrong = evaluateMc(m, tok, [item("abcab", ["c", "a", "b"], 2), item("xyzc", ["b", "a"], 0)]);
    assert.equal(wrong.acc, 0);
    assert.equal(wrong.accNorm, 0);
    assert.deepEqual(
      wrong.details.map((d) => d.pred),
      [0, 1],
    );
  });

  test("length normalisation separates acc from acc_norm", () => {
    // "cabcab" after "b": six hits (ll 6·hit ≈ -15.7, -2.62 per byte); "x": one miss (ll ≈ -5.62 per byte).
    assert.ok(6 * hit < miss && hit > miss, "the construction needs s where the long choice loses in total");
    const items = [
      item("ab", ["cabcab", "x"], 0, 1),
      item("ab", ["cabcab", "x"], 1, 2),
      item("ab", ["c", "x"], 1, 3),
    ];
    const r = evaluateMc(m, tok, items);
    assert.deepEqual(
      r.details.map((d) => [d.pred, d.predNorm, d.acc, d.accNorm]),
      [
        [1, 0, 0, 1],
        [1, 0, 1, 0],
        [0, 0, 0, 0],
      ],
    );
    assertClose(r.details[0]!.loglikelihoods, [6 * hit, miss], { rtol: 1e-12, atol: 1e-12 }, "ll");
    assert.deepEqual(r.details[0]!.bytes, [6, 1]);
    // acc = [0, 1, 0], acc_norm = [1, 0, 0]: mean 1/3, sample sd √(1/3), stderr √(1/3)/√3 = 1/3.
    assertClose(
      [r.acc, r.accStderr, r.accNorm, r.accNormStderr],
      [1 / 3, 1 / 3, 1 / 3, 1 / 3],
      { rtol: 1e-12, atol: 1e-15 },
      "metrics",
    );
  });

  test("acc_norm divides by UTF-8 bytes, not characters", () => {
    // "é" is the two bytes C3 A9 and "zz" two ASCII bytes: both score miss + flat over 2 bytes (a
    // character count would divide "é"'s score by 1, making it worse, and acc_norm would pick "zz").
    const r = evaluateMc(m, tok, [item("ab", ["é", "zz"], 0)]).details[0]!;
    assert.deepEqual(r.bytes, [2, 2]);
    assertClose(r.loglikelihoods, [miss + flat, miss + flat], { rtol: 1e-12, atol: 1e-12 }, "ll");
    assert.equal(r.pred, 0, "ties go to the first choice");
    assert.equal(r.predNorm, 0, "equal bytes, equal ll: a tie, not a win for the shorter string");
    assert.ok(Number.isNaN(meanStderr([1]).stderr), "one item has no standard error");
  });

  test("contexts longer than the model's window are truncated from the left", () => {
    const short = bigramModel(s, 4);
    try {
      const ll = scoreItem(short, tok, item("zzzzzzzzzzab", ["cab", "q"], 0));
      assertClose(ll, [3 * hit, miss], { rtol: 1e-12, atol: 1e-12 }, "ll");
    } finally {
      short.dispose();
    }
  });

  test("dispose", () => m.dispose());
});

describe("attnres eval-mc", () => {
  const tmp = tempDir("evalmc");
  const dir = path.join(tmp, "ckpt");
  const m = bigramModel(3);
  saveCheckpoint(dir, m);
  m.dispose();
  tok.save(dir);
  const tasks = path.join(tmp, "tasks.jsonl");
  fs.writeFileSync(
    tasks,
    [
      '{"id": "r1", "context": "abcab", "choices": ["c", "a"], "gold": 0}',
      '{"id": "w1", "context": "abcab", "choices": ["c", "a"], "gold": 1}',
      '{"id": "n1", "context": "ab", "choices": ["cabcab", "x"], "gold": 0}',
      '{"id": "r2", "context": "xyzb", "choices": ["q", "c"], "gold": 1}',
    ].join("\n") + "\n",
  );

  const run = async (args: string[]): Promise<{ out: string; err: string; code: number }> => {
    const program = new Command().exitOverride();
    let out = "";
    let err = "";
    program.configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) });
    registerEvalMc(program);
    const write = process.stdout.write.bind(process.stdout);
    // The command writes strings; the test runner's own reports (bytes) pass through while the
    // action awaits the import of its implementation.
    process.stdout.write = ((s: string | Uint8Array, ...rest: never[]) =>
      typeof s === "string" ? ((out += s), true) : write(s, ...rest)) as typeof process.stdout.write;
    try {
      await program.parseAsync(["eval-mc", ...args], { from: "user" });
      return { out, err, code: 0 };
    } catch (e) {
      return { out, err: err || (e as Error).message, code: (e as { exitCode?: number }).exitCode ?? 1 };
    } finally {
      process.stdout.write = write;
    }
  };

  test("scores the file; --limit; --out holds per-item details", () => {
    const r = evalMcCommand({ checkpoint: dir, tasks, quiet: true });
    assert.equal(r.items, 4);
    assert.deepEqual(
      r.details.map((d) => [d.id, d.acc, d.accNorm]),
      [
        ["r1", 1, 1],
        ["w1", 0, 0],
        ["n1", 0, 1],
        ["r2", 1, 1],
      ],
    );
    assert.equal(r.acc, 0.5);
    assert.equal(r.accNorm, 0.75);
    const out = path.join(tmp, "res", "mc.json");
    const lim = evalMcCommand({ checkpoint: dir, tasks, limit: 2, out, quiet: true });
    assert.equal(lim.items, 2);
    assert.equal(lim.acc, 0.5);
    const saved = JSON.parse(fs.readFileSync(out, "utf8")) as { items: number; details: { id: string }[] };
    assert.equal(saved.items, 2);
    assert.deepEqual(
      saved.details.map((d) => d.id),
      ["r1", "w1"],
    );
    assert.match(formatMcResult(r), /^acc 0\.5000 ± 0\.2887, acc_norm 0\.7500 ± 0\.2500 \(4 items\)$/);
  });

  test("through commander: text, --json, progress, --limit validation", async () => {
    const text = await run(["-c", dir, "--tasks", tasks]);
    assert.equal(text.code, 0, text.err);
    assert.match(text.out, /eval-mc 4\/4/, "progress");
    assert.match(text.out, /acc 0\.5000 ± 0\.2887, acc_norm 0\.7500 ± 0\.2500 \(4 items\)\n$/);
    const json = await run(["-c", dir, "--tasks", tasks, "--json", "--limit", "3"]);
    assert.equal(json.code, 0, json.err);
    const r = JSON.parse(json.out) as Record<string, number>;
    assert.equal(r.items, 3);
    assertClose([r.acc!, r.accNorm!], [1 / 3, 2 / 3], { atol: 1e-12 }, "json");
    assert.equal("details" in r, false);
    const zero = await run(["-c", dir, "--tasks", tasks, "--limit", "0"]);
    assert.notEqual(zero.code, 0);
    assert.match(zero.err, /--limit.*expected a positive integer/);
  });

  test("clear errors", () => {
    const bare = path.join(tmp, "bare");
    fs.mkdirSync(bare);
    for (const f of ["config.json", "model.safetensors"])
      fs.copyFileSync(path.join(dir, f), path.join(bare, f));
    assert.throws(() => evalMcCommand({ checkpoint: bare, tasks, quiet: true }), /has no tokenizer/);
    const small = path.join(tmp, "small");
    const sm = new DecoderLM(
      {
        model_type: "qwen3",
        vocab_size: 29,
        hidden_size: 8,
        intermediate_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        max_position_embeddings: 8,
      },
      { backend: ref, dtype: "float64" },
    );
    saveCheckpoint(small, sm);
    sm.dispose();
    tok.save(small);
    assert.throws(
      () => evalMcCommand({ checkpoint: small, tasks, quiet: true }),
      /tokenizer has 256 ids but the model embeds only 29/,
    );
    assert.throws(
      () => evalMcCommand({ checkpoint: dir, tasks: path.join(tmp, "nope.jsonl"), quiet: true }),
      /the task file .*nope\.jsonl does not exist/,
    );
    const badFile = path.join(tmp, "bad.jsonl");
    fs.writeFileSync(
      badFile,
      '{"context": "a", "choices": ["b", "c"], "gold": 0}\n{"context": "a", "choices": ["b"], "gold": 0}\n',
    );
    assert.throws(
      () => evalMcCommand({ checkpoint: dir, tasks: badFile, quiet: true }),
      /bad\.jsonl:2: "choices" has 1 entries/,
    );
    assert.throws(() => evalMcCommand({ checkpoint: tmp, tasks, quiet: true }), /config\.json is missing/);
  });

  test("cleanup", () => fs.rmSync(tmp, { recursive: true, force: true }));
});
