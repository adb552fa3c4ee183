/** `attnres/convert`: standard checkpoint → routed one with the same logits (convertCheckpoint, verifyConversion, …). */
import "../node-version.js";
export * from "../workflows/convert.js";
export * from "../model/hf-compat.js";
