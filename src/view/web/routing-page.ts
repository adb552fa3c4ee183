/**
 * Routing page: for one run's checkpoint — or two side by side (?run=A&vs=B) with one colour
 * scale — the mean-α heatmap (sublayer × source, uniform 1/N at each row's end), mean max weight
 * and normalised entropy by depth with attention and MLP sublayers drawn apart (dashed: uniform
 * routing), and DDL's β by sublayer. Numbers come from /api/routing (the library's routing
 * analysis on validation windows of the run's data).
 */
import type { RoutingResponse, RunProblem, RunRow, RunsResponse } from "../api.js";
import { errorBox, fmt, getJson, go, gradientCss, h, PALETTE } from "./dom.js";
import { heatmap, RATIO_LIMIT } from "./heatmap.js";

function depthSpec(values: object[], field: string, title: string, uniform: boolean, runs: string[]): object {
  const x = { field: "depth", type: "quantitative", title: "layer", axis: { tickMinStep: 1 } };
  const color = {
    field: "run",
    type: "nominal",
    title: null,
    scale: { domain: runs, range: PALETTE },
    legend: { orient: "bottom", labelLimit: 300, symbolType: "stroke", symbolStrokeWidth: 3 },
  };
  const dash = {
    field: "kind",
    type: "nominal",
    title: "sublayer",
    legend: null, // told in the caption: solid attention, dashed MLP
    scale: {
      domain: ["attn", "mlp", "final"],
      range: [
        [1, 0],
        [5, 3],
        [1, 2],
      ],
    },
  };
  const layers: object[] = [
    {
      mark: { type: "line", point: { size: 30 } },
      encoding: {
        x,
        y: { field, type: "quantitative", title, scale: { zero: true } },
        color,
        strokeDash: dash,
        detail: { field: "series" },
        tooltip: [
          { field: "run" },
          { field: "label", title: "sublayer" },
          { field, type: "quantitative", format: ".4f", title },
        ],
      },
    },
  ];
  if (uniform)
    layers.push({
      mark: { type: "line", color: "#999", strokeDash: [2, 3], strokeWidth: 1 },
      encoding: { x, y: { field: "uniform", type: "quantitative" }, detail: { field: "series" } },
    });
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: "container",
    height: 240,
    autosize: { type: "fit-x", contains: "padding" },
    data: { values },
    layer: layers,
    config: { view: { stroke: null }, axis: { gridColor: "#eef0f3" } },
  };
}

function betaSpec(values: object[], runs: string[]): object {
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: "container",
    height: 220,
    autosize: { type: "fit-x", contains: "padding" },
    data: { values },
    layer: [
      {
        mark: { type: "rule", strokeWidth: 2 },
        encoding: {
          x: { field: "j", type: "ordinal", title: "sublayer j" },
          y: { field: "lo", type: "quantitative", title: "β (mean ± std)" },
          y2: { field: "hi" },
          color: { field: "run", type: "nominal", scale: { domain: runs, range: PALETTE }, legend: null },
        },
      },
      {
        mark: { type: "point", filled: true },
        encoding: {
          x: { field: "j", type: "ordinal" },
          y: { field: "mean", type: "quantitative" },
          color: {
            field: "run",
            type: "nominal",
            title: null,
            scale: { domain: runs, range: PALETTE },
            legend: { orient: "bottom" },
          },
        },
      },
    ],
  };
}

