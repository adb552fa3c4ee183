/**
 * `npm run study` — the laptop-scale study (configs/study/*.json, one preset per part): trains
 * every planned run of the named parts (mode × seed, seed-major) into runs/study/<part>/<run>/
 * and, as each run finishes, exports its small outputs (run.json, metrics.jsonl, result.json with
 * the final validation numbers, analysis.json with the routing analysis of its checkpoint) into
 * the tracked folder study/results/<part>/<run>/, which `npm run study:report` reads
 * (scripts/study-lib.ts describes the layout). A run whose results are already in study/results is
 * never trained again (so a clone continues the study on another machine); a partial run resumes
 * from its checkpoint; Ctrl-C checkpoints and stops (exit status 130), and the next start resumes
 * that run at once. A run folder another study process is training (its <run>/study-lock.json) is
 * skipped, as is one without that lock written in the last 2 minutes (another program's).
 *
 *   npm run study                                  # every part, in the default order
 *   npm run study -- budget-4x states              # these parts, in this order
 *   npm run study -- budget-4x --modes attnres-full,delta --seeds 0
 *   npm run study -- --export                      # only export finished runs, train nothing
 *   npm run study -- --list                        # the plan: done / to do per part
 *   npm run study -- states --export --refresh     # export again runs whose checkpoints are here
 * Options: --runs <dir> (runs/study), --results <dir> (study/results), --presets <dir>
 * (configs/study), --commit (git-commit each run's results folder as it is exported), --refresh
 * (export again the committed runs whose finished training folders are here), --quiet.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { interruptSignal, progress } from "../src/cli/common.js";
import { MODE_NAMES } from "../src/model/config.js";
import { runTraining } from "../src/train/run.js";
import { TrainingDiverged } from "../src/train/trainer.js";
import { writeFileAtomic } from "../src/io/atomic.js";
import {
  availableParts,
  checkCommitted,
  DEFAULT_DIRS,
  exportRun,
  isDone,
  planOf,
  resultDir,
  reuseIdentical,
  runDir,
  specOfRun,
  type PlannedRun,
  type StudyDirs,
} from "./study-lib.js";

function fail(msg: string): never {
  process.stderr.write(`npm run study: ${msg}\n`);
  process.exit(2);
}

let args: ReturnType<typeof parse>;
function parse() {
  return parseArgs({
    allowPositionals: true,
    options: {
      modes: { type: "string" },
      seeds: { type: "string" },
      export: { type: "boolean", default: false },
      refresh: { type: "boolean", default: false },
      list: { type: "boolean", default: false },
      commit: { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      runs: { type: "string", default: DEFAULT_DIRS.runs },
      results: { type: "string", default: DEFAULT_DIRS.results },
      presets: { type: "string", default: DEFAULT_DIRS.presets },
    },
  });
}
try {
  args = parse();
} catch (e) {
  fail((e as Error).message);
}
const o = args.values;
const dirs: StudyDirs = { presets: o.presets!, runs: o.runs!, results: o.results! };
const all = availableParts(dirs);
if (all.length === 0) fail(`no study presets in ${dirs.presets}`);
const parts = args.positionals.length ? args.positionals : all;
const unknown = parts.find((p) => !all.includes(p));
if (unknown) fail(`unknown part "${unknown}" (parts: ${all.join(", ")})`);
const list = (v: string | undefined) =>
  v
    ?.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
const modes = list(o.modes);
const badMode = modes?.find((m) => !(m in MODE_NAMES));
if (badMode) fail(`unknown mode "${badMode}" in --modes (${Object.keys(MODE_NAMES).join(", ")})`);
const seeds = list(o.seeds)?.map((s) => {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) fail(`--seeds: "${s}" is not a non-negative integer`);
  return n;
});
const say = (s: string) => {
  if (!o.quiet) process.stdout.write(s + "\n");
};

function commit(r: PlannedRun): void {
  if (!o.commit) return;
  const dir = resultDir(dirs, r);
  try {
    execFileSync("git", ["add", "--", dir], { stdio: "pipe" });
    execFileSync("git", ["commit", "-q", "-m", `study results: ${r.part}/${r.run}`, "--", dir], {
      stdio: "pipe",
    });
    say(`committed ${dir}`);
  } catch (e) {
    say(`could not commit ${dir} (${(e as Error).message.split("\n")[0]}); commit it by hand`);
  }
}

/**
 * <run>/study-lock.json, {pid, state}: "training" while this study's process trains the folder,
 * "stopped" once it has stopped (finished, interrupted, failed). Not a run file, so runTraining
 * ignores it.
 */
