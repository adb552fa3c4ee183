/**
 * The command line on edge cases a user hits by mistake: a refused run that must not leave a run
 * behind, an output path that is a file (or a folder where a file is wanted), conflicting flags,
 * empty or repeated list values, out-of-range numbers, a reader that closes the pipe. Each is one
 * clear line on stderr and a non-zero exit (subprocesses of scripts/attnres-dev.mjs).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { sampleText, tempDir, writePreparedBytes, writeTinyPreset } from "./helpers.js";

const root = path.dirname(import.meta.dirname);
const bin = path.join(root, "scripts", "attnres-dev.mjs");
const work = tempDir("cli-edges");
const data = path.join(work, "data");
writePreparedBytes(data, sampleText(20000));
const presetFile = writeTinyPreset(path.join(work, "p.json"), data, {
  train: { steps: 2, batch_size: 2, seq_len: 16, eval_batches: 1 },
});

function run(
  args: string[],
  env: Record<string, string> = {},
): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], {
    cwd: work,
    encoding: "utf8",
    env: { ...process.env, ATTNRES_THREADS: "1", ...env },
    timeout: 120_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: { code: number; stderr: string }): void {
  assert.equal(r.code, 0, r.stderr);
}

/** Exit code 1 and exactly one line on stderr matching `re`. */
function userError(r: { code: number; stderr: string }, re: RegExp): void {
  assert.equal(r.code, 1, `exit code (stderr: ${r.stderr})`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0]!, re);
}

const train = (...a: string[]) => run(["train", "--preset", presetFile, ...a]);
const base = path.join(work, "base");
ok(train("--out", base));
const ckpt = path.join(base, "checkpoint");

