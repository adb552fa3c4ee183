/**
 * Typed chart helpers over Vega-Lite: each has a `…Spec(opts)` that builds the spec (to adjust
 * before rendering) and a writer `…(outBase, opts)` that renders `<outBase>.svg` and
 * `<outBase>.png` (src/plot/render.ts). Values that are null, NaN or ±Infinity are left out
 * (empty heatmap cells, gaps in lines).
 *
 *   heatmap      a matrix with row and column labels, a colour legend and (small matrices) the values
 *   lineChart    several named series over a shared x (numbers or ordered labels); optional log y
 *   barChart     one bar per label (optionally coloured by group)
 *   histogram    pre-binned counts over shared bin edges, one small panel per named distribution
 */
import { defaultLocale } from "vega-format";
import { type ChartFiles, type ChartSpec, writeChart } from "./render.js";

const finite = (v: number | null | undefined): v is number => typeof v === "number" && Number.isFinite(v);

interface Titled {
  title: string;
  subtitle?: string;
}
const titleOf = (o: Titled) => (o.subtitle ? { text: o.title, subtitle: o.subtitle } : { text: o.title });

// ---------------------------------------------------------------------------------------------
// heatmap

/** Colour schemes with a known dark end (for the value labels' contrast). */
export type HeatmapScheme = "blues" | "greens" | "oranges" | "purples" | "viridis" | "redblue";

export interface HeatmapOptions extends Titled {
  rows: readonly string[];
  columns: readonly string[];
  /** values[r][c]; a missing, null or non-finite entry is an empty cell. */
  values: readonly (readonly (number | null | undefined)[])[];
  xTitle?: string;
  yTitle?: string;
  legendTitle?: string;
  scheme?: HeatmapScheme;
  /** Colour domain; default [0, max] for non-negative data, else [min, max]. */
  domain?: [number, number];
  /** Write each value in its cell: true, false, or "auto" (default: when at most 16 columns and 40 rows). */
  annotate?: boolean | "auto";
  /** d3-format of the annotations and legend (default ".2f"). */
  format?: string;
}

function darkness(scheme: HeatmapScheme, t: number): number {
  if (scheme === "viridis") return 1 - t;
  if (scheme === "redblue") return Math.abs(2 * t - 1);
  return t;
}

export function heatmapSpec(o: HeatmapOptions): ChartSpec {
  const scheme = o.scheme ?? "blues";
  const cells: { row: string; col: string; v: number; tc: string }[] = [];
  let lo = Infinity;
  let hi = -Infinity;
  o.values.forEach((r) =>
    r.forEach((v) => {
      if (finite(v)) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }),
  );
  if (!Number.isFinite(lo)) [lo, hi] = [0, 1];
  const domain: [number, number] = o.domain ?? (lo >= 0 ? [0, hi > 0 ? hi : 1] : [lo, hi > lo ? hi : lo + 1]);
  const span = domain[1] - domain[0] || 1;
  o.values.forEach((r, i) =>
    r.forEach((v, c) => {
      if (!finite(v) || i >= o.rows.length || c >= o.columns.length) return;
      const t = Math.min(1, Math.max(0, (v - domain[0]) / span));
      cells.push({
        row: o.rows[i]!,
        col: o.columns[c]!,
        v,
        tc: darkness(scheme, t) > 0.55 ? "white" : "black",
      });
    }),
  );
  const annotate =
    o.annotate === "auto" || o.annotate === undefined
      ? o.columns.length <= 16 && o.rows.length <= 40
      : o.annotate;
  const format = o.format ?? ".2f";
  // Cells as wide as the longest annotation (9 px DejaVu Sans: about 5.8 px per character), formatted
  // as vega will: with vega-format, which vega re-exports (vega itself is loaded only to render).
  const fmt = defaultLocale().format(format);
  const longest = cells.reduce((w, c) => Math.max(w, fmt(c.v).length), 1);
  const step = annotate ? Math.max(30, Math.ceil(6 * longest + 8)) : o.columns.length > 40 ? 10 : 16;
  const tilt = o.columns.some((c) => c.length > 3);
  const x = {
    field: "col",
    type: "ordinal" as const,
    sort: [...o.columns],
    scale: { domain: [...o.columns] },
    title: o.xTitle ?? null,
    axis: tilt ? { labelAngle: -45, labelAlign: "right" } : { labelAngle: 0 },
  };
  const y = {
    field: "row",
    type: "ordinal" as const,
    sort: [...o.rows],
    scale: { domain: [...o.rows] },
    title: o.yTitle ?? null,
  };
  const layers: Record<string, unknown>[] = [
    {
      mark: { type: "rect" },
      encoding: {
        x,
        y,
        color: {
          field: "v",
          type: "quantitative",
          title: o.legendTitle ?? "",
          scale: { scheme, domain, clamp: true },
          legend: { format, gradientLength: Math.max(80, Math.min(240, 20 * o.rows.length)) },
        },
        tooltip: [
          { field: "row", title: o.yTitle ?? "row" },
          { field: "col", title: o.xTitle ?? "column" },
          { field: "v", format: ".4f", title: o.legendTitle ?? "value" },
        ],
      },
    },
  ];
  if (annotate)
    layers.push({
      mark: { type: "text", fontSize: 9 },
      encoding: {
        x,
        y,
        text: { field: "v", type: "quantitative", format },
        color: { condition: { test: "datum.tc === 'white'", value: "white" }, value: "black" },
      },
    });
  return {
    title: titleOf(o),
    data: { values: cells },
    width: { step },
    height: { step: annotate ? 18 : o.rows.length > 40 ? 10 : 16 },
    layer: layers,
  } as unknown as ChartSpec;
}

