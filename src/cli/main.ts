#!/usr/bin/env node
/**
 * The `attnres` command line. Each subcommand lives in its own file and registers itself here;
 * errors become one readable line and exit code 1 (ATTNRES_DEBUG=1 shows stack traces).
 */
import { Command } from "commander";
import { registerAnalyze } from "./analyze.js";
import { registerCompare } from "./compare.js";
import { registerConvert } from "./convert.js";
import { registerEval } from "./eval.js";
import { registerEvalMc } from "./eval-mc.js";
import { registerFinetune } from "./finetune.js";
import { registerGenerate } from "./generate.js";
import { registerPrepare } from "./prepare.js";
import { registerTrain } from "./train.js";
import { setVerifyChecksums } from "../io/safetensors.js";

const program = new Command()
  .name("attnres")
  .description("Train, evaluate and explain LMs with attention-routed residual streams")
  .showSuggestionAfterError(true)
  .option("--no-verify", "skip the CRC-32 check of checkpoint tensors on load (faster; any subcommand)")
  .hook("preAction", (cmd) => {
    if ((cmd.opts() as { verify?: boolean }).verify === false) setVerifyChecksums(false);
  });

registerPrepare(program);
registerTrain(program);
registerEval(program);
registerEvalMc(program);
registerAnalyze(program);
registerCompare(program);
registerConvert(program);
registerFinetune(program);
registerGenerate(program);

try {
  await program.parseAsync();
} catch (e) {
  if (process.env.ATTNRES_DEBUG) throw e;
  process.stderr.write(`attnres: ${(e as Error).message}\n`);
  process.exit(1);
}
