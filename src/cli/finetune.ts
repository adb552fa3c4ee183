/**
 * `attnres finetune --checkpoint DIR --data PREPARED` (--from: the older name, still accepted): a
 * training run (src/train/run.ts) that starts from a checkpoint's weights — typically one written
 * by `attnres convert` — with its own learning rate for the routing parameters (--routing-lr) and
 * optionally a frozen backbone (--freeze-base: only routing queries/gains, null sources and gates
 * train). Resumable like `attnres train` (--resume, Ctrl-C saves a checkpoint).
 */
import * as path from "node:path";
import { readConfig } from "../model/checkpoint.js";
import { modeName } from "../model/residual.js";
import { type RunResult, type RunSpec } from "../train/run.js";
import { checkFinetuneCheckpoint, finetuneRunSpec } from "../workflows/finetune.js";
import { runInTerminal, type RunFlags, trainSettingsFrom } from "./common.js";

export { registerFinetune } from "./commands/finetune.js";
import { type EngineFlags, torchOptionsFrom } from "./engine.js";

export interface FinetuneFlags extends RunFlags, EngineFlags {
  from: string;
  data: string;
  freezeBase?: boolean;
}

/** The run that fine-tunes `from` on `data` (src/workflows/finetune.ts has the defaults and checks). */
export function finetuneSpec(f: FinetuneFlags): RunSpec {
  return finetuneRunSpec(f.from, f.data, {
    ...trainSettingsFrom(f),
    ...(f.freezeBase ? { freeze_base: true } : {}),
  });
}

export async function finetuneCommand(f: FinetuneFlags): Promise<RunResult> {
  checkFinetuneCheckpoint(f.from);
  const torch = torchOptionsFrom(f);
  const spec = finetuneSpec(f);
  const mode = modeName(readConfig(f.from));
  const out = f.out || path.join("runs", `finetune-${path.basename(path.resolve(f.from))}-${mode}`);
  if (!f.quiet)
    process.stdout.write(
      `attnres finetune: ${f.from} (${mode}) on ${f.data}, ${spec.train.steps} steps, lr ${spec.train.lr}` +
        `${spec.train.routing_lr !== undefined ? `, routing lr ${spec.train.routing_lr}` : ""}` +
        `${f.freezeBase ? ", backbone frozen" : ""}; run folder ${out}\n`,
    );
  const r = await runInTerminal(spec, out, { ...f, torch });
  if (!f.quiet && r.done)
    process.stdout.write(
      `done: val loss ${r.valLoss.toFixed(4)}, perplexity ${r.valPerplexity.toFixed(2)}; checkpoint in ${path.join(out, "checkpoint")}\n`,
    );
  return r;
}