export async function heatmap(outBase: string, o: HeatmapOptions): Promise<ChartFiles> {
  return writeChart(heatmapSpec(o), outBase);
}

// ---------------------------------------------------------------------------------------------
// line chart

export interface Series {
  name: string;
  /** x is a number (quantitative axis) or a label (ordinal axis in order of first appearance). */
  points: readonly { x: number | string; y: number | null | undefined }[];
  dashed?: boolean;
  /** CSS colour; default the category10 colour of the series' position. */
  color?: string;
}

export interface LineChartOptions extends Titled {
  series: readonly Series[];
  xTitle: string;
  yTitle: string;
  /** Logarithmic y (points with y ≤ 0 are left out). */
  logY?: boolean;
  yDomain?: [number, number];
  /** Markers on the points (default: when every series has at most 60 points). */
  points?: boolean;
  width?: number;
  height?: number;
}

const CATEGORY10 = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
];

export function lineChartSpec(o: LineChartOptions): ChartSpec {
  const ordinal = o.series.some((s) => s.points.some((p) => typeof p.x === "string"));
  const order: string[] = [];
  const seen = new Set<string>();
  const rows: { series: string; x: number | string; y: number }[] = [];
  for (const s of o.series)
    for (const p of s.points) {
      if (ordinal && !seen.has(String(p.x))) {
        seen.add(String(p.x));
        order.push(String(p.x));
      }
      if (!finite(p.y) || (o.logY && p.y <= 0)) continue;
      rows.push({ series: s.name, x: ordinal ? String(p.x) : p.x, y: p.y });
    }
  const names = o.series.map((s) => s.name);
  const markers = o.points ?? o.series.every((s) => s.points.length <= 60);
  return {
    title: titleOf(o),
    data: { values: rows },
    width: o.width ?? 440,
    height: o.height ?? 240,
    mark: { type: "line", point: markers ? { size: 28, filled: true } : false, strokeWidth: 1.8 },
    encoding: {
      x: ordinal
        ? {
            field: "x",
            type: "ordinal",
            sort: order,
            scale: { domain: order },
            title: o.xTitle,
            axis: { labelAngle: order.some((l) => l.length > 3) ? -45 : 0 },
          }
        : { field: "x", type: "quantitative", title: o.xTitle, scale: { zero: false, nice: false } },
      y: {
        field: "y",
        type: "quantitative",
        title: o.yTitle,
        scale: {
          ...(o.logY ? { type: "log" } : { zero: false }),
          ...(o.yDomain ? { domain: o.yDomain } : {}),
        },
      },
      color: {
        field: "series",
        type: "nominal",
        title: null,
        sort: names,
        scale: { domain: names, range: o.series.map((s, i) => s.color ?? CATEGORY10[i % 10]!) },
        legend:
          names.length < 2
            ? null
            : {
                orient: "bottom",
                // One row when the names fit under the plot, else one name per line.
                columns:
                  names.reduce((w, n) => w + n.length + 6, 0) <= (o.width ?? 440) / 7 ? names.length : 1,
                symbolType: "stroke",
                symbolStrokeWidth: 2,
                symbolSize: 260,
                labelLimit: 600,
              },
      },
      strokeDash: {
        field: "series",
        type: "nominal",
        sort: names,
        scale: { domain: names, range: o.series.map((s) => (s.dashed ? [5, 3] : [1, 0])) },
        legend: null,
      },
      tooltip: [
        { field: "series", title: "series" },
        { field: "x", title: o.xTitle },
        { field: "y", title: o.yTitle, format: ".4g" },
      ],
    },
  } as unknown as ChartSpec;
}

