/** `attnres/plot`: Vega-Lite charts (heatmap, lineChart, barChart, histogram) rendered offline to SVG and PNG. */
import "../node-version.js";
export * from "../plot/index.js";
