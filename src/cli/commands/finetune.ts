/** The definition of `attnres finetune` (options, help); the work is in ../finetune.ts, loaded on use. */
import { type Command, Option } from "commander";
import { aliased, nonNegative, nonNegativeInt, positive, positiveInt } from "../common.js";
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
    .option("--resume", "continue the run in --out from its checkpoint")
    .option("--overwrite", "start over in an --out that holds a run (deletes it)")
    .option("--keep-best", "keep <out>/best: the weights with the lowest validation loss so far")
    .option("--freeze-base", "train only the routing parameters; the backbone stays bit-identical")
    .option("--steps <n>", "optimizer steps (default 200)", positiveInt)
    .option("--batch-size <n>", "sequences per micro-batch (default 8)", positiveInt)
    .option("--seq-len <n>", "tokens per sequence (default min(128, max_position_embeddings))", positiveInt)
    .option("--grad-accum <n>", "micro-batches per step", positiveInt)
    .option("--lr <x>", "peak learning rate of the backbone (default 1e-4)", positive)
    .option("--routing-lr <x>", "learning rate of routing/gate parameters (default 1e-3)", positive)
    .option("--warmup <n>", "warmup steps", nonNegativeInt)
    .option("--clip <x>", "gradient-norm clipping (0 = off)", nonNegative)
    .option("--seed <n>", "seed for batches", nonNegativeInt)
    .option("--eval-every <n>", "validate every n steps", positiveInt)
    .option("--checkpoint-every <n>", "checkpoint every n steps (default: eval-every)", positiveInt);
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
