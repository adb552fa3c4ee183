/**
 * Fuzzing the files attnres reads: seeded mutations of a valid checkpoint's safetensors header and
 * data, config.json and tokenizer file, of a run's trainer state and optimizer file, and of a
 * prepared dataset. Each case must end in one of two ways:
 *   - an Error whose message is one line naming the file or folder (never a TypeError or other
 *     runtime error, which is what a stack trace comes from), or
 *   - success with finite numbers (a loss that is NaN or Inf is never returned);
 * within a per-case time bound, and the whole suite's peak RSS stays under twice that of the
 * valid files' runs. Most cases call the library in-process (fast); a few go through the CLI
 * binary, where the exit status, stderr (one "attnres: " line, no stack) and peak RSS
 * (/usr/bin/time) are checked with a hard timeout.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { crc32, crc32Hex } from "../src/io/atomic.js";
import { loadCheckpoint, saveCheckpoint } from "../src/model/checkpoint.js";
import { loadPrepared } from "../src/data/prepared.js";
import { evalBatches } from "../src/data/batches.js";
import { DecoderLM } from "../src/model/decoder.js";
import { Rng } from "../src/tensor/random.js";
import { runTraining, type RunSpec } from "../src/train/run.js";
import { evaluate } from "../src/eval/loss.js";
import { sampleText, tempDir, writePreparedBytes } from "./helpers.js";

const rng = new Rng(20261201);
const work = tempDir("fuzz");
const data = path.join(work, "data");
writePreparedBytes(data, sampleText(4000));
const CONFIG = {
  vocab_size: 256,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 2,
};
const ckpt = path.join(work, "ckpt");
{
  const m = new DecoderLM({ ...CONFIG, attnres_mode: "delta" }, { seed: 3 });
  saveCheckpoint(ckpt, m);
  m.dispose();
  fs.copyFileSync(path.join(data, "attnres_tokenizer.json"), path.join(ckpt, "attnres_tokenizer.json"));
}
const spec: RunSpec = {
  model: { ...CONFIG },
  data,
  train: {
    steps: 3,
    batch_size: 2,
    seq_len: 8,
    grad_accum: 1,
    lr: 3e-3,
    min_lr_ratio: 0.1,
    warmup: 0,
    weight_decay: 0.1,
    beta1: 0.9,
    beta2: 0.95,
    clip: 1,
    eval_every: 1,
    eval_batches: 1,
    checkpoint_every: 1,
    seed: 0,
  },
};
const run = path.join(work, "run");
await runTraining(spec, run, { stopAfter: 1 });

// ---------------------------------------------------------------- mutations

const pick = <T>(xs: readonly T[]): T => xs[rng.int(xs.length)]!;
const WEIRD: unknown[] = [
  null,
  -1,
  0,
  1.5,
  1e6,
  1e12,
  2 ** 53,
  -1e308,
  "x",
  "",
  [],
  [1],
  {},
  true,
  "NaN",
  [[1]],
];

/** A random JSON-level change of `obj` (a plain object): a field set to a weird value or removed. */
function mutateJson(obj: Record<string, unknown>): Record<string, unknown> {
  const out = structuredClone(obj);
  const paths: [Record<string, unknown> | unknown[], string | number][] = [];
  const walk = (o: unknown) => {
    if (o && typeof o === "object")
      for (const [k, v] of Object.entries(o)) {
        paths.push([o as Record<string, unknown>, Array.isArray(o) ? Number(k) : k]);
        walk(v);
      }
  };
  walk(out);
  const [parent, key] = pick(paths);
  if (rng.uniform() < 0.2 && !Array.isArray(parent))
    delete (parent as Record<string, unknown>)[key as string];
  else (parent as Record<string | number, unknown>)[key] = structuredClone(pick(WEIRD));
  return out;
}

