/**
 * Writes an AnalysisReport (src/analysis/routing.ts) to a folder:
 *   report.json              every number of the report, the verdict sentence and where it came from
 *   summary.md               the verdict, tables per routed call (and β, stream), links to the figures
 *   alpha-heatmap.{svg,png}  mean α: rows = routed calls, columns = sources (empty where a call has fewer)
 *   max-weight.{svg,png}     mean max α by depth against uniform 1/N and the flat threshold factor/N
 *   entropy.{svg,png}        mean routing entropy by depth against ln N
 *   source-norms.{svg,png}   mean ‖s_i‖ per call and source
 *   adjacent-cosine.{svg,png} mean cos(s_i, s_i+1) per call and adjacent pair
 *   effective-rank.{svg,png} effective rank of the sources by depth against N
 *   beta-histograms.{svg,png} β per sublayer (DDL modes)
 *   stream-norms.{svg,png}   mean ‖h‖ entering each sublayer (modes that keep a stream)
 * Figures a mode has no data for are not written.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeFileAtomic } from "../io/atomic.js";
import { figureWithSvg, heading, table, writeReport } from "../io/report.js";
import { heatmap, histogram, lineChart } from "../plot/charts.js";
import { type AnalysisReport, type CallStats, flatteningVerdict } from "./routing.js";

/** Where the report came from (shown in summary.md and kept in report.json). */
export interface AnalysisContext {
  checkpoint?: string;
  data?: string;
  split?: string;
}

export interface WrittenAnalysis {
  dir: string;
  /** Every file written (paths), report.json and summary.md first. */
  files: string[];
  /** Figure base names (without extension) in the order summary.md shows them. */
  figures: string[];
}

const dash = "—";
/** Fixed decimals for bounded statistics (weights, entropies, cosines, ranks). */
export const fx = (x: number | null | undefined, digits = 3): string =>
  x === null || x === undefined || !Number.isFinite(x) ? dash : x.toFixed(digits);
/** Three significant digits for unbounded magnitudes (norms); thousands separators when large. */
export const sig = (x: number | null | undefined): string => {
  if (x === null || x === undefined || !Number.isFinite(x)) return dash;
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en-US");
  if (x === 0) return "0";
  return Math.abs(x) < 1e-3 ? x.toExponential(2) : String(Number(x.toPrecision(3)));
};

/** Heatmap matrix of a per-source statistic: rows = calls, columns = source positions. */
function matrix(
  calls: CallStats[],
  width: number,
  f: (s: CallStats) => readonly (number | null)[],
): (number | null)[][] {
  return calls.map((s) => {
    const v = f(s);
    return Array.from({ length: width }, (_, i) => (i < v.length ? v[i]! : null));
  });
}

