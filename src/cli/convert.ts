/**
 * `attnres convert --checkpoint DIR --out DIR --mode delta|delta-block|attnres-full|attnres-block`
 * (--from/--to: the older names, still accepted):
 * a standard Qwen3/Llama checkpoint (HF layout) → a routed one with the same backbone weights and
 * zero-initialised routing (src/workflows/convert.ts), after checking on a sample that the logits are
 * unchanged. Prints the max abs difference and what the mode guarantees; refuses to write when the
 * check fails unless --force. The output folder appears only complete (written beside, renamed).
 * --dtype auto|f32|bf16|f16 picks the dtype the weights are written in (auto: as in the source);
 * the summary line says which. The progress bar advances per tensor read and written.
 */
import { convertCheckpoint, type ConvertResult } from "../workflows/convert.js";
import type { ConvertMode, StorageDtype } from "../model/names.js";
import { checkRunFolder, progress } from "./common.js";

export { registerConvert } from "./commands/convert.js";

export interface ConvertFlags {
  from: string;
  to: string;
  mode: ConvertMode;
  blocks?: number;
  nullSource?: boolean;
  gate?: boolean;
  force?: boolean;
  quiet?: boolean;
  /** Storage dtype of the written weights (default auto). */
  dtype?: StorageDtype;
}

const e = (x: number) => x.toExponential(2);

/** "BF16 (--dtype auto: as in the source)", or "310 tensors BF16, 2 tensors F32 (…)" when mixed. */
function storageText(s: ConvertResult["storage"]): string {
  const kinds = Object.entries(s.tensors);
  const what = kinds.length === 1 ? kinds[0]![0] : kinds.map(([d, n]) => `${n} tensors ${d}`).join(", ");
  return `${what} (--dtype ${s.choice}${s.choice === "auto" ? ": as in the source" : ""})`;
}

export function convertCommand(f: ConvertFlags): ConvertResult {
  checkRunFolder(f.to);
  const bar = progress("convert", f.quiet);
  const out = (s: string) => {
    if (!f.quiet) process.stdout.write(s + "\n");
  };
  let r: ConvertResult;
  try {
    r = convertCheckpoint({
      from: f.from,
      to: f.to,
      mode: f.mode,
      blocks: f.blocks,
      nullSource: f.nullSource,
      gate: f.gate,
      force: f.force,
      storage: f.dtype,
      onPhase: (done, total, what) => bar.update(done, total, { phase: what }),
    });
  } finally {
    bar.stop();
  }
  const v = r.verification;
  out(`attnres convert: ${f.from} → ${f.mode} (${v.tokens} sample tokens)`);
  if (r.gateAdded)
    out(
      "  delta-block: a zero gate was added (attnres_gate_type learnable_alpha) — only with it is the conversion exact",
    );
  if (v.exactness === "exact")
    out(`  max |logit difference| ${e(v.maxAbsDiff)} (exact mode; rounding tolerance ${e(v.tolerance)})`);
  else {
    out(
      `  max |logit difference| ${e(v.maxAbsDiff)} at the model's rms_norm_eps (eps residue; tolerance ${e(v.tolerance)})`,
    );
    if (v.maxAbsDiffEps0 !== null)
      out(
        `  with rms_norm_eps 0: ${e(v.maxAbsDiffEps0)} (rounding tolerance ${e(v.roundingTolerance)}) — the routed model is the original up to the epsilon`,
      );
    else out("  (a zero null source needs eps > 0, so the eps-0 check is skipped)");
  }
  if (v.maxAbsDiffFromSource !== null)
    out(
      `  --dtype ${r.storage.choice} rounds ${v.roundedTensors} backbone tensors of the source: the check above compares both models with the rounded weights; ` +
        `against the unrounded original the converted model differs by ${e(v.maxAbsDiffFromSource)}`,
    );
  if (!v.ok && !r.written)
    throw new Error(
      `the converted logits differ from the original's by more than the tolerance; nothing was written (pass --force to write anyway)`,
    );
  if (!v.ok) out("  WARNING: the check failed; written anyway because of --force");
  out(
    `  wrote ${f.to}, weights ${storageText(r.storage)} (${r.addedParameters.toLocaleString()} routing parameters added, all zero-initialised` +
      `${r.tokenizerCopied.length ? `; copied ${r.tokenizerCopied.join(", ")}` : ""})`,
  );
  return r;
}
