/** attnres public API. */
export * from "./backend/index.js";
export * from "./tensor/tensor.js";
export * as ops from "./tensor/ops.js";
export { tidy, poolStats, trimPools, setPoison, resetPeak } from "./tensor/memory.js";
export { Rng } from "./tensor/random.js";
export { Module } from "./nn/module.js";
export * from "./nn/layers.js";
export * from "./model/config.js";
export * from "./model/decoder.js";
export * from "./train/optim.js";
export * from "./io/safetensors.js";