async function writeFigures(r: AnalysisReport, dir: string): Promise<{ base: string; caption: string }[]> {
  const out: { base: string; caption: string }[] = [];
  const at = (b: string) => path.join(dir, b);
  const calls = r.calls;
  const rows = calls.map((s) => s.label);
  const sub = `${r.mode}, ${r.sample.tokens.toLocaleString("en-US")} tokens`;
  if (r.routed) {
    await heatmap(at("alpha-heatmap"), {
      title: "Mean routing weight α",
      subtitle: `${sub}; empty cell: not a source of that call`,
      rows,
      columns: r.columns,
      values: matrix(calls, r.columns.length, (s) => s.meanAlpha),
      xTitle: "source",
      yTitle: "routed call",
      legendTitle: "mean α",
      scheme: "blues",
      domain: [0, 1],
    });
    out.push({ base: "alpha-heatmap", caption: "Mean α per routed call (rows) and source (columns)" });
    const fl = r.flattening!.factor;
    await lineChart(at("max-weight"), {
      title: "Mean max routing weight by depth",
      subtitle: `${sub}; flat = at or below ${fl}/N`,
      xTitle: "routed call",
      yTitle: "mean max α",
      series: [
        { name: "mean max weight", points: calls.map((s) => ({ x: s.label, y: s.meanMaxWeight })) },
        {
          name: "uniform 1/N",
          points: calls.map((s) => ({ x: s.label, y: s.uniformWeight })),
          dashed: true,
          color: "#888",
        },
        {
          name: `flat threshold ${fl}/N`,
          points: calls.map((s) => ({ x: s.label, y: Math.min(1, fl / s.sources) })),
          dashed: true,
          color: "#d62728",
        },
      ],
      yDomain: [0, 1],
    });
    out.push({ base: "max-weight", caption: "Mean max weight by depth" });
    await lineChart(at("entropy"), {
      title: "Mean routing entropy by depth",
      subtitle: sub,
      xTitle: "routed call",
      yTitle: "entropy (nats)",
      series: [
        { name: "mean entropy", points: calls.map((s) => ({ x: s.label, y: s.meanEntropy })) },
        {
          name: "uniform ln N",
          points: calls.map((s) => ({ x: s.label, y: s.maxEntropy })),
          dashed: true,
          color: "#888",
        },
      ],
    });
    out.push({ base: "entropy", caption: "Mean entropy by depth" });
    await heatmap(at("source-norms"), {
      title: "Mean source norm ‖s_i‖",
      subtitle: sub,
      rows,
      columns: r.columns,
      values: matrix(calls, r.columns.length, (s) => s.sourceNorms),
      xTitle: "source",
      yTitle: "routed call",
      legendTitle: "mean ‖s‖",
      scheme: "greens",
      format: ".3~g",
    });
    out.push({ base: "source-norms", caption: "Mean L2 norm of each source" });
    const pairs = r.columns.slice(0, -1).map((c, i) => `${c}·${r.columns[i + 1]}`);
    if (pairs.length > 0) {
      await heatmap(at("adjacent-cosine"), {
        title: "Cosine similarity of adjacent sources",
        subtitle: `${sub}; column: pair (s_i, s_i+1)`,
        rows,
        columns: pairs,
        values: matrix(calls, pairs.length, (s) => s.adjacentCosine),
        xTitle: "adjacent pair",
        yTitle: "routed call",
        legendTitle: "mean cos",
        scheme: "redblue",
        domain: [-1, 1],
      });
      out.push({ base: "adjacent-cosine", caption: "Mean cosine similarity of adjacent sources" });
    }
    await lineChart(at("effective-rank"), {
      title: "Effective rank of the sources by depth",
      subtitle: `${sub}; rank on ${r.sample.rankTokens.toLocaleString("en-US")} sampled tokens`,
      xTitle: "routed call",
      yTitle: "effective rank",
      series: [
        { name: "effective rank", points: calls.map((s) => ({ x: s.label, y: s.effectiveRank })) },
        {
          name: "effective rank of the unit-norm sources",
          points: calls.map((s) => ({ x: s.label, y: s.directionalRank })),
        },
        {
          name: "N sources (maximum)",
          points: calls.map((s) => ({ x: s.label, y: s.sources })),
          dashed: true,
          color: "#888",
        },
      ],
    });
    out.push({ base: "effective-rank", caption: "Effective rank of the sources" });
  }
  if (r.beta.length > 0) {
    await histogram(at("beta-histograms"), {
      title: "DDL β per sublayer",
      subtitle: `${sub}; share of tokens per bin`,
      edges: r.beta[0]!.edges,
      panels: r.beta.map((b) => ({ name: b.label, counts: b.counts })),
      xTitle: "β",
      normalize: true,
      columns: 4,
    });
    out.push({ base: "beta-histograms", caption: "Distribution of β per sublayer" });
  }
  if (r.stream.length > 0) {
    await lineChart(at("stream-norms"), {
      title: "Residual stream norm by depth",
      subtitle: `${sub}; h entering each sublayer`,
      xTitle: "sublayer",
      yTitle: "mean ‖h‖",
      series: [{ name: "mean ‖h‖", points: r.stream.map((s) => ({ x: s.label, y: s.meanNorm })) }],
    });
    out.push({ base: "stream-norms", caption: "Mean norm of the residual stream" });
  }
  return out;
}

