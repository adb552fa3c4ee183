/**
 * Charts for reports (analysis, compare): Vega-Lite specs rendered offline to SVG and PNG.
 * See src/plot/charts.ts for the typed helpers and src/plot/render.ts for `writeChart`.
 */
export * from "./charts.js";
export * from "./render.js";
