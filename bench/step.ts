/**
 * One benchmark measurement in a fresh process (so peak RSS belongs to this configuration alone):
 * builds the decoder, then times full training steps (forward + backward + AdamW) on random
 * tokens. Prints one JSON line. Used by bench/run.ts; runnable alone:
 *   node --import tsx bench/step.ts --layers 4 --d 256 --heads 4 --seq 256 --batch 8 --vocab 256 --ff 768
 * --matmul-dtype bfloat16 times the step with bfloat16 GEMM operands (Backend.setMatmulDtype).
 */
import { parseArgs } from "node:util";
import { defaultBackend } from "../src/backend/index.js";
import { DecoderLM } from "../src/model/decoder.js";
import { poolStats } from "../src/tensor/memory.js";
import { Rng } from "../src/tensor/random.js";
import { AdamW } from "../src/train/optim.js";
import { paramGroups, trainStep } from "../src/train/trainer.js";
import { referenceStepConfig } from "./modes.js";

const { values: a } = parseArgs({
  options: {
    layers: { type: "string", default: "4" },
    d: { type: "string", default: "256" },
    heads: { type: "string", default: "4" },
    "kv-heads": { type: "string", default: "" },
    seq: { type: "string", default: "256" },
    batch: { type: "string", default: "8" },
    vocab: { type: "string", default: "256" },
    ff: { type: "string", default: "768" },
    steps: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    mode: { type: "string", default: "standard" },
    "matmul-dtype": { type: "string", default: "float32" },
  },
});
if (a["matmul-dtype"] !== "float32") {
  const be = defaultBackend();
  if (a["matmul-dtype"] !== "bfloat16" || !be.setMatmulDtype)
    throw new Error(`--matmul-dtype ${a["matmul-dtype"]}: not available on the ${be.name} backend`);
  be.setMatmulDtype(a["matmul-dtype"]);
}
const n = (k: keyof typeof a): number => Number(a[k]);
const B = n("batch");
const T = n("seq");
const model = new DecoderLM(
  {
    ...referenceStepConfig(n("layers"), a.mode),
    vocab_size: n("vocab"),
    hidden_size: n("d"),
    intermediate_size: n("ff"),
    num_attention_heads: n("heads"),
    num_key_value_heads: a["kv-heads"] ? n("kv-heads") : n("heads"),
    max_position_embeddings: T,
  },
  { seed: 0 },
);
const opt = new AdamW(paramGroups(model, 1e-3, 0.1));
const rng = new Rng(1);
const batch = () => {
  const ids = Int32Array.from({ length: B * T }, () => rng.int(n("vocab")));
  const targets = Int32Array.from({ length: B * T }, () => rng.int(n("vocab")));
  return { ids, targets, B, T };
};
const time = (step: number): number => {
  const b = batch();
  const t0 = process.hrtime.bigint();
  trainStep(model, opt, b, step, 1, 1.0);
  return Number(process.hrtime.bigint() - t0) / 1e9;
};
const cold = time(0);
for (let i = 0; i < n("warmup"); i++) time(i + 1);
const times: number[] = [];
for (let i = 0; i < n("steps"); i++) times.push(time(i + 1 + n("warmup")));
times.sort((x, y) => x - y);
const median = times[Math.floor(times.length / 2)]!;
const backend = defaultBackend();
console.log(
  JSON.stringify({
    framework: "attnres",
    backend: backend.name,
    threads: backend.threads(),
    mode: a.mode,
    matmul_dtype: a["matmul-dtype"],
    cold_step_s: cold,
    median_step_s: median,
    min_step_s: times[0],
    tokens_per_s: (B * T) / median,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    peak_tensor_mb: poolStats(backend).peakLiveBytes / 2 ** 20,
    params: model.numParameters(),
  }),
);
