/**
 * Entry of the `attnres view` front end: a hash router over four pages (runs, curves, routing,
 * token explorer). Each page module exports `mount(el, query) → cleanup`; the router calls the
 * previous page's cleanup (timers, event streams) before mounting the next.
 */
import type { RunsResponse } from "../api.js";
import { getJson, route } from "./dom.js";
import { mountRuns } from "./runs-page.js";
import { mountCurves } from "./curves-page.js";
import { mountRouting } from "./routing-page.js";
import { mountTokens } from "./tokens-page.js";

type Mount = (el: HTMLElement, q: URLSearchParams) => () => void;
const PAGES: Record<string, Mount> = {
  runs: mountRuns,
  curves: mountCurves,
  routing: mountRouting,
  tokens: mountTokens,
};

let cleanup: (() => void) | null = null;

function show(): void {
  const { page, q } = route();
  const app = document.getElementById("app")!;
  cleanup?.();
  cleanup = null;
  app.replaceChildren();
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a"))
    a.classList.toggle("active", a.dataset.page === page);
  const mount = PAGES[page] ?? mountRuns;
  document.title = `attnres view · ${page}`;
  cleanup = mount(app, q);
}

window.addEventListener("hashchange", show);
show();
void getJson<RunsResponse>("/api/runs")
  .then((r) => (document.getElementById("root-label")!.textContent = r.root))
  .catch(() => {});
