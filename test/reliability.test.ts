/**
 * Bad input refused before it costs anything, and runs that recover instead of losing progress:
 * the strict safetensors reader (each rejection), per-tensor CRC-32, non-finite weights and
 * optimizer state, damaged trainer state, torn metrics, run-folder rules (--resume, --overwrite),
 * --keep-best, config sizes against the weights' header, the memory estimate, corpus and
 * prepared-dataset checks.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { crc32, crc32Hex } from "../src/io/atomic.js";
import { loadCheckpoint, saveCheckpoint } from "../src/model/checkpoint.js";
import {
  CRC_KEY,
  duplicateJsonKey,
  MAX_HEADER_BYTES,
  parseSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  serializeSafetensors,
  writeSafetensors,
} from "../src/io/safetensors.js";
import { loadCorpus, invalidUtf8, MAX_CORPUS_BYTES } from "../src/data/corpus.js";
import { loadPrepared } from "../src/data/prepared.js";
import { DecoderLM } from "../src/model/decoder.js";
import { defaultBackend } from "../src/backend/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { AdamW } from "../src/train/optim.js";
import { findCheckpoint, MetricsLog } from "../src/train/checkpointing.js";
import { finishedRun, resolveSpec, runTraining, type RunSpec } from "../src/train/run.js";
import { evaluate } from "../src/eval/loss.js";
import { paramGroups } from "../src/train/trainer.js";
import { evalBatches } from "../src/data/batches.js";
import { readMetrics, sampleText, tempDir, writePreparedBytes } from "./helpers.js";

const tmp = () => tempDir("rel");

/** A safetensors file from a raw header object and data bytes. */
function rawFile(header: unknown, data: Buffer, json = JSON.stringify(header)): Buffer {
  const h = Buffer.from(json, "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

describe("strict safetensors reader", () => {
  const t = (dtype: unknown, shape: number[], offs: [number, number]) => ({
    dtype,
    shape,
    data_offsets: offs,
  });
  const data = Buffer.alloc(16);
  const cases: [string, unknown, RegExp, string?][] = [
    ["a dtype that is not a string", { a: t(["F32"], [4], [0, 16]) }, /unsupported dtype \["F32"\]/],
    ["an unknown dtype", { a: t("F31", [4], [0, 16]) }, /unsupported dtype "F31"/],
    ["a dtype inherited from Object", { a: t("toString", [4], [0, 16]) }, /unsupported dtype "toString"/],
    ["overlapping offsets", { a: t("F32", [3], [0, 12]), b: t("F32", [1], [8, 12]) }, /overlap/],
    ["aliased offsets", { a: t("F32", [2], [0, 8]), b: t("F32", [2], [0, 8]) }, /alias/],
    ["a gap between tensors", { a: t("F32", [1], [0, 4]), b: t("F32", [2], [8, 16]) }, /belong to no tensor/],
    ["bytes after the last tensor", { a: t("F32", [2], [0, 8]) }, /8 bytes after the last tensor/],
    ["offsets that do not match the shape", { a: t("F32", [3], [0, 16]) }, /do not hold 3 F32/],
    ["a tensor that is not an object", { a: null }, /not an object/],
    ["metadata that is not an object", { __metadata__: [1], a: t("F32", [4], [0, 16]) }, /__metadata__/],
    ["a non-string metadata value", { __metadata__: { x: 1 }, a: t("F32", [4], [0, 16]) }, /not a string/],
    [
      "duplicate keys",
      null,
      /names "a" twice/,
      '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
    ],
    ["a header that is not JSON", null, /not JSON/, "{nope"],
  ];
  for (const [what, header, err, json] of cases)
    test(`refuses ${what}`, () => {
      assert.throws(
        () => parseSafetensors(rawFile(header, data, json), "x.safetensors"),
        (e: Error) => {
          assert.match(e.message, /^x\.safetensors: not a valid safetensors file: /);
          assert.match(e.message, err);
          return true;
        },
      );
    });

  test("tensors out of header order but tiling the data are fine (HF files sort keys by name)", () => {
    const f = parseSafetensors(
      rawFile(
        { b: t("F32", [2], [8, 16]), a: t("F32", [2], [0, 8]) },
        Buffer.from(new Float32Array([1, 2, 3, 4]).buffer),
      ),
    );
    assert.deepEqual([...f.tensors.get("b")!.data], [3, 4]);
  });

  test("a header longer than the limit is refused before it is read", () => {
    const dir = tmp();
    const file = path.join(dir, "big.safetensors");
    const fd = fs.openSync(file, "w");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(MAX_HEADER_BYTES + 1));
    fs.writeSync(fd, len);
    fs.ftruncateSync(fd, MAX_HEADER_BYTES + 64); // sparse: no disk used
    fs.closeSync(fd);
    assert.throws(() => readSafetensorsHeader(file), /exceeds the limit of 104857600 bytes/);
  });

  test("duplicate keys are found at any depth, not inside strings", () => {
    assert.equal(duplicateJsonKey('{"a":1,"b":{"c":1,"c":2}}'), "c");
    assert.equal(duplicateJsonKey('{"a":"\\"a\\"","b":["a","a"],"c":{"a":1}}'), null);
    assert.equal(duplicateJsonKey('{"x\\u0041":1,"xA":2}'), "xA");
  });

  test("a directory or FIFO is refused with one line", () => {
    const dir = tmp();
    assert.throws(() => readSafetensors(dir), /not a regular file/);
    const fifo = path.join(dir, "fifo.safetensors");
    execFileSync("mkfifo", [fifo]);
    assert.throws(() => readSafetensorsHeader(fifo), /not a regular file/);
  });
});

describe("CRC-32 per tensor", () => {
  const tensors: [string, { shape: number[]; data: Float32Array }][] = [
    ["w", { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }],
    ["b", { shape: [2], data: Float32Array.from([-1, 0.5]) }],
  ];

  test("matches zlib's CRC-32 of the raw bytes; the streamed writer gives serializeSafetensors' bytes", () => {
    assert.equal(crc32Hex(crc32(Buffer.from("123456789"))), "cbf43926"); // the standard check value
    const buf = serializeSafetensors(tensors, { format: "pt" });
    const meta = JSON.parse(parseSafetensors(buf).metadata[CRC_KEY]!) as Record<string, string>;
    assert.equal(meta.w, crc32Hex(crc32(Buffer.from(tensors[0]![1].data.buffer))));
    const file = path.join(tmp(), "t.safetensors");
    writeSafetensors(file, tensors, { format: "pt" });
    assert.ok(fs.readFileSync(file).equals(buf));
  });

  test("a flipped data byte is caught on load (all readers), unless verification is off", () => {
    const file = path.join(tmp(), "t.safetensors");
    writeSafetensors(file, tensors);
    const buf = fs.readFileSync(file);
    buf[buf.length - 3]! ^= 0x10;
    fs.writeFileSync(file, buf);
    assert.throws(() => readSafetensors(file), /tensor b is corrupt: .* verify: false/);
    assert.equal(readSafetensors(file, { verify: false }).tensors.size, 2);
  });

  test("a checksum map that does not cover every tensor is refused", () => {
    const buf = serializeSafetensors(tensors);
    const text = buf.toString("latin1").replace(/\\"b\\":\\"[0-9a-f]{8}\\"/, (m) => m.replace(/"b/, '"c'));
    assert.throws(() => parseSafetensors(Buffer.from(text, "latin1")), /no valid checksum for tensor b/);
  });
});

const data = tmp();
writePreparedBytes(data, sampleText(6000));
const spec = (train: Record<string, unknown> = {}, model: Record<string, unknown> = {}): RunSpec => ({
  model: { hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1, num_attention_heads: 2, ...model },
  data,
  train: {
    steps: 6,
    batch_size: 2,
    seq_len: 8,
    grad_accum: 1,
    lr: 3e-3,
    min_lr_ratio: 0.1,
    warmup: 1,
    weight_decay: 0.1,
    beta1: 0.9,
    beta2: 0.95,
    clip: 1,
    eval_every: 2,
    eval_batches: 2,
    checkpoint_every: 2,
    seed: 1,
    ...train,
  } as RunSpec["train"],
});
const losses = (dir: string) => readMetrics(dir, ["step", "loss", "grad_norm", "lr", "val_loss"]);

describe("non-finite numbers never pass silently", () => {
  test("a NaN or Inf weight is refused naming the tensor (eval, generate, analyze all load this way)", () => {
    const dir = tmp();
    const m = new DecoderLM(
      { vocab_size: 16, hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 2 },
      { backend: ref },
    );
    m.namedParameters().find(([n]) => n.endsWith("q_norm.weight"))![1].data[1] = NaN;
    saveCheckpoint(dir, m);
    m.dispose();
    assert.throws(
      () => loadCheckpoint(dir),
      /tensor model\.layers\.0\.self_attn\.q_norm\.weight holds NaN at index 1/,
    );
  });

  test("optimizer state: NaN moments, negative second moments and a bad step count are refused", () => {
    const m = new DecoderLM(
      { vocab_size: 8, hidden_size: 4, intermediate_size: 4, num_hidden_layers: 1, num_attention_heads: 1 },
      { backend: ref },
    );
    const opt = new AdamW(paramGroups(m, 1e-3, 0));
    const named = m.namedParameters();
    const moments = (bad: "m" | "v", value: number) =>
      new Map(
        named.flatMap(([n, p]) => {
          const z = new Float32Array(p.size);
          const b = Float32Array.from(z);
          b[0] = value;
          return [
            [`m.${n}`, { shape: p.shape, data: bad === "m" ? b : z }],
            [`v.${n}`, { shape: p.shape, data: bad === "v" ? b : z }],
          ];
        }),
      );
    assert.throws(() => opt.loadState(named, moments("m", NaN), 1, "o.st"), /o\.st: tensor m\..* holds NaN/);
    assert.throws(
      () => opt.loadState(named, moments("v", -1), 1, "o.st"),
      /o\.st: tensor v\..* holds -1 .* ≥ 0/,
    );
    assert.throws(() => opt.loadState(named, moments("v", Infinity), 1, "o.st"), /holds Infinity/);
    assert.throws(
      () => opt.loadState(named, moments("v", 0), -5, "o.st"),
      /step count -5 is not a non-negative integer/,
    );
    assert.throws(() => opt.loadState(named, moments("v", 0), 1.5, "o.st"), /step count 1\.5/);
    opt.loadState(named, moments("v", 0.5), 3, "o.st");
    opt.dispose();
    m.dispose();
  });
});

describe("run folders", () => {
  test("--resume on a folder without a run is an error; an existing run needs --resume or --overwrite", async () => {
    await assert.rejects(
      runTraining(spec(), path.join(tmp(), "missing"), { resume: true }),
      /holds no run to resume/,
    );
    const dir = tmp();
    fs.writeFileSync(path.join(dir, "run.json"), JSON.stringify(spec()));
    fs.writeFileSync(path.join(dir, "metrics.jsonl"), "");
    await assert.rejects(
      runTraining(spec(), dir),
      /already holds a run \(no checkpoint yet\).*RunOptions\.overwrite/,
    );
    const r = await runTraining(spec(), dir, { overwrite: true });
    assert.equal(r.done, true);
    await assert.rejects(runTraining(spec(), dir), /already holds a run \(step 6\)/);
  });

  test("damaged trainer state is an error naming the file, never a silent restart", async () => {
    const dir = tmp();
    await runTraining(spec(), dir, { stopAfter: 2 });
    const st = path.join(dir, "checkpoint", "trainer_state.json");
    const good = fs.readFileSync(st, "utf8");
    const manifest = path.join(dir, "checkpoint", "manifest.json");
    const goodManifest = fs.readFileSync(manifest, "utf8");
    const put = (text: string) => {
      fs.writeFileSync(st, text);
      // keep the manifest consistent so that only the state itself is wrong
      const m = JSON.parse(goodManifest) as { files: Record<string, { bytes: number; crc32: string }> };
      m.files["trainer_state.json"] = {
        bytes: Buffer.byteLength(text),
        crc32: crc32Hex(crc32(Buffer.from(text))),
      };
      fs.writeFileSync(manifest, JSON.stringify(m));
    };
    const bad: [string, RegExp][] = [
      [
        JSON.stringify({ ...JSON.parse(good), step: undefined }),
        /trainer_state\.json is not a valid trainer state: step/,
      ],
      ["null", /not a valid trainer state/],
      [JSON.stringify({ ...JSON.parse(good), adam_t: -5 }), /adam_t/],
      [JSON.stringify({ ...JSON.parse(good), step: 99 }), /step 99 is beyond the run's 6 steps/],
      ['{"step":', /trainer_state\.json is damaged/],
    ];
    for (const [text, err] of bad) {
      put(text);
      await assert.rejects(runTraining(spec(), dir, { resume: true }), err, text);
    }
    put(good);
    assert.equal((await runTraining(spec(), dir, { resume: true })).done, true);
  });

  test("a torn metrics line is cut on resume (with a notice) and the run continues bit-exactly", async () => {
    const a = tmp();
    await runTraining(spec(), a);
    const b = tmp();
    await runTraining(spec(), b, { stopAfter: 4 });
    // a full disk tore the record of step 5 after the step-4 checkpoint
    fs.appendFileSync(path.join(b, "metrics.jsonl"), '{"step":5,"loss"');
    const lines: string[] = [];
    await runTraining(spec(), b, { resume: true, log: (l) => lines.push(l) });
    assert.ok(
      lines.some((l) => /cut a torn last line/.test(l)),
      lines.join("\n"),
    );
    assert.deepEqual(losses(b), losses(a));
    // a damaged line that is not the last is an error naming the file and line
    const log = new MetricsLog(path.join(b, "metrics.jsonl"));
    const text = fs.readFileSync(log.file, "utf8").split("\n");
    text[1] = "{oops";
    fs.writeFileSync(log.file, text.join("\n"));
    assert.throws(() => log.recover(6), /metrics\.jsonl: line 2 is damaged/);
  });

  test("a damaged checkpoint with no complete copy left is an error on resume, and stays on disk", async () => {
    const dir = tmp();
    await runTraining(spec(), dir, { stopAfter: 2 });
    const w = path.join(dir, "checkpoint", "model.safetensors");
    fs.truncateSync(w, fs.statSync(w).size - 10);
    await assert.rejects(
      runTraining(spec(), dir, { resume: true }),
      /checkpoint is damaged \(model\.safetensors has \d+ bytes.*no complete copy of it is left/,
    );
    assert.ok(fs.existsSync(w), "the damaged checkpoint is not deleted");
    assert.ok(fs.statSync(path.join(dir, "metrics.jsonl")).size > 0, "the metrics are kept");
  });

  test("a refused run leaves no run behind, and with overwrite the previous run intact", async () => {
    const dir = tmp();
    // a batch larger than the validation split is refused before the first step
    const big = spec({ batch_size: 5000 });
    await assert.rejects(runTraining(big, dir), /validation/);
    assert.deepEqual(fs.readdirSync(dir), [], "no run.json of the refused run");
    await runTraining(spec(), dir, { stopAfter: 2 });
    const before = fs.readdirSync(dir).sort();
    await assert.rejects(runTraining(big, dir, { overwrite: true }), /validation/);
    assert.deepEqual(fs.readdirSync(dir).sort(), before);
    assert.equal(findCheckpoint(dir)?.step, 2, "the previous run's checkpoint survives");
    // an init checkpoint whose shapes pass the quick check but whose tensors do not fit the model
    // (a routed model from a standard checkpoint) is read whole before the folder is touched
    const fresh = path.join(tmp(), "from-init");
    const routed = { ...spec({}, { attnres_mode: "delta" }), init: path.join(dir, "checkpoint") };
    await assert.rejects(runTraining(routed, fresh), /does not match the model: missing tensor/);
    assert.equal(fs.existsSync(fresh), false, "no run.json of the refused run");
    await assert.rejects(runTraining(routed, dir, { overwrite: true }), /missing tensor/);
    assert.deepEqual(fs.readdirSync(dir).sort(), before, "with overwrite the previous run stays");
  });

  test("a new run failing inside its first step leaves nothing behind; after a logged step it stays", async () => {
    // the backend fails as an allocation or a kernel would (out of memory) on the first GEMM
    const be = defaultBackend() as { gemm: (...a: unknown[]) => void };
    const gemm = be.gemm;
    let calls = 0;
    let failAt = 1;
    be.gemm = (...a: unknown[]) => {
      if (++calls === failAt) throw new Error("native: out of memory (test)");
      gemm(...a);
    };
    try {
      const fresh = path.join(tmp(), "a", "b");
      await assert.rejects(runTraining(spec(), fresh), /out of memory \(test\)/);
      assert.equal(fs.existsSync(path.dirname(fresh)), false, "the folders it made are gone too");
      // a folder holding other files keeps them; with overwrite the previous run is gone either way
      const dir = tmp();
      fs.writeFileSync(path.join(dir, "notes.txt"), "mine");
      calls = 0;
      await assert.rejects(runTraining(spec(), dir), /out of memory/);
      assert.deepEqual(fs.readdirSync(dir), ["notes.txt"]);
      // the corrected call needs neither resume nor overwrite
      failAt = 0;
      calls = 0;
      await runTraining(spec(), dir, { stopAfter: 1 });
      // a failure after the first logged step (the first GEMM after step 1's) keeps the run: resume
      // continues it
      failAt = calls + 1;
      calls = 0;
      const later = tmp();
      await assert.rejects(runTraining(spec(), later), /out of memory/);
      assert.ok(fs.statSync(path.join(later, "metrics.jsonl")).size > 0, "a step was logged");
      assert.ok(fs.existsSync(path.join(later, "run.json")));
      // and a resumed run that fails is never removed
      calls = 0;
      failAt = 1;
      await assert.rejects(runTraining(spec(), dir, { resume: true }), /out of memory/);
      assert.ok(fs.existsSync(path.join(dir, "run.json")));
    } finally {
      be.gemm = gemm;
    }
  });

  test("recovery takes the newest complete copy and treats a folder without a manifest as incomplete", async () => {
    const dir = tmp();
    await runTraining(spec(), dir, { stopAfter: 2 });
    fs.cpSync(path.join(dir, "checkpoint"), path.join(dir, "checkpoint.old"), { recursive: true });
    fs.cpSync(path.join(dir, "checkpoint"), path.join(dir, "checkpoint.tmp"), { recursive: true });
    fs.rmSync(path.join(dir, "checkpoint.tmp", "manifest.json"));
    fs.writeFileSync(path.join(dir, "checkpoint", "model.safetensors"), "torn");
    const found = findCheckpoint(dir);
    assert.equal(found?.dir, path.join(dir, "checkpoint.old"));
    assert.match(found!.notes.join("; "), /checkpoint is incomplete \(model\.safetensors has 4 bytes/);
    assert.match(found!.notes.join("; "), /checkpoint\.tmp is incomplete \(no manifest\.json\)/);
    const r = await runTraining(spec(), dir, { resume: true });
    assert.equal(r.done, true);
    assert.deepEqual(
      fs.readdirSync(dir).sort(),
      ["checkpoint", "metrics.csv", "metrics.jsonl", "run.json"]
        .filter((n) => fs.existsSync(path.join(dir, n)))
        .sort(),
    );
    assert.equal(finishedRun(dir)?.valLoss, r.valLoss);
  });

  test("--keep-best keeps the weights of the lowest validation loss, across a resume", async () => {
    const dir = tmp();
    const s = spec({ keep_best: true, lr: 3e-2, steps: 8 });
    await runTraining(s, dir, { stopAfter: 3 });
    const r = await runTraining(s, dir, { resume: true });
    const vals = losses(dir)
      .map((row) => [row[0], row[4]] as const)
      .filter(([, v]) => v !== null);
    const best = vals.reduce((a, b) => (b[1]! < a[1]! ? b : a));
    const saved = JSON.parse(fs.readFileSync(path.join(dir, "best", "best.json"), "utf8")) as {
      step: number;
      val_loss: number;
    };
    assert.deepEqual([saved.step, saved.val_loss], [best[0], best[1]]);
    assert.ok(findCheckpoint(dir, "best"), "best/ has a complete manifest");
    const model = loadCheckpoint(path.join(dir, "best"));
    const d = loadPrepared(data);
    assert.equal(evaluate(model, evalBatches(d.val, 2, 8, 2)), saved.val_loss);
    model.dispose();
    assert.ok(r.done);
  });

  test("grad-accum micro-batches are streamed and give the losses of the batches built up front", async () => {
    const dir = tmp();
    const r = await runTraining(spec({ grad_accum: 3, steps: 2 }), dir);
    assert.ok(Number.isFinite(r.valLoss) && Number.isFinite(r.tokensPerSecond));
  });
});

describe("validate before allocating", () => {
  test("config sizes are compared with the weights' header before the model is built", () => {
    const dir = tmp();
    const m = new DecoderLM(
      { vocab_size: 16, hidden_size: 8, intermediate_size: 8, num_hidden_layers: 2, num_attention_heads: 2 },
      { backend: ref },
    );
    saveCheckpoint(dir, m);
    m.dispose();
    const cfg = path.join(dir, "config.json");
    const good = JSON.parse(fs.readFileSync(cfg, "utf8")) as Record<string, unknown>;
    const t0 = performance.now();
    fs.writeFileSync(cfg, JSON.stringify({ ...good, num_hidden_layers: 1000000 }));
    assert.throws(() => loadCheckpoint(dir), /says num_hidden_layers 1000000, but the weights hold 2 layers/);
    fs.writeFileSync(cfg, JSON.stringify({ ...good, hidden_size: 4096 }));
    assert.throws(
      () => loadCheckpoint(dir),
      /does not match its config\.json \(vocab_size 16, hidden_size 4096\)/,
    );
    fs.writeFileSync(cfg, JSON.stringify({ ...good, intermediate_size: 9 }));
    assert.throws(() => loadCheckpoint(dir), /intermediate_size/);
    assert.ok(performance.now() - t0 < 5000);
  });

  test("a model that cannot fit in memory is refused with the estimate", () => {
    assert.throws(
      () =>
        resolveSpec(
          spec(
            {},
            {
              vocab_size: 256,
              num_hidden_layers: 1000000,
              hidden_size: 512,
              intermediate_size: 2048,
              num_attention_heads: 8,
            },
          ),
        ),
      /needs about [\d.]+ GiB .*1000000 layers.*more than this machine's/,
    );
  });

  test("corpora: not regular files, too large, binary or invalid UTF-8 are refused (unless --allow-binary)", () => {
    const dir = tmp();
    assert.throws(() => loadCorpus("/dev/zero"), /\/dev\/zero is not a regular file \(a device\)/);
    const fifo = path.join(dir, "fifo.txt");
    execFileSync("mkfifo", [fifo]);
    assert.throws(() => loadCorpus(fifo), /is not a regular file \(a FIFO\)/);
    const big = path.join(dir, "big.txt");
    fs.closeSync(fs.openSync(big, "w"));
    fs.truncateSync(big, MAX_CORPUS_BYTES + 1);
    assert.throws(() => loadCorpus(big), /more than 512 MiB of text/);
    const bin = path.join(dir, "bin.txt");
    fs.writeFileSync(bin, Buffer.concat([Buffer.from("hello\n".repeat(50)), Buffer.from([0, 1, 2])]));
    assert.throws(() => loadCorpus(bin), /looks binary \(a NUL byte at offset 300\); pass allowBinary: true/);
    const latin = path.join(dir, "latin1.txt");
    fs.writeFileSync(
      latin,
      Buffer.concat([
        Buffer.from("caf"),
        Buffer.from([0xe9]),
        Buffer.from(" ok\n".repeat(40)),
        Buffer.from([0xff, 0xfe]),
      ]),
    );
    assert.throws(() => loadCorpus(latin), /not valid UTF-8 \(3 invalid sequences, the first at byte 3\)/);
    const kept = loadCorpus(latin, { allowBinary: true });
    assert.match(kept.notes!.join(), /kept \(--allow-binary\)/);
    assert.deepEqual(invalidUtf8(Buffer.from("héllo ✓ 𝄞", "utf8")), { count: 0, first: -1 });
    assert.deepEqual(invalidUtf8(Buffer.from([0x61, 0xed, 0xa0, 0x80])), { count: 3, first: 1 }); // a surrogate
  });

  test("prepared datasets: token ids beyond the vocabulary and bad meta.json are refused at load", () => {
    const dir = tmp();
    writePreparedBytes(dir, sampleText(500));
    const bin = path.join(dir, "train.bin");
    const b = fs.readFileSync(bin);
    b.writeUInt16LE(300, 20);
    b.writeUInt16LE(999, 40);
    fs.writeFileSync(bin, b);
    assert.throws(
      () => loadPrepared(dir),
      /train\.bin: 2 token ids are outside the tokenizer's vocabulary of 256 \(the first, 300, at token 10\)/,
    );
    const meta = path.join(dir, "meta.json");
    const good = JSON.parse(fs.readFileSync(meta, "utf8")) as Record<string, { bytes: number }>;
    fs.writeFileSync(meta, JSON.stringify({ ...good, val: { ...good.val, bytes: 0 } }));
    assert.throws(() => loadPrepared(dir), /meta\.json is not a prepared dataset's meta\.json: val\.bytes/);
    fs.writeFileSync(meta, "null");
    assert.throws(() => loadPrepared(dir), /meta\.json is not a prepared dataset's meta\.json/);
  });
});

describe("command line", () => {
  const bin = path.join(path.dirname(import.meta.dirname), "bin", "attnres.mjs");
  const cwd = tmp();
  const presetFile = path.join(cwd, "p.json");
  fs.writeFileSync(
    presetFile,
    JSON.stringify({ data, model: spec().model, train: { ...spec().train, steps: 2 } }),
  );
  const cli = (...args: string[]) => {
    const r = spawnSync(process.execPath, [bin, ...args], { cwd, encoding: "utf8", timeout: 120_000 });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const refused = (r: ReturnType<typeof cli>, re: RegExp) => {
    assert.notEqual(r.code, 0, r.stdout);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, re);
  };

  test("values out of range, options that do not apply, --resume without a run, --overwrite", () => {
    const t = (...a: string[]) => cli("train", "--preset", presetFile, ...a);
    refused(t("--seed", "1e20"), /--seed.*expected a non-negative integer from 0 to 9007199254740991/);
    refused(t("--steps", "0"), /--steps.*from 1 to/);
    refused(t("--lr", "NaN"), /--lr.*expected a finite number > 0/);
    refused(
      t("--blocks", "2"),
      /^attnres: --blocks applies only to attnres-block and delta-block \(mode: standard\)/,
    );
    refused(t("--null-source"), /--null-source applies only to delta and delta-block/);
    refused(t("--out", "nowhere", "--resume"), /nowhere holds no run to resume/);
    assert.equal(t("--out", "r").code, 0);
    refused(t("--out", "r"), /r already holds a run \(step 2\); pass --resume .* --overwrite/);
    const again = t("--out", "r", "--overwrite");
    assert.equal(again.code, 0, again.stderr);
    assert.equal(t("--out", "r", "--resume").code, 0);
    // --no-verify is accepted before or after the subcommand
    const ev = (...a: string[]) => cli(...a, "eval", "-c", "r/checkpoint", "-d", data, "--batches", "1");
    assert.equal(ev("--no-verify").code, 0);
    const w = path.join(cwd, "r", "checkpoint", "model.safetensors");
    const buf = fs.readFileSync(w);
    buf[buf.length - 1]! ^= 1;
    fs.writeFileSync(w, buf);
    refused(ev(), /model\.safetensors: tensor .* is corrupt/);
    const nv = cli("eval", "-c", "r/checkpoint", "-d", data, "--batches", "1", "--no-verify");
    assert.equal(nv.code, 0, nv.stderr);
  });

  test("prepare refuses a FIFO and binary text unless --allow-binary", () => {
    const fifo = path.join(cwd, "pipe.txt");
    execFileSync("mkfifo", [fifo]);
    refused(
      cli("prepare", "--corpus", fifo, "--quiet", "--out", "d1"),
      /pipe\.txt is not a regular file \(a FIFO\)/,
    );
    const bin2 = path.join(cwd, "b.txt");
    const head = Buffer.from(sampleText(3000));
    fs.writeFileSync(bin2, Buffer.concat([head, Buffer.from([0xff]), Buffer.from(sampleText(500))]));
    refused(
      cli("prepare", "--corpus", bin2, "--quiet", "--out", "d2"),
      new RegExp(`not valid UTF-8 \\(1 invalid sequence, the first at byte ${head.length}\\)`),
    );
    assert.equal(cli("prepare", "--corpus", bin2, "--quiet", "--out", "d2", "--allow-binary").code, 0);
  });
});
