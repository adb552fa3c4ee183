/**
 * Measured peak memory of one training step on the TypeScript engine, to hold `plan`'s estimate
 * to: a model of config `c` (float32, the default backend) with AdamW takes two steps on
 * synthetic tokens [B, T]; the peak is the buffer pool's highest live bytes during the second step
 * (parameters, persistent gradients, AdamW moments, every activation and gradient temporary —
 * everything a step allocates goes through the pool; src/tensor/memory.ts).
 */
import { defaultBackend } from "../backend/index.js";
import type { ModelConfig } from "../model/config.js";
import { DecoderLM } from "../model/decoder.js";
import { poolStats, resetPeak } from "../tensor/memory.js";
import { AdamW } from "../train/optim.js";
import { paramGroups, trainStep } from "../train/trainer.js";

export interface MeasuredPeak {
  /** Highest live pool bytes during the second step. */
  peakBytes: number;
  /** Live bytes between steps: parameters, gradients, moments (and the RoPE tables). */
  persistentBytes: number;
}

export function measureTsPeak(c: ModelConfig, B: number, T: number, seed = 0): MeasuredPeak {
  const backend = defaultBackend();
  const before = poolStats(backend).liveBytes;
  const model = new DecoderLM({ ...c, max_position_embeddings: T }, { backend, seed });
  const opt = new AdamW(paramGroups(model, 1e-3, 0.1));
  try {
    const V = c.vocab_size;
    const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + (i >> 2)) % V);
    const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 5 + 3) % V);
    const batch = { ids, targets, B, T };
    trainStep(model, opt, batch, 1, 1, 1);
    const persistentBytes = poolStats(backend).liveBytes - before;
    resetPeak(backend);
    const base = poolStats(backend).liveBytes;
    trainStep(model, opt, batch, 2, 1, 1);
    return { peakBytes: poolStats(backend).peakLiveBytes - base + persistentBytes, persistentBytes };
  } finally {
    model.dispose();
    opt.dispose();
  }
}
