/** The definition of `attnres plan` (options, help); the work is in ../plan.ts, loaded on use. */
import { type Command, Option } from "commander";
import { SIZE_NAMES } from "../../plan/sizes.js";
import { positiveInt } from "../common.js";
import type { PlanFlags } from "../plan.js";

export function registerPlan(program: Command): void {
  program
    .command("plan")
    .description("per-device memory and FLOPs per token of a training step, for every residual mode")
    .option("--size <name>", `a named size (${SIZE_NAMES.join(", ")})`)
    .option("--preset <name>", "a preset (configs/<name>.json) or a preset .json file")
    .option("--config <file>", "an HF config.json (e.g. a checkpoint's)")
    .option("--modes <list>", "comma-separated modes, or all", "all")
    .option("--world-size <n>", "devices (data parallel)", positiveInt, 1)
    .addOption(new Option("--dtype <t>", "float32, or bfloat16 autocast").choices(["float32", "bfloat16"]))
    .addOption(new Option("--sharding <s>", "ddp, or fsdp (full shard)").choices(["ddp", "fsdp"]))
    .addOption(new Option("--engine <e>", "torch (scale-out) or ts (this engine)").choices(["torch", "ts"]))
    .addOption(
      new Option("--attention <k>", "torch: flash (fused kernel) or math (softmax(QKᵀ)V)").choices([
        "flash",
        "math",
      ]),
    )
    .addOption(
      new Option("--routing <k>", "torch: stacked (the reference model) or fused").choices([
        "stacked",
        "fused",
      ]),
    )
    .option(
      "--batch-size <n>",
      "sequences per micro-batch per device (default: the preset's, else 8)",
      positiveInt,
    )
    .option("--seq-len <n>", "tokens per sequence (default: the preset's, else 2048)", positiveInt)
    .option("--blocks <n>", "blocks of the block modes (default 8)", positiveInt)
    .option("--vocab-size <n>", "vocabulary size, when the config leaves it to the tokenizer", positiveInt)
    .option("--json", "print JSON")
    .addHelpText(
      "after",
      "\nExamples:\n  attnres plan --size 8b --world-size 8 --sharding fsdp --dtype bfloat16\n  attnres plan --preset sotu-tiny --engine ts\n",
    )
    .action(async (o: PlanFlags & { json?: boolean }) => {
      const { planCommand, formatPlan } = await import("../plan.js");
      const r = planCommand(o);
      process.stdout.write(o.json ? JSON.stringify(r) + "\n" : formatPlan(r));
    });
}