export async function lineChart(outBase: string, o: LineChartOptions): Promise<ChartFiles> {
  return writeChart(lineChartSpec(o), outBase);
}

// ---------------------------------------------------------------------------------------------
// bar chart

export interface BarChartOptions extends Titled {
  bars: readonly { label: string; value: number; group?: string }[];
  xTitle?: string;
  yTitle: string;
  width?: number;
  height?: number;
}

export function barChartSpec(o: BarChartOptions): ChartSpec {
  const labels = o.bars.map((b) => b.label);
  const groups = [...new Set(o.bars.map((b) => b.group).filter((g): g is string => g !== undefined))];
  return {
    title: titleOf(o),
    data: { values: o.bars.filter((b) => finite(b.value)).map((b) => ({ ...b, group: b.group ?? "" })) },
    width: o.width ?? Math.max(200, Math.min(640, 22 * labels.length)),
    height: o.height ?? 220,
    mark: { type: "bar" },
    encoding: {
      x: {
        field: "label",
        type: "ordinal",
        sort: labels,
        scale: { domain: labels },
        title: o.xTitle ?? null,
        axis: { labelAngle: labels.some((l) => l.length > 3) ? -45 : 0 },
      },
      y: { field: "value", type: "quantitative", title: o.yTitle },
      ...(groups.length
        ? {
            color: {
              field: "group",
              type: "nominal",
              title: null,
              sort: groups,
              legend: { orient: "bottom" },
            },
          }
        : { color: { value: CATEGORY10[0] } }),
      tooltip: [
        { field: "label", title: o.xTitle ?? "label" },
        { field: "value", title: o.yTitle, format: ".4g" },
      ],
    },
  } as unknown as ChartSpec;
}

export async function barChart(outBase: string, o: BarChartOptions): Promise<ChartFiles> {
  return writeChart(barChartSpec(o), outBase);
}

// ---------------------------------------------------------------------------------------------
// histogram

export interface HistogramOptions extends Titled {
  /** Bin edges, ascending (k + 1 of them for k bins), shared by every panel. */
  edges: readonly number[];
  /** One panel per distribution: counts per bin (length k). */
  panels: readonly { name: string; counts: readonly number[] }[];
  xTitle: string;
  /** Default "count", or "fraction" when normalize. */
  yTitle?: string;
  /** Plot each panel's counts as fractions of its total. */
  normalize?: boolean;
  /** Panels per row (default 4). */
  columns?: number;
}

export function histogramSpec(o: HistogramOptions): ChartSpec {
  const k = o.edges.length - 1;
  if (k < 1) throw new Error("histogram: at least two bin edges are needed");
  for (const p of o.panels)
    if (p.counts.length !== k)
      throw new Error(`histogram: panel "${p.name}" has ${p.counts.length} counts for ${k} bins`);
  const rows: { panel: string; x0: number; x1: number; y: number }[] = [];
  for (const p of o.panels) {
    const total = p.counts.reduce((s, c) => s + c, 0) || 1;
    p.counts.forEach((c, i) =>
      rows.push({ panel: p.name, x0: o.edges[i]!, x1: o.edges[i + 1]!, y: o.normalize ? c / total : c }),
    );
  }
  const names = o.panels.map((p) => p.name);
  const yTitle = o.yTitle ?? (o.normalize ? "fraction" : "count");
  const inner = {
    mark: { type: "rect", color: CATEGORY10[0], stroke: "white", strokeWidth: 0.5 },
    encoding: {
      x: {
        field: "x0",
        type: "quantitative",
        title: o.xTitle,
        scale: { domain: [o.edges[0]!, o.edges[k]!], nice: false },
      },
      x2: { field: "x1" },
      y: { field: "y", type: "quantitative", title: yTitle },
      y2: { datum: 0 },
      tooltip: [
        { field: "x0", title: "from", format: ".3g" },
        { field: "x1", title: "to", format: ".3g" },
        { field: "y", title: yTitle, format: ".3g" },
      ],
    },
  };
  if (o.panels.length <= 1)
    return {
      title: titleOf(o),
      data: { values: rows },
      width: 320,
      height: 180,
      ...inner,
    } as unknown as ChartSpec;
  return {
    title: titleOf(o),
    data: { values: rows },
    facet: { field: "panel", type: "nominal", sort: names, title: null, header: { labelFontSize: 11 } },
    columns: o.columns ?? 4,
    spec: { width: 150, height: 80, ...inner },
    resolve: { scale: { y: "independent" } },
  } as unknown as ChartSpec;
}

export async function histogram(outBase: string, o: HistogramOptions): Promise<ChartFiles> {
  return writeChart(histogramSpec(o), outBase);
}
