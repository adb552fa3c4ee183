/**
 * Curves page: train and validation loss of the selected runs overlaid, updating live from the
 * server's event stream (/api/events: every new metrics.jsonl row, no refresh). With "seeds as
 * bands" the runs of one mode in one group are drawn as their mean with a band over the range of
 * the seeds (min…max at each step); otherwise one line per run. Train loss can be smoothed (EMA).
 * Below the charts, a table gives each run's last step and losses (data-run, .last-step).
 */
import type { MetricsEvent, MetricsRow, RunRow, RunsResponse } from "../api.js";
import { errorBox, fmt, getJson, go, h, PALETTE } from "./dom.js";
import type { LiveChart } from "./charts.js";

interface Series {
  run: RunRow;
  rows: MetricsRow[];
  error: string | null;
}

/** EMA with bias correction (as TensorBoard's smoothing); s = 0 → raw values. */
export function smooth(ys: number[], s: number): number[] {
  let m = 0;
  let w = 0;
  return ys.map((y) => {
    m = s * m + (1 - s) * y;
    w = s * w + (1 - s);
    return m / w;
  });
}

type Point = { step: number; key: string; y: number; lo?: number; hi?: number };

/** Chart points: per run, or per (group, mode) mean with min/max band. */
export function chartPoints(
  series: Series[],
  field: "loss" | "val_loss",
  s: number,
  bands: boolean,
): Point[] {
  const per = series.map((x) => {
    const rows = x.rows.filter((r) => typeof r[field] === "number" && Number.isFinite(r[field]));
    const ys = rows.map((r) => r[field] as number);
    return { x, steps: rows.map((r) => r.step), ys: field === "loss" ? smooth(ys, s) : ys };
  });
  if (!bands) return per.flatMap((p) => p.steps.map((step, i) => ({ step, key: p.x.run.id, y: p.ys[i]! })));
  const groups = new Map<string, typeof per>();
  for (const p of per) {
    const k = `${p.x.run.mode ?? "?"}${p.x.run.group ? ` (${p.x.run.group})` : ""}`;
    groups.set(k, [...(groups.get(k) ?? []), p]);
  }
  const out: Point[] = [];
  for (const [key, ps] of groups) {
    const at = new Map<number, number[]>();
    for (const p of ps) p.steps.forEach((st, i) => at.set(st, [...(at.get(st) ?? []), p.ys[i]!]));
    for (const step of [...at.keys()].sort((a, b) => a - b)) {
      const v = at.get(step)!;
      out.push({
        step,
        key: `${key}${ps.length > 1 ? ` ×${ps.length}` : ""}`,
        y: v.reduce((a, b) => a + b, 0) / v.length,
        lo: Math.min(...v),
        hi: Math.max(...v),
      });
    }
  }
  return out;
}

function spec(title: string, bands: boolean, log: boolean): object {
  const x = { field: "step", type: "quantitative", title: "step", axis: { tickMinStep: 1, format: "d" } };
  const color = {
    field: "key",
    type: "nominal",
    title: null,
    scale: { range: PALETTE },
    legend: { orient: "bottom", columns: 2, labelLimit: 320, symbolType: "stroke", symbolStrokeWidth: 3 },
  };
  const y = { field: "y", type: "quantitative", title, scale: { zero: false, type: log ? "log" : "linear" } };
  const layers: object[] = [];
  if (bands)
    layers.push({
      mark: { type: "area", opacity: 0.18 },
      encoding: { x, y: { field: "lo", type: "quantitative", scale: y.scale }, y2: { field: "hi" }, color },
    });
  layers.push({
    mark: { type: "line", strokeWidth: 1.8, interpolate: "linear", point: false },
    encoding: {
      x,
      y,
      color,
      tooltip: [
        { field: "key", title: "run" },
        x,
        { field: "y", type: "quantitative", title, format: ".4f" },
      ],
    },
  });
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: "container",
    height: 300,
    autosize: { type: "fit-x", contains: "padding", resize: true },
    data: { name: "points" },
    layer: layers,
    config: {
      view: { stroke: null },
      axis: { grid: true, gridColor: "#eef0f3", labelColor: "#475467", titleColor: "#344054" },
    },
  };
}

