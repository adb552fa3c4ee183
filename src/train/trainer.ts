/**
 * The training step, independent of any CLI (evaluation is src/eval/loss.ts).
 *
 * One step: release grads → forward + loss → backward (all inside one tidy scope, so every activation
 * and intermediate gradient is released when it ends) → check the loss is finite → clip → AdamW.
 * A non-finite loss throws TrainingDiverged before the optimizer touches the weights, so the
 * parameters (and anything saved earlier) stay as they were.
 */
import type { Batch } from "../data/batches.js";
import type { DecoderLM } from "../model/decoder.js";
import { tidy } from "../tensor/memory.js";
import { scale } from "../tensor/ops.js";
import { zeros, type Tensor } from "../tensor/tensor.js";
import { AdamW, clipGradNorm, type ParamGroup } from "./optim.js";

export class TrainingDiverged extends Error {
  constructor(
    readonly step: number,
    readonly loss: number,
  ) {
    super(
      `training diverged at step ${step}: the loss is ${loss}. The weights were not updated with it. ` +
        `Try a lower learning rate (train.lr), a longer warmup (train.warmup), or gradient clipping (train.clip 1.0).`,
    );
  }
}

/** k micro-batches produced one at a time (only one is held in memory at once). */
export interface MicroBatches {
  count: number;
  next: () => Batch;
}

export interface StepResult {
  loss: number;
  gradNorm: number;
}

/**
 * One optimizer step over one batch, or over several micro-batches whose gradients accumulate
 * (each micro-batch's loss is scaled by 1/k, so the step equals one step on their union when the
 * micro-batches have equal sizes). `MicroBatches` streams them: each is made just before its
 * forward pass. Returns the mean loss and the pre-clip gradient norm.
 */
export function trainStep(
  model: DecoderLM,
  opt: AdamW,
  batch: Batch | readonly Batch[] | MicroBatches,
  step: number,
  lrScale: number,
  clip: number,
  /** The parameters being trained (clipping norm); default all of the model's. */
  trainable?: readonly Tensor[],
): StepResult {
  const micro: MicroBatches = Array.isArray(batch)
    ? {
        count: batch.length,
        next: (
          (i) => () =>
            (batch as readonly Batch[])[i++]!
        )(0),
      }
    : "next" in batch
      ? batch
      : { count: 1, next: () => batch as Batch };
  const k = micro.count;
  // Zeroing every gradient and adding the first contribution into it would write and read each
  // gradient once more: instead the gradients are released, the first contribution becomes the
  // gradient, and a parameter that had one but gets no contribution this step gets zeros (as
  // zeroGrad would have left it).
  const had: Tensor[] = [];
  for (const p of model.parameters())
    if (p.grad) {
      had.push(p);
      p.grad.dispose();
      p.grad = null;
    }
  let loss = 0;
  for (let i = 0; i < k; i++) {
    const b = micro.next();
    loss += tidy(() => {
      const l = model.loss(b.ids, b.targets, b.B, b.T);
      (k > 1 ? scale(l, 1 / k) : l).backward();
      return l.item();
    });
  }
  for (const p of had) if (!p.grad) p.grad = zeros(p.shape, { backend: p.backend, dtype: p.dtype }).keep();
  loss /= k;
  if (!Number.isFinite(loss)) throw new TrainingDiverged(step, loss);
  const params = trainable ?? model.parameters();
  const gradNorm = clip > 0 ? clipGradNorm(params, clip) : NaN;
  opt.step(lrScale);
  return { loss, gradNorm };
}

/**
 * The usual AdamW groups: weight decay on matrices (rank >= 2), none on gains/vectors.
 * `extra` groups (e.g. routing parameters with their own lr) are matched first by name.
 */
export function paramGroups(
  model: DecoderLM,
  lr: number,
  weightDecay: number,
  extra: { name: string; match: (paramName: string) => boolean; lr: number; weightDecay: number }[] = [],
): ParamGroup[] {
  const groups: ParamGroup[] = [
    ...extra.map((e) => ({
      name: e.name,
      params: [] as ParamGroup["params"],
      lr: e.lr,
      weightDecay: e.weightDecay,
    })),
    { name: "matrices", params: [], lr, weightDecay },
    { name: "vectors", params: [], lr, weightDecay: 0 },
  ];
  for (const [name, p] of model.namedParameters()) {
    const i = extra.findIndex((e) => e.match(name));
    if (i >= 0) groups[i]!.params.push(p);
    else groups[p.rank >= 2 ? extra.length : extra.length + 1]!.params.push(p);
  }
  return groups.filter((g) => g.params.length > 0);
}

export { AdamW };
