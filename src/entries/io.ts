/** `attnres/io`: checkpoints (HF layout), safetensors files and the package paths. */
/// <reference types="node" preserve="true" />
import "../node-version.js";
export * from "../model/checkpoint.js";
export * from "../io/safetensors.js";
export { writeFileAtomic } from "../io/atomic.js";
export * from "../io/paths.js";
