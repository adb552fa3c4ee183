/**
 * Where a training step's time goes, per kernel: wraps every method of the default backend with a
 * timer, runs a few training steps of the reference-step model (bench/modes.ts; 12 layers unless
 * --layers) in each mode of --modes (the first is the baseline, standard by default), and prints
 * per mode its wall time, the time inside kernels, and the kernels whose time differs most from
 * the baseline's (for the baseline itself, its heaviest kernels), split by phase (F forward,
 * B backward, O optimizer and clipping) and labelled by kind (binary/unary ops by operator, GEMMs
 * by M×N×K, T for a transposed operand, b the batch).
 *   node --import tsx bench/kernel-profile.ts [--layers 12] [--modes standard,delta,ddl] [--steps 3] [--top 12]
 * With ATTNRES_THREADS=1 the kernels run on one thread, which keeps the numbers steadier on a
 * shared machine. Times are means over the steps, in milliseconds, after one untimed step.
 */
import { parseArgs } from "node:util";
import { defaultBackend } from "../src/backend/index.js";
import { DecoderLM } from "../src/model/decoder.js";
import { Rng } from "../src/tensor/random.js";
import { Tensor } from "../src/tensor/tensor.js";
import { AdamW } from "../src/train/optim.js";
import { paramGroups, trainStep } from "../src/train/trainer.js";
import { referenceStepConfig } from "./modes.js";

const { values: a } = parseArgs({
  options: {
    layers: { type: "string", default: "12" },
    modes: { type: "string", default: "standard,delta,ddl" },
    steps: { type: "string", default: "3" },
    top: { type: "string", default: "12" },
  },
});
const modes = a.modes.split(",");
const steps = Number(a.steps);
const top = Number(a.top);

type Stat = { ms: number; calls: number };
const stats = new Map<string, Stat>();
let phase = "F";
const backend = defaultBackend() as unknown as Record<string, unknown>;
const proto = Object.getPrototypeOf(backend) as object;
const names = new Set([...Object.keys(backend), ...Object.getOwnPropertyNames(proto)]);
for (const name of names) {
  const f = backend[name];
  if (typeof f !== "function" || ["constructor", "alloc", "memoryStats", "threads"].includes(name)) continue;
  backend[name] = (...args: unknown[]) => {
    let label = name;
    if (["binary", "unary", "unaryGrad", "reduce"].includes(name)) label += `:${String(args[0])}`;
    if (name === "gemm")
      label += `:${String(args[3])}×${String(args[4])}×${String(args[5])}${args[0] ? "T" : ""}${args[1] ? "T" : ""} b${String(args[2])}`;
    label = `${phase} ${label}`;
    const t0 = process.hrtime.bigint();
    const r = (f as (...xs: unknown[]) => unknown).apply(backend, args);
    const s = stats.get(label) ?? { ms: 0, calls: 0 };
    s.ms += Number(process.hrtime.bigint() - t0) / 1e6;
    s.calls++;
    stats.set(label, s);
    return r;
  };
}
const backward = Tensor.prototype.backward;
Tensor.prototype.backward = function (this: Tensor, g?: Tensor) {
  phase = "B";
  try {
    backward.call(this, g);
  } finally {
    phase = "O";
  }
};

const B = 8;
const T = 256;
const rng = new Rng(1);
const batch = () => ({
  ids: Int32Array.from({ length: B * T }, () => rng.int(256)),
  targets: Int32Array.from({ length: B * T }, () => rng.int(256)),
  B,
  T,
});
const per: { mode: string; wall: number; kernels: Map<string, Stat> }[] = [];
for (const mode of modes) {
  const model = new DecoderLM(referenceStepConfig(Number(a.layers), mode), { seed: 0 });
  const opt = new AdamW(paramGroups(model, 1e-3, 0.1));
  trainStep(model, opt, batch(), 0, 1, 1);
  stats.clear();
  let wall = 0;
  for (let s = 0; s < steps; s++) {
    phase = "F";
    const t0 = process.hrtime.bigint();
    trainStep(model, opt, batch(), s + 1, 1, 1);
    wall += Number(process.hrtime.bigint() - t0) / 1e6;
  }
  const kernels = new Map([...stats].map(([k, v]) => [k, { ms: v.ms / steps, calls: v.calls / steps }]));
  per.push({ mode, wall: wall / steps, kernels });
}
const base = per[0]!;
for (const { mode, wall, kernels } of per) {
  const inKernels = [...kernels.values()].reduce((t, v) => t + v.ms, 0);
  console.log(`${mode}: step ${wall.toFixed(1)} ms, in kernels ${inKernels.toFixed(1)} ms`);
  if (mode === base.mode) {
    // The baseline's own heaviest kernels, so a single mode shows where its step goes.
    const own = [...kernels].sort((p, q) => q[1].ms - p[1].ms).slice(0, top);
    console.log(`  kernel                                         ms   calls`);
    for (const [k, v] of own)
      console.log(`  ${k.padEnd(40)} ${v.ms.toFixed(1).padStart(8)}   ${v.calls.toFixed(0)}`);
    continue;
  }
  const rows = [...new Set([...kernels.keys(), ...base.kernels.keys()])].map((k) => {
    const mine = kernels.get(k) ?? { ms: 0, calls: 0 };
    const theirs = base.kernels.get(k) ?? { ms: 0, calls: 0 };
    return { k, diff: mine.ms - theirs.ms, ms: mine.ms, calls: mine.calls, baseCalls: theirs.calls };
  });
  rows.sort((p, q) => Math.abs(q.diff) - Math.abs(p.diff));
  console.log(
    `  kernel                                   Δ ms vs ${base.mode}      ms   calls (${base.mode})`,
  );
  for (const r of rows.slice(0, top))
    console.log(
      `  ${r.k.padEnd(40)} ${r.diff.toFixed(1).padStart(10)} ${r.ms.toFixed(1).padStart(8)}   ${r.calls.toFixed(0)} (${r.baseCalls.toFixed(0)})`,
    );
}