export function mountRouting(el: HTMLElement, q: URLSearchParams): () => void {
  const a = q.get("run");
  const b = q.get("vs");
  let scale: "alpha" | "ratio" = q.get("scale") === "ratio" ? "ratio" : "alpha";
  const finals: (() => void)[] = [];
  let stopped = false;
  const selA = h("select", { id: "run-a" }) as HTMLSelectElement;
  const selB = h("select", { id: "run-b" }) as HTMLSelectElement;
  const scaleSel = h(
    "select",
    { id: "scale" },
    h("option", { value: "alpha" }, "colour: α"),
    h("option", { value: "ratio" }, "colour: α relative to uniform (α·N)"),
  ) as HTMLSelectElement;
  scaleSel.value = scale;
  const body = h("div", { id: "routing-body" });
  el.append(
    h("div", { class: "page-head" }, h("h1", {}, "Routing")),
    h(
      "div",
      { class: "card toolbar" },
      h("label", {}, "run ", selA),
      h("label", {}, "compare with ", selB),
      scaleSel,
    ),
    body,
  );
  const nav = () =>
    go("routing", {
      ...(selA.value ? { run: selA.value } : {}),
      ...(selB.value ? { vs: selB.value } : {}),
      ...(scale === "ratio" ? { scale } : {}),
    });
  selA.onchange = nav;
  selB.onchange = nav;
  scaleSel.onchange = () => {
    scale = scaleSel.value as "alpha" | "ratio";
    nav();
  };

  void (async () => {
    let runs: RunRow[];
    try {
      runs = (await getJson<RunsResponse>("/api/runs")).runs.filter((r) => r.checkpoint);
    } catch (e) {
      body.append(errorBox(e));
      return;
    }
    selA.replaceChildren(
      h("option", { value: "" }, "— choose a run —"),
      ...runs.map((r) => h("option", { value: r.id }, `${r.id} (${r.mode ?? "?"})`)),
    );
    selB.replaceChildren(
      h("option", { value: "" }, "— none —"),
      ...runs.map((r) => h("option", { value: r.id }, `${r.id} (${r.mode ?? "?"})`)),
    );
    selA.value = a ?? "";
    selB.value = b ?? "";
    if (!a) {
      body.append(
        h(
          "p",
          { class: "muted" },
          runs.length ? "Choose a run with a checkpoint." : "No run has a checkpoint yet.",
        ),
      );
      return;
    }
    body.append(
      h("p", { class: "muted", id: "routing-loading" }, "Analysing the checkpoint on validation windows…"),
    );
    const ids = [a, ...(b ? [b] : [])];
    const results = await Promise.all(
      ids.map((id) =>
        getJson<RoutingResponse | RunProblem>(`/api/routing?run=${encodeURIComponent(id)}`).then(
          (r) => ("error" in r ? new Error(r.error) : r),
          (e: Error) => e,
        ),
      ),
    );
    if (stopped) return;
    body.replaceChildren();
    const ok = results.filter((r): r is RoutingResponse => !(r instanceof Error));
    let vmax = 0;
    // Calls with one source have α = 1 by construction: they would flatten the scale of the rest.
    for (const r of ok)
      for (const c of r.calls) if (c.sources > 1) for (const v of c.meanAlpha) vmax = Math.max(vmax, v);
    vmax = vmax || 1;
    const width = Math.min(1400, el.clientWidth - 40) / ids.length - 40;
    const cols = h("div", { class: ids.length > 1 ? "grid2" : "" });
    results.forEach((r, i) => {
      const card = h("div", { class: "card", "data-run": ids[i]! });
      cols.append(card);
      if (r instanceof Error) {
        card.append(h("h2", { class: "mono" }, ids[i]!), errorBox(r));
        return;
      }
      card.append(
        h("h2", { class: "mono" }, r.run),
        h(
          "div",
          { class: "kv" },
          h("span", {}, h("b", {}, "mode "), r.mode),
          h("span", {}, h("b", {}, "model "), `${r.layers} layers × d${r.hidden}`),
          h("span", {}, h("b", {}, "checkpoint step "), String(r.checkpointStep ?? "?")),
          h(
            "span",
            {},
            h("b", {}, "tokens "),
            `${r.sample.tokens} (${r.sample.batches} × ${r.sample.batchSize} × ${r.sample.seqLen}, validation)`,
          ),
        ),
        ...r.notes.map((n) => h("div", { class: "note" }, n)),
      );
      if (r.calls.length) {
        card.append(
          h("h3", {}, "Mean α per source"),
          h(
            "p",
            { class: "muted small" },
            "Rows: the sublayer that reads (first at the top); columns: the sources it reads. Hover a cell for its value.",
          ),
          heatmap(
            r.calls.map((c) => ({
              key: c.key,
              label: c.label,
              sourceLabels: c.sourceLabels,
              values: c.meanAlpha,
            })),
            { columns: r.columns, vmax, scale, width, id: `heatmap-${i}` },
          ),
          h(
            "div",
            { class: "small muted" },
            scale === "alpha"
              ? [
                  "0",
                  h("span", { class: "legend-bar", style: `background:${gradientCss("seq")}` }),
                  fmt(vmax, 3),
                  ids.length > 1 ? " (one scale for both runs)" : "",
                ]
              : [
                  `≤ 1/${RATIO_LIMIT}×`,
                  h("span", { class: "legend-bar", style: `background:${gradientCss("div")}` }),
                  `≥ ${RATIO_LIMIT}× uniform`,
                ],
          ),
        );
      }
    });
    body.append(cols);
    if (ok.some((r) => r.calls.length)) {
      const pts = ok.flatMap((r) =>
        r.calls
          .filter((c) => c.sources > 1)
          .map((c) => ({
            run: r.run,
            series: `${r.run}/${c.kind}`,
            kind: c.kind,
            label: c.label,
            depth: c.layer ?? r.layers,
            maxWeight: c.meanMaxWeight,
            uniform: c.uniformWeight,
            entropy: c.normalizedEntropy,
          })),
      );
      const mw = h("div", { class: "chart", style: "width:100%", id: "chart-maxweight" });
      const en = h("div", { class: "chart", style: "width:100%", id: "chart-entropy" });
      body.append(
        h(
          "div",
          { class: "grid2" },
          h(
            "div",
            { class: "card" },
            h("h2", {}, "Mean max weight by depth"),
            h(
              "p",
              { class: "muted small" },
              "Solid: attention sublayers; dashed: MLP sublayers; dotted grey: uniform 1/N. 1 = one source takes everything.",
            ),
            mw,
          ),
          h(
            "div",
            { class: "card" },
            h("h2", {}, "Normalised entropy by depth"),
            h(
              "p",
              { class: "muted small" },
              "Mean entropy / ln N: 1 = uniform, 0 = one-hot. Solid: attention; dashed: MLP.",
            ),
            en,
          ),
        ),
      );
      const charts = await import("./charts.js");
      if (stopped) return;
      finals.push(
        await charts.staticChart(mw, depthSpec(pts, "maxWeight", "mean max α", true, ids) as never),
      );
      finals.push(
        await charts.staticChart(en, depthSpec(pts, "entropy", "entropy / ln N", false, ids) as never),
      );
    }
    if (ok.some((r) => r.stream.length)) {
      const sn = h("div", { class: "chart", style: "width:100%", id: "chart-stream" });
      body.append(
        h(
          "div",
          { class: "card" },
          h("h2", {}, "Residual stream norm by sublayer"),
          h(
            "p",
            { class: "muted small" },
            "Mean ‖h‖ of the stream entering each sublayer (modes that keep a stream: standard, delta, delta-block, ddl).",
          ),
          sn,
        ),
      );
      const charts = await import("./charts.js");
      if (stopped) return;
      const pts = ok.flatMap((r) =>
        r.stream.map((x) => ({ run: r.run, j: x.j, norm: x.meanNorm, label: x.label })),
      );
      finals.push(
        await charts.staticChart(sn, {
          $schema: "https://vega.github.io/schema/vega-lite/v6.json",
          width: "container",
          height: 200,
          autosize: { type: "fit-x", contains: "padding" },
          data: { values: pts },
          mark: { type: "line", point: true },
          encoding: {
            x: {
              field: "j",
              type: "quantitative",
              title: "sublayer j",
              axis: { tickMinStep: 1, format: "d" },
            },
            y: { field: "norm", type: "quantitative", title: "mean ‖h‖" },
            color: {
              field: "run",
              type: "nominal",
              title: null,
              scale: { domain: ids, range: PALETTE },
              legend: { orient: "bottom", labelLimit: 300 },
            },
            tooltip: [
              { field: "run" },
              { field: "label" },
              { field: "norm", type: "quantitative", format: ".3f" },
            ],
          },
        } as never),
      );
    }
    if (ok.some((r) => r.beta.length)) {
      const bt = h("div", { class: "chart", style: "width:100%", id: "chart-beta" });
      body.append(
        h(
          "div",
          { class: "card" },
          h("h2", {}, "DDL β by sublayer"),
          h(
            "p",
            { class: "muted small" },
            "β = 2σ(·) ∈ (0, 2): 0 keeps the state, 1 replaces the component along k, 2 reflects it.",
          ),
          bt,
        ),
      );
      const charts = await import("./charts.js");
      if (stopped) return;
      finals.push(
        await charts.staticChart(
          bt,
          betaSpec(
            ok.flatMap((r) =>
              r.beta.map((x) => ({
                run: r.run,
                j: x.j,
                mean: x.mean,
                lo: x.mean - x.std,
                hi: x.mean + x.std,
              })),
            ),
            ids,
          ) as never,
        ),
      );
    }
    document.body.dataset.routingRendered = "1";
  })();
  return () => {
    stopped = true;
    for (const f of finals) f();
  };
}
