/**
 * The routing heatmap as an SVG: one row per routed call (sublayer j, top = first; "final" last),
 * one column per source position; row r has cells only for its N_r sources, so the cell count is
 * Σ_r N_r. Each cell carries data-call, data-source and data-alpha (the exact value drawn).
 * Colour: α on a shared sequential scale [0, vmax] (pass the same vmax to two heatmaps to compare
 * them), or α·N (α relative to the uniform 1/N) on a diverging log scale centred on 1. The uniform
 * reference 1/N is written at the end of every row.
 */
import { divColor, fmt, hideTip, s, seqColor, showTip } from "./dom.js";

export interface HeatRow {
  key: number | "final";
  label: string;
  sourceLabels: string[];
  values: ArrayLike<number>;
}

export interface HeatmapOptions {
  columns: string[];
  vmax: number;
  scale: "alpha" | "ratio";
  /** Width available in px (cells shrink to fit, 8…30 px). */
  width: number;
  selectedRow?: number | "final" | null;
  onRowClick?: (key: number | "final") => void;
  id?: string;
}

/** Ratio colour saturates at this factor above/below uniform. */
export const RATIO_LIMIT = 4;

export function heatmap(rows: HeatRow[], o: HeatmapOptions): SVGSVGElement {
  const labelW = 74;
  const topH = 52;
  const rightW = 62;
  const ncol = Math.max(1, o.columns.length);
  const cell = Math.max(8, Math.min(30, Math.floor((o.width - labelW - rightW) / ncol)));
  const rowH = Math.max(12, Math.min(22, cell));
  const W = labelW + ncol * cell + rightW;
  const H = topH + rows.length * rowH + 6;
  const svg = s("svg", {
    class: "heatmap",
    width: W,
    height: H,
    viewBox: `0 0 ${W} ${H}`,
    id: o.id,
  }) as SVGSVGElement;
  o.columns.forEach((c, i) => {
    const x = labelW + i * cell + cell / 2;
    const t = s("text", { x, y: topH - 6, transform: `rotate(-55 ${x} ${topH - 6})` }, c);
    svg.append(t);
  });
  svg.append(s("text", { x: labelW + ncol * cell + 8, y: topH - 6, "font-weight": 600 }, "1/N"));
  rows.forEach((r, ri) => {
    const y = topH + ri * rowH;
    const N = r.sourceLabels.length;
    const g = s("g", { class: "row", "data-call": String(r.key) });
    g.append(s("text", { x: labelW - 6, y: y + rowH / 2 + 4, "text-anchor": "end" }, r.label));
    if (o.onRowClick) {
      const hit = s("rect", { class: "row-hit", x: 0, y, width: W, height: rowH });
      hit.addEventListener("click", () => o.onRowClick!(r.key));
      g.append(hit);
    }
    for (let i = 0; i < N; i++) {
      const v = r.values[i]!;
      const fill = o.scale === "alpha" ? seqColor(v, o.vmax) : divColor(v * N, RATIO_LIMIT);
      const rect = s("rect", {
        class: "cell",
        x: labelW + i * cell,
        y,
        width: cell,
        height: rowH,
        fill,
        "data-call": String(r.key),
        "data-source": i,
        "data-alpha": String(v),
      });
      rect.addEventListener("mousemove", (ev) =>
        showTip(
          ev as MouseEvent,
          `${r.label} ← ${r.sourceLabels[i]}: α = ${fmt(v, 4)}  (uniform 1/${N} = ${fmt(1 / N, 4)}, ×${fmt(v * N, 2)})`,
        ),
      );
      rect.addEventListener("mouseleave", hideTip);
      if (o.onRowClick) rect.addEventListener("click", () => o.onRowClick!(r.key));
      g.append(rect);
    }
    g.append(
      s("text", { x: labelW + ncol * cell + 8, y: y + rowH / 2 + 4, class: "uniform" }, fmt(1 / N, 3)),
    );
    svg.append(g);
    if (o.selectedRow !== undefined && o.selectedRow === r.key)
      svg.append(
        s("rect", {
          class: "row-selected",
          x: labelW - 2,
          y: y + 0.5,
          width: N * cell + 3,
          height: rowH - 1,
        }),
      );
  });
  return svg;
}
