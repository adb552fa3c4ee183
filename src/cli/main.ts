#!/usr/bin/env node
/**
 * The `attnres` command line. Each subcommand lives in its own file; this one wires them to
 * commander and turns errors into one readable line (set ATTNRES_DEBUG=1 for stack traces).
 */
import { Command, InvalidArgumentError } from "commander";
import * as path from "node:path";
import { listPresets, loadPreset } from "./preset.js";
import { runTraining } from "./train.js";

function int(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError("expected a positive integer");
  return n;
}
function num(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a non-negative number");
  return n;
}

const program = new Command()
  .name("attnres")
  .description("Train, evaluate and explain LMs with attention-routed residual streams")
  .showHelpAfterError("(run with --help for usage)");

program
  .command("train")
  .description("train a model from a preset on a built-in corpus")
  .option("-p, --preset <name|file.json>", `preset (${listPresets().join(", ")})`, "sotu-tiny")
  .option("--steps <n>", "training steps", int)
  .option("--batch-size <n>", "sequences per step", int)
  .option("--seq-len <n>", "tokens per sequence", int)
  .option("--lr <x>", "peak learning rate", num)
  .option("--warmup <n>", "warmup steps", (v) => Number(v))
  .option("--clip <x>", "gradient-norm clipping (0 = off)", num)
  .option("--seed <n>", "seed for initialisation and batches", (v) => Number(v))
  .option("-o, --out <dir>", "run folder", "")
  .addHelpText(
    "after",
    "\nExamples:\n  attnres train                         # the sotu-tiny preset\n  attnres train --steps 50 --lr 1e-3   # override preset fields\n",
  )
  .action((o: Record<string, unknown>) => {
    const preset = loadPreset(String(o.preset));
    const overrides = Object.fromEntries(
      (
        [
          ["steps", "steps"],
          ["batchSize", "batch_size"],
          ["seqLen", "seq_len"],
          ["lr", "lr"],
          ["warmup", "warmup"],
          ["clip", "clip"],
          ["seed", "seed"],
        ] as const
      )
        .filter(([k]) => o[k] !== undefined)
        .map(([k, f]) => [f, o[k]]),
    );
    const name = path.basename(String(o.preset)).replace(/\.json$/, "");
    runTraining({ preset, overrides, out: String(o.out || path.join("runs", name)) });
  });

try {
  program.parse();
} catch (e) {
  if (process.env.ATTNRES_DEBUG) throw e;
  process.stderr.write(`attnres: ${(e as Error).message}\n`);
  process.exit(1);
}
