/**
 * Runs page: every run under RUNS_DIR in a sortable table (mode, seed, preset, model size, steps
 * done/total, train/val loss, status, last update; a malformed run's error on its own line), and
 * every compare folder as a group card with its results table (mean ± std per mode, Welch's
 * t-test against standard). Refreshed every 2 s, keeping the sort and the selection.
 * Marks `document.body.dataset.runsRendered` and performance mark "runs-rendered" on first render.
 */
import type { GroupRow, RunRow, RunsResponse } from "../api.js";
import { ago, errorBox, fmt, getJson, go, h, pm } from "./dom.js";

type Key =
  "id" | "mode" | "seed" | "preset" | "model" | "steps" | "trainLoss" | "valLoss" | "status" | "updated";
const COLUMNS: [Key, string, boolean][] = [
  ["id", "run", false],
  ["mode", "mode", false],
  ["seed", "seed", true],
  ["preset", "preset", false],
  ["model", "model", false],
  ["steps", "steps", true],
  ["trainLoss", "train loss", true],
  ["valLoss", "val loss", true],
  ["status", "status", false],
  ["updated", "updated", true],
];

const value = (r: RunRow, k: Key): string | number | null => {
  switch (k) {
    case "model":
      return r.layers === null ? null : r.layers * 1e5 + (r.hidden ?? 0);
    case "steps":
      return r.steps;
    default:
      return r[k] as string | number | null;
  }
};

export function sortRuns(rows: RunRow[], key: Key, dir: 1 | -1): RunRow[] {
  return [...rows].sort((a, b) => {
    const x = value(a, key);
    const y = value(b, key);
    if (x === null && y === null) return a.id.localeCompare(b.id);
    if (x === null) return 1;
    if (y === null) return -1;
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return c === 0 ? a.id.localeCompare(b.id) : c * dir;
  });
}