interface StudyLock {
  pid: number;
  state: "training" | "stopped";
}
function readLock(dir: string): StudyLock | null {
  try {
    const v = JSON.parse(fs.readFileSync(path.join(dir, "study-lock.json"), "utf8")) as Partial<StudyLock>;
    return typeof v.pid === "number" && (v.state === "training" || v.state === "stopped")
      ? { pid: v.pid, state: v.state }
      : null;
  } catch {
    return null;
  }
}
function writeLock(dir: string, state: StudyLock["state"]): void {
  fs.mkdirSync(dir, { recursive: true });
  writeFileAtomic(path.join(dir, "study-lock.json"), JSON.stringify({ pid: process.pid, state }) + "\n");
}
/** Whether process pid exists (EPERM: it exists, owned by someone else). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

let plans: PlannedRun[][];
try {
  plans = parts.map((p) => planOf(dirs, p, { modes, seeds }));
} catch (e) {
  fail((e as Error).message);
}

if (o.list) {
  for (const plan of plans) {
    const done = plan.filter((r) => isDone(dirs, r));
    const todo = plan.filter((r) => !isDone(dirs, r));
    process.stdout.write(
      `${plan[0]?.part ?? "(none)"}: ${done.length} of ${plan.length} done${todo.length ? `; to do: ${todo.map((r) => r.run).join(", ")}` : ""}\n`,
    );
  }
  process.exit(0);
}

const { signal, dispose } = interruptSignal();
const t0 = Date.now();
let stopped = false;
try {
  for (const plan of plans) {
    if (stopped || plan.length === 0) continue;
    const part = plan[0]!.part;
    say(`\n=== study part ${part} (${((Date.now() - t0) / 60000).toFixed(1)} min so far) ===`);
    for (const r of plan) {
      if (signal.aborted) {
        stopped = true;
        break;
      }
      const spec = await specOfRun(dirs, r);
      checkCommitted(dirs, r, spec);
      if (isDone(dirs, r)) {
        // --refresh: a committed run whose finished training folder is here is exported again
        // (e.g. to add what a newer export records); the training itself is never redone.
        if (o.refresh && exportRun(dirs, r, spec)) {
          say(`${part}/${r.run}: exported again from ${runDir(dirs, r)}`);
          commit(r);
        } else say(`${part}/${r.run}: results committed; skipped`);
        continue;
      }
      // A run that training already finished (e.g. by `attnres compare`) only needs its export.
      if (exportRun(dirs, r, spec)) {
        say(`${part}/${r.run}: finished run exported to ${resultDir(dirs, r)}`);
        commit(r);
        continue;
      }
      const from = reuseIdentical(dirs, r, spec);
      if (from) {
        say(`${part}/${r.run}: identical to ${from}; its results copied`);
        commit(r);
        continue;
      }
      if (o.export) continue;
      const dir = runDir(dirs, r);
      const metrics = path.join(dir, "metrics.jsonl");
      const lock = readLock(dir);
      if (lock?.state === "training" && lock.pid !== process.pid && alive(lock.pid)) {
        say(`${part}/${r.run}: ${dir} is being trained by process ${lock.pid}; skipped`);
        continue;
      }
      // Without a study lock, a folder written in the last 2 minutes may be another program's
      // (`attnres train` into it); a lock this study left ("stopped", or "training" by a process
      // that is gone) means nobody else is at it, so the run resumes at once.
      if (!lock && fs.existsSync(metrics) && Date.now() - fs.statSync(metrics).mtimeMs < 120_000) {
        say(
          `${part}/${r.run}: ${dir} was written less than 2 minutes ago (training in another process?); skipped`,
        );
        continue;
      }
      say(`${part}/${r.run}: training in ${dir}`);
      writeLock(dir, "training");
      const bar = progress("step", o.quiet);
      try {
        const res = await runTraining(spec, dir, {
          resume: "auto",
          signal,
          log: (l) => bar.log(l),
          onStep: (step, total, loss, tps) =>
            bar.update(step, total, { loss: loss.toFixed(3), "tok/s": tps.toFixed(0) }),
        });
        bar.stop();
        writeLock(dir, "stopped");
        if (!res.done) {
          stopped = true;
          break;
        }
      } catch (e) {
        bar.stop();
        writeLock(dir, "stopped");
        if (!(e instanceof TrainingDiverged)) throw e;
        writeFileAtomic(
          path.join(dir, "diverged.json"),
          JSON.stringify({ step: e.step, loss: String(e.loss) }, null, 2) + "\n",
        );
        say(`${part}/${r.run} diverged at step ${e.step}; reported, not retried`);
      }
      exportRun(dirs, r, spec);
      say(`${part}/${r.run}: done; results in ${resultDir(dirs, r)}`);
      commit(r);
    }
  }
} catch (e) {
  fail((e as Error).message);
} finally {
  dispose();
}
if (stopped) {
  say("study interrupted; run the same command again to continue (finished runs are kept)");
  process.exitCode = 130;
} else if (!o.export) say(`\nstudy: every requested run is done; results in ${dirs.results}`);
