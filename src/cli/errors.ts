/**
 * Library errors in the CLI's words: the library's typed errors state the problem with fields
 * (src/train/run.ts runFolderError, src/train/trainer.ts TrainingDiverged); this maps them to the
 * one-line messages that name the flags a user can pass. Anything else passes through unchanged.
 * Loaded lazily (it imports the training library), never by `--help`.
 */
import { isRunFolderError, type RunFolderError } from "../train/run.js";
import { TrainingDiverged } from "../train/trainer.js";

/** What to do about each run-folder problem, in flags. */
const RUN_FOLDER_ADVICE: Record<RunFolderError["reason"], string> = {
  "no-run": "drop --resume to start one",
  exists: "pass --resume to continue it, --overwrite to start over, or choose another --out",
  "different-settings": "choose another --out",
  "damaged-spec": "start over with --overwrite",
  "damaged-state": "resume from another copy or start over with --overwrite",
};

/** `e` with a message that names CLI flags (a new Error whose cause is `e`), or `e` itself. */
export function cliError(e: unknown): unknown {
  if (isRunFolderError(e)) return new Error(`${e.problem}; ${RUN_FOLDER_ADVICE[e.reason]}`, { cause: e });
  if (e instanceof TrainingDiverged)
    return new Error(
      `training diverged at step ${e.step}: the loss is ${e.loss}. The weights were not updated with it. ` +
        `Try a lower learning rate (--lr), a longer warmup (--warmup), or gradient clipping (--clip 1.0).`,
      { cause: e },
    );
  return e;
}
