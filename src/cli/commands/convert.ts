/** The definition of `attnres convert` (options, help); the work is in ../convert.ts, loaded on use. */
import { type Command, InvalidArgumentError, Option } from "commander";
import { CONVERT_MODES, STORAGE_DTYPES, type StorageDtype } from "../../model/names.js";
import { aliased, checkModeChoice, positiveInt } from "../common.js";
import type { ConvertFlags } from "../convert.js";

function storageDtypeArg(v: string): StorageDtype {
  if (!(STORAGE_DTYPES as readonly string[]).includes(v))
    throw new InvalidArgumentError(`expected one of ${STORAGE_DTYPES.join(", ")}`);
  return v as StorageDtype;
}

export function registerConvert(program: Command): void {
  const cmd = program
    .command("convert")
    .description("convert a standard Qwen3/Llama checkpoint to a routed one (same logits at start)")
    .option("-c, --checkpoint <dir>", "HF-layout checkpoint folder (config.json + safetensors); required")
    .addOption(new Option("--from <dir>", "alias of --checkpoint").hideHelp())
    .option("-o, --out <dir>", "output folder (must not exist or be empty); required")
    .addOption(new Option("--to <dir>", "alias of --out").hideHelp())
    .requiredOption("--mode <mode>", `target mode: ${CONVERT_MODES.join(", ")}`)
    .option("--blocks <n>", "blocks for attnres-block / delta-block (default 4)", positiveInt)
    .option("--null-source", "delta modes: add a zero null source")
    .option("--gate", "delta modes: gate the routed term (zero at start; always on for delta-block)")
    .option(
      "--dtype <dtype>",
      `dtype of the written weights: ${STORAGE_DTYPES.join(", ")} (default auto: each tensor as in the source, routing in the source's main dtype)`,
      storageDtypeArg,
    )
    .option("--force", "write even if the logits check fails")
    .option("-q, --quiet", "no progress bar or summary (errors still print)")
    .addHelpText(
      "after",
      `
Examples:
  attnres convert --checkpoint qwen3-0.6b --out qwen3-0.6b-delta --mode delta
  attnres convert -c ckpt -o ckpt-db --mode delta-block --blocks 4
  attnres convert -c ckpt -o ckpt-f32 --mode delta --dtype f32
(--from and --to are accepted as the older names of --checkpoint and --out.)`,
    )
    .action(
      async (
        o: Omit<ConvertFlags, "from" | "to"> & {
          checkpoint?: string;
          out?: string;
          from?: string;
          to?: string;
        },
      ) => {
        const { checkpoint, out, ...rest } = o;
        const { convertCommand } = await import("../convert.js");
        convertCommand({
          ...rest,
          from: aliased(checkpoint, o.from, "--checkpoint", "--from"),
          to: aliased(out, o.to, "--out", "--to"),
        });
      },
    );
  checkModeChoice(cmd, "mode", CONVERT_MODES, (m) => m.convert !== null);
}
