/**
 * Token explorer: type text or pick a validation passage; the server runs the checkpoint with the
 * routing trace (/api/trace). The tokens are shaded by their max α at the chosen sublayer; an
 * overview (sublayer × token) shows the max α of every token at every depth. Clicking a token
 * (or an overview cell) selects it: its α over sources at the chosen sublayer (bars with data-source
 * and data-alpha, uniform 1/N dashed), the strip of its max α at every depth, and its whole α
 * matrix (sublayer × source; click a row to choose the sublayer).
 */
import type { PassagesResponse, RunProblem, RunRow, RunsResponse, TraceResponse } from "../api.js";
import { errorBox, f32, fmt, getJson, go, gradientCss, h, hideTip, seqColor, showTip } from "./dom.js";
import { heatmap } from "./heatmap.js";

interface Decoded {
  res: TraceResponse;
  alphas: Float32Array[];
  /** max α [call][token] */
  maxes: Float32Array[];
}

function decode(res: TraceResponse): Decoded {
  const T = res.ids.length;
  const alphas = res.calls.map((c) => f32(c.alpha));
  const maxes = res.calls.map((c, k) => {
    const a = alphas[k]!;
    const N = c.sources;
    const m = new Float32Array(T);
    for (let t = 0; t < T; t++) {
      let mx = 0;
      for (let i = 0; i < N; i++) mx = Math.max(mx, a[t * N + i]!);
      m[t] = mx;
    }
    return m;
  });
  return { res, alphas, maxes };
}

/** How far a max weight is from uniform 1/N (0) towards one-hot (1): the shade of tokens and cells. */
export const sharpness = (max: number, N: number): number => (N > 1 ? (max - 1 / N) / (1 - 1 / N) : 0);

const shown = (p: string) => p.replace(/\n/g, "⏎\n").replace(/\t/g, "⇥");

