/**
 * `npm run study` — the laptop-scale study of the papers' claims (configs/study/*.json): the main
 * comparison (7 modes × 3 seeds), the depth sweep (6/12/24 layers) and the tinyshakespeare
 * robustness check, each an `attnres compare` into runs/study/<name>/. Every run is resumable and
 * a finished run is never redone, so the study can be stopped (Ctrl-C) and started again at will.
 *   npm run study                 # everything, in order
 *   npm run study -- main         # only the named parts
 */
import * as path from "node:path";
import { compareCommand } from "../src/cli/compare.js";

const PARTS = ["main", "depth-6", "depth-12", "depth-24", "shakespeare"];
const wanted = process.argv.slice(2);
for (const w of wanted)
  if (!PARTS.includes(w)) throw new Error(`unknown study part "${w}" (parts: ${PARTS.join(", ")})`);

const t0 = Date.now();
for (const part of wanted.length ? wanted : PARTS) {
  process.stdout.write(
    `\n=== study part ${part} (${((Date.now() - t0) / 60000).toFixed(1)} min so far) ===\n`,
  );
  const r = await compareCommand({ preset: `study/${part}`, out: path.join("runs", "study", part) });
  if (!r.complete) {
    process.stdout.write("study interrupted; run `npm run study` again to continue\n");
    process.exitCode = 130;
    break;
  }
}
