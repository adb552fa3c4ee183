/**
 * Vega-Lite charts of the viewer (vega-embed, loaded lazily as its own chunk): line charts with
 * optional bands whose data can be replaced in place (live curves), and the depth charts of the
 * routing page. Rendered as SVG; no actions menu; no network access.
 */
import embed, { type Result } from "vega-embed";
import type { TopLevelSpec } from "vega-lite";

/** SVG, no action menu, tooltips; warnings (e.g. an empty selection's extent) stay out of the console. */
const OPTS = { actions: false, renderer: "svg", tooltip: true, logLevel: 1 } as const;

export interface LiveChart {
  set(values: object[]): Promise<void>;
  finalize(): void;
}

/** Embeds `spec` (whose data is the named dataset "points") into el; `set` replaces the points. */
export async function liveChart(el: HTMLElement, spec: TopLevelSpec, values: object[]): Promise<LiveChart> {
  const r: Result = await embed(el, spec, OPTS);
  await r.view.data("points", values).runAsync();
  return {
    async set(v) {
      await r.view.data("points", v).runAsync();
    },
    finalize: () => r.finalize(),
  };
}

export async function staticChart(el: HTMLElement, spec: TopLevelSpec): Promise<() => void> {
  const r = await embed(el, spec, OPTS);
  return () => r.finalize();
}
