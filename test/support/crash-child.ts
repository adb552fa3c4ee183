/**
 * The process the crash tests kill (test/crash.test.ts): trains the tiny run of `crashSpec` in
 * the run folder argv[2] on the prepared data argv[3], resuming when argv[4] is "resume", and
 * appends the step of every completed checkpoint save to the file argv[5] (outside the run folder,
 * so its writes are not among the traced ones). Exit 0 when the run finished.
 */
import * as fs from "node:fs";
import { runTraining } from "../../src/train/run.js";
import { crashSpec } from "./crash-spec.js";

const [runDir, data, mode, marker] = process.argv.slice(2) as [string, string, string, string];
await runTraining(crashSpec(data), runDir, {
  resume: mode === "resume",
  onSave: (step) => fs.appendFileSync(marker, `${step}\n`),
});
