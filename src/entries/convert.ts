/** `attnres/convert`: standard checkpoint → routed one with the same logits (convertCheckpoint, verifyConversion, …). */
/// <reference types="node" preserve="true" />
import "../node-version.js";
export * from "../workflows/convert.js";
export * from "../model/hf-compat.js";
