/** `attnres/eval`: zero-shot multiple-choice scoring by log-likelihood (evaluateMc, readMcTasks, …). */
import "../node-version.js";
export * from "../eval/mc.js";
