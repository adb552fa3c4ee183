/**
 * The command line end to end, as a person runs it (subprocesses of scripts/attnres-dev.mjs: the
 * command line from its TypeScript sources, which bin/attnres.mjs runs compiled):
 * train → Ctrl-C → resume (the same losses as an uninterrupted run) → eval → compare, and bad
 * input: one clear line on stderr, a non-zero exit, nothing half-written.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { sampleText, writePreparedBytes, readMetrics, tempDir, writeTinyPreset } from "./helpers.js";

const root = path.dirname(import.meta.dirname);
const bin = path.join(root, "scripts", "attnres-dev.mjs");
const tmp = () => tempDir("cli");
const work = tmp();
const data = path.join(work, "data");
writePreparedBytes(data, sampleText(30000));

function preset(steps: number, model: Record<string, unknown> = {}): string {
  const file = path.join(work, `preset-${steps}-${Object.keys(model).join("-") || "plain"}.json`);
  return writeTinyPreset(file, data, {
    model,
    train: { steps, warmup: 5, eval_every: 20, checkpoint_every: 1 },
  });
}

function run(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], {
    cwd: work,
    encoding: "utf8",
    env: { ...process.env, ATTNRES_THREADS: "1" },
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const losses = (dir: string) => readMetrics(dir, ["step", "loss", "val_loss"]);

/** Asserts a user error: exit code 1, exactly one line on stderr matching `re`. */
function userError(r: { code: number; stderr: string }, re: RegExp): void {
  assert.equal(r.code, 1, `exit code (stderr: ${r.stderr})`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, re);
}

