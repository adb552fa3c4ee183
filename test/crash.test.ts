/**
 * Crash consistency of the save protocol, proven by killing a training process (SIGKILL, injected
 * by strace from outside) at EVERY write/pwrite64/fsync/rename/unlink/rmdir/ftruncate that touches
 * the run folder, then resuming in this process:
 *   - a whole run (4 steps, saves at steps 2 and 4), killed at each such call in turn;
 *   - the first save after a recovery, from a run whose step-2 checkpoint was left as
 *     checkpoint.old by a crash, killed at each call of the resuming process (the recovery's own
 *     renames and removals included); and from checkpoint.tmp, killed at each rename and removal;
 *   - ENOSPC injected into a write, a pwrite64 and an fsync.
 * After each kill the resumed run must (1) continue from a completed checkpoint at least as new as
 * the last save the killed process finished, (2) end with metrics, weights and optimizer state
 * bit-identical to an uninterrupted run's, and (3) leave no temporary file or folder behind.
 * The child is bundled once with esbuild (tsx's own dependency) so that each launch is a plain
 * `node` start. Calls are counted per syscall in a traced run first, then each is injected.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { runTraining } from "../src/train/run.js";
import { crashSpec } from "./support/crash-spec.js";
import { readMetrics, sampleText, tempDir, writePreparedBytes } from "./helpers.js";

const SYSCALLS = ["write", "pwrite64", "fsync", "rename", "unlink", "rmdir", "ftruncate"] as const;
const root = path.resolve(import.meta.dirname, "..");
const work = tempDir("crash");
const data = path.join(work, "data");
writePreparedBytes(data, sampleText(3000));
const spec = crashSpec(data);

/** The child bundled into one ESM file inside the package (so it finds the native addon). */
let bundled: string | null = null;
async function bundleChild(): Promise<string> {
  if (bundled) return bundled;
  const out = path.join(root, "node_modules", ".cache", "attnres-test", `crash-child-${process.pid}.mjs`);
  const esbuild = await import("esbuild");
  await esbuild.build({
    entryPoints: [path.join(root, "test", "support", "crash-child.ts")],
    bundle: true,
    platform: "node",
    format: "esm",
    outfile: out,
    logLevel: "warning",
  });
  process.on("exit", () => fs.rmSync(out, { force: true }));
  bundled = out;
  return out;
}

/** strace -P arguments: every path of the run folder a save can touch. */
function pathArgs(run: string): string[] {
  const files = [
    "attnres_tokenizer.json",
    "config.json",
    "model.safetensors",
    "optimizer.safetensors",
    "trainer_state.json",
    "manifest.json",
  ];
  const ps = [run, "run.json", ".run.json.tmp", "metrics.jsonl"].map((p) => path.resolve(run, p));
  for (const d of ["checkpoint", "checkpoint.tmp", "checkpoint.old"]) {
    ps.push(path.join(run, d));
    for (const f of files) ps.push(path.join(run, d, f), path.join(run, d, `.${f}.tmp`));
  }
  return ps.flatMap((p) => ["-P", p]);
}

interface ChildRun {
  code: number | null;
  signal: string | null;
  stderr: string;
  args: string[];
}

