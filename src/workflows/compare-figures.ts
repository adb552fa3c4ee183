/**
 * The figures of a comparison (runCompare's CompareResult), drawn once for every report that shows
 * them (`attnres compare`'s results.md, the study report docs/results.md):
 *   lossCurvesChart(r, title?)   mean validation loss per mode against step (mean over seeds)
 *   routingDepthChart(r)         mean max routing weight per routed sublayer j per routed mode
 * Each returns the line chart's options (src/plot/charts.ts), or null when the result has no data
 * for it. `writeCompareFigures(r)` writes both as SVG and PNG into r.out and rewrites results.md
 * there to link them.
 */
import * as path from "node:path";
import { writeReport } from "../io/report.js";
import { lineChart, type LineChartOptions } from "../plot/index.js";
import { resultsMarkdown, type CompareResult } from "./compare.js";

/** Mean validation loss per mode against step. */
export function lossCurvesChart(
  r: Pick<CompareResult, "curves">,
  title = "Validation loss",
): LineChartOptions | null {
  if (r.curves.length === 0) return null;
  return {
    title,
    subtitle: `mean over seeds`,
    series: r.curves.map((c) => ({
      name: c.mode,
      points: c.steps.map((s, i) => ({ x: s, y: c.valLoss[i] })),
    })),
    xTitle: "step",
    yTitle: "validation loss (nats/token)",
  };
}

/** Mean max routing weight by sublayer per routed mode. */
export function routingDepthChart(r: Pick<CompareResult, "routingByDepth">): LineChartOptions | null {
  if (r.routingByDepth.length === 0) return null;
  return {
    title: "Mean max routing weight by depth",
    subtitle: `${r.routingByDepth.map((m) => m.mode).join(", ")}; validation tokens; attention sublayers are even j, MLP odd`,
    series: r.routingByDepth.map((m) => ({
      name: m.mode,
      points: m.j.map((j, i) => ({ x: j, y: m.meanMaxWeight[i] })),
    })),
    xTitle: "sublayer j",
    yTitle: "mean max α",
  };
}

/** Writes loss-curves and routing-max-weight-by-depth (SVG, PNG) and results.md into r.out. */
export async function writeCompareFigures(r: CompareResult): Promise<string[]> {
  const files: string[] = [];
  for (const [name, chart] of [
    ["loss-curves", lossCurvesChart(r)],
    ["routing-max-weight-by-depth", routingDepthChart(r)],
  ] as const) {
    if (!chart) continue;
    const f = await lineChart(path.join(r.out, name), chart);
    files.push(f.png, f.svg);
  }
  const pngs = files.filter((f) => f.endsWith(".png")).map((f) => path.relative(r.out, f));
  writeReport(path.join(r.out, "results.md"), resultsMarkdown(r, pngs));
  return files;
}
