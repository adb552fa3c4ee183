/**
 * The study driver (scripts/study.ts), its export of each finished run into the tracked results
 * folder, and the report (scripts/study-report.ts) read from that folder alone, on tiny real runs
 * (4 layers, d 32, a few steps) of tiny copies of the study's parts — as a person runs them
 * (subprocesses). Plus the second round's statistics (gap change, gap trend, ranking).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { gapChange, gapTrend, ranking } from "../scripts/study-lib.js";
import { verdictLower } from "../src/train/statistics.js";
import {
  sampleText,
  tempDir,
  type TinySpecOverrides,
  writePreparedBytes,
  writeTinyPreset,
} from "./helpers.js";

const root = path.dirname(import.meta.dirname);
const work = tempDir("study");
const data = path.join(work, "data");
writePreparedBytes(data, sampleText(30000));
const presets = path.join(work, "presets");
const runs = path.join(work, "runs");
const results = path.join(work, "results");
fs.mkdirSync(presets);

function preset(part: string, modes: string[], seeds: number[], o: TinySpecOverrides = {}): void {
  writeTinyPreset(path.join(presets, `${part}.json`), data, {
    model: { num_hidden_layers: 4, ...o.model },
    train: { seed: 0, ...o.train },
    compare: { modes, seeds },
  });
}
const FOUR = ["standard", "attnres-full", "delta", "delta-block"];
preset("main", FOUR, [0, 1]);
preset("depth-12", ["standard"], [0]); // identical to main's standard-s0: copied, not trained
preset("budget-4x", FOUR, [0, 1], { train: { steps: 8 } });
preset("states", ["attnres-full", "delta"], [0, 1], { model: { attnres_sources: "states" } });
preset("lr-1.5e-3", ["standard", "attnres-full", "delta"], [0], { train: { lr: 1.5e-3 } });
preset("lr-6e-3", ["standard", "attnres-full", "delta"], [0], { train: { lr: 6e-3 } });

const env = { ...process.env, ATTNRES_THREADS: "1" };
function study(args: string[], dirs = { runs, results }): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(
    process.execPath,
    [
      "--import",
      "tsx",
      path.join(root, "scripts", "study.ts"),
      ...args,
      "--presets",
      presets,
      "--runs",
      dirs.runs,
      "--results",
      dirs.results,
    ],
    { cwd: root, encoding: "utf8", env },
  );
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
function report(res: string, out: string): { code: number; stderr: string; md: string } {
  const r = spawnSync(
    process.execPath,
    [
      "--import",
      "tsx",
      path.join(root, "scripts", "study-report.ts"),
      "--results",
      res,
      "--presets",
      presets,
      "--out",
      out,
    ],
    { cwd: root, encoding: "utf8", env },
  );
  // Table cells are padded by the formatter: compare with runs of spaces collapsed.
  const md = fs.existsSync(out) ? fs.readFileSync(out, "utf8").replace(/ {2,}/g, " ") : "";
  return { code: r.status ?? -1, stderr: r.stderr, md };
}
const rjson = <T>(f: string) => JSON.parse(fs.readFileSync(f, "utf8")) as T;

describe("study driver", () => {
  test("bad input: one line on stderr, exit 2, nothing written", () => {
    for (const [args, msg] of [
      [["nosuchpart"], /unknown part "nosuchpart" \(parts: main, states, lr-1\.5e-3/],
      [["main", "--modes", "sideways"], /unknown mode "sideways" in --modes/],
      [["main", "--seeds", "x"], /--seeds: "x" is not a non-negative integer/],
      [["--bogus"], /Unknown option '--bogus'/],
    ] as const) {
      const r = study([...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, msg);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    assert.ok(!fs.existsSync(results) && !fs.existsSync(runs));
  });

  test("--list: the plan per part, in the default order", () => {
    const r = study(["--list"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      r.stdout
        .trim()
        .split("\n")
        .map((l) => l.split(":")[0]),
      ["main", "states", "lr-1.5e-3", "lr-6e-3", "budget-4x", "depth-12"],
    );
    assert.match(
      r.stdout,
      /^main: 0 of 8 done; to do: standard-s0, attnres-full-s0, delta-s0, delta-block-s0, standard-s1/m,
    );
  });

  test("parts in the given order, filtered; each finished run's small outputs exported", () => {
    const r = study(["states", "main", "--modes", "standard,delta", "--seeds", "0"]);
    assert.equal(r.code, 0, r.stderr);
    const order = [...r.stdout.matchAll(/^(\S+\/\S+): training/gm)].map((m) => m[1]);
    assert.deepEqual(order, ["states/delta-s0", "main/standard-s0", "main/delta-s0"]);
    for (const run of ["states/delta-s0", "main/standard-s0", "main/delta-s0"]) {
      const dir = path.join(results, run);
      assert.deepEqual(fs.readdirSync(dir).sort(), [
        "analysis.json",
        "metrics.jsonl",
        "result.json",
        "run.json",
      ]);
      // The metrics are the training log itself, and the result its final validation.
      const log = fs.readFileSync(path.join(runs, run, "metrics.jsonl"), "utf8");
      assert.equal(fs.readFileSync(path.join(dir, "metrics.jsonl"), "utf8"), log);
      const rec = rjson<{ valLoss: number; steps: number; tokens: number; seed: number; machine: string }>(
        path.join(dir, "result.json"),
      );
      const last = JSON.parse(log.trim().split("\n").at(-1)!) as { step: number; val_loss: number };
      assert.equal(rec.valLoss, last.val_loss);
      assert.equal(rec.steps, 4);
      assert.equal(rec.tokens, 4 * 4 * 32);
      assert.match(rec.machine, /cores/);
    }
    // The routing analysis was computed from the checkpoint: states cells route over j + 1 states.
    const a = rjson<{ routed: boolean; calls: { key: number | string; sources: number }[] }>(
      path.join(results, "states", "delta-s0", "analysis.json"),
    );
    assert.ok(a.routed);
    assert.deepEqual(
      a.calls.map((c) => [c.key, c.sources]),
      [1, 2, 3, 4, 5, 6, 7].map((j) => [j, j + 1]),
    );
    assert.equal(
      rjson<{ model: { attnres_sources: string } }>(path.join(results, "states", "delta-s0", "run.json"))
        .model.attnres_sources,
      "states",
    );
    assert.ok(!fs.existsSync(path.join(results, "main", "attnres-full-s0")), "filtered out");
    // The gated cell's learned gates are recorded; sublayer 0 never routes, so its gate stays 0.
    const gates = rjson<{ gates: Record<string, number> }>(
      path.join(results, "states", "delta-s0", "result.json"),
    ).gates;
    assert.equal(Object.keys(gates).length, 8);
    assert.equal(gates["model.layers.0.attn_res_alpha"], 0);
    assert.ok(
      Object.values(gates).some((g) => g !== 0),
      "the gates trained",
    );
    assert.equal(
      rjson<{ gates?: unknown }>(path.join(results, "main", "delta-s0", "result.json")).gates,
      undefined,
    );
  });

  test("--export exports what `attnres compare` finished, and trains nothing", () => {
    const c = spawnSync(
      process.execPath,
      [
        path.join(root, "bin", "attnres.mjs"),
        "compare",
        "--preset",
        path.join(presets, "main.json"),
        "--modes",
        "attnres-full",
        "--seeds",
        "0",
        "--out",
        path.join(runs, "main"),
      ],
      { cwd: work, encoding: "utf8", env },
    );
    assert.equal(c.status, 0, c.stderr);
    const r = study(["--export"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /main\/attnres-full-s0: finished run exported/);
    assert.ok(fs.existsSync(path.join(results, "main", "attnres-full-s0", "analysis.json")));
    assert.ok(!fs.existsSync(path.join(runs, "main", "delta-block-s0")), "nothing trained");
    // The identical run of another part is copied from the committed one, marked as reused.
    const twin = rjson<{ reusedFrom: string; part: string }>(
      path.join(results, "depth-12", "standard-s0", "result.json"),
    );
    assert.deepEqual([twin.part, twin.reusedFrom], ["depth-12", "main/standard-s0"]);
    assert.ok(!fs.existsSync(path.join(runs, "depth-12")));
  });

  test("--refresh exports a committed run again from its checkpoint, without training", () => {
    const f = path.join(results, "states", "delta-s0", "result.json");
    const before = fs.readFileSync(f, "utf8");
    const ckpt = path.join(runs, "states", "delta-s0", "checkpoint", "model.safetensors");
    const mtime = fs.statSync(ckpt).mtimeMs;
    fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(before), gates: undefined }));
    const r = study(["states", "--seeds", "0", "--modes", "delta", "--export", "--refresh"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /states\/delta-s0: exported again/);
    const again = JSON.parse(fs.readFileSync(f, "utf8")) as Record<string, unknown>;
    const old = JSON.parse(before) as Record<string, unknown>;
    delete again.machine;
    delete old.machine;
    assert.deepEqual(again, old);
    assert.equal(fs.statSync(ckpt).mtimeMs, mtime, "not trained again");
  });

  test("committed results are never retrained, even on a machine without runs/", () => {
    const fresh = path.join(work, "fresh-runs");
    const before = fs.readFileSync(path.join(results, "main", "standard-s0", "result.json"), "utf8");
    const r = study(["main", "--modes", "standard", "--seeds", "0"], { runs: fresh, results });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /main\/standard-s0: results committed; skipped/);
    assert.ok(!fs.existsSync(path.join(fresh, "main", "standard-s0")));
    assert.equal(fs.readFileSync(path.join(results, "main", "standard-s0", "result.json"), "utf8"), before);
  });

  test("a folder another study process trains is skipped; one the study stopped resumes at once", () => {
    const lr = path.join(work, "lock-runs");
    const lres = path.join(work, "lock-results");
    const dir = path.join(lr, "main", "standard-s1");
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "metrics.jsonl"), ""); // written just now
    const lock = (state: string) =>
      fs.writeFileSync(path.join(dir, "study-lock.json"), JSON.stringify({ pid: process.pid, state }));
    const args = ["main", "--modes", "standard", "--seeds", "1"];
    // a live process (this test runner) is training it
    lock("training");
    let r = study(args, { runs: lr, results: lres });
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      new RegExp(`main/standard-s1: .* is being trained by process ${process.pid}; skipped`),
    );
    assert.ok(!fs.existsSync(path.join(dir, "run.json")), "not touched");
    // no lock, written just now: perhaps another program's (attnres train); skipped
    fs.rmSync(path.join(dir, "study-lock.json"));
    r = study(args, { runs: lr, results: lres });
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /main\/standard-s1: .* less than 2 minutes ago \(training in another process\?\); skipped/,
    );
    assert.ok(!fs.existsSync(path.join(dir, "run.json")), "not touched");
    // the study itself stopped it just now (Ctrl-C): the run goes on at once, to the end
    lock("stopped");
    r = study(args, { runs: lr, results: lres });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /main\/standard-s1: training in/);
    assert.ok(fs.existsSync(path.join(lres, "main", "standard-s1", "result.json")));
    const after = JSON.parse(fs.readFileSync(path.join(dir, "study-lock.json"), "utf8")) as { state: string };
    assert.equal(after.state, "stopped");
  });

  test("a training lock whose process is gone (killed) does not hold its run back", () => {
    const lr = path.join(work, "lock-runs-2");
    const lres = path.join(work, "lock-results-2");
    const dir = path.join(lr, "main", "standard-s1");
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "metrics.jsonl"), "");
    const gone = spawnSync(process.execPath, ["-e", ""]).pid!; // exited already
    fs.writeFileSync(path.join(dir, "study-lock.json"), JSON.stringify({ pid: gone, state: "training" }));
    const r = study(["main", "--modes", "standard", "--seeds", "1"], { runs: lr, results: lres });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /main\/standard-s1: training in/);
    assert.ok(fs.existsSync(path.join(lres, "main", "standard-s1", "result.json")));
  });

  test("a committed run whose preset has changed is refused, not silently reused", () => {
    const f = path.join(results, "main", "standard-s0", "run.json");
    const saved = fs.readFileSync(f, "utf8");
    const spec = JSON.parse(saved) as { train: { lr: number } };
    spec.train.lr = 1;
    fs.writeFileSync(f, JSON.stringify(spec));
    try {
      const r = study(["main", "--modes", "standard"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /main\/standard-s0 was trained with other settings than .*main\.json gives now/);
    } finally {
      fs.writeFileSync(f, saved);
    }
  });

  test("report before the second round: existing sections work, new ones say what is left", () => {
    const out = path.join(work, "partial", "results.md");
    const r = report(results, out);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.md, /\*\*Incomplete\*\* \(3 of 8 runs done\)/);
    assert.match(
      r.md,
      /## Token budget[^\n]*\n\nNot run yet: 0 of 8 runs done \(`npm run study -- budget-4x`\)/,
    );
    assert.match(r.md, /## Learning-rate check[^\n]*\n\nNot run yet: 0 of 6 runs done/);
    // states has one finished cell: the 2 × 2 is shown as far as it goes, marked incomplete.
    assert.match(r.md, /\*\*Incomplete\*\*: 1 of 4 runs of the states cells done/);
  });

  test("the whole study, then the report from the committed folder alone", () => {
    const r = study([]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /every requested run is done/);
    // A clone: only the results folder and the presets, no runs/.
    const clone = path.join(work, "clone");
    fs.cpSync(results, path.join(clone, "results"), { recursive: true });
    assert.ok(
      !fs
        .readdirSync(path.join(clone, "results"), { recursive: true })
        .some((f) => String(f).includes("safetensors")),
    );
    const out = path.join(clone, "docs", "results.md");
    const rep = report(path.join(clone, "results"), out);
    assert.equal(rep.code, 0, rep.stderr);
    const md = rep.md;
    const loss = (part: string, run: string) =>
      rjson<{ valLoss: number }>(path.join(results, part, run, "result.json")).valLoss;
    const m = (part: string, mode: string) => (loss(part, `${mode}-s0`) + loss(part, `${mode}-s1`)) / 2;

    // Token budget: the per-mode table at both budgets, the Welch tests at both, the gap trend.
    assert.ok(md.includes(`| delta | 2 | ${m("main", "delta").toFixed(4)} ± `), "delta at the first budget");
    assert.match(
      md,
      new RegExp(`\\| delta \\| 2 \\| [\\d.]+ ± [\\d.]+ \\| 2 \\| ${m("budget-4x", "delta").toFixed(4)} ± `),
    );
    assert.match(
      md,
      /\| delta vs attnres-full \| -?[\d.]+ \| t = [^|]+\| \*\*[^|]+\| -?[\d.]+ \| t = [^|]+\| \*\*/,
    );
    assert.match(md, /Verdict: the gap \*\*(flips|shrinks|grows|holds)\*\*/);
    assert.match(
      md,
      /!\[validation loss against training tokens, four modes, seed bands\]\(results\/budget-loss-vs-tokens.png\)/,
    );

    // 2 × 2: the cells' means from the right parts, and the four axis tests.
    assert.ok(md.includes(`| outputs | ${m("main", "attnres-full").toFixed(4)} ± `));
    assert.ok(md.includes(`| states | ${m("states", "attnres-full").toFixed(4)} ± `));
    assert.ok(md.includes(`(n = 2) | ${m("states", "delta").toFixed(4)} ± `));
    for (const axis of [
      "add vs replace, sources = outputs",
      "add vs replace, sources = states",
      "outputs vs states, combination = replace",
      "outputs vs states, combination = add",
    ])
      assert.match(md, new RegExp(`\\| ${axis} \\| -?[\\d.]+ \\| t = `), axis);
    assert.match(md, /states\/replace \+[\d,]+, states\/add \+[\d,]+/);

    // LR check: one row per rate with its ranking, and the sentence on whether it changes.
    for (const lr of ["1.5e-3", "3e-3", "6e-3"])
      assert.match(
        md,
        new RegExp(`\\| ${lr} \\| [\\d.]+ \\| [\\d.]+ \\| [\\d.]+ \\| \\S+ < \\S+ < \\S+ \\|`),
        lr,
      );
    assert.match(
      md,
      /\*\*The ranking (is the same at every rate checked|changes with the learning rate)\*\*/,
    );

    // The belief paragraph says only what tests decided, with their p-values.
    const belief = md.split("## What we now believe")[1]!.split("\n## ")[0]!;
    assert.match(belief, /at 0\.0M tokens \(main study\) \(p = /);
    assert.match(belief, /\(2 × 2, 0\.0M tokens\)/);
    assert.match(belief, /one seed per rate/);

    for (const f of [
      "budget-loss-vs-tokens.png",
      "two-by-two.png",
      "lr-check.png",
      "main-loss-curves.png",
      "main-delta-alpha.png",
      "main-attnres-full-max-weight.png",
    ])
      assert.ok(fs.statSync(path.join(clone, "docs", "results", f)).size > 1000, f);
  });
});