describe("attnres CLI", () => {
  test("train, Ctrl-C, resume: the same losses as an uninterrupted run; then eval", async () => {
    const p = preset(300);
    const full = run(["train", "--preset", p, "--out", "full"]);
    assert.equal(full.code, 0, full.stderr);
    assert.match(full.stdout, /done: val loss [\d.]+, perplexity [\d.]+, [\d.]+ bits\/byte/);

    const child = spawn(process.execPath, [bin, "train", "--preset", p, "--out", "cut"], {
      cwd: work,
      env: { ...process.env, ATTNRES_THREADS: "1" },
    });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += String(d)));
    const metrics = path.join(work, "cut", "metrics.jsonl");
    await new Promise<void>((resolve, reject) => {
      const t0 = Date.now();
      const poll = setInterval(() => {
        const n = fs.existsSync(metrics) ? fs.readFileSync(metrics, "utf8").split("\n").length : 0;
        if (n > 20) {
          clearInterval(poll);
          child.kill("SIGINT");
          resolve();
        } else if (Date.now() - t0 > 60000) {
          clearInterval(poll);
          reject(new Error("the run made no progress"));
        }
      }, 20);
    });
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    assert.equal(code, 130, `Ctrl-C exits with 130 (stderr: ${stderr})`);
    assert.match(stderr, /interrupted — saving a checkpoint/);
    const state = JSON.parse(
      fs.readFileSync(path.join(work, "cut", "checkpoint", "trainer_state.json"), "utf8"),
    ) as { step: number; done: boolean };
    assert.ok(state.step > 0 && state.step < 300 && !state.done, `stopped mid-run at step ${state.step}`);
    userError(run(["train", "--preset", p, "--out", "cut"]), /already holds a run .* --resume/);
    const resumed = run(["train", "--preset", p, "--out", "cut", "--resume"]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.deepEqual(losses(path.join(work, "cut")), losses(path.join(work, "full")));

    const ev = run([
      "eval",
      "--checkpoint",
      "full/checkpoint",
      "--data",
      data,
      "--seq-len",
      "32",
      "--batches",
      "2",
      "--batch-size",
      "4",
      "--json",
    ]);
    assert.equal(ev.code, 0, ev.stderr);
    const e = JSON.parse(ev.stdout) as { loss: number; perplexity: number; bitsPerByte: number };
    const trainedVal = losses(path.join(work, "full")).at(-1)![2] as number;
    assert.ok(
      Math.abs(e.loss - trainedVal) < 1e-4,
      `eval loss ${e.loss} equals the run's final val loss ${trainedVal}`,
    );
    assert.ok(
      Math.abs(e.perplexity - Math.exp(e.loss)) < 1e-9 && Math.abs(e.bitsPerByte - e.loss / Math.LN2) < 1e-9,
    );
  });

  test("prepare a text corpus, then analyze and generate from a trained checkpoint", () => {
    const corpus = path.join(work, "corpus.txt");
    fs.writeFileSync(corpus, sampleText(40000, 7));
    const prep = run([
      "prepare",
      "--corpus",
      corpus,
      "--tokenizer",
      "bpe",
      "--vocab-size",
      "300",
      "--out",
      "prep",
    ]);
    assert.equal(prep.code, 0, prep.stderr);
    const meta = JSON.parse(fs.readFileSync(path.join(work, "prep", "meta.json"), "utf8")) as {
      tokenizer: { vocab_size: number };
      train: { tokens: number };
    };
    assert.equal(meta.tokenizer.vocab_size, 300);
    const t0 = fs.statSync(path.join(work, "prep", "train.bin")).mtimeMs;
    assert.equal(
      run(["prepare", "--corpus", corpus, "--tokenizer", "bpe", "--vocab-size", "300", "--out", "prep"]).code,
      0,
    );
    assert.equal(
      fs.statSync(path.join(work, "prep", "train.bin")).mtimeMs,
      t0,
      "re-running prepare is a no-op",
    );

    const p = preset(20, { attnres_mode: "delta" });
    const tr = run(["train", "--preset", p, "--data", path.join(work, "prep"), "--out", "bpe-delta"]);
    assert.equal(tr.code, 0, tr.stderr);
    const ckpt = path.join(work, "bpe-delta", "checkpoint");

    const an = run([
      "analyze",
      "--checkpoint",
      ckpt,
      "--data",
      path.join(work, "prep"),
      "--batches",
      "2",
      "--batch-size",
      "2",
      "--seq-len",
      "32",
    ]);
    assert.equal(an.code, 0, an.stderr);
    const report = JSON.parse(fs.readFileSync(path.join(ckpt, "analysis", "report.json"), "utf8")) as {
      calls?: unknown[];
      routing?: unknown[];
    };
    assert.ok(report, "report.json parses");
    for (const f of fs.readdirSync(path.join(ckpt, "analysis")).filter((f) => f.endsWith(".png"))) {
      const png = fs.readFileSync(path.join(ckpt, "analysis", f));
      assert.ok(png.length > 1000 && png.subarray(1, 4).toString() === "PNG", `${f} is a non-empty PNG`);
    }
    assert.ok(fs.existsSync(path.join(ckpt, "analysis", "alpha-heatmap.png")));
    assert.match(fs.readFileSync(path.join(ckpt, "analysis", "summary.md"), "utf8"), /\|/);

    const genArgs = [
      "generate",
      "--checkpoint",
      ckpt,
      "--prompt",
      "the of",
      "-n",
      "12",
      "--seed",
      "3",
      "--temperature",
      "0.8",
    ];
    const gen = run(genArgs);
    assert.equal(gen.code, 0, gen.stderr);
    assert.ok(gen.stdout.startsWith("the of") && gen.stdout.length > "the of".length, gen.stdout);
    const again = run(genArgs);
    assert.equal(again.stdout, gen.stdout, "a seed reproduces the sample");

    userError(run(["prepare", "--corpus", path.join(work, "no-such.txt")]), /no-such.txt/);
    fs.writeFileSync(path.join(work, "empty.txt"), "");
    userError(run(["prepare", "--corpus", path.join(work, "empty.txt"), "--out", "empty-prep"]), /empty/);
    assert.ok(!fs.existsSync(path.join(work, "empty-prep")), "nothing written for a failed prepare");
  });

  test("compare: two modes, results table, Welch tests, resumable", () => {
    const p = preset(30);
    const r = run(["compare", "--preset", p, "--modes", "standard,delta", "--seeds", "0,1", "--out", "cmp"]);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(fs.readFileSync(path.join(work, "cmp", "results.json"), "utf8")) as {
      summary: { mode: string; runs: number; valLoss: [number, number]; vsStandard: { p: number } | null }[];
      routingByDepth: { mode: string; j: number[]; meanMaxWeight: number[] }[];
    };
    assert.deepEqual(
      res.summary.map((s) => [s.mode, s.runs]),
      [
        ["standard", 2],
        ["delta", 2],
      ],
    );
    assert.ok(res.summary.every((s) => Number.isFinite(s.valLoss[0]) && Number.isFinite(s.valLoss[1])));
    assert.ok(
      res.summary[1]!.vsStandard && res.summary[1]!.vsStandard.p >= 0 && res.summary[1]!.vsStandard.p <= 1,
    );
    assert.equal(res.routingByDepth[0]!.mode, "delta");
    assert.deepEqual(res.routingByDepth[0]!.j, [1, 2, 3]);
    for (const fig of ["loss-curves", "routing-max-weight-by-depth"])
      for (const ext of ["png", "svg"])
        assert.ok(fs.statSync(path.join(work, "cmp", `${fig}.${ext}`)).size > 1000, `${fig}.${ext}`);
    const md = fs.readFileSync(path.join(work, "cmp", "results.md"), "utf8");
    assert.match(md, /!\[loss-curves.png\]\(loss-curves.png\)/);
    const rows = md.split("\n").filter((l) => /^\| (standard|delta) \| 2 \|/.test(l));
    assert.equal(rows.length, 2, md);
    assert.match(md, /\| delta \| -?[\d.]+ \| -?[\d.]+ \| [\d.]+ \| [\d.e-]+ \|/);
    assert.match(r.stdout, /^standard\s+2\s+[\d.]+ ± [\d.]+/m);
    // A second invocation reuses the finished runs.
    const before = fs.statSync(path.join(work, "cmp", "delta-s1", "checkpoint", "model.safetensors")).mtimeMs;
    const again = run([
      "compare",
      "--preset",
      p,
      "--modes",
      "standard,delta",
      "--seeds",
      "0,1",
      "--out",
      "cmp",
    ]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(
      fs.statSync(path.join(work, "cmp", "delta-s1", "checkpoint", "model.safetensors")).mtimeMs,
      before,
    );
  });

  test("compare: a diverging run is reported, left out of the means and not retried", () => {
    const p = preset(6);
    const args = ["compare", "--preset", p, "--modes", "standard,delta", "--lr", "1e30", "--out", "div"];
    const r = run(args);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /diverged: standard, seed 0 \(loss (NaN|Infinity) at step \d;/);
    const res = JSON.parse(fs.readFileSync(path.join(work, "div", "results.json"), "utf8")) as {
      runs: unknown[];
      summary: unknown[];
      diverged: { mode: string; seed: number; step: number }[];
    };
    assert.deepEqual(
      res.diverged.map((d) => [d.mode, d.seed]),
      [
        ["standard", 0],
        ["delta", 0],
      ],
    );
    assert.ok(res.diverged.every((d) => d.step >= 1 && d.step <= 6));
    assert.equal(res.runs.length, 0);
    assert.equal(res.summary.length, 0);
    assert.match(
      fs.readFileSync(path.join(work, "div", "results.md"), "utf8"),
      /\*\*Diverged\*\*[^]*- delta, seed 0/,
    );
    const marker = path.join(work, "div", "delta-s0", "diverged.json");
    const before = fs.statSync(marker).mtimeMs;
    const again = run(args);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(fs.statSync(marker).mtimeMs, before, "a diverged run is not trained again");
    assert.match(again.stdout, /diverged: delta, seed 0/);
  });

  test("convert a standard checkpoint to delta-block, then fine-tune it", () => {
    const p = preset(6);
    assert.equal(run(["train", "--preset", p, "--out", "conv-base"]).code, 0);
    const conv = run([
      "convert",
      "--from",
      "conv-base/checkpoint",
      "--to",
      "conv-db",
      "--mode",
      "delta-block",
      "--blocks",
      "2",
    ]);
    assert.equal(conv.code, 0, conv.stderr);
    assert.match(conv.stdout, /max \|logit difference\| 0\.00e\+0 \(exact mode/);
    const cfg = JSON.parse(fs.readFileSync(path.join(work, "conv-db", "config.json"), "utf8")) as Record<
      string,
      unknown
    >;
    assert.equal(cfg.attnres_mode, "delta_block");
    assert.equal(
      cfg.attnres_gate_type,
      "learnable_alpha",
      "delta-block is converted with a zero gate (exact)",
    );
    userError(
      run(["convert", "--from", "conv-base/checkpoint", "--to", "conv-db", "--mode", "delta"]),
      /conv-db/,
    );
    const quiet = run([
      "convert",
      "--from",
      "conv-base/checkpoint",
      "--to",
      "conv-q",
      "--mode",
      "delta",
      "-q",
    ]);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stdout + quiet.stderr, "", "--quiet prints nothing");
    assert.ok(fs.existsSync(path.join(work, "conv-q", "model.safetensors")));
    const ft = run([
      "finetune",
      "--from",
      "conv-db",
      "--data",
      data,
      "--steps",
      "4",
      "--batch-size",
      "4",
      "--seq-len",
      "32",
      "--eval-every",
      "2",
      "--freeze-base",
      "--out",
      "ft",
    ]);
    assert.equal(ft.code, 0, ft.stderr);
    const before = fs.readFileSync(path.join(work, "conv-db", "model.safetensors"));
    const after = fs.readFileSync(path.join(work, "ft", "checkpoint", "model.safetensors"));
    assert.ok(!before.equals(after), "the routing parameters were trained");
    assert.equal(losses(path.join(work, "ft")).length, 4);
  });

  test("bad input: one clear line, non-zero exit, nothing half-written", () => {
    const p = preset(4);
    assert.equal(run(["train", "--preset", p, "--out", "ok"]).code, 0);
    userError(
      run(["train", "--preset", "no-such-preset"]),
      /^attnres: unknown preset "no-such-preset" \(available: .*sotu-tiny/,
    );
    userError(run(["train", "--preset", p, "--no-such-flag"]), /unknown option '--no-such-flag'/);
    userError(run(["train", "--preset", p, "--steps", "x"]), /--steps.*positive integer/);
    userError(
      run(["train", "--preset", p, "--mode", "sideways"]),
      /--mode.*expected one of standard, attnres-full/,
    );
    userError(run(["compare", "--preset", p, "--modes", "standard,nope"]), /unknown mode "nope"/);
    userError(
      run(["eval", "--checkpoint", "missing", "--data", data]),
      /missing is not a checkpoint folder: config.json is missing/,
    );
    userError(
      run(["eval", "--checkpoint", "ok/checkpoint", "--data", path.join(work, "nodata")]),
      /not a prepared dataset/,
    );
    // A truncated checkpoint.
    fs.cpSync(path.join(work, "ok", "checkpoint"), path.join(work, "trunc"), { recursive: true });
    const w = path.join(work, "trunc", "model.safetensors");
    fs.truncateSync(w, fs.statSync(w).size - 10);
    userError(
      run(["eval", "--checkpoint", "trunc", "--data", data]),
      /model.safetensors: not a valid safetensors file: .*truncated/,
    );
    // A corrupted header.
    const c = path.join(work, "corrupt");
    fs.cpSync(path.join(work, "ok", "checkpoint"), c, { recursive: true });
    const buf = fs.readFileSync(path.join(c, "model.safetensors"));
    buf.write("xx", 10);
    fs.writeFileSync(path.join(c, "model.safetensors"), buf);
    userError(run(["eval", "--checkpoint", "corrupt", "--data", data]), /not a valid safetensors file/);
    // A config that does not match the weights.
    const m = path.join(work, "mismatch");
    fs.cpSync(path.join(work, "ok", "checkpoint"), m, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(m, "config.json"), "utf8"));
    fs.writeFileSync(path.join(m, "config.json"), JSON.stringify({ ...cfg, hidden_size: 48 }));
    userError(
      run(["eval", "--checkpoint", "mismatch", "--data", data]),
      /tensor model.embed_tokens.weight has shape \[256, 32\], expected \[256, 48\]/,
    );
    // Nothing half-written anywhere under the work folder.
    const leftovers = (fs.readdirSync(work, { recursive: true }) as string[]).filter((f) =>
      /\.tmp$|\.old$|\.tmp\//.test(f),
    );
    assert.deepEqual(leftovers, []);
  });
});
