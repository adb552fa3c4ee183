/**
 * `attnres compare`: train several residual modes × seeds on the same data and token budget, then
 * write the results table (mean ± std, Welch t-tests against standard), the loss curves and the
 * max-routing-weight-by-depth plot. Resumable: re-running continues; finished runs are reused.
 */
import * as path from "node:path";
import type { ModeName } from "../model/config.js";
import { modeByName, modes as registeredModes } from "../model/residual.js";
import { runCompare, type CompareResult } from "../workflows/compare.js";
import { checkModeFlags, checkRunFolder, interruptSignal, modeKeys, progress } from "./common.js";
import { cliError } from "./errors.js";
import { loadPreset } from "./preset.js";
import { specFrom, type TrainFlags } from "./train.js";
import { writeCompareFigures } from "../workflows/compare-figures.js";
import { torchOptionsFrom } from "./engine.js";
import { runTorchTraining } from "../train/torch-engine.js";
import { runTraining } from "../train/run.js";

export { registerCompare } from "./commands/compare.js";

export interface CompareFlags extends TrainFlags {
  modes?: string;
  seeds?: string;
}

function parseList<T>(v: string, what: string, parse: (s: string) => T): T[] {
  const items = v
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (items.length === 0) throw new Error(`--${what} needs at least one value`);
  return items.map(parse);
}

export async function compareCommand(f: CompareFlags): Promise<CompareResult> {
  const torch = torchOptionsFrom(f);
  const preset = loadPreset(f.preset);
  const modes =
    f.modes !== undefined
      ? parseList(f.modes, "modes", (m) => {
          if (!modeByName(m))
            throw new Error(
              `unknown mode "${m}" in --modes (expected ${registeredModes()
                .map((d) => d.name)
                .join(", ")})`,
            );
          return m as ModeName;
        })
      : ((preset.compare?.modes ?? ["standard", "delta"]) as ModeName[]);
  const seeds =
    f.seeds !== undefined
      ? parseList(f.seeds, "seeds", (s) => {
          const n = Number(s);
          if (!Number.isSafeInteger(n) || n < 0)
            throw new Error(`--seeds: "${s}" is not an integer from 0 to ${Number.MAX_SAFE_INTEGER}`);
          return n;
        })
      : (preset.compare?.seeds ?? [0]);
  if (new Set(modes).size !== modes.length) throw new Error("--modes lists a mode twice");
  const twice = seeds.find((s, i) => seeds.indexOf(s) !== i);
  if (twice !== undefined) throw new Error(`--seeds lists seed ${twice} twice`);
  checkModeFlags(
    modes.map((m) => modeByName(m) ?? m),
    f,
  );
  const base = await specFrom(preset, { ...f, mode: undefined });
  const out = f.out || path.join("runs", `compare-${path.basename(f.preset).replace(/\.json$/, "")}`);
  checkRunFolder(out);
  const specFor = (mode: ModeName, seed: number) => ({
    ...base,
    model: { ...base.model, ...(mode === "standard" ? {} : modeKeys(modeByName(mode) ?? mode, f)) },
    train: { ...base.train, seed },
  });
  const bar = progress("step", f.quiet);
  const say = (s: string) => {
    if (!f.quiet) process.stdout.write(s + "\n");
  };
  say(
    `attnres compare: ${modes.join(", ")} × seeds ${seeds.join(", ")}, ${base.train.steps} steps each, data ${base.data}; results in ${out}`,
  );
  const { signal, dispose } = interruptSignal();
  try {
    const r = await runCompare(specFor, modes, seeds, out, {
      signal,
      log: (l) => bar.log(l),
      onStep: (step, total, loss, tps) =>
        bar.update(step, total, { loss: loss.toFixed(3), "tok/s": tps.toFixed(0) }),
      onRun: (run, i, n) => bar.log(`run ${i + 1}/${n}: ${run.mode}, seed ${run.seed} (${run.dir})`),
      train: torch ? (s, d, o) => runTorchTraining(s, d, { ...o, torch }) : runTraining,
    });
    bar.stop();
    const figures = r.complete ? await writeCompareFigures(r) : [];
    if (!r.complete) {
      process.exitCode = 130;
      say(`interrupted: finished runs are kept; run the same command again to continue`);
    }
    if (r.complete) {
      say("");
      if (r.summary.length > 0) say(resultsTable(r));
      for (const d of r.diverged ?? [])
        say(`diverged: ${d.mode}, seed ${d.seed} (loss ${d.loss} at step ${d.step}; left out of the means)`);
      say(`\ntables: ${path.join(out, "results.md")}, ${path.join(out, "results.json")}`);
      for (const fig of figures) say(`figure: ${fig}`);
    }
    return r;
  } catch (e) {
    throw cliError(e);
  } finally {
    bar.stop();
    dispose();
  }
}

/** The results as an aligned plain-text table for the terminal. */
export function resultsTable(r: CompareResult): string {
  const rows = [["mode", "runs", "val loss", "perplexity", "bits/byte", "params", "tok/s", "Δ vs std", "p"]];
  const base = r.summary.find((s) => s.mode === "standard");
  for (const s of r.summary) {
    const f = ([m, sd]: [number, number], d: number) =>
      Number.isNaN(sd) ? m.toFixed(d) : `${m.toFixed(d)} ± ${sd.toFixed(d)}`;
    rows.push([
      s.mode,
      String(s.runs),
      f(s.valLoss, 4),
      f(s.perplexity, 2),
      f(s.bpb, 4),
      s.params.toLocaleString("en-US"),
      s.tokensPerSecond.toFixed(0),
      base && s !== base ? (s.valLoss[0] - base.valLoss[0]).toFixed(4) : "",
      s.vsStandard ? s.vsStandard.p.toPrecision(3) : "",
    ]);
  }
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(w[i]!)).join("  ")).join("\n");
}
