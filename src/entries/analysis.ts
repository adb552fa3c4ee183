/** `attnres/analysis`: routing analysis of a model (analyzeModel) and its written report (writeAnalysis). */
/// <reference types="node" preserve="true" />
import "../node-version.js";
export * from "../analysis/routing.js";
export * from "../analysis/report.js";