/** Text-level damage: truncation, a flipped character, garbage appended or an empty file. */
function mutateText(text: string): string {
  switch (rng.int(4)) {
    case 0:
      return text.slice(0, rng.int(text.length));
    case 1: {
      const i = rng.int(text.length);
      return text.slice(0, i) + String.fromCharCode(32 + rng.int(90)) + text.slice(i + 1);
    }
    case 2:
      return text + pick(["}", "{}", '"x"', "\u0000"]);
    default:
      return "";
  }
}

/** Damage to a safetensors file: its header JSON, its length field, its data or its size. */
function mutateSafetensors(buf: Buffer): Buffer {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const rebuild = (json: string) => {
    const h = Buffer.from(json, "utf8");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(h.length));
    return Buffer.concat([len, h, buf.subarray(8 + n)]);
  };
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  switch (rng.int(8)) {
    case 0: // one field of one tensor
      return rebuild(JSON.stringify(mutateJson(header)));
    case 1: {
      // swap two tensors' offsets (out of order, or aliased when equal sizes)
      const [a, b] = [pick(names), pick(names)];
      const h = structuredClone(header) as Record<string, { data_offsets: number[] }>;
      [h[a]!.data_offsets, h[b]!.data_offsets] = [h[b]!.data_offsets, h[a]!.data_offsets];
      return rebuild(JSON.stringify(h));
    }
    case 2: {
      // a duplicated key (the later one wins in JSON.parse)
      const k = pick(names);
      const json = JSON.stringify(header);
      return rebuild(json.replace(/^\{/, `{${JSON.stringify(k)}:${JSON.stringify(header[k])},`));
    }
    case 3: {
      // the header length field
      const out = Buffer.from(buf);
      out.writeBigUInt64LE(pick([0n, 1n, BigInt(n - 1), BigInt(n + 1), 2n ** 40n, 2n ** 64n - 1n]));
      return out;
    }
    case 4: {
      // flipped data bytes (the CRC-32 must catch them)
      const out = Buffer.from(buf);
      for (let i = 0; i < 1 + rng.int(3); i++) out[8 + n + rng.int(buf.length - 8 - n)]! ^= 1 << rng.int(8);
      return out;
    }
    case 5: // truncated
      return buf.subarray(0, rng.int(buf.length));
    case 6: // bytes appended
      return Buffer.concat([buf, Buffer.alloc(1 + rng.int(64), 7)]);
    default:
      return rebuild(mutateText(JSON.stringify(header)));
  }
}

