/**
 * Logs people can use: time and elapsed_s in every metrics.jsonl record, metrics.csv beside it
 * (the same records, cut back with the JSONL on resume), the plain progress line with an ETA,
 * and `eval` over the whole split by default (stating the batches and tokens it scored).
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import { evalCommand } from "../src/cli/eval.js";
import { formatDuration, progress, progressLine } from "../src/cli/common.js";
import { loadPrepared } from "../src/data/prepared.js";
import { MetricsLog } from "../src/train/checkpointing.js";
import { METRICS_COLUMNS } from "../src/train/metrics.js";
import { runTraining, type RunSpec } from "../src/train/run.js";
import { sampleText, tempDir, tinySpec, writePreparedBytes } from "./helpers.js";

const data = tempDir("logs-data");
writePreparedBytes(data, sampleText(12000));

const spec: RunSpec = tinySpec(data, {
  model: { hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1 },
  train: { steps: 8, batch_size: 2, seq_len: 16, warmup: 2, eval_every: 4, checkpoint_every: 2 },
});

function parseCsv(file: string): { header: string[]; rows: string[][] } {
  const lines = fs.readFileSync(file, "utf8").split("\n");
  assert.equal(lines.at(-1), "", "metrics.csv ends with a newline");
  return { header: lines[0]!.split(","), rows: lines.slice(1, -1).map((l) => l.split(",")) };
}

function records(dir: string): Record<string, unknown>[] {
  return fs
    .readFileSync(path.join(dir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** metrics.csv holds exactly the JSONL records, column by column. */
function assertCsvMatches(dir: string): void {
  const { header, rows } = parseCsv(path.join(dir, "metrics.csv"));
  assert.deepEqual(header, [
    "step",
    "loss",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "val_loss",
    "time",
    "elapsed_s",
  ]);
  const recs = records(dir);
  assert.equal(rows.length, recs.length);
  rows.forEach((row, i) =>
    METRICS_COLUMNS.forEach((c, k) => {
      const v = recs[i]![c];
      assert.equal(row[k], v === undefined ? "" : String(v), `row ${i + 1}, ${c}`);
    }),
  );
}

test("metrics.jsonl records carry time and elapsed_s; metrics.csv follows them, also across a resume", async () => {
  const dir = tempDir("logs-run");
  const t0 = Date.now();
  const first = await runTraining(spec, dir, { stopAfter: 5 });
  assert.equal(first.interrupted, true);
  // The checkpoint is at step 5. A record past it (what a crash after a step and before its
  // checkpoint leaves) must be cut from both files on resume.
  fs.appendFileSync(path.join(dir, "metrics.jsonl"), JSON.stringify({ step: 6, loss: 9 }) + "\n");
  fs.appendFileSync(path.join(dir, "metrics.csv"), "6,9,,,,,,\n");
  const done = await runTraining(spec, dir, { resume: true });
  assert.equal(done.done, true);
  const recs = records(dir);
  assert.deepEqual(
    recs.map((r) => r.step),
    [1, 2, 3, 4, 5, 6, 7, 8],
  );
  let prev = 0;
  for (const r of recs) {
    assert.equal(typeof r.time, "string");
    const t = Date.parse(r.time as string);
    assert.ok(
      /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(r.time as string),
      `ISO-8601 UTC: ${String(r.time)}`,
    );
    assert.ok(t >= t0 - 1000 && t <= Date.now() + 1000, `time ${String(r.time)} is when the step ran`);
    const e = r.elapsed_s as number;
    assert.ok(e > prev, `elapsed_s grows across the resume: ${e} after ${prev}`);
    prev = e;
  }
  assert.ok(Math.abs(prev - done.seconds) < 1e-9, "the last elapsed_s is the run's training seconds");
  assert.equal(recs.filter((r) => r.val_loss !== undefined).length, 2);
  assertCsvMatches(dir);
});

