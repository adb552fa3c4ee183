/**
 * Every residual mode against the PyTorch reference written from METHODS.md
 * (scripts/torch_ref/model.py; fixtures by scripts/gen_fixtures.py, float64, routing queries
 * non-zero so routing is exercised): logits, loss, every parameter gradient, the routing weights
 * α of every routed call and DDL's β. Parameters load by the authors' tensor names, so this also
 * checks the checkpoint naming of every mode.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import type { Backend, DType } from "../src/backend/backend.js";
import { nativeBackend } from "../src/backend/index.js";
import { referenceBackend } from "../src/backend/reference/index.js";
import { readSafetensors, type StTensor } from "../src/io/safetensors.js";
import { DecoderLM } from "../src/model/decoder.js";
import { loadWeights } from "../src/model/weights.js";
import { tidy } from "../src/tensor/memory.js";
import { assertClose } from "./helpers.js";

const dir = path.join(import.meta.dirname, "fixtures");
const files = fs.readdirSync(dir).filter((f) => f.startsWith("mode-"));

function scaledClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol: number,
  what: string,
): void {
  let mx = 0;
  for (let i = 0; i < expected.length; i++) mx = Math.max(mx, Math.abs(expected[i]!));
  assertClose(actual, expected, { rtol, atol: rtol * Math.max(mx, 1e-12) }, what);
}

const native = nativeBackend();
const backends: [string, Backend | null, DType, number][] = [
  ["reference float64", referenceBackend, "float64", 1e-9],
  ["native float32", native, "float32", 3e-4],
];

test("there is a fixture for every mode", () => {
  const modes = new Set(
    files.map((f) => JSON.parse(readSafetensors(path.join(dir, f)).metadata.config!).attnres_mode),
  );
  assert.deepEqual([...modes].sort(), ["block", "ddl", "ddl_expanded", "delta", "delta_block", "full"]);
});

for (const file of files)
  describe(`PyTorch fixture ${file}`, () => {
    const fx = readSafetensors(path.join(dir, file), { keepF64: true });
    const get = (k: string): StTensor => {
      const t = fx.tensors.get(k);
      assert.ok(t, `fixture lacks ${k}`);
      return t!;
    };
    const config = JSON.parse(fx.metadata.config!) as Record<string, unknown>;
    const ids = get("input_ids").data as Int32Array;
    const targets = get("targets").data as Int32Array;
    const [B, T] = get("input_ids").shape as [number, number];
    const weights = new Map(
      [...fx.tensors].filter(([k]) => k.startsWith("model.") || k.startsWith("lm_head.")),
    );

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
        const wantAlphas = [...fx.tensors.keys()].filter((k) => k.startsWith("alpha.")).sort();
        assert.deepEqual(out.alphas.map(([k]) => `alpha.${k}`).sort(), wantAlphas, "routed calls");
        for (const [k, a] of out.alphas)
          scaledClose(a, get(`alpha.${k}`).data, rtol * 10, `alpha of sublayer ${k}`);
        const wantBetas = [...fx.tensors.keys()].filter((k) => k.startsWith("beta.")).sort();
        assert.deepEqual(out.betas.map(([k]) => `beta.${k}`).sort(), wantBetas, "ddl sublayers");
        for (const [k, b] of out.betas)
          scaledClose(b, get(`beta.${k}`).data, rtol * 10, `beta of sublayer ${k}`);
        model.dispose();
      });
  });
