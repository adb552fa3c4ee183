// A consumer of the installed attnres package in plain Node.js (no TypeScript, no loader): builds a
// small model, runs a training step, saves and reloads a checkpoint, analyses the routing and writes
// the report. Prints one JSON line of results for test/package.test.ts. Run from the consumer project
// made by that test (`node index.mjs <work dir>`).
import * as fs from "node:fs";
import * as path from "node:path";
import {
  AdamW,
  DecoderLM,
  defaultBackend,
  loadCheckpoint,
  paramGroups,
  Rng,
  saveCheckpoint,
  trainStep,
} from "attnres";
import { analyzeModel, writeAnalysis } from "attnres/analysis";

const work = process.argv[2];
const model = new DecoderLM(
  {
    vocab_size: 64,
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 16,
    attnres_mode: "delta",
  },
  { seed: 1 },
);
const rng = new Rng(3);
const B = 2;
const T = 8;
const ids = Int32Array.from({ length: B * T }, () => rng.int(64));
const targets = Int32Array.from({ length: B * T }, () => rng.int(64));
const batch = { ids, targets, B, T };
const opt = new AdamW(paramGroups(model, 1e-2, 0.1));
const { loss } = trainStep(model, opt, batch, 1, 1, 1.0);

const dir = path.join(work, "checkpoint");
saveCheckpoint(dir, model);
const loaded = loadCheckpoint(dir);
const same = [...model.namedParameters()].every(([name, p]) => {
  const q = loaded.namedParameters().find(([n]) => n === name)[1];
  const a = p.toArray();
  const b = q.toArray();
  return a.length === b.length && a.every((x, i) => x === b[i]);
});

const report = analyzeModel(loaded, [batch]);
const written = await writeAnalysis(report, path.join(work, "analysis"));
process.stdout.write(
  JSON.stringify({
    backend: defaultBackend().name,
    loss,
    params: model.numParameters(),
    same,
    mode: report.mode,
    routed: report.routed,
    files: written.files.map((f) => path.basename(f)).sort(),
    pngBytes: fs.statSync(written.files.find((f) => f.endsWith(".png"))).size,
  }) + "\n",
);