test("MetricsLog: empty cells for absent values, recovery keeps both files in step", () => {
  const dir = tempDir("logs-unit");
  const log = new MetricsLog(path.join(dir, "metrics.jsonl"));
  log.reset();
  const rec = (step: number, val?: number) => ({
    step,
    loss: 2.5,
    grad_norm: NaN,
    lr: 1e-3,
    tokens_per_s: 100,
    ...(val === undefined ? {} : { val_loss: val }),
    time: "2026-01-01T00:00:00.000Z",
    elapsed_s: step / 2,
  });
  for (let s = 1; s <= 4; s++) log.append(rec(s, s === 2 ? 2.25 : undefined));
  log.close();
  let csv = parseCsv(log.csv);
  assert.deepEqual(csv.rows[0], ["1", "2.5", "nan", "0.001", "100", "", "2026-01-01T00:00:00.000Z", "0.5"]);
  assert.equal(csv.rows[1]![5], "2.25");
  log.recover(2);
  csv = parseCsv(log.csv);
  assert.equal(csv.rows.length, 2);
  assert.equal(records(dir).length, 2);
  log.recover(0);
  assert.equal(parseCsv(log.csv).rows.length, 0);
  assert.equal(fs.readFileSync(log.file, "utf8"), "");
});

test("the plain progress line shows elapsed time and an ETA", () => {
  assert.equal(formatDuration(5.4), "5s");
  assert.equal(formatDuration(187), "3m07s");
  assert.equal(formatDuration(3720), "1h02m");
  const first = { step: 1, at: 0 };
  assert.equal(
    progressLine("step", 11, 101, "loss 2.000", first, 20_000),
    "step 11/101: loss 2.000 (10 %, elapsed 20s, ETA 3m00s)",
  );
  assert.equal(progressLine("step", 1, 100, "", first, 0), "step 1/100 (1 %, elapsed 0s)");
  assert.equal(progressLine("batch", 8, 8, "x 1", first, 7000), "batch 8/8: x 1 (100 %, elapsed 7s, done)");
  // Not a terminal (as under the test runner): progress() prints such lines every ~10 %.
  const out: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  const isTTY = process.stdout.isTTY;
  process.stdout.isTTY = false;
  process.stdout.write = ((s: string) => {
    out.push(s);
    return true;
  }) as typeof process.stdout.write;
  try {
    const bar = progress("step");
    for (let s = 1; s <= 20; s++) bar.update(s, 20, { loss: "1.0" });
    bar.stop();
  } finally {
    process.stdout.write = write;
    process.stdout.isTTY = isTTY;
  }
  assert.equal(out.length, 11, out.join(""));
  assert.match(out[1]!, /^ {2}step 2\/20: loss 1\.0 \(10 %, elapsed \d+s, ETA \d+s\)\n$/);
  assert.match(out.at(-1)!, /^ {2}step 20\/20: loss 1\.0 \(100 %, elapsed \d+s, done\)\n$/);
});

test("eval scores the whole split by default and says how much it scored", async () => {
  const dir = tempDir("logs-eval");
  await runTraining({ ...spec, train: { ...spec.train, steps: 2 } }, dir);
  const val = loadPrepared(data).val;
  const ck = path.join(dir, "checkpoint");
  const all = evalCommand({ checkpoint: ck, data, batchSize: 2, seqLen: 16 });
  const complete = Math.floor((val.length - 1) / 32);
  assert.equal(all.batches, complete);
  assert.equal(all.tokens, complete * 32);
  assert.equal(all.splitTokens, val.length);
  assert.equal(all.wholeSplit, true);
  const one = evalCommand({ checkpoint: ck, data, batchSize: 2, seqLen: 16, batches: 1 });
  assert.equal(one.batches, 1);
  assert.equal(one.tokens, 32);
  assert.equal(one.wholeSplit, false);
  assert.notEqual(one.loss, all.loss);
});
