#!/usr/bin/env node
/**
 * The `attnres` command line. Each subcommand's definition (options, help) lives in
 * src/cli/commands/<name>.ts and registers itself here; its action imports the implementation
 * (src/cli/<name>.ts and the library) only when it runs, so `--help`, `<cmd> --help` and
 * `--version` load commander and these definitions only. Errors become one readable line and exit
 * code 1 (ATTNRES_DEBUG=1 shows stack traces); a usage error names the valid choices.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { Command, type ErrorOptions } from "commander";
import { packageRoot } from "../io/paths.js";
import { registerAnalyze } from "./commands/analyze.js";
import { registerCompare } from "./commands/compare.js";
import { registerConvert } from "./commands/convert.js";
import { registerEval } from "./commands/eval.js";
import { registerEvalMc } from "./commands/eval-mc.js";
import { registerFinetune } from "./commands/finetune.js";
import { registerGenerate } from "./commands/generate.js";
import { registerPlan } from "./commands/plan.js";
import { registerPrepare } from "./commands/prepare.js";
import { registerTrain } from "./commands/train.js";
import { registerView } from "./commands/view.js";

/** A commander Command whose usage errors are one line: what is wrong and what is allowed. */
class AttnresCommand extends Command {
  override createCommand(name?: string): Command {
    return new AttnresCommand(name);
  }

  override error(message: string, errorOptions?: ErrorOptions): never {
    let line = message
      .replace(/^error: /, "")
      .split("\n")
      .map((s) => s.trim())
      .filter(Boolean)
      .join(" ");
    const code = errorOptions?.code;
    if (code === "commander.unknownOption") {
      const flags = this.options
        .filter((o) => !o.hidden)
        .map((o) => (o.short && o.long ? `${o.short}/${o.long}` : (o.long ?? o.short)));
      line += `; options: ${[...flags, "-h/--help"].join(", ")}`;
    } else if (code === "commander.unknownCommand") {
      line += `; commands: ${this.commands.map((c) => c.name()).join(", ")}`;
    }
    const where = this.parent ? `attnres ${this.name()}` : "attnres";
    return super.error(`${where}: ${line}`, errorOptions);
  }
}

const { version } = JSON.parse(fs.readFileSync(path.join(packageRoot(), "package.json"), "utf8")) as {
  version: string;
};

const program = new AttnresCommand()
  .name("attnres")
  .description("Train, evaluate and explain LMs with attention-routed residual streams")
  .version(version, "-v, --version", "print the version")
  .showSuggestionAfterError(true)
  .option("--no-verify", "skip the CRC-32 check of checkpoint tensors on load (faster; any subcommand)")
  .hook("preAction", async (cmd) => {
    // Before any work, so a refused command leaves nothing behind (loaded here: --help needs none).
    (await import("../backend/env.js")).checkBackendEnv();
    if ((cmd.opts() as { verify?: boolean }).verify === false)
      (await import("../io/safetensors.js")).setVerifyChecksums(false);
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
registerPlan(program);
registerView(program);

// Output piped into a reader that quit (`attnres generate … | head`): stop quietly, as a command
// killed by SIGPIPE does (status 141), instead of an unhandled 'error' event's stack trace.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code !== "EPIPE") throw e;
  process.exit(141);
});

try {
  await program.parseAsync();
} catch (e) {
  if (process.env.ATTNRES_DEBUG) throw e;
  const said = await import("./errors.js").then(
    (m) => m.cliError(e),
    () => e,
  ); // the library's errors in flags
  process.stderr.write(`attnres: ${(said as Error).message}\n`);
  process.exit(1);
}
