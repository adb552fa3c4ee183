/** `attnres/eval`: zero-shot multiple-choice scoring by log-likelihood (evaluateMc, readMcTasks, …) and the loss of a split (evaluateSplit). */
/// <reference types="node" preserve="true" />
import "../node-version.js";
export * from "../eval/mc.js";
export * from "../eval/loss.js";
