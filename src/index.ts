/**
 * attnres public API (the package's main entry, `import … from "attnres"`): tensors and backends,
 * layers, the decoder and its residual modes, training, checkpoints, tokenizers, generation,
 * conversion and multiple-choice scoring. The areas with heavier dependencies have their own entry
 * points (src/entries/): attnres/analysis, attnres/plot, attnres/data, attnres/io (and
 * attnres/convert, attnres/eval, also re-exported here). The Node.js version is checked first.
 */
/// <reference types="node" preserve="true" />
import "./node-version.js";
export * from "./backend/index.js";
export * from "./tensor/tensor.js";
export * as ops from "./tensor/ops.js";
export { tidy, poolStats, trimPools, setPoison, resetPeak } from "./tensor/memory.js";
export { Rng } from "./tensor/random.js";
export { Module } from "./nn/module.js";
export * from "./nn/layers.js";
export * from "./model/config.js";
export * from "./model/decoder.js";
export * from "./model/generate.js";
export * from "./model/residual.js";
export * from "./model/stats.js";
export * from "./train/optim.js";
export * from "./train/trainer.js";
export * from "./train/run.js";
export * from "./model/checkpoint.js";
export * from "./data/tokenizer.js";
export * from "./data/prepared.js";
export * from "./data/batches.js";
export * from "./io/safetensors.js";
export { writeFileAtomic } from "./io/atomic.js";
export * from "./workflows/convert.js";
export * from "./eval/mc.js";
export { evaluate, evaluateSplit, type EvalResult, type EvalWindows } from "./eval/loss.js";
export { SUPPORTED_NODE } from "./node-version.js";