function runChild(child: string, run: string, mode: "new" | "resume", marker: string, strace: string[]) {
  return new Promise<ChildRun>((resolve) => {
    const args = ["-f", "-qq", ...strace, ...pathArgs(run), process.execPath, child, run, data, mode, marker];
    const p = spawn("strace", args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    p.on("close", (code, signal) => resolve({ code, signal, stderr, args }));
  });
}

/** How many times the child calls each syscall on the run folder (a traced run, no injection). */
async function countCalls(child: string, run: string, mode: "new" | "resume"): Promise<Map<string, number>> {
  const trace = path.join(work, `trace-${path.basename(run)}.txt`);
  const r = await runChild(child, run, mode, path.join(work, "count-marker"), [
    "-o",
    trace,
    "-e",
    `trace=${SYSCALLS.join(",")}`,
  ]);
  assert.equal(r.code, 0, `the traced run failed: ${r.stderr}`);
  const counts = new Map<string, number>(SYSCALLS.map((s) => [s, 0]));
  for (const line of fs.readFileSync(trace, "utf8").split("\n")) {
    const m = /^\d+\s+(\w+)\(/.exec(line);
    if (m && counts.has(m[1]!)) counts.set(m[1]!, counts.get(m[1]!)! + 1);
  }
  return counts;
}

const ref = path.join(work, "reference");
const fieldsOf = (dir: string) => readMetrics(dir, ["step", "loss", "grad_norm", "lr", "val_loss"]);
const bytes = (dir: string, f: string) => fs.readFileSync(path.join(dir, "checkpoint", f));

/** Every file and folder under `dir` whose name marks it temporary. */
function leftovers(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true }))
    if (/\.tmp$|\.old$|\.tmp-/.test(e.name)) out.push(path.join(e.parentPath, e.name));
  return out;
}

/** Resumes a killed run in this process and checks the three promises. */
async function resumeAndCheck(run: string, marker: string, what: string): Promise<number> {
  const saved = fs.existsSync(marker)
    ? fs.readFileSync(marker, "utf8").trim().split("\n").filter(Boolean).map(Number)
    : [];
  const lastSaved = saved.length ? saved[saved.length - 1]! : 0;
  let from = -1;
  const started = fs.existsSync(path.join(run, "run.json"));
  const r = await runTraining(spec, run, {
    resume: started ? true : "auto",
    log: (l) => {
      const m = /resuming .* at step (\d+)\//.exec(l);
      if (m) from = Number(m[1]);
      if (/starting from step 0/.test(l)) from = 0;
    },
  });
  if (from < 0) from = r.done && !started ? 0 : 4; // a finished run returned as saved, or a new start
  assert.ok(from >= lastSaved, `${what}: resumed from step ${from}, but step ${lastSaved} had been saved`);
  assert.equal(r.done, true, what);
  assert.deepEqual(fieldsOf(run), fieldsOf(ref), `${what}: metrics`);
  assert.ok(bytes(run, "model.safetensors").equals(bytes(ref, "model.safetensors")), `${what}: weights`);
  assert.ok(
    bytes(run, "optimizer.safetensors").equals(bytes(ref, "optimizer.safetensors")),
    `${what}: moments`,
  );
  assert.deepEqual(leftovers(run), [], `${what}: leftovers`);
  return from;
}

/** Children killed at once (they mostly wait on strace and fsync, not on the CPU). */
const PARALLEL = 3;

/** Kills the child at every counted call (PARALLEL at a time), resuming and checking after each. */
async function killEverywhere(
  child: string,
  label: string,
  counts: Map<string, number>,
  prepare: (run: string) => void,
  mode: "new" | "resume",
): Promise<Map<number, number>> {
  const trials = [...counts].flatMap(([sc, n]) => Array.from({ length: n }, (_, i) => [sc, i + 1] as const));
  const resumedFrom = new Map<number, number>();
  for (let i = 0; i < trials.length; i += PARALLEL) {
    const batch = trials.slice(i, i + PARALLEL).map(([sc, n]) => {
      const run = path.join(work, `${label}-${sc}-${n}`);
      const marker = `${run}.marker`;
      prepare(run);
      return { sc, n, run, marker };
    });
    const results = await Promise.all(
      batch.map((t) =>
        runChild(child, t.run, mode, t.marker, [
          "-o",
          "/dev/null",
          "-e",
          `trace=${t.sc}`,
          "-e",
          `inject=${t.sc}:signal=SIGKILL:when=${t.n}`,
        ]),
      ),
    );
    for (const [j, t] of batch.entries()) {
      const what = `${label}: killed at ${t.sc} #${t.n}`;
      // strace ends itself with the signal that killed the child.
      const r = results[j]!;
      assert.ok(
        r.signal === "SIGKILL" || r.code === 137,
        `${what}: the child was not killed (exit ${r.code}, ${r.signal}): strace ${r.args.join(" ")}\n${r.stderr}`,
      );
      const from = await resumeAndCheck(t.run, t.marker, what);
      resumedFrom.set(from, (resumedFrom.get(from) ?? 0) + 1);
      fs.rmSync(t.run, { recursive: true, force: true });
    }
  }
  return resumedFrom;
}

