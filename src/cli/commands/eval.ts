/** The definition of `attnres eval` (options, help); the work is in ../eval.ts, loaded on use. */
import { type Command, Option } from "commander";
import { windowOptions } from "../common.js";

export function registerEval(program: Command): void {
  const cmd = program
    .command("eval")
    .description("loss, perplexity and bits per byte of a checkpoint on a prepared dataset")
    .requiredOption("-c, --checkpoint <dir>", "checkpoint folder (config.json + model.safetensors)")
    .requiredOption("-d, --data <dir>", "prepared dataset folder (attnres prepare)")
    .addOption(
      new Option("--split <split>", "the split to evaluate").choices(["val", "train"]).default("val"),
    )
    .option("--json", "print JSON");
  windowOptions(cmd, undefined)
    .addHelpText(
      "after",
      "\nExample:\n  attnres eval --checkpoint runs/sotu-tiny-standard-s0/checkpoint --data data/sotu-byte\n",
    )
    .action(
      async (o: {
        checkpoint: string;
        data: string;
        split: string;
        batches?: number;
        batchSize: number;
        seqLen: number;
        json?: boolean;
      }) => {
        const { evalCommand } = await import("../eval.js");
        const r = evalCommand(o);
        if (o.json) process.stdout.write(JSON.stringify(r) + "\n");
        else
          process.stdout.write(
            `${r.split}: loss ${r.loss.toFixed(4)} nats/token, perplexity ${r.perplexity.toFixed(2)}, ${r.bitsPerByte.toFixed(4)} bits/byte\n` +
              `  on ${r.batches} batch${r.batches === 1 ? "" : "es"} of ${r.batchSize}×${r.seqLen}: ${r.tokens.toLocaleString("en-US")} of the split's ${r.splitTokens.toLocaleString("en-US")} tokens` +
              `${r.wholeSplit ? " (the whole split)" : " (limited by --batches)"}\n`,
          );
      },
    );
}
