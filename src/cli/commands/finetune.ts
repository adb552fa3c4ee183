/** The definition of `attnres finetune` (options, help); the work is in ../finetune.ts, loaded on use. */
import { type Command, Option } from "commander";
import { aliased, nonNegativeInt, positiveInt, runFlagOptions } from "../common.js";
import { engineOptions } from "../engine.js";
import type { FinetuneFlags } from "../finetune.js";

export function registerFinetune(program: Command): void {
  const cmd = program
    .command("finetune")
    .description("fine-tune a checkpoint (e.g. from attnres convert) on a prepared dataset")
    .option("-c, --checkpoint <dir>", "checkpoint folder whose weights start the run; required")
    .addOption(new Option("--from <dir>", "alias of --checkpoint").hideHelp())
    .requiredOption("-d, --data <dir>", "a prepared dataset folder (same tokenizer as the checkpoint)")
    .option("-o, --out <dir>", "run folder (default runs/finetune-<checkpoint>-<mode>)")
    .addOption(new Option("--resume", "continue the run in --out from its checkpoint").conflicts("overwrite"))
    .option("--overwrite", "start over in an --out that holds a run (deletes it)")
    .option("--freeze-base", "train only the routing parameters; the backbone stays bit-identical")
    .option("--seed <n>", "seed for batches", nonNegativeInt)
    .option("--steps <n>", "optimizer steps (default 200)", positiveInt);
  // The shared run flags; the defaults named here are src/workflows/finetune.ts FINETUNE_DEFAULTS.
  runFlagOptions(cmd, {
    "--batch-size": " (default 8)",
    "--seq-len": " (default min(128, max_position_embeddings))",
    "--lr": " of the backbone (default 1e-4)",
    "--routing-lr": " (default 1e-3)",
  });
  engineOptions(cmd)
    .addHelpText(
      "after",
      `
Examples:
  attnres convert --checkpoint qwen3-0.6b --out q-delta --mode delta
  attnres finetune --checkpoint q-delta --data data/mytext-qwen3 --freeze-base --steps 300
(--from is accepted as the older name of --checkpoint.)`,
    )
    .action(async (o: Omit<FinetuneFlags, "from"> & { checkpoint?: string; from?: string }) => {
      const { checkpoint, ...rest } = o;
      const { finetuneCommand } = await import("../finetune.js");
      await finetuneCommand({ ...rest, from: aliased(checkpoint, o.from, "--checkpoint", "--from") });
    });
}
