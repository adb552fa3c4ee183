/**
 * The library states problems in its own terms, with fields; the CLI words them in flags.
 *   - runFolderError (src/train/run.ts): a plain Error with reason, path, problem, step — each reason maps to the
 *     one-line advice `attnres train` / `finetune` print (src/cli/errors.ts)
 *   - TrainingDiverged (src/train/trainer.ts): step and loss; its message names training settings
 *     (train.lr, …), the CLI's names the flags (--lr, …)
 *   - fine-tune defaults live in the library (src/workflows/finetune.ts FINETUNE_DEFAULTS) and the
 *     help of `attnres finetune` states the same numbers
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { test } from "node:test";
import { cliError } from "../src/cli/errors.js";
import { isRunFolderError, runFolderError } from "../src/train/run.js";
import { TrainingDiverged } from "../src/train/trainer.js";
import { checkFinetuneCheckpoint, FINETUNE_DEFAULTS } from "../src/workflows/finetune.js";

const root = path.resolve(import.meta.dirname, "..");

test("a run folder problem is a RunFolderError with its reason; the CLI adds the flags", () => {
  const dir = "/runs/a";
  const noRun = runFolderError(
    "no-run",
    dir,
    `${dir} holds no run to resume (no run.json or checkpoint)`,
    "x",
  );
  assert.equal(
    (cliError(noRun) as Error).message,
    `${dir} holds no run to resume (no run.json or checkpoint); drop --resume to start one`,
  );
  const exists = runFolderError("exists", dir, `${dir} already holds a run (step 3)`, "x", 3);
  assert.equal(
    (cliError(exists) as Error).message,
    `${dir} already holds a run (step 3); pass --resume to continue it, --overwrite to start over, or choose another --out`,
  );
  assert.equal((cliError(exists) as Error).cause, exists);
  for (const [reason, advice] of [
    ["different-settings", "choose another --out"],
    ["damaged-spec", "start over with --overwrite"],
    ["damaged-state", "resume from another copy or start over with --overwrite"],
  ] as const)
    assert.equal((cliError(runFolderError(reason, dir, "P", "x")) as Error).message, `P; ${advice}`);
  const other = new Error("something else");
  assert.equal(cliError(other), other, "other errors pass through");
});

test("the library's run-folder messages name options, the CLI's name flags", () => {
  const e = runFolderError(
    "different-settings",
    "/r",
    "/r holds a run with different settings",
    "choose another folder",
  );
  assert.equal(e.message, "/r holds a run with different settings; choose another folder");
  assert.equal(e.constructor, Error, "a plain Error, as every error attnres means to throw");
  assert.ok(isRunFolderError(e) && e.reason === "different-settings");
  assert.ok(!isRunFolderError(new Error("x")));
  assert.doesNotMatch(e.message, /--/);
});

test("TrainingDiverged carries step and loss; the CLI's message names the flags", () => {
  const e = new TrainingDiverged(7, Number.NaN);
  assert.equal(e.step, 7);
  assert.ok(Number.isNaN(e.loss));
  assert.match(e.message, /diverged at step 7: the loss is NaN/);
  assert.match(e.message, /lower learning rate \(train\.lr\)/);
  assert.doesNotMatch(e.message, /--/);
  assert.equal(
    (cliError(e) as Error).message,
    "training diverged at step 7: the loss is NaN. The weights were not updated with it. " +
      "Try a lower learning rate (--lr), a longer warmup (--warmup), or gradient clipping (--clip 1.0).",
  );
});

test("fine-tune defaults: the library holds them, the help states them", () => {
  assert.throws(
    () => checkFinetuneCheckpoint(path.join(root, "no-such-checkpoint")),
    /^Error: checkpoint folder .*no-such-checkpoint does not exist$/,
  );
  const help = spawnSync(
    process.execPath,
    ["--import", "tsx", path.join(root, "src", "cli", "main.ts"), "finetune", "--help"],
    {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, COLUMNS: "200" },
    },
  );
  assert.equal(help.status, 0, help.stderr);
  const text = help.stdout.replace(/\s+/g, " ");
  const D = FINETUNE_DEFAULTS;
  const number = (re: RegExp): number => {
    const m = re.exec(text);
    assert.ok(m, `finetune --help lacks ${String(re)}`);
    return Number(m[1]);
  };
  assert.equal(number(/optimizer steps \(default ([^)]+)\)/), D.steps);
  assert.equal(number(/sequences per micro-batch \(default ([^)]+)\)/), D.batch_size);
  assert.equal(number(/\(default min\((\d+), max_position_embeddings\)\)/), D.max_seq_len);
  assert.equal(number(/peak learning rate of the backbone \(default ([^)]+)\)/), D.lr);
  assert.equal(number(/--routing-lr <x> [^(]*\(default ([^)]+)\)/), D.routing_lr);
});
