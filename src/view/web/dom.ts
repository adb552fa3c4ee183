/**
 * Small browser helpers shared by the pages: an element builder, number formatting, the colour
 * ramps (sequential for α, diverging around 1 for α relative to uniform), a floating tooltip, and
 * JSON requests that turn a server error answer into an Error with its message.
 */
import type { ErrorResponse } from "../api.js";

type Attrs = Record<string, string | number | boolean | null | undefined>;
type Child = Node | string | null | undefined | false;

/** h("div", {class: "x", "data-run": id}, child, …): attributes set, null/false skipped. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

const SVGNS = "http://www.w3.org/2000/svg";
export function s(tag: string, attrs: Attrs = {}, text?: string): SVGElement {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs))
    if (v !== null && v !== undefined && v !== false) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

export function fmt(x: number | null | undefined, digits = 4): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  return x.toFixed(digits);
}

export function pm(v: [number, number | null], digits = 4): string {
  return v[1] === null ? fmt(v[0], digits) : `${fmt(v[0], digits)} ± ${fmt(v[1], digits)}`;
}

export function ago(ms: number | null): string {
  if (ms === null) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return new Date(ms).toISOString().slice(0, 10);
}

type Stop = [number, number, number];
/** Viridis-like stops (perceptually ordered, readable for colour-blind readers). */
const SEQ: Stop[] = [
  [253, 231, 37],
  [94, 201, 98],
  [33, 145, 140],
  [59, 82, 139],
  [68, 1, 84],
];
const SEQ_LIGHT: Stop[] = [
  [255, 255, 255],
  [222, 235, 247],
  [158, 202, 225],
  [66, 146, 198],
  [8, 69, 148],
];
const DIV: Stop[] = [
  [33, 102, 172],
  [146, 197, 222],
  [247, 247, 247],
  [244, 165, 130],
  [178, 24, 43],
];

function ramp(stops: Stop[], t: number): string {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const a = stops[i]!;
  const b = stops[i + 1]!;
  const c = (k: number) => Math.round(a[k]! + (b[k]! - a[k]!) * f);
  return `rgb(${c(0)},${c(1)},${c(2)})`;
}

/** Sequential colour of v in [0, vmax] (dark = large). `light`: white → blue (for text backgrounds). */
export function seqColor(v: number, vmax: number, light = false): string {
  return ramp(light ? SEQ_LIGHT : SEQ, vmax > 0 ? v / vmax : 0);
}

/** Diverging colour of a ratio r to uniform on a log scale: blue < 1 (white) < red, saturating at 1/lim and lim. */
export function divColor(r: number, lim: number): string {
  const l = Math.log(Math.max(r, 1e-9)) / Math.log(lim);
  return ramp(DIV, 0.5 + 0.5 * Math.max(-1, Math.min(1, l)));
}

/** Text colour readable on a sequential background. */
export function inkOn(v: number, vmax: number): string {
  return vmax > 0 && v / vmax > 0.45 ? "#fff" : "#1d2430";
}

export function gradientCss(kind: "seq" | "div" | "light"): string {
  const stops = kind === "seq" ? SEQ : kind === "div" ? DIV : SEQ_LIGHT;
  return `linear-gradient(to right, ${stops.map((c) => `rgb(${c.join(",")})`).join(", ")})`;
}

let tip: HTMLDivElement | null = null;
export function showTip(ev: MouseEvent, text: string): void {
  if (!tip) {
    tip = h("div", { class: "tooltip" });
    document.body.append(tip);
  }
  tip.textContent = text;
  tip.style.display = "block";
  tip.style.left = `${ev.clientX + 12}px`;
  tip.style.top = `${ev.clientY + 12}px`;
}
export function hideTip(): void {
  if (tip) tip.style.display = "none";
}

export async function getJson<T>(url: string, init?: RequestInit): Promise<T> {
  const r = await fetch(url, init);
  const body = (await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }))) as T | ErrorResponse;
  if (!r.ok) throw new Error((body as ErrorResponse).error ?? `${r.status} ${r.statusText}`);
  return body as T;
}

export function errorBox(e: unknown): HTMLElement {
  return h("div", { class: "error-box" }, e instanceof Error ? e.message : String(e));
}

/** Float32Array from base64 little-endian float32 bytes. */
export function f32(b64: string): Float32Array {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

/** The hash route's page and query: "#/routing?run=a" → ["routing", {run: a}]. */
export function route(): { page: string; q: URLSearchParams } {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, query] = hash.split("?");
  return { page: page || "runs", q: new URLSearchParams(query ?? "") };
}

export function go(page: string, q: Record<string, string | string[]> = {}): void {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) for (const x of Array.isArray(v) ? v : [v]) p.append(k, x);
  const qs = p.toString();
  location.hash = `#/${page}${qs ? "?" + qs : ""}`;
}

/** A fixed palette for runs/modes (Tableau 10). */
export const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];
