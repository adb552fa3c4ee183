/** The definition of `attnres train` (options, help); the work is in ../train.ts, loaded on use. */
import { type Command, Option } from "commander";
import { checkModeChoice, MODE_LIST, nonNegativeInt, trainingOptions } from "../common.js";
import { listPresets } from "../preset-names.js";
import { engineOptions } from "../engine.js";
import type { TrainFlags } from "../train.js";

export function registerTrain(program: Command): void {
  const cmd = program
    .command("train")
    .description("train a model from a preset (resumable; Ctrl-C saves a checkpoint)")
    .option("-p, --preset <name|file.json>", `preset (${listPresets().join(", ")})`, "sotu-tiny")
    .option("-o, --out <dir>", "run folder (default runs/<preset>-<mode>-s<seed>)")
    .addOption(new Option("--resume", "continue the run in --out from its checkpoint").conflicts("overwrite"))
    .option("--overwrite", "start over in an --out that holds a run (deletes it)")
    .option("--mode <mode>", `residual mode: ${MODE_LIST.join(", ")}`)
    .option("--seed <n>", "seed for initialisation and batches", nonNegativeInt);
  checkModeChoice(cmd, "mode", MODE_LIST);
  engineOptions(trainingOptions(cmd))
    .addHelpText(
      "after",
      `
Examples:
  attnres train                                   # the sotu-tiny preset, standard residuals
  attnres train --mode delta --steps 600          # Delta AttnRes, longer
  attnres train --mode delta-block --blocks 2 --out runs/db2
  attnres train --out runs/db2 --resume           # continue after Ctrl-C
  attnres train --mode delta --engine torch --nproc-per-node 2   # PyTorch, DDP over 2 processes`,
    )
    .action(async (o: TrainFlags) => {
      const { trainCommand } = await import("../train.js");
      await trainCommand(o);
    });
}
