/**
 * `attnres eval-mc`: zero-shot multiple-choice accuracy (acc, acc_norm) of a checkpoint on a JSONL
 * task file, scored by log-likelihood as lm-evaluation-harness does (src/eval/mc.ts,
 * docs/eval-mc.md). The checkpoint folder must hold its tokenizer.
 *
 *   evalMcCommand(opts)     the command as a function (tests): the result, progress on stdout
 *   formatMcResult(r)       the one-line summary the command prints
 *   registerEvalMc(program) adds the subcommand to commander
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { evaluateMc, type McResult, readMcTasks } from "../eval/mc.js";
import { writeFileAtomic } from "../io/atomic.js";
import { checkpointTokenizer, loadCheckpoint, readConfig } from "../model/checkpoint.js";
import { progress } from "./common.js";

export { registerEvalMc } from "./commands/eval-mc.js";

export interface EvalMcOptions {
  checkpoint: string;
  tasks: string;
  /** Score only the first N items. */
  limit?: number;
  /** Write the full result (with per-item details) as JSON here. */
  out?: string;
  /** No progress output. */
  quiet?: boolean;
}

export function evalMcCommand(o: EvalMcOptions): McResult {
  const dir = o.checkpoint;
  if (o.limit !== undefined && (!Number.isInteger(o.limit) || o.limit < 1))
    throw new Error(`--limit must be a positive integer, not ${o.limit}`);
  if (o.out !== undefined) checkOutFile(o.out);
  const config = readConfig(dir); // a clear error when dir is not a checkpoint
  const tok = checkpointTokenizer(dir, config);
  let items = readMcTasks(o.tasks);
  if (o.limit !== undefined) items = items.slice(0, o.limit);
  const model = loadCheckpoint(dir);
  const bar = progress("eval-mc", o.quiet ?? false);
  try {
    const r = evaluateMc(model, tok, items, (done, total, details) => {
      const acc = details.reduce((a, d) => a + d.acc, 0) / details.length;
      const accNorm = details.reduce((a, d) => a + d.accNorm, 0) / details.length;
      bar.update(done, total, { acc: acc.toFixed(3), acc_norm: accNorm.toFixed(3) });
    });
    if (o.out) {
      fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
      writeFileAtomic(o.out, JSON.stringify({ checkpoint: dir, tasks: o.tasks, ...r }, null, 2) + "\n");
    }
    return r;
  } finally {
    bar.stop();
    model.dispose();
  }
}

/** Refuses an --out that cannot be written as a file, before the evaluation rather than after it. */
function checkOutFile(out: string): void {
  if (fs.existsSync(out) && fs.statSync(out).isDirectory())
    throw new Error(`--out ${out} is a folder; give the name of a JSON file to write`);
  for (let d = path.dirname(path.resolve(out)); ; d = path.dirname(d)) {
    if (fs.existsSync(d)) {
      if (!fs.statSync(d).isDirectory())
        throw new Error(`--out ${out} cannot be written: ${d} is not a folder`);
      break;
    }
    if (path.dirname(d) === d) break;
  }
}

const pm = (x: number) => (Number.isNaN(x) ? "" : ` ± ${x.toFixed(4)}`);

export function formatMcResult(r: McResult): string {
  return (
    `acc ${r.acc.toFixed(4)}${pm(r.accStderr)}, acc_norm ${r.accNorm.toFixed(4)}${pm(r.accNormStderr)} ` +
    `(${r.items} item${r.items === 1 ? "" : "s"})`
  );
}
