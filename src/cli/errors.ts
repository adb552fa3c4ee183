/**
 * Library errors in the CLI's words: the library's typed errors state the problem with fields
 * (src/train/run.ts runFolderError, src/train/trainer.ts TrainingDiverged, src/io/errors.ts
 * optionError); this maps them to the one-line messages that name the flags a user can pass.
 * Anything else passes through unchanged. src/cli/main.ts maps every error a command throws;
 * loaded lazily (it imports the training library), never by `--help`.
 */
import { isOptionError, type OptionNamer } from "../io/errors.js";
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

/**
 * The flag of each library option whose flag is not its name in kebab case (`vocabSize` →
 * `--vocab-size`, `to` → `--to` need no entry).
 */
const FLAG_OF: Record<string, string> = {
  storage: "--dtype", // convert's storage dtype
  dir: "--out", // the run folder of a training run
};

/** The CLI's words for a library option: its flag, with the value after a space; `false` as `--no-…`. */
export const flagName: OptionNamer = (option, value) => {
  const flag =
    FLAG_OF[option] ?? `--${option.replace(/_/g, "-").replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  if (value === undefined || value === true) return flag;
  return value === false ? flag.replace(/^--/, "--no-") : `${flag} ${value}`;
};

/** `e` with a message that names CLI flags (a new Error whose cause is `e`), or `e` itself. */
export function cliError(e: unknown): unknown {
  if (isOptionError(e)) return new Error(e.say(flagName), { cause: e });
  if (isRunFolderError(e)) return new Error(`${e.problem}; ${RUN_FOLDER_ADVICE[e.reason]}`, { cause: e });
  if (e instanceof TrainingDiverged)
    return new Error(
      `training diverged at step ${e.step}: the loss is ${e.loss}. The weights were not updated with it. ` +
        `Try a lower learning rate (--lr), a longer warmup (--warmup), or gradient clipping (--clip 1.0).`,
      { cause: e },
    );
  return e;
}