/** A safetensors file holding `values` in tensor `name` with a valid checksum (bad numbers, good file). */
function withValue(buf: Buffer, value: number): Buffer {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<
    string,
    { dtype: string; data_offsets: [number, number] }
  > & { __metadata__: Record<string, string> };
  const names = Object.keys(header).filter((k) => k !== "__metadata__" && header[k]!.dtype === "F32");
  const name = pick(names);
  const [b, e] = header[name]!.data_offsets;
  const out = Buffer.from(buf);
  out.writeFloatLE(value, 8 + n + b + 4 * rng.int((e - b) / 4));
  const crcs = JSON.parse(header.__metadata__["attnres.crc32"]!) as Record<string, string>;
  crcs[name] = crc32Hex(crc32(out.subarray(8 + n + b, 8 + n + e)));
  header.__metadata__["attnres.crc32"] = JSON.stringify(crcs);
  const h = Buffer.from(JSON.stringify(header), "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, out.subarray(8 + n)]);
}

// ---------------------------------------------------------------- oracle

let caseNo = 0;
/** Copies `src` to a fresh folder, lets `damage` change it, runs `use`; checks the outcome. */
async function fuzzCase(
  what: string,
  src: string,
  damage: (dir: string) => string,
  use: (dir: string) => number | Promise<number>,
): Promise<"refused" | "accepted"> {
  const dir = path.join(work, `case-${caseNo++}`);
  fs.cpSync(src, dir, { recursive: true });
  const file = damage(dir);
  const t0 = performance.now();
  try {
    const x = await use(dir);
    assert.ok(Number.isFinite(x), `${what} (${file}): accepted with a non-finite result ${x}`);
    return "accepted";
  } catch (e) {
    const err = e as Error;
    assert.ok(
      err.constructor === Error,
      `${what} (${file}): a ${err.constructor.name} escaped: ${err.message}\n${err.stack}`,
    );
    assert.ok(!err.message.includes("\n"), `${what}: a multi-line error: ${err.message}`);
    assert.ok(
      err.message.includes(dir),
      `${what}: the error does not name the file or folder (${path.basename(file)}): ${err.message}`,
    );
    return "refused";
  } finally {
    assert.ok(performance.now() - t0 < 20_000, `${what}: took ${performance.now() - t0} ms`);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const evalCheckpoint = (dir: string): number => {
  const model = loadCheckpoint(dir);
  try {
    return evaluate(model, evalBatches(loadPrepared(data).val, 2, 8, 2));
  } finally {
    model.dispose();
  }
};

const rewrite = (file: string, f: (b: Buffer) => Buffer | string) => {
  fs.writeFileSync(file, f(fs.readFileSync(file)));
  return file;
};
const rewriteJson = (file: string) =>
  rewrite(file, (b) =>
    rng.uniform() < 0.7
      ? JSON.stringify(mutateJson(JSON.parse(b.toString("utf8")) as Record<string, unknown>))
      : mutateText(b.toString("utf8")),
  );

// ---------------------------------------------------------------- cases

const CASES = 40; // per family
const outcomes: Record<string, { refused: number; accepted: number }> = {};
const tally = (family: string, r: "refused" | "accepted") => {
  outcomes[family] ??= { refused: 0, accepted: 0 };
  outcomes[family]![r]++;
};

describe(
  "fuzzed inputs: one clear error naming the file, or a correct finite result",
  { timeout: 600_000 },
  () => {
    const baseRss = process.resourceUsage().maxRSS;
    test("the valid files work", async () => {
      assert.ok(Number.isFinite(evalCheckpoint(ckpt)));
      assert.ok((await runTraining(spec, path.join(work, "valid-run"))).done);
    });
    const validRss = Math.max(process.resourceUsage().maxRSS, baseRss);

    test("checkpoint model.safetensors (header and data)", async () => {
      for (let i = 0; i < CASES; i++)
        tally(
          "safetensors",
          await fuzzCase(
            "model.safetensors",
            ckpt,
            (d) => rewrite(path.join(d, "model.safetensors"), mutateSafetensors),
            evalCheckpoint,
          ),
        );
      for (const v of [NaN, Infinity, -Infinity])
        tally(
          "safetensors",
          await fuzzCase(
            `weight ${v}`,
            ckpt,
            (d) => rewrite(path.join(d, "model.safetensors"), (b) => withValue(b, v)),
            evalCheckpoint,
          ),
        );
    });

    test("checkpoint config.json", async () => {
      for (let i = 0; i < CASES; i++)
        tally(
          "config",
          await fuzzCase(
            "config.json",
            ckpt,
            (d) => rewriteJson(path.join(d, "config.json")),
            evalCheckpoint,
          ),
        );
    });

    test("tokenizer file (checkpoint and prepared dataset)", async () => {
      for (let i = 0; i < CASES / 2; i++)
        tally(
          "tokenizer",
          await fuzzCase(
            "attnres_tokenizer.json",
            data,
            (d) => rewriteJson(path.join(d, "attnres_tokenizer.json")),
            (d) => loadPrepared(d).val.length,
          ),
        );
    });

    const resume = (dir: string) =>
      runTraining({ ...spec, data }, dir, { resume: true }).then((r) => r.valLoss);

    test("trainer_state.json and optimizer.safetensors of a run", async () => {
      // the manifest would catch any change; drop it so that the files themselves are tested
      const loose = (d: string) => {
        const c = path.join(d, "checkpoint");
        fs.rmSync(path.join(c, "manifest.json"));
        return c;
      };
      for (let i = 0; i < CASES / 2; i++)
        tally(
          "trainer state",
          await fuzzCase(
            "trainer_state.json",
            run,
            (d) => rewriteJson(path.join(loose(d), "trainer_state.json")),
            resume,
          ),
        );
      for (let i = 0; i < CASES / 2; i++)
        tally(
          "optimizer",
          await fuzzCase(
            "optimizer.safetensors",
            run,
            (d) =>
              rewrite(path.join(loose(d), "optimizer.safetensors"), (b) =>
                rng.uniform() < 0.5
                  ? mutateSafetensors(b)
                  : withValue(b, pick([NaN, -1, Infinity, -Infinity]) as number),
              ),
            resume,
          ),
        );
    });

    test("prepared dataset (meta.json, train.bin, val.bin)", async () => {
      for (let i = 0; i < CASES; i++)
        tally(
          "dataset",
          await fuzzCase(
            "prepared dataset",
            data,
            (d) => {
              if (rng.uniform() < 0.5) return rewriteJson(path.join(d, "meta.json"));
              const f = path.join(d, pick(["train.bin", "val.bin"]));
              return rewrite(f, (b) => {
                const out = Buffer.from(b);
                if (rng.uniform() < 0.5) return out.subarray(0, rng.int(out.length));
                out.writeUInt16LE(256 + rng.int(65280), 2 * rng.int(out.length / 2));
                return out;
              });
            },
            (d) => {
              const p = loadPrepared(d);
              const m = loadCheckpoint(ckpt);
              try {
                return evaluate(m, evalBatches(p.val, 2, 8, 2));
              } finally {
                m.dispose();
              }
            },
          ),
        );
    });

    test("through the CLI: exit status, one stderr line, no stack, bounded time and memory", () => {
      const bin = path.resolve(import.meta.dirname, "..", "bin", "attnres.mjs");
      const cli = (dir: string) =>
        spawnSync(
          "/usr/bin/time",
          [
            "-f",
            "maxrss_kb %M",
            process.execPath,
            bin,
            "eval",
            "-c",
            dir,
            "-d",
            data,
            "--batches",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "8",
          ],
          {
            encoding: "utf8",
            timeout: 60_000,
          },
        );
      const rssOf = (stderr: string) => Number(/maxrss_kb (\d+)/.exec(stderr)?.[1] ?? NaN);
      const valid = cli(ckpt);
      assert.equal(valid.status, 0, valid.stderr);
      const validKb = rssOf(valid.stderr);
      for (let i = 0; i < 6; i++) {
        const dir = path.join(work, `cli-${i}`);
        fs.cpSync(ckpt, dir, { recursive: true });
        const file =
          i % 3 === 0
            ? rewrite(path.join(dir, "model.safetensors"), mutateSafetensors)
            : i % 3 === 1
              ? rewriteJson(path.join(dir, "config.json"))
              : rewrite(path.join(dir, "model.safetensors"), (b) => withValue(b, NaN));
        const r = cli(dir);
        const what = `attnres eval on a damaged ${path.basename(file)}`;
        assert.equal(r.signal, null, `${what}: killed (timeout?)`);
        const lines = r.stderr
          .split("\n")
          .filter((l) => l && !l.startsWith("maxrss_kb") && !l.startsWith("Command exited"));
        if (r.status === 0) assert.match(r.stdout, /loss \d+\.\d+ nats\/token/, what);
        else {
          assert.equal(r.status, 1, `${what}: ${r.stderr}`);
          assert.equal(lines.length, 1, `${what}: ${r.stderr}`);
          assert.match(
            lines[0]!,
            new RegExp(`^attnres: .*${dir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`),
            what,
          );
        }
        assert.ok(
          rssOf(r.stderr) <= 2 * validKb,
          `${what}: peak RSS ${rssOf(r.stderr)} kB, valid ${validKb} kB`,
        );
      }
    });

    test("memory and outcomes", () => {
      const peak = process.resourceUsage().maxRSS;
      assert.ok(peak <= 2 * validRss, `peak RSS ${peak} kB over twice the valid runs' ${validRss} kB`);
      console.log(`# outcomes: ${JSON.stringify(outcomes)}`);
      for (const [family, o] of Object.entries(outcomes))
        assert.ok(o.refused > 0, `${family}: nothing was refused`);
    });
  },
);
