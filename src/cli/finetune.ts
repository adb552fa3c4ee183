/**
 * `attnres finetune --checkpoint DIR --data PREPARED` (--from: the older name, still accepted): a
 * training run (src/train/run.ts) that starts from a checkpoint's weights — typically one written
 * by `attnres convert` — with its own learning rate for the routing parameters (--routing-lr) and
 * optionally a frozen backbone (--freeze-base: only routing queries/gains, null sources and gates
 * train). Resumable like `attnres train` (--resume, Ctrl-C saves a checkpoint).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { loadPrepared } from "../data/prepared.js";
import { checkpointTokenizer, configForExport, readConfig } from "../model/checkpoint.js";
import { modeName } from "../model/residual.js";
import { type RunResult, type RunSpec } from "../train/run.js";
import { runInTerminal, type RunFlags } from "./common.js";

export { registerFinetune } from "./commands/finetune.js";
import { type EngineFlags, torchOptionsFrom } from "./engine.js";

export interface FinetuneFlags extends RunFlags, EngineFlags {
  from: string;
  data: string;
  freezeBase?: boolean;
}

/** The run that fine-tunes `from` on `data` (defaults suited to a short fine-tune). */
export function finetuneSpec(f: FinetuneFlags): RunSpec {
  const config = readConfig(f.from);
  const data = loadPrepared(f.data);
  const tok = checkpointTokenizer(f.from, config, { optional: true });
  if (tok && (tok.kind !== data.tokenizer.kind || tok.vocabSize !== data.tokenizer.vocabSize))
    throw new Error(
      `${f.data} was tokenized with a different tokenizer (${data.tokenizer.kind}, ${data.tokenizer.vocabSize} ids) than ${f.from} (${tok.kind}, ${tok.vocabSize} ids)`,
    );
  const routed = modeName(config) !== "standard";
  const steps = f.steps ?? 200;
  const train: Record<string, unknown> = {
    steps,
    batch_size: f.batchSize ?? 8,
    seq_len: f.seqLen ?? Math.min(128, config.max_position_embeddings),
    grad_accum: f.gradAccum ?? 1,
    lr: f.lr ?? 1e-4,
    warmup: f.warmup ?? Math.min(10, Math.floor(steps / 10)),
    clip: f.clip ?? 1.0,
    seed: f.seed ?? 0,
    eval_every: f.evalEvery ?? Math.max(1, Math.min(50, steps)),
  };
  if (f.routingLr !== undefined || routed) train.routing_lr = f.routingLr ?? 1e-3;
  if (f.checkpointEvery !== undefined) train.checkpoint_every = f.checkpointEvery;
  if (f.freezeBase) train.freeze_base = true;
  if (f.keepBest) train.keep_best = true;
  return {
    model: configForExport(config),
    data: f.data,
    train: train as RunSpec["train"],
    init: f.from,
  };
}

export async function finetuneCommand(f: FinetuneFlags): Promise<RunResult> {
  if (!fs.existsSync(f.from)) throw new Error(`checkpoint folder ${f.from} does not exist`);
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
