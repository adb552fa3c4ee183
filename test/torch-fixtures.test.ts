/**
 * The decoder against PyTorch (llm.c's test_gpt2 pattern). Fixtures in test/fixtures were written
 * by scripts/gen_fixtures.py with Debian's python3-torch in float64: weights, tokens, logits,
 * loss, every parameter gradient, and the losses and final weights of 3 clipped AdamW steps with
 * two parameter groups. CI reads the committed files; it never needs torch.
 *
 * Tolerances: the reference backend in float64 must agree to ~1e-9 relative (the only
 * differences are summation order). The native backend computes in float32: ~1e-4 relative to
 * the largest magnitude of each tensor, the accumulated rounding of a few layers of float32.
 */
import assert from "node:assert/strict";
import * as path from "node:path";
import { describe, test } from "node:test";
import { DecoderLM } from "../src/model/decoder.js";
import { loadWeights } from "../src/model/weights.js";
import { tidy } from "../src/tensor/memory.js";
import { fixtureBackends, loadFixture, scaledClose } from "./helpers.js";
import { AdamW, clipGradNorm } from "../src/train/optim.js";

const dir = path.join(import.meta.dirname, "fixtures");

const backends = fixtureBackends(2e-4);

for (const name of ["qwen3-tiny", "llama-tiny"])
  describe(`PyTorch fixture ${name}`, () => {
    const { get, config, ids, targets, B, T, weights } = loadFixture(path.join(dir, `${name}.safetensors`));

    for (const [label, backend, dtype, rtol] of backends)
      test(`${label}: logits, loss, every gradient, 3 AdamW steps`, (t) => {
        assert.ok(backend, `${label} backend unavailable`);
        const model = new DecoderLM({ ...config, max_position_embeddings: 64 }, { backend: backend!, dtype });
        loadWeights(model, weights, { source: name });
        const { logits, loss } = tidy(() => {
          const lg = model.forward(ids, B, T);
          const l = model.loss(ids, targets, B, T);
          l.backward();
          return { logits: lg.toArray(), loss: l.item() };
        });
        scaledClose(logits, get("logits").data, rtol, "logits");
        scaledClose([loss], get("loss").data, rtol, "loss");
        const names = model.namedParameters();
        assert.equal(names.length, weights.size, "the model has exactly the fixture's parameters");
        for (const [n, p] of names)
          scaledClose(p.grad!.toArray(), get(`grad.${n}`).data, rtol * 5, `grad of ${n}`);
        t.diagnostic(`${names.length} parameter gradients match`);

        // Three steps of clipped AdamW with two groups (matrices vs vectors), as the generator did.
        const params = model.parameters();
        const opt = new AdamW(
          [
            { params: params.filter((p) => p.rank >= 2), lr: 1e-2, weightDecay: 0.1 },
            { params: params.filter((p) => p.rank < 2), lr: 2e-2, weightDecay: 0 },
          ],
          { beta1: 0.9, beta2: 0.95, eps: 1e-8 },
        );
        const losses: number[] = [];
        const norms: number[] = [];
        for (let s = 0; s < 3; s++) {
          model.zeroGrad();
          losses.push(
            tidy(() => {
              const l = model.loss(ids, targets, B, T);
              l.backward();
              return l.item();
            }),
          );
          norms.push(clipGradNorm(params, 1.0));
          opt.step();
        }
        losses.push(tidy(() => model.loss(ids, targets, B, T).item()));
        scaledClose(losses, get("adamw.losses").data, rtol * 5, "losses over 3 AdamW steps");
        scaledClose(norms, get("adamw.grad_norms").data, rtol * 5, "pre-clip gradient norms");
        for (const [n, p] of names)
          scaledClose(p.toArray(), get(`step3.${n}`).data, rtol * 20, `weights after 3 steps: ${n}`);
        model.dispose();
        opt.dispose();
      });
  });