export function mountCurves(el: HTMLElement, q: URLSearchParams): () => void {
  const chosen = new Set(q.getAll("run"));
  let bands = q.get("bands") !== "0";
  let s = Number(q.get("smooth") ?? 0.6);
  let log = false;
  const series = new Map<string, Series>();
  let runs: RunRow[] = [];
  let es: EventSource | null = null;
  let charts: { train: LiveChart; val: LiveChart } | null = null;
  let stopped = false;
  const err = h("div");
  const picker = h("div", { class: "card run-picker" }, h("h2", {}, "Runs"));
  const trainEl = h("div", { class: "chart", id: "chart-train", style: "width:100%" });
  const valEl = h("div", { class: "chart", id: "chart-val", style: "width:100%" });
  const table = h("table", { class: "data", id: "curves-table" });
  const bandBox = h("input", { type: "checkbox", checked: bands, id: "bands" }) as HTMLInputElement;
  const logBox = h("input", { type: "checkbox", id: "logy" }) as HTMLInputElement;
  const smoothIn = h("input", {
    type: "range",
    min: 0,
    max: 0.99,
    step: 0.01,
    value: s,
    id: "smooth",
  }) as HTMLInputElement;
  const smoothLabel = h("span", { class: "mono small" }, s.toFixed(2));
  const status = h("span", { class: "muted small", id: "live-status" });
  el.append(
    h("div", { class: "page-head" }, h("h1", {}, "Loss curves"), status),
    err,
    h(
      "div",
      { class: "side-layout" },
      picker,
      h(
        "div",
        {},
        h(
          "div",
          { class: "card toolbar" },
          h("label", { class: "check" }, bandBox, "seeds as a band per mode"),
          h("label", { class: "check" }, "smoothing (train)", smoothIn, smoothLabel),
          h("label", { class: "check" }, logBox, "log scale"),
        ),
        h(
          "div",
          { class: "grid2" },
          h("div", { class: "card" }, h("h2", {}, "Train loss"), trainEl),
          h("div", { class: "card" }, h("h2", {}, "Validation loss"), valEl),
        ),
        h("div", { class: "card" }, table),
      ),
    ),
  );

  let pending = false;
  const redraw = () => {
    if (pending || stopped) return;
    pending = true;
    requestAnimationFrame(() => void draw().finally(() => (pending = false)));
  };
  let chartsFor = "";
  async function draw(): Promise<void> {
    const list = [...chosen].map((id) => series.get(id)).filter((x): x is Series => !!x);
    const mod = await import("./charts.js");
    const key = `${bands}|${log}`;
    if (!charts || chartsFor !== key) {
      charts?.train.finalize();
      charts?.val.finalize();
      trainEl.replaceChildren();
      valEl.replaceChildren();
      charts = {
        train: await mod.liveChart(trainEl, spec("train loss", bands, log) as never, []),
        val: await mod.liveChart(valEl, spec("validation loss", bands, log) as never, []),
      };
      chartsFor = key;
    }
    await charts.train.set(chartPoints(list, "loss", s, bands));
    await charts.val.set(chartPoints(list, "val_loss", 0, bands));
    trainEl.dataset.points = String(list.reduce((n, x) => n + x.rows.length, 0));
    renderTable(list);
  }

  function renderTable(list: Series[]): void {
    table.replaceChildren(
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["run", "mode", "seed", "last step", "train loss", "val loss", "status"].map((t, i) =>
            h("th", { class: i >= 2 && i <= 5 ? "num" : null }, t),
          ),
        ),
      ),
      h(
        "tbody",
        {},
        list.map((x) => {
          const last = x.rows[x.rows.length - 1];
          const val = [...x.rows].reverse().find((r) => typeof r.val_loss === "number");
          return h(
            "tr",
            { "data-run": x.run.id },
            h("td", { class: "mono" }, x.run.id),
            h("td", {}, x.run.mode ?? "–"),
            h("td", { class: "num" }, String(x.run.seed ?? "–")),
            h("td", { class: "num last-step" }, last ? String(last.step) : "–"),
            h("td", { class: "num" }, fmt(last?.loss as number | undefined)),
            h("td", { class: "num" }, fmt(val?.val_loss as number | undefined)),
            h(
              "td",
              {},
              x.error
                ? h("span", { class: "pill error", title: x.error }, "error")
                : h("span", { class: `pill ${x.run.status}` }, x.run.status),
            ),
          );
        }),
      ),
    );
  }

  function connect(): void {
    es?.close();
    es = null;
    if (chosen.size === 0) {
      status.textContent = "choose runs on the left";
      void draw();
      return;
    }
    const qs = [...chosen].map((id) => `run=${encodeURIComponent(id)}`).join("&");
    es = new EventSource(`/api/events?${qs}`);
    es.addEventListener("metrics", (ev) => {
      const m = JSON.parse((ev as MessageEvent<string>).data) as MetricsEvent;
      const x = series.get(m.run);
      if (!x) return;
      x.rows = m.reset ? m.rows : x.rows.concat(m.rows);
      x.error = m.error;
      status.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
      redraw();
    });
    es.onerror = () => (status.textContent = "reconnecting…");
  }

  function renderPicker(): void {
    const byGroup = new Map<string, RunRow[]>();
    for (const r of runs) byGroup.set(r.group ?? "", [...(byGroup.get(r.group ?? "") ?? []), r]);
    picker.replaceChildren(h("h2", {}, "Runs"));
    for (const [g, rs] of byGroup) {
      const all = h("a", { href: "#", class: "small" }, "all");
      all.onclick = (e) => {
        e.preventDefault();
        for (const r of rs) chosen.add(r.id);
        update();
      };
      picker.append(h("div", { class: "group-name" }, g || "(top level)", " ", all));
      for (const r of rs) {
        const box = h("input", {
          type: "checkbox",
          checked: chosen.has(r.id),
          "data-run": r.id,
        }) as HTMLInputElement;
        box.onchange = () => {
          if (box.checked) chosen.add(r.id);
          else chosen.delete(r.id);
          update();
        };
        picker.append(h("label", {}, box, h("span", { class: "mono" }, r.id)));
      }
    }
  }

  function update(): void {
    for (const id of chosen) {
      const r = runs.find((x) => x.id === id);
      if (r && !series.has(id)) series.set(id, { run: r, rows: [], error: null });
    }
    go("curves", { run: [...chosen], ...(bands ? {} : { bands: "0" }), smooth: String(s) });
  }

  bandBox.onchange = () => {
    bands = bandBox.checked;
    update();
  };
  logBox.onchange = () => {
    log = logBox.checked;
    redraw();
  };
  smoothIn.oninput = () => {
    s = Number(smoothIn.value);
    smoothLabel.textContent = s.toFixed(2);
    redraw();
  };

  void (async () => {
    try {
      runs = (await getJson<RunsResponse>("/api/runs")).runs;
      if (stopped) return;
      const known = new Set(runs.map((r) => r.id));
      for (const id of [...chosen])
        if (!known.has(id)) {
          err.append(errorBox(`no run ${id}`));
          chosen.delete(id);
        }
      for (const id of chosen) series.set(id, { run: runs.find((r) => r.id === id)!, rows: [], error: null });
      renderPicker();
      connect();
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
  })();
  return () => {
    stopped = true;
    es?.close();
    charts?.train.finalize();
    charts?.val.finalize();
  };
}
