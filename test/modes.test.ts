/**
 * Every residual mode against the PyTorch reference written from docs/methods.md
 * (python/attnres_torch/model.py; fixtures by scripts/gen_fixtures.py, float64, routing queries
 * non-zero so routing is exercised): logits, loss, every parameter gradient, the routing weights
 * α of every routed call and DDL's β. Parameters load by the authors' tensor names, so this also
 * checks the checkpoint naming of every mode.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { readSafetensors } from "../src/io/safetensors.js";
import { DecoderLM } from "../src/model/decoder.js";
import { loadWeights } from "../src/model/weights.js";
import { tidy } from "../src/tensor/memory.js";
import { fixtureBackends, loadFixture, scaledClose } from "./helpers.js";

const dir = path.join(import.meta.dirname, "fixtures");
const files = fs.readdirSync(dir).filter((f) => f.startsWith("mode-"));

const backends = fixtureBackends(3e-4);

test("there is a fixture for every mode", () => {
  const modes = new Set(
    files.map((f) => JSON.parse(readSafetensors(path.join(dir, f)).metadata.config!).attnres_mode),
  );
  assert.deepEqual([...modes].sort(), ["block", "ddl", "ddl_expanded", "delta", "delta_block", "full"]);
  // Both cells over hidden states (attnres_sources: states) have their own fixture too.
  const states = files
    .map((f) => JSON.parse(readSafetensors(path.join(dir, f)).metadata.config!) as Record<string, unknown>)
    .filter((c) => c.attnres_sources === "states")
    .map((c) => c.attnres_mode);
  assert.deepEqual(states.sort(), ["delta", "full"]);
});

for (const file of files)
  describe(`PyTorch fixture ${file}`, () => {
    const fx = loadFixture(path.join(dir, file));
    const { get, config, ids, targets, B, T, weights } = fx;

    for (const [label, backend, dtype, rtol] of backends)
      test(`${label}: logits, loss, gradients, alpha, beta`, () => {
        assert.ok(backend, `${label} backend unavailable`);
        const model = new DecoderLM({ ...config, max_position_embeddings: 32 }, { backend: backend!, dtype });
        loadWeights(model, weights, { source: file });
        const out = tidy(() => {
          const { logits, trace } = model.run(ids, B, T, { trace: true });
          const l = model.loss(ids, targets, B, T);
          l.backward();
          return {
            logits: logits.toArray(),
            loss: l.item(),
            alphas: [...trace!.alphas].map(([k, a]) => [String(k), a.toArray()] as const),
            betas: [...trace!.betas].map(([k, b]) => [String(k), b.toArray()] as const),
          };
        });
        scaledClose(out.logits, get("logits").data, rtol, "logits");
        scaledClose([out.loss], get("loss").data, rtol, "loss");
        // A parameter the forward never reads (sublayer 0's query in delta without a null
        // source) gets no gradient here and an all-zero one in PyTorch.
        for (const [n, p] of model.namedParameters())
          scaledClose(
            p.grad ? p.grad.toArray() : new Array<number>(p.size).fill(0),
            get(`grad.${n}`).data,
            rtol * 10,
            `grad of ${n}`,
          );
        const wantAlphas = fx
          .names()
          .filter((k) => k.startsWith("alpha."))
          .sort();
        assert.deepEqual(out.alphas.map(([k]) => `alpha.${k}`).sort(), wantAlphas, "routed calls");
        for (const [k, a] of out.alphas)
          scaledClose(a, get(`alpha.${k}`).data, rtol * 10, `alpha of sublayer ${k}`);
        const wantBetas = fx
          .names()
          .filter((k) => k.startsWith("beta."))
          .sort();
        assert.deepEqual(out.betas.map(([k]) => `beta.${k}`).sort(), wantBetas, "ddl sublayers");
        for (const [k, b] of out.betas)
          scaledClose(b, get(`beta.${k}`).data, rtol * 10, `beta of sublayer ${k}`);
        model.dispose();
      });
  });
