/**
 * How far one training step's gradients move between matmul precisions and bfloat16 kernels:
 * loads a checkpoint, takes one batch of the prepared data, and computes loss and gradients with
 * float32 matmuls, with bfloat16 operands on the AVX-512 BF16 dot product and, where the CPU has
 * AMX tiles, on AMX; prints each one's relative L2 distance (all parameters' gradients as one
 * vector) to float32 and to each other. Needs the native backend on a CPU with AVX-512 BF16.
 *   node --import tsx bench/bf16-grads.ts --checkpoint runs/bf16-f32-s0/checkpoint --data data/sotu-bpe-4096
 */
import { parseArgs } from "node:util";
import { defaultBackend } from "../src/backend/index.js";
import { nativeInfo, setNativeAmx } from "../src/backend/native/index.js";
import { BatchSampler } from "../src/data/batches.js";
import { loadPrepared } from "../src/data/prepared.js";
import { loadCheckpoint } from "../src/model/checkpoint.js";
import { tidy } from "../src/tensor/memory.js";

const { values: a } = parseArgs({
  options: {
    checkpoint: { type: "string" },
    data: { type: "string" },
    "batch-size": { type: "string", default: "16" },
    "seq-len": { type: "string", default: "128" },
  },
});
if (!a.checkpoint || !a.data) {
  console.error("usage: node --import tsx bench/bf16-grads.ts --checkpoint <dir> --data <prepared dir>");
  process.exit(2);
}
const be = defaultBackend();
if (be.name !== "native" || !nativeInfo().bf16) {
  console.error("bf16-grads: needs the native backend on a CPU with AVX-512 BF16");
  process.exit(1);
}
const amx = nativeInfo().amx;
const model = loadCheckpoint(a.checkpoint);
const batch = new BatchSampler(
  loadPrepared(a.data).train,
  Number(a["batch-size"]),
  Number(a["seq-len"]),
  7,
).next();

/** Loss and every gradient, concatenated, with the given matmul setting. */
function gradients(kind: "float32" | "avx512-bf16" | "amx"): { loss: number; g: Float64Array } {
  if (kind !== "float32") {
    if (amx) setNativeAmx(kind === "amx");
    be.setMatmulDtype!("bfloat16");
  }
  try {
    for (const p of model.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
    const loss = tidy(() => {
      const l = model.loss(batch.ids, batch.targets, batch.B, batch.T);
      l.backward();
      return l.item();
    });
    const g = new Float64Array(model.parameters().reduce((n, p) => n + p.size, 0));
    let off = 0;
    for (const p of model.parameters()) {
      g.set(p.grad!.toArray() as ArrayLike<number>, off);
      off += p.size;
    }
    return { loss, g };
  } finally {
    be.setMatmulDtype!("float32");
    if (amx) setNativeAmx(true);
  }
}

const rel = (x: Float64Array, y: Float64Array): number => {
  let d = 0;
  let n = 0;
  for (let i = 0; i < x.length; i++) {
    d += (x[i]! - y[i]!) ** 2;
    n += y[i]! ** 2;
  }
  return Math.sqrt(d / n);
};
const kinds = amx ? (["float32", "avx512-bf16", "amx"] as const) : (["float32", "avx512-bf16"] as const);
const r = new Map(kinds.map((k) => [k, gradients(k)] as const));
console.log(`bf16-grads: ${a.checkpoint}, one batch of ${batch.B}×${batch.T} tokens`);
for (const k of kinds) console.log(`  ${k.padEnd(12)} loss ${r.get(k)!.loss.toFixed(6)}`);
for (let i = 0; i < kinds.length; i++)
  for (let j = i + 1; j < kinds.length; j++)
    console.log(
      `  gradients ${kinds[j]} vs ${kinds[i]}: ${(100 * rel(r.get(kinds[j])!.g, r.get(kinds[i])!.g)).toFixed(3)} % (relative L2)`,
    );
