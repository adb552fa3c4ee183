/**
 * The figures of `attnres compare`: mean validation loss per mode against step, and the mean max
 * routing weight per routed sublayer (depth) per routed mode. Each is written as SVG and PNG next
 * to results.md, which is rewritten to link them.
 */
import * as path from "node:path";
import { writeFileAtomic } from "../io/atomic.js";
import { lineChart } from "../plot/index.js";
import { resultsMarkdown, type CompareResult } from "../workflows/compare.js";

export async function writeCompareFigures(r: CompareResult): Promise<string[]> {
  const files: string[] = [];
  if (r.curves.length > 0) {
    const curves = await lineChart(path.join(r.out, "loss-curves"), {
      title: "Validation loss",
      subtitle: `mean over seeds`,
      series: r.curves.map((c) => ({
        name: c.mode,
        points: c.steps.map((s, i) => ({ x: s, y: c.valLoss[i] })),
      })),
      xTitle: "step",
      yTitle: "validation loss (nats/token)",
    });
    files.push(curves.png, curves.svg);
  }
  if (r.routingByDepth.length > 0) {
    const depth = await lineChart(path.join(r.out, "routing-max-weight-by-depth"), {
      title: "Mean max routing weight by depth",
      subtitle: `${r.routingByDepth.map((m) => m.mode).join(", ")}; validation tokens; attention sublayers are even j, MLP odd`,
      series: r.routingByDepth.map((m) => ({
        name: m.mode,
        points: m.j.map((j, i) => ({ x: j, y: m.meanMaxWeight[i] })),
      })),
      xTitle: "sublayer j",
      yTitle: "mean max α",
    });
    files.push(depth.png, depth.svg);
  }
  const pngs = files.filter((f) => f.endsWith(".png")).map((f) => path.relative(r.out, f));
  writeFileAtomic(path.join(r.out, "results.md"), resultsMarkdown(r, pngs));
  return files;
}
