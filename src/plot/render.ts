/**
 * Chart rendering: a Vega-Lite spec → SVG (vega-lite compiles it, a headless vega View with
 * renderer "none" draws it) → PNG (resvg). Everything runs offline: text in the PNG uses the
 * DejaVu Sans TTF files of the `dejavu-fonts-ttf` npm package (no system fonts are read), and
 * every chart's text is set in that family so the SVG and the PNG look the same.
 *
 *   await writeChart(spec, "out/loss")   // writes out/loss.svg and out/loss.png
 *
 * Text widths for layout are vega's estimate (no canvas package), which errs on the wide side:
 * labels never overlap, at the cost of a little extra padding.
 *
 * vega, vega-lite and resvg are loaded on the first render, not when this module is: vega's module
 * graph has a top-level await (vega-canvas), which would make `require("attnres/plot")` and
 * `require("attnres/analysis")` fail (ERR_REQUIRE_ASYNC_MODULE), and resvg is a native addon that
 * a program importing the entry point without drawing has no use for.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import type * as ResvgJs from "@resvg/resvg-js";
import type { ResvgRenderOptions } from "@resvg/resvg-js";
import type * as Vega from "vega";
import type * as VegaLite from "vega-lite";
import type { TopLevelSpec } from "vega-lite";

/**
 * A Vega-Lite specification as plain JSON data (https://vega.github.io/vega-lite/docs/spec.html).
 * The public signatures use this rather than vega-lite's own types, whose declarations need DOM
 * types and do not compile under exactOptionalPropertyTypes; the spec is checked when compiled.
 */
export interface ChartSpec {
  [key: string]: unknown;
  config?: Record<string, unknown>;
}

/** The font family every chart uses (bundled, see FONT_FILES). */
export const FONT_FAMILY = "DejaVu Sans";

const require = createRequire(import.meta.url);
/** Regular and bold DejaVu Sans from the dejavu-fonts-ttf package. */
export const FONT_FILES: readonly string[] = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"].map((f) =>
  require.resolve(`dejavu-fonts-ttf/ttf/${f}`),
);

/** Config shared by every chart: the bundled font everywhere, white background, quiet grid. */
export const baseConfig = {
  font: FONT_FAMILY,
  background: "white",
  view: { stroke: "#bbb" },
  axis: { labelFontSize: 11, titleFontSize: 12, gridColor: "#e6e6e6" },
  legend: { labelFontSize: 11, titleFontSize: 12 },
  title: { fontSize: 14, subtitleFontSize: 11, subtitleColor: "#555", anchor: "start" as const },
};

/** vega and vega-lite, imported once, by the first render. */
let renderers: Promise<[typeof Vega, typeof VegaLite]> | undefined;
const loadRenderers = () => (renderers ??= Promise.all([import("vega"), import("vega-lite")]));

/** resvg (CommonJS, a native addon), required once, by the first rasterisation. */
let resvg: typeof ResvgJs | undefined;
const loadResvg = () => (resvg ??= require("@resvg/resvg-js") as typeof ResvgJs);

type Logger = NonNullable<NonNullable<Parameters<typeof VegaLite.compile>[1]>["logger"]>;

/** A vega-lite logger that keeps warnings (e.g. about empty data) off the terminal. */
function quietLogger(): Logger {
  let lvl = 0;
  const logger = {
    level(l?: number) {
      if (l === undefined) return lvl;
      lvl = l;
      return logger;
    },
    warn: () => logger,
    info: () => logger,
    debug: () => logger,
    error: (...args: readonly unknown[]) => {
      throw new Error(`chart: ${args.map(String).join(" ")}`);
    },
  } as Logger;
  return logger;
}

/** Compiles a Vega-Lite spec and renders it to an SVG string. */
export async function renderSvg(spec: ChartSpec): Promise<string> {
  const [vega, vl] = await loadRenderers();
  const full = { ...spec, config: { ...baseConfig, ...(spec.config ?? {}) } } as unknown as TopLevelSpec;
  const compiled = vl.compile(full, { logger: quietLogger() }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none", logLevel: vega.Error });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** PNG pixels per SVG unit: readable text at a few tens of KB per chart. */
export const PNG_SCALE = 1.5;

/** resvg settings: the bundled font only (no system fonts), white background, zoom `scale`. */
export function resvgOptions(scale = PNG_SCALE): ResvgRenderOptions {
  return {
    font: { fontFiles: [...FONT_FILES], loadSystemFonts: false, defaultFontFamily: FONT_FAMILY },
    fitTo: { mode: "zoom", value: scale },
    background: "white",
  };
}

/** Rasterises an SVG with the bundled font at `scale` pixels per SVG unit. */
export function svgToPng(svg: string, scale = PNG_SCALE): Buffer {
  const { Resvg } = loadResvg();
  return new Resvg(svg, resvgOptions(scale)).render().asPng();
}

export interface ChartFiles {
  svg: string;
  png: string;
}

/** Renders `spec` to `<outBase>.svg` and `<outBase>.png` (folders are created); returns both paths. */
export async function writeChart(
  spec: ChartSpec,
  outBase: string,
  opts: { scale?: number } = {},
): Promise<ChartFiles> {
  const svg = await renderSvg(spec);
  const png = svgToPng(svg, opts.scale ?? PNG_SCALE);
  fs.mkdirSync(path.dirname(path.resolve(outBase)), { recursive: true });
  const files = { svg: `${outBase}.svg`, png: `${outBase}.png` };
  fs.writeFileSync(files.svg, svg);
  fs.writeFileSync(files.png, png);
  return files;
}
