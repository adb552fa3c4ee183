/**
 * Routing-step timing: builds the reference-step model (12 layers unless --layers) once per residual
 * mode (every mode unless --modes, a comma list that should start with standard) in this one
 * process and interleaves their training steps (round r runs one step of every mode, in a rotated
 * order), so that noise from a shared machine falls on every mode alike. Prints one JSON line:
 * per mode the median step time and the median over rounds of its ratio to standard.
 *   node --import tsx bench/routing.ts --rounds 6 [--layers 24] [--modes standard,delta]
 */
import { parseArgs } from "node:util";
import { DecoderLM } from "../src/model/decoder.js";
import { Rng } from "../src/tensor/random.js";
import { AdamW } from "../src/train/optim.js";
import { paramGroups, trainStep } from "../src/train/trainer.js";
import { MODES, referenceStepConfig } from "./modes.js";

const { values: a } = parseArgs({
  options: {
    rounds: { type: "string", default: "6" },
    layers: { type: "string", default: "12" },
    modes: { type: "string", default: "" },
  },
});
const rounds = Number(a.rounds);
const B = 8;
const T = 256;
const names = a.modes ? a.modes.split(",") : Object.keys(MODES);
const runs = names.map((mode) => {
  const model = new DecoderLM(referenceStepConfig(Number(a.layers), mode), { seed: 0 });
  return { mode, model, opt: new AdamW(paramGroups(model, 1e-3, 0.1)), times: [] as number[] };
});
const rng = new Rng(1);
const batch = () => ({
  ids: Int32Array.from({ length: B * T }, () => rng.int(256)),
  targets: Int32Array.from({ length: B * T }, () => rng.int(256)),
  B,
  T,
});
for (const r of runs) trainStep(r.model, r.opt, batch(), 0, 1, 1); // cold steps, not timed
for (let round = 0; round < rounds; round++)
  for (let k = 0; k < runs.length; k++) {
    const r = runs[(k + round) % runs.length]!;
    const b = batch();
    const t0 = process.hrtime.bigint();
    trainStep(r.model, r.opt, b, round + 1, 1, 1);
    r.times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
const median = (xs: number[]) => [...xs].sort((p, q) => p - q)[Math.floor(xs.length / 2)]!;
const std = runs[0]!;
console.log(
  JSON.stringify(
    runs.map((r) => ({
      mode: r.mode,
      median_step_s: median(r.times),
      ratio_to_standard: median(r.times.map((t, i) => t / std.times[i]!)),
      params: r.model.numParameters(),
    })),
  ),
);