/** The markdown summary (figures: base names and captions, linked as PNG with an SVG link). */
export function summaryMarkdown(
  r: AnalysisReport,
  figures: { base: string; caption: string }[] = [],
  ctx: AnalysisContext = {},
): string {
  const m = r.model;
  const opts = [
    m.numBlocks !== null ? `${m.numBlocks} blocks` : "",
    m.nullSource ? "null source" : "",
    m.gate ? "gate" : "",
  ].filter(Boolean);
  const L: string[] = [
    heading(1, `Routing analysis: ${r.mode}${opts.length ? ` (${opts.join(", ")})` : ""}`),
    "",
  ];
  if (ctx.checkpoint) L.push(`- checkpoint: \`${ctx.checkpoint}\``);
  if (ctx.data) L.push(`- data: \`${ctx.data}\`${ctx.split ? ` (${ctx.split} split)` : ""}`);
  L.push(
    `- model: ${m.layers} layers, d = ${m.hiddenSize}, vocabulary ${m.vocabSize.toLocaleString("en-US")}, ${m.parameters.toLocaleString("en-US")} parameters`,
    `- sample: ${r.sample.batches} batches × ${r.sample.batchSize} sequences × ${r.sample.seqLen} tokens = ${r.sample.tokens.toLocaleString("en-US")} tokens` +
      (r.routed ? `; effective rank on ${r.sample.rankTokens.toLocaleString("en-US")} of them` : ""),
    "",
  );
  for (const n of r.notes) L.push(`> ${n}`, "");
  if (r.routed) {
    const a = r.averages;
    L.push(
      heading(2, "Verdict"),
      "",
      `- ${flatteningVerdict(r)}`,
      `- Average mean max weight over routed calls with ≥ 2 sources: **${fx(a.maxWeight.all)}** (attention ${fx(a.maxWeight.attn)}, MLP ${fx(a.maxWeight.mlp)}).`,
      `- Average normalised entropy H / ln N: ${fx(a.normalizedEntropy.all)} (1 = uniform); average effective rank of the sources ${fx(a.effectiveRank.all, 2)} (of their directions ${fx(a.directionalRank.all, 2)}).`,
      `- Flattening depth (first call from which every later one is within ${r.flattening!.factor}× of uniform): all calls ${r.flattening!.all?.label ?? "none"}, attention ${r.flattening!.attn?.label ?? "none"}, MLP ${r.flattening!.mlp?.label ?? "none"}.`,
      "",
      heading(2, "Per routed call"),
      "",
      ...table(
        [
          "call",
          "N",
          "mean max α",
          "× uniform",
          "entropy (nats)",
          "H / ln N",
          "eff. rank",
          "dir. rank",
          "mean adj. cos",
          "flat",
        ],
        r.calls.map((s) => [
          s.label,
          String(s.sources),
          fx(s.meanMaxWeight),
          fx(s.sharpness, 2),
          fx(s.meanEntropy),
          fx(s.normalizedEntropy),
          fx(s.effectiveRank, 2),
          fx(s.directionalRank, 2),
          fx(s.meanAdjacentCosine),
          s.flat === null ? dash : s.flat ? "yes" : "no",
        ]),
      ),
      "",
      "× uniform = mean max α · N (1 = uniform routing, N = one-hot); dir. rank = effective rank of the sources scaled to unit norm. Calls with one source have α = 1 by construction.",
      "",
    );
    if (r.columns.length <= 16)
      L.push(
        heading(2, "Mean α per source"),
        "",
        ...table(
          ["call", ...r.columns],
          r.calls.map((s) => [
            s.label,
            ...r.columns.map((_, i) => (i < s.sources ? fx(s.meanAlpha[i], 2) : "")),
          ]),
        ),
        "",
        heading(2, "Mean source norm ‖s_i‖"),
        "",
        ...table(
          ["call", ...r.columns],
          r.calls.map((s) => [
            s.label,
            ...r.columns.map((_, i) => (i < s.sources ? sig(s.sourceNorms[i]) : "")),
          ]),
        ),
        "",
      );
  }
  if (r.beta.length > 0)
    L.push(
      heading(2, "DDL β per sublayer"),
      "",
      ...table(
        ["sublayer", "mean", "std", "min", "max"],
        r.beta.map((b) => [b.label, fx(b.mean), fx(b.std), fx(b.min), fx(b.max)]),
      ),
      "",
    );
  if (r.stream.length > 0)
    L.push(
      heading(2, "Residual stream"),
      "",
      ...table(
        ["sublayer", "mean ‖h‖", "cos(h_j, h_j+1)"],
        r.stream.map((s) => [s.label, sig(s.meanNorm), fx(s.cosineWithNext)]),
      ),
      "",
    );
  if (figures.length > 0) {
    L.push(heading(2, "Figures"), "");
    for (const f of figures) L.push(heading(3, f.caption), "", figureWithSvg(f.caption, f.base), "");
  }
  L.push(
    "Definitions: docs/analysis.md. Means are over every token of the sample; the effective rank is exp of the",
    "entropy of the normalised singular values of the N × d source matrix at a token, averaged over sampled tokens.",
    "",
  );
  return L.join("\n");
}

/** Writes report.json, summary.md and the figures into outDir (created); returns what was written. */
export async function writeAnalysis(
  r: AnalysisReport,
  outDir: string,
  ctx: AnalysisContext = {},
): Promise<WrittenAnalysis> {
  fs.mkdirSync(outDir, { recursive: true });
  const figures = await writeFigures(r, outDir);
  const json = path.join(outDir, "report.json");
  const md = path.join(outDir, "summary.md");
  writeFileAtomic(json, JSON.stringify({ ...ctx, verdict: flatteningVerdict(r), ...r }, null, 2) + "\n");
  writeReport(md, summaryMarkdown(r, figures, ctx));
  return {
    dir: outDir,
    files: [
      json,
      md,
      ...figures.flatMap((f) => [path.join(outDir, `${f.base}.svg`), path.join(outDir, `${f.base}.png`)]),
    ],
    figures: figures.map((f) => f.base),
  };
}
