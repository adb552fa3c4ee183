/** The definition of `attnres compare` (options, help); the work is in ../compare.ts, loaded on use. */
import type { Command } from "commander";
import { MODE_LIST, trainingOptions } from "../common.js";
import type { CompareFlags } from "../compare.js";
import { engineOptions } from "../engine.js";
import { listPresets } from "../preset-names.js";

export function registerCompare(program: Command): void {
  const cmd = program
    .command("compare")
    .description("train residual modes × seeds on the same budget and compare them (resumable)")
    .option("-p, --preset <name|file.json>", `preset (${listPresets().join(", ")})`, "sotu-tiny")
    .option("--modes <list>", `comma-separated modes (${MODE_LIST.join(", ")})`)
    .option("--seeds <list>", "comma-separated seeds (default 0)")
    .option("-o, --out <dir>", "output folder (default runs/compare-<preset>)");
  engineOptions(trainingOptions(cmd))
    .addHelpText(
      "after",
      `
Examples:
  attnres compare --modes standard,delta,attnres-full --seeds 0,1,2
  attnres compare --preset sotu-tiny --modes standard,delta-block --blocks 2 --steps 600
  (run the same command again after Ctrl-C: finished runs are reused, a partial one resumes)`,
    )
    .action(async (o: CompareFlags) => {
      const { compareCommand } = await import("../compare.js");
      await compareCommand(o);
    });
}