export function mountRuns(el: HTMLElement): () => void {
  let sortKey: Key = "id";
  let sortDir: 1 | -1 = 1;
  const selected = new Set<string>();
  let data: RunsResponse | null = null;
  let first = true;

  const head = h(
    "div",
    { class: "page-head" },
    h("h1", {}, "Runs"),
    h("span", { class: "muted", id: "runs-count" }),
  );
  const actions = h("div", { class: "toolbar" });
  const tableCard = h("div", { class: "card" });
  const groupsEl = h("div", { id: "groups" });
  const err = h("div");
  el.append(head, actions, err, tableCard, groupsEl);

  const btnCurves = h("button", { class: "primary", id: "btn-curves" }, "Curves of selected");
  const btnRouting = h("button", { id: "btn-routing" }, "Routing of selected (1–2)");
  const btnTokens = h("button", { id: "btn-tokens" }, "Token explorer");
  actions.append(
    btnCurves,
    btnRouting,
    btnTokens,
    h("span", { class: "muted small" }, "select runs with the boxes"),
  );
  btnCurves.onclick = () => go("curves", { run: [...selected] });
  btnRouting.onclick = () => {
    const [a, b] = [...selected];
    go("routing", { ...(a ? { run: a } : {}), ...(b ? { vs: b } : {}) });
  };
  btnTokens.onclick = () => go("tokens", [...selected][0] ? { run: [...selected][0]! } : {});

  const updateButtons = () => {
    btnCurves.disabled = selected.size === 0;
    btnRouting.disabled = selected.size === 0 || selected.size > 2;
  };

  const table = h("table", { class: "data", id: "runs-table" });
  const thead = h("thead");
  const tbody = h("tbody");
  table.append(thead, tbody);
  tableCard.append(table);
  const headRow = h("tr", {}, h("th", {}, ""));
  for (const [k, label, num] of COLUMNS) {
    const th = h("th", { class: `sortable${num ? " num" : ""}`, "data-sort": k }, label);
    th.onclick = () => {
      if (sortKey === k) sortDir = sortDir === 1 ? -1 : 1;
      else {
        sortKey = k;
        sortDir = 1;
      }
      render();
    };
    headRow.append(th);
  }
  thead.append(headRow);

  const row = (r: RunRow): HTMLElement[] => {
    const box = h("input", { type: "checkbox", checked: selected.has(r.id) }) as HTMLInputElement;
    box.onchange = () => {
      if (box.checked) selected.add(r.id);
      else selected.delete(r.id);
      updateButtons();
    };
    const frac = r.totalSteps ? Math.min(1, r.steps / r.totalSteps) : 0;
    const bar = h("span", { class: "progress" }, h("i", { style: `width:${(100 * frac).toFixed(1)}%` }));
    const links = h(
      "span",
      { class: "small" },
      " ",
      h("a", { href: `#/curves?run=${encodeURIComponent(r.id)}` }, "curves"),
      r.checkpoint ? " · " : "",
      r.checkpoint ? h("a", { href: `#/routing?run=${encodeURIComponent(r.id)}` }, "routing") : "",
      r.checkpoint ? " · " : "",
      r.checkpoint ? h("a", { href: `#/tokens?run=${encodeURIComponent(r.id)}` }, "tokens") : "",
    );
    const tr = h(
      "tr",
      { "data-run": r.id, "data-status": r.status, class: r.error ? "has-error" : null },
      h("td", {}, box),
      h("td", { class: "mono" }, r.id, links),
      h("td", { class: "c-mode" }, r.mode ?? "–"),
      h("td", { class: "num" }, r.seed === null ? "–" : String(r.seed)),
      h("td", {}, r.preset ?? "–"),
      h("td", {}, r.layers === null ? "–" : `${r.layers}L × d${r.hidden}`),
      h(
        "td",
        { class: "num c-steps", "data-steps": r.steps },
        `${r.steps}${r.totalSteps ? ` / ${r.totalSteps}` : ""}`,
        bar,
      ),
      h("td", { class: "num c-train" }, fmt(r.trainLoss)),
      h("td", { class: "num c-val" }, fmt(r.valLoss)),
      h("td", {}, h("span", { class: `pill ${r.status}` }, r.status)),
      h("td", { class: "num muted" }, ago(r.updated)),
    );
    const out = [tr];
    if (r.error)
      out.push(
        h(
          "tr",
          { class: "error-detail", "data-error-for": r.id },
          h("td"),
          h("td", { colspan: 10 }, r.error),
        ),
      );
    return out;
  };

  const groupCard = (g: GroupRow): HTMLElement => {
    const rows = g.table.map((m) =>
      h(
        "tr",
        { "data-mode": m.mode },
        h("td", {}, m.mode),
        h("td", { class: "num" }, String(m.runs)),
        h("td", { class: "num" }, pm(m.valLoss)),
        h("td", { class: "num" }, pm(m.perplexity, 2)),
        h("td", { class: "num" }, pm(m.bpb)),
        h("td", { class: "num" }, m.params.toLocaleString("en-US")),
        h("td", { class: "num" }, m.vsStandard ? fmt(m.vsStandard.delta) : "–"),
        h("td", { class: "num" }, m.vsStandard ? fmt(m.vsStandard.t, 2) : "–"),
        h("td", { class: "num" }, m.vsStandard ? fmt(m.vsStandard.df, 1) : "–"),
        h("td", { class: "num" }, m.vsStandard ? m.vsStandard.p.toPrecision(3) : "–"),
      ),
    );
    const curves = h("button", {}, "curves of this group");
    curves.onclick = () => go("curves", { run: g.runs });
    return h(
      "div",
      { class: "card group", "data-group": g.id },
      h(
        "div",
        { class: "page-head" },
        h("h2", {}, `Compare: ${g.id}`),
        h("span", { class: "muted" }, `${g.runs.length} runs`),
        g.hasResults
          ? h(
              "a",
              { href: `/files/${g.id.split("/").map(encodeURIComponent).join("/")}/results.md` },
              "results.md",
            )
          : null,
        curves,
      ),
      g.table.length
        ? h(
            "table",
            { class: "data" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ...[
                  "mode",
                  "runs",
                  "val loss",
                  "perplexity",
                  "bits/byte",
                  "parameters",
                  "Δ vs standard",
                  "t",
                  "df",
                  "p",
                ].map((t, i) => h("th", { class: i ? "num" : null }, t)),
              ),
            ),
            h("tbody", {}, rows),
          )
        : h("p", { class: "muted" }, "No finished run yet."),
      h(
        "p",
        { class: "muted small" },
        "Mean ± sample standard deviation over the finished seeds; Welch's two-sided t-test of validation loss against standard.",
      ),
    );
  };

  function render(): void {
    if (!data) return;
    for (const th of thead.querySelectorAll<HTMLElement>("th[data-sort]")) {
      th.classList.toggle("sorted-asc", th.dataset.sort === sortKey && sortDir === 1);
      th.classList.toggle("sorted-desc", th.dataset.sort === sortKey && sortDir === -1);
    }
    document.getElementById("root-label")!.textContent = data.root;
    head.querySelector("#runs-count")!.textContent =
      `${data.runs.length} run${data.runs.length === 1 ? "" : "s"} in ${data.root}`;
    const ids = new Set(data.runs.map((r) => r.id));
    for (const s of [...selected]) if (!ids.has(s)) selected.delete(s);
    tbody.replaceChildren(...sortRuns(data.runs, sortKey, sortDir).flatMap(row));
    if (data.runs.length === 0)
      tbody.append(
        h(
          "tr",
          {},
          h(
            "td",
            { colspan: 11, class: "muted" },
            "No runs here yet: train one with attnres train --out <folder>.",
          ),
        ),
      );
    groupsEl.replaceChildren(...data.groups.map(groupCard));
    updateButtons();
    if (first) {
      first = false;
      performance.mark("runs-rendered");
      document.body.dataset.runsRendered = String(performance.now());
    }
  }

  let stopped = false;
  let timer = 0;
  const load = async () => {
    try {
      data = await getJson<RunsResponse>("/api/runs");
      err.replaceChildren();
      render();
    } catch (e) {
      err.replaceChildren(errorBox(e));
    }
    if (!stopped) timer = window.setTimeout(load, 2000);
  };
  void load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