describe("attnres CLI edge cases", () => {
  test("a run refused before its first step leaves no run behind: the corrected command works", () => {
    // The validation split (2000 tokens) is shorter than one batch of 200×16.
    userError(train("--out", "big", "--batch-size", "200"), /fewer than one batch of 200×16/);
    assert.ok(!fs.existsSync(path.join(work, "big")), "no run folder for a refused run");
    ok(train("--out", "big"));

    userError(
      run(["finetune", "-c", ckpt, "-d", data, "--steps", "1", "--freeze-base", "--out", "ft"]),
      /freeze_base needs a routed model/,
    );
    assert.ok(!fs.existsSync(path.join(work, "ft")));

    const cmp = ["compare", "--preset", presetFile, "--modes", "standard", "--out", "cmp"];
    userError(run([...cmp, "--batch-size", "200"]), /fewer than one batch/);
    assert.deepEqual(fs.readdirSync(path.join(work, "cmp")), []);
    ok(run(cmp));
  });

  test("a misspelt ATTNRES_* setting is one line before any work, not silently the default", () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ ATTNRES_GEMM: "builtn" }, /^attnres: ATTNRES_GEMM must be "blas" or "builtin", not "builtn"$/],
      [{ ATTNRES_THREADS: "two" }, /^attnres: ATTNRES_THREADS must be a positive integer, not "two"$/],
      [{ ATTNRES_AMX: "off" }, /^attnres: ATTNRES_AMX must be "0" or "1", not "off"$/],
      [{ ATTNRES_DTYPE: "fp64" }, /^attnres: ATTNRES_DTYPE must be "float32" or "float64", not "fp64"$/],
      [{ ATTNRES_BACKEND: "cuda" }, /^attnres: ATTNRES_BACKEND must be "native" or "reference", not "cuda"$/],
    ];
    for (const [env, re] of cases) {
      userError(run(["train", "--preset", presetFile, "--out", "env"], env), re);
      assert.ok(!fs.existsSync(path.join(work, "env")), `no run folder (${Object.keys(env)[0]})`);
    }
    // The same settings spelt right (and empty, meaning the default) run.
    const right = {
      ATTNRES_GEMM: "builtin",
      ATTNRES_AMX: "0",
      ATTNRES_DTYPE: "float32",
      ATTNRES_BACKEND: "",
    };
    ok(run(["train", "--preset", presetFile, "--out", "env", "--steps", "1"], right));
    // --help needs no backend: it works whatever the settings say.
    ok(run(["train", "--help"], { ATTNRES_GEMM: "builtn" }));
  });

  test("--out that is a file, or a folder where a file is wanted: refused before any work", () => {
    const file = path.join(base, "run.json");
    const notFolder = /^attnres: --out .*run\.json exists and is not a folder$/;
    userError(train("--out", file), notFolder);
    userError(run(["finetune", "-c", ckpt, "-d", data, "--out", file]), notFolder);
    userError(run(["compare", "--preset", presetFile, "--modes", "standard", "--out", file]), notFolder);
    userError(run(["convert", "-c", ckpt, "-o", file, "--mode", "delta"]), notFolder);
    userError(run(["analyze", "-c", ckpt, "-d", data, "--out", file]), notFolder);
    const tasks = path.join(work, "tasks.jsonl");
    fs.writeFileSync(tasks, JSON.stringify({ context: "a b", choices: [" c", " d"], gold: 0 }) + "\n");
    userError(run(["eval-mc", "-c", ckpt, "--tasks", tasks, "--out", base]), /--out .*base is a folder/);
    userError(
      run(["eval-mc", "-c", ckpt, "--tasks", tasks, "--out", path.join(file, "r.json")]),
      /run\.json is not a folder/,
    );
    userError(run(["view", file]), /run\.json is not a folder/);
  });

  test("--resume with --overwrite is refused and the run is kept", () => {
    const before = fs.readFileSync(path.join(ckpt, "model.safetensors"));
    userError(
      train("--out", base, "--resume", "--overwrite"),
      /option '--resume' cannot be used with option '--overwrite'/,
    );
    userError(
      run(["finetune", "-c", ckpt, "-d", data, "--out", base, "--resume", "--overwrite"]),
      /cannot be used with option '--overwrite'/,
    );
    assert.ok(fs.readFileSync(path.join(ckpt, "model.safetensors")).equals(before));
  });

  test("compare: an empty --modes or --seeds, or a seed given twice", () => {
    const cmp = (...a: string[]) => run(["compare", "--preset", presetFile, "--out", "cmp-lists", ...a]);
    userError(cmp("--modes", "standard", "--seeds", "0,1,0"), /--seeds lists seed 0 twice/);
    userError(cmp("--modes", "standard", "--seeds", ""), /--seeds needs at least one value/);
    userError(cmp("--modes", ""), /--modes needs at least one value/);
    userError(cmp("--modes", "standard", "--seeds", "1e20"), /--seeds: "1e20" is not an integer/);
    assert.ok(!fs.existsSync(path.join(work, "cmp-lists")));
  });

  test("an invalid preset is one line; generate's numbers are bounded", () => {
    const bad = path.join(work, "bad.json");
    fs.writeFileSync(bad, JSON.stringify({ data, model: {}, train: { steps: 0, lr: "x" } }));
    userError(train("--preset", bad), /^attnres: invalid preset .*train\.steps: .*; train\./);
    for (const [flag, v] of [
      ["-n", "1e20"],
      ["--seed", "1e20"],
    ]) {
      const r = run(["generate", "-c", ckpt, "--prompt", "ab", flag!, v!]);
      userError(r, /expected an integer ≥ 0 and ≤/);
      assert.equal(r.stdout, "", "nothing printed before the error");
    }
  });

  test("generate into a pipe that closes: exit 141, no stack trace", async () => {
    const child = spawn(process.execPath, [bin, "generate", "-c", ckpt, "--prompt", "ab", "-n", "1000"], {
      cwd: work,
      env: { ...process.env, ATTNRES_THREADS: "1" },
    });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += String(d)));
    child.stdout.once("data", () => child.stdout.destroy());
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    assert.equal(stderr, "");
    assert.equal(code, 141);
  });
});