describe("second-round statistics", () => {
  test("gapChange: the Welch-type test of a difference of differences", () => {
    const g = gapChange([1, 1.2, 1.1], [2, 2.1, 1.9], [1, 1.1, 0.9], [1.05, 1.1, 0.95])!;
    assert.ok(Math.abs(g.gap1 - (1.1 - 2)) < 1e-12);
    assert.ok(Math.abs(g.gap2 - (1 - 1.0333333333333334)) < 1e-12);
    // se² = Σ var/n = (0.01 + 0.01 + 0.01 + 0.005833…)/3
    const se = Math.sqrt((0.01 + 0.01 + 0.01 + 0.0058333333333333) / 3);
    assert.ok(Math.abs(g.t - (g.gap2 - g.gap1) / se) < 1e-9);
    assert.ok(g.p < 0.01);
    assert.equal(gapChange([1], [2, 3], [1, 2], [3, 4]), null);
  });
  test("gapTrend: flips, shrinks, holds", () => {
    const a1 = [1, 1.1, 1.2];
    const b1 = [2, 2.1, 2.2];
    // a clearly better at the first budget, clearly worse at the second: flips.
    const flip = gapTrend(
      verdictLower(a1, b1),
      verdictLower([3, 3.1, 3.2], [1, 1.1, 1.2]),
      gapChange(a1, b1, [3, 3.1, 3.2], [1, 1.1, 1.2]),
    );
    assert.equal(flip, "flips");
    // still better, by much less: shrinks.
    const a4 = [1, 1.1, 1.2];
    const b4 = [1.3, 1.4, 1.5];
    assert.equal(gapTrend(verdictLower(a1, b1), verdictLower(a4, b4), gapChange(a1, b1, a4, b4)), "shrinks");
    // the same gap: holds.
    const b5 = [2.02, 2.08, 2.2];
    assert.equal(gapTrend(verdictLower(a1, b1), verdictLower(a1, b5), gapChange(a1, b1, a1, b5)), "holds");
    assert.equal(gapTrend(verdictLower(a1, b1), verdictLower([1], b5), null), "untestable");
  });
  test("ranking: best first, missing losses left out", () => {
    assert.deepEqual(ranking({ standard: 5.1, delta: 4.9, "attnres-full": NaN }), ["delta", "standard"]);
  });
});