export function mountTokens(el: HTMLElement, q: URLSearchParams): () => void {
  const runId = q.get("run") ?? "";
  let stopped = false;
  const sel = h("select", { id: "tok-run" }) as HTMLSelectElement;
  const passSel = h(
    "select",
    { id: "passage" },
    h("option", { value: "" }, "— a validation passage —"),
  ) as HTMLSelectElement;
  const text = h("textarea", {
    id: "tok-text",
    placeholder: "Type text to trace…",
    maxlength: 20000,
  }) as HTMLTextAreaElement;
  const runBtn = h("button", { class: "primary", id: "tok-go" }, "Trace") as HTMLButtonElement;
  const info = h("span", { class: "muted small", id: "tok-info" });
  const out = h("div", { id: "tok-out" });
  el.append(
    h("div", { class: "page-head" }, h("h1", {}, "Token explorer")),
    h(
      "div",
      { class: "card" },
      h("div", { class: "toolbar" }, h("label", {}, "run ", sel), passSel),
      text,
      h("div", { class: "toolbar" }, runBtn, info),
    ),
    out,
  );
  sel.onchange = () => go("tokens", sel.value ? { run: sel.value } : {});

  let d: Decoded | null = null;
  /** The chosen routed call; -1 until the first trace, which chooses the deepest one. */
  let callIdx = -1;
  let tokIdx = 0;

  const trace = async (body: object) => {
    runBtn.disabled = true;
    info.textContent = "running…";
    try {
      const t0 = performance.now();
      const res = await getJson<TraceResponse | RunProblem>("/api/trace", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ run: runId, ...body }),
      });
      if (stopped) return;
      if ("error" in res) throw new Error(res.error);
      d = decode(res);
      if (callIdx < 0 || callIdx >= res.calls.length) callIdx = Math.max(0, res.calls.length - 1);
      tokIdx = 0;
      info.textContent = `${res.ids.length} tokens${res.truncated ? " (cut to the model's context)" : ""} · forward ${res.runMs.toFixed(0)} ms${res.loadMs ? `, model load ${res.loadMs.toFixed(0)} ms` : ""} · round trip ${(performance.now() - t0).toFixed(0)} ms`;
      render();
    } catch (e) {
      out.replaceChildren(errorBox(e));
      info.textContent = "";
    } finally {
      runBtn.disabled = false;
    }
  };
  runBtn.onclick = () => {
    if (text.value) void trace({ text: text.value });
  };
  passSel.onchange = () => {
    if (passSel.value !== "") void trace({ passage: Number(passSel.value) });
  };

  function render(): void {
    hideTip();
    if (!d) return;
    const { res } = d;
    const T = res.ids.length;
    if (res.calls.length === 0) {
      out.replaceChildren(
        h(
          "div",
          { class: "card" },
          h(
            "div",
            { class: "note" },
            `${res.mode} does not route over depth: there are no routing weights to explore.`,
          ),
          tokensView(null),
        ),
      );
      return;
    }
    const call = res.calls[callIdx]!;
    const callSel = h(
      "select",
      { id: "sublayer" },
      ...res.calls.map((c, k) =>
        h(
          "option",
          { value: k, selected: k === callIdx },
          `${c.label} (${c.sources} source${c.sources === 1 ? "" : "s"})`,
        ),
      ),
    ) as HTMLSelectElement;
    callSel.onchange = () => {
      callIdx = Number(callSel.value);
      render();
    };
    const N = call.sources;
    const a = d.alphas[callIdx]!;
    const row = Array.from(a.subarray(tokIdx * N, tokIdx * N + N));
    const amax = Math.max(...row, 1 / N) * 1.15;
    const bars = h(
      "div",
      { class: "bars", id: "alpha-bars", "data-token": tokIdx, "data-call": String(call.key) },
      ...row.flatMap((v, i) => [
        h("span", { class: "mono" }, call.sourceLabels[i]!),
        h(
          "div",
          { class: "bar-track" },
          h("div", {
            class: "bar alpha-bar",
            "data-source": i,
            "data-alpha": String(v),
            style: `width:${(100 * v) / amax}%`,
          }),
          h("div", {
            class: "uniform",
            style: `left:${(100 / N / amax).toFixed(2)}%`,
            title: `uniform 1/${N}`,
          }),
        ),
        h("span", { class: "mono" }, fmt(v, 4)),
      ]),
    );
    const strip = h(
      "div",
      { class: "strip", id: "max-strip" },
      ...res.calls.map((c, k) => {
        const v = d!.maxes[k]![tokIdx]!;
        const cell = h(
          "div",
          {
            class: `strip-cell${k === callIdx ? " selected" : ""}`,
            "data-call": String(c.key),
            "data-max": String(v),
            style: `background:${seqColor(sharpness(v, c.sources), 1, true)};color:${sharpness(v, c.sources) > 0.6 ? "#fff" : "#1d2430"}`,
            title: `${c.label}: max α ${fmt(v, 3)} (uniform 1/${c.sources})`,
          },
          h("span", {}, c.label.replace("L", "").replace(".attn", "a").replace(".mlp", "m")),
          h("span", {}, fmt(v, 2)),
        );
        cell.onclick = () => {
          callIdx = k;
          render();
        };
        return cell;
      }),
    );
    const widest = res.calls.reduce((w, c) => (c.sources > w.sources ? c : w), res.calls[0]!);
    const matrix = heatmap(
      res.calls.map((c, k) => ({
        key: c.key,
        label: c.label,
        sourceLabels: c.sourceLabels,
        values: d!.alphas[k]!.subarray(tokIdx * c.sources, tokIdx * c.sources + c.sources),
      })),
      {
        columns: widest.sourceLabels,
        vmax: 1,
        scale: "alpha",
        width: 520,
        selectedRow: call.key,
        onRowClick: (key) => ((callIdx = res.calls.findIndex((c) => c.key === key)), render()),
        id: "token-matrix",
      },
    );
    const piece = res.pieces[tokIdx] ?? "";
    out.replaceChildren(
      h(
        "div",
        { class: "card" },
        h(
          "div",
          { class: "toolbar" },
          h("label", {}, "sublayer ", callSel),
          h(
            "span",
            { class: "small muted" },
            "shade: max α at this sublayer, from uniform 1/N",
            h("span", { class: "legend-bar", style: `background:${gradientCss("light")}` }),
            "to 1",
          ),
        ),
        tokensView(d.maxes[callIdx]!, N),
        h("h3", {}, "Max α of every token at every depth"),
        h(
          "p",
          { class: "muted small" },
          "Rows: sublayers (first at the top); columns: tokens; shade from uniform 1/N (light) to 1 (dark). Click to choose.",
        ),
        overview(),
      ),
      h(
        "div",
        { class: "grid2" },
        h(
          "div",
          { class: "card" },
          h(
            "h2",
            {},
            "Token ",
            h("span", { class: "mono", id: "sel-token" }, JSON.stringify(piece)),
            ` #${tokIdx} at ${call.label}`,
          ),
          h(
            "p",
            { class: "muted small" },
            `α over its ${N} sources (dashed: uniform 1/${N} = ${fmt(1 / N, 3)})`,
          ),
          bars,
          h("h3", {}, "Its max α at every depth"),
          strip,
        ),
        h("div", { class: "card" }, h("h2", {}, "Its α over sources at every sublayer"), matrix),
      ),
    );
    void T;
  }

  function tokensView(shade: Float32Array | null, N = 1): HTMLElement {
    const res = d!.res;
    return h(
      "div",
      { class: "tokens", id: "tokens" },
      ...res.pieces.map((p, i) => {
        const v = shade ? shade[i]! : 0;
        const sh = sharpness(v, N);
        const span = h(
          "span",
          {
            class: `tok${i === tokIdx ? " selected" : ""}${p === "" ? " empty" : ""}`,
            "data-i": i,
            "data-id": res.ids[i]!,
            style: shade
              ? `background:${seqColor(sh, 1, true)};color:${sh > 0.6 ? "#fff" : "#1d2430"}`
              : null,
          },
          shown(p),
        );
        span.onclick = () => {
          tokIdx = i;
          render();
        };
        span.onmousemove = (ev) =>
          showTip(ev, `#${i} id ${res.ids[i]}${shade ? ` · max α ${fmt(v, 3)}` : ""}`);
        span.onmouseleave = hideTip;
        return span;
      }),
    );
  }

  function overview(): HTMLElement {
    const { res, maxes } = d!;
    const T = res.ids.length;
    const R = res.calls.length;
    const cw = Math.max(2, Math.min(12, Math.floor(1100 / T)));
    const rh = Math.max(6, Math.min(12, Math.floor(240 / R)));
    const c = h("canvas", {
      class: "overview",
      id: "overview",
      width: T * cw,
      height: R * rh,
      style: `width:${T * cw}px;height:${R * rh}px;max-width:100%`,
    }) as HTMLCanvasElement;
    const g = c.getContext("2d")!;
    for (let r = 0; r < R; r++)
      for (let t = 0; t < T; t++) {
        g.fillStyle = seqColor(sharpness(maxes[r]![t]!, res.calls[r]!.sources), 1, true);
        g.fillRect(t * cw, r * rh, cw, rh);
      }
    g.strokeStyle = "#e4572e";
    g.lineWidth = 2;
    g.strokeRect(tokIdx * cw + 1, 1, cw - 2, R * rh - 2);
    g.strokeRect(1, callIdx * rh + 1, T * cw - 2, rh - 2);
    const at = (ev: MouseEvent) => {
      const b = c.getBoundingClientRect();
      const t = Math.floor(((ev.clientX - b.left) / b.width) * T);
      const r = Math.floor(((ev.clientY - b.top) / b.height) * R);
      return { t: Math.min(T - 1, Math.max(0, t)), r: Math.min(R - 1, Math.max(0, r)) };
    };
    c.onclick = (ev) => {
      const { t, r } = at(ev);
      tokIdx = t;
      callIdx = r;
      render();
    };
    c.onmousemove = (ev) => {
      const { t, r } = at(ev);
      showTip(
        ev,
        `${res.calls[r]!.label} · #${t} ${JSON.stringify(res.pieces[t])} · max α ${fmt(maxes[r]![t]!, 3)}`,
      );
    };
    c.onmouseleave = hideTip;
    return c;
  }

  void (async () => {
    try {
      const runs: RunRow[] = (await getJson<RunsResponse>("/api/runs")).runs.filter((r) => r.checkpoint);
      if (stopped) return;
      sel.replaceChildren(
        h("option", { value: "" }, "— choose a run —"),
        ...runs.map((r) => h("option", { value: r.id }, `${r.id} (${r.mode ?? "?"})`)),
      );
      sel.value = runId;
      if (!runId) {
        out.append(
          h(
            "p",
            { class: "muted" },
            runs.length ? "Choose a run with a checkpoint." : "No run has a checkpoint yet.",
          ),
        );
        runBtn.disabled = true;
        return;
      }
      const p = await getJson<PassagesResponse>(`/api/passages?run=${encodeURIComponent(runId)}`);
      if (stopped) return;
      if (p.error) info.textContent = `validation passages unavailable: ${p.error}`;
      passSel.append(
        ...p.passages.map((x) => h("option", { value: x.index }, `#${x.index}: ${x.preview.slice(0, 60)}…`)),
      );
      document.body.dataset.tokensReady = "1";
      if (p.passages.length) {
        passSel.value = "0";
        await trace({ passage: 0 });
      }
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  })();
  return () => {
    stopped = true;
    hideTip();
  };
}
