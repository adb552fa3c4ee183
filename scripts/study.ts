/**
 * `npm run study` — the laptop-scale study of the papers' claims (configs/study/*.json): the main
 * comparison (7 modes × 3 seeds), the depth sweep (6/12/24 layers) and the tinyshakespeare
 * robustness check, each an `attnres compare` into runs/study/<name>/. Every run is resumable and
 * a finished run is never redone, so the study can be stopped (Ctrl-C) and started again at will.
 *   npm run study                 # everything, in order
 *   npm run study -- main         # only the named parts
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { compareCommand } from "../src/cli/compare.js";

const PARTS = ["main", "depth-6", "depth-12", "depth-24", "shakespeare"];
const wanted = process.argv.slice(2);
const unknown = wanted.filter((w) => !PARTS.includes(w));
if (unknown.length) {
  process.stderr.write(`npm run study: unknown part "${unknown[0]}" (parts: ${PARTS.join(", ")})\n`);
  process.exit(2);
}

/** A study preset without its description and mode/seed plan: what determines its runs. */
function presetCore(part: string): string {
  const j = JSON.parse(fs.readFileSync(path.join("configs", "study", `${part}.json`), "utf8")) as Record<
    string,
    unknown
  >;
  delete j.description;
  delete j.compare;
  return JSON.stringify(j);
}

function plannedRuns(part: string): string[] {
  const { compare } = JSON.parse(fs.readFileSync(path.join("configs", "study", `${part}.json`), "utf8")) as {
    compare: { modes: string[]; seeds: number[] };
  };
  return compare.modes.flatMap((m) => compare.seeds.map((s) => `${m}-s${s}`));
}

/**
 * Links the runs of `part` that a part with the same data, model and settings has already
 * finished (the 12-layer depth point equals the main study's seed-0 runs) instead of training
 * them again.
 */
function reuseIdentical(part: string): void {
  for (const other of PARTS) {
    if (other === part || presetCore(other) !== presetCore(part)) continue;
    for (const run of plannedRuns(part)) {
      const src = path.join("runs", "study", other, run);
      const dst = path.join("runs", "study", part, run);
      const state = path.join(src, "checkpoint", "trainer_state.json");
      if (fs.existsSync(dst) || !fs.existsSync(state)) continue;
      if (!(JSON.parse(fs.readFileSync(state, "utf8")) as { done: boolean }).done) continue;
      fs.mkdirSync(path.dirname(dst), { recursive: true });
      fs.symlinkSync(path.relative(path.dirname(dst), src), dst);
      process.stdout.write(`reusing ${src} for ${dst} (identical run)\n`);
    }
  }
}

const t0 = Date.now();
for (const part of wanted.length ? wanted : PARTS) {
  process.stdout.write(
    `\n=== study part ${part} (${((Date.now() - t0) / 60000).toFixed(1)} min so far) ===\n`,
  );
  reuseIdentical(part);
  const r = await compareCommand({ preset: `study/${part}`, out: path.join("runs", "study", part) });
  if (!r.complete) {
    process.stdout.write("study interrupted; run `npm run study` again to continue\n");
    process.exitCode = 130;
    break;
  }
}