const hasStrace = spawnSync("strace", ["-V"]).status === 0;

describe("crash consistency (strace fault injection)", { timeout: 30 * 60_000 }, () => {
  test("strace is installed (scripts/setup.sh installs it)", () => assert.ok(hasStrace));

  test("a full disk (ENOSPC) in the middle of a save leaves no partial checkpoint.tmp, and resume is exact", async () => {
    const child = await bundleChild();
    if (!fs.existsSync(path.join(ref, "checkpoint"))) await runTraining(spec, ref);
    for (const [sc, n] of [
      ["pwrite64", 3], // the second save's model.safetensors
      ["write", 2], // a metrics record
      ["write", 4], // config.json of the first save
      ["fsync", 9],
    ] as const) {
      const run = path.join(work, `enospc-${sc}-${n}`);
      const r = await runChild(child, run, "new", `${run}.marker`, [
        "-o",
        "/dev/null",
        "-e",
        `trace=${sc}`,
        "-e",
        `inject=${sc}:error=ENOSPC:when=${n}`,
      ]);
      assert.equal(r.code, 1, `ENOSPC at ${sc} #${n}: the run must fail (${r.stderr})`);
      assert.match(r.stderr, /ENOSPC/);
      assert.ok(
        !fs.existsSync(path.join(run, "checkpoint.tmp")),
        `ENOSPC at ${sc} #${n}: checkpoint.tmp left`,
      );
      await resumeAndCheck(run, `${run}.marker`, `ENOSPC at ${sc} #${n}`);
    }
  });

  test("a kill at every write, fsync, rename and removal of a run: resume is bit-exact", async () => {
    const child = await bundleChild();
    if (!fs.existsSync(path.join(ref, "checkpoint"))) await runTraining(spec, ref);
    const counts = await countCalls(child, path.join(work, "count-new"), "new");
    console.log(`# a run of 2 saves makes ${JSON.stringify(Object.fromEntries(counts))} calls on its folder`);
    // Two saves, each: 5 files written and fsynced, a manifest, renames, a removed checkpoint.old.
    assert.ok(
      counts.get("rename")! >= 10 && counts.get("fsync")! >= 20 && counts.get("unlink")! >= 5,
      JSON.stringify([...counts]),
    );
    const from = await killEverywhere(child, "new", counts, () => {}, "new");
    // Kills landed before, between and after the saves.
    assert.ok(from.has(0) && from.has(2) && from.has(4), JSON.stringify([...from]));

    // The first save after a recovery from checkpoint.old or checkpoint.tmp.
    for (const left of ["checkpoint.old", "checkpoint.tmp"]) {
      const base = path.join(work, `base-${left}`);
      const r = await runTraining(spec, base, { stopAfter: 2 });
      assert.equal(r.steps, 2);
      fs.renameSync(path.join(base, "checkpoint"), path.join(base, left));
      const prepare = (run: string) => fs.cpSync(base, run, { recursive: true });
      prepare(path.join(work, `count-${left}`));
      const c = await countCalls(child, path.join(work, `count-${left}`), "resume");
      // checkpoint.tmp makes the same calls as checkpoint.old but for the name its recovery renames:
      // kill it only at the renames and removals (every call of that save is covered by .old)
      if (left === "checkpoint.tmp") for (const sc of ["write", "pwrite64", "fsync"]) c.delete(sc);
      console.log(
        `# resuming from ${left} (recovery + 1 save) makes ${JSON.stringify(Object.fromEntries(c))}`,
      );
      assert.ok(c.get("rename")! >= 5, JSON.stringify([...c]));
      const f = await killEverywhere(child, left, c, prepare, "resume");
      assert.deepEqual([...f.keys()].sort(), [2, 4], `${left}: resumed from step 2 or, after the save, 4`);
    }
  });
});
