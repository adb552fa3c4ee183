/** `attnres/io`: checkpoints (HF layout), safetensors files and the package paths. */
import "../node-version.js";
export * from "../io/checkpoint.js";
export * from "../io/safetensors.js";
export * from "../io/paths.js";
