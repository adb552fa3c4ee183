/** `attnres/plot`: Vega-Lite charts (heatmap, lineChart, barChart, histogram) rendered offline to SVG and PNG. */
/// <reference types="node" preserve="true" />
import "../node-version.js";
export * from "../plot/index.js";
