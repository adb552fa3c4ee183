/**
 * Routing analysis (`attnres analyze`): the statistics on hand-made inputs with known answers
 * (max weight and entropy, norms, cosines, Jacobi eigenvalues, effective rank, the flattening
 * depth), the report of a tiny model in every residual mode (checked against model.analyze and
 * against the traced sources directly), the files written (SVG that resvg parses, PNGs with text
 * in the bundled font, summary tables), and the command's errors.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { Resvg } from "@resvg/resvg-js";
import { Command } from "commander";
import { writeAnalysis } from "../src/analysis/report.js";
import {
  analyzeModel,
  callLabel,
  cosine,
  effectiveRank,
  effectiveRankFromGram,
  flatteningPoint,
  flatteningVerdict,
  l2Norm,
  maxAndEntropy,
  sourceLabel,
  symmetricEigenvalues,
  unitGram,
  type AnalysisReport,
} from "../src/analysis/routing.js";
import { registerAnalyze } from "../src/cli/analyze.js";
import { evalBatches } from "../src/data/batches.js";
import { saveCheckpoint } from "../src/model/checkpoint.js";
import { DecoderLM } from "../src/model/decoder.js";
import { tidy } from "../src/tensor/memory.js";
import { Rng } from "../src/tensor/random.js";
import { noGrad } from "../src/tensor/tensor.js";
import { heatmap, histogram, lineChart, PNG_SCALE, resvgOptions } from "../src/plot/index.js";
import { sampleText, writePreparedBytes, tempDir } from "./helpers.js";
import type { DecoderLMConfig } from "../src/model/config.js";

const work = tempDir("analysis");

const close = (a: number | null, b: number, tol: number, what: string) => {
  assert.ok(a !== null && Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);
};

/** A random orthonormal set of n vectors in R^d (Gram–Schmidt on normals). */
function orthonormal(rng: Rng, n: number, d: number): Float64Array[] {
  const out: Float64Array[] = [];
  while (out.length < n) {
    const v = Float64Array.from({ length: d }, () => rng.normal());
    for (const u of out) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += v[k]! * u[k]!;
      for (let k = 0; k < d; k++) v[k]! -= dot * u[k]!;
    }
    const nv = l2Norm(v, d);
    for (let k = 0; k < d; k++) v[k]! /= nv;
    out.push(v);
  }
  return out;
}

describe("statistics on known inputs", () => {
  test("max weight and entropy: uniform vs one-hot", () => {
    const u = maxAndEntropy([0.25, 0.25, 0.25, 0.25], 4);
    close(u.max, 0.25, 1e-15, "uniform max");
    close(u.entropy, Math.log(4), 1e-15, "uniform entropy");
    const h = maxAndEntropy([9, 0, 1, 0, 0], 4, 1); // offset 1: [0, 1, 0, 0]
    assert.equal(h.max, 1);
    assert.equal(h.entropy, 0);
  });

  test("norms and cosines", () => {
    assert.equal(l2Norm([3, 4], 2), 5);
    assert.equal(l2Norm([7, 3, 4], 2, 1), 5);
    close(cosine([1, 2, 3], [1, 2, 3], 3), 1, 1e-15, "identical");
    close(cosine([1, 2, 3], [2, 4, 6], 3), 1, 1e-15, "parallel");
    assert.equal(cosine([1, 0], [0, 5], 2), 0);
    close(cosine([1, 2], [-1, -2], 2), -1, 1e-15, "opposite");
    assert.equal(cosine([0, 0], [1, 2], 2), null);
    close(cosine([9, 1, 1, 0, 0, 1], [1, 1], 2, 4, 0), 1 / Math.SQRT2, 1e-15, "offsets");
  });

  test("Jacobi eigenvalues of Q diag(λ) Qᵀ recover λ", () => {
    const rng = new Rng(3);
    for (const n of [1, 2, 5, 9]) {
      const Q = orthonormal(rng, n, n);
      const lam = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 0 : (i + 1) * (i % 2 ? 1 : -0.5)));
      const A = new Float64Array(n * n);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++)
          for (let k = 0; k < n; k++) A[i * n + j]! += Q[k]![i]! * lam[k]! * Q[k]![j]!;
      const got = [...symmetricEigenvalues(A, n)].sort((a, b) => a - b);
      const want = [...lam].sort((a, b) => a - b);
      got.forEach((g, i) => close(g, want[i]!, 1e-10, `n=${n} eigenvalue ${i}`));
    }
  });

  test("effective rank: orthogonal, identical, unequal and zero sources", () => {
    const rng = new Rng(5);
    const basis = orthonormal(rng, 5, 8);
    close(effectiveRank(basis), 5, 1e-9, "5 orthonormal sources");
    const scaled = basis.map((v) => v.map((x) => 7 * x));
    close(effectiveRank(scaled), 5, 1e-9, "scale does not matter");
    const same = Array.from({ length: 4 }, () => Float64Array.from(basis[0]!));
    close(effectiveRank(same), 1, 1e-6, "identical sources");
    const parallel = [1, 2, 3].map((c) => basis[1]!.map((x) => c * x));
    close(effectiveRank(parallel), 1, 1e-6, "parallel sources of different norms");
    // σ = (3, 1): p = (3/4, 1/4).
    const two = [basis[0]!.map((x) => 3 * x), basis[1]!];
    close(effectiveRank(two), Math.exp(-(0.75 * Math.log(0.75) + 0.25 * Math.log(0.25))), 1e-9, "σ = 3, 1");
    assert.equal(effectiveRank([new Float64Array(4), new Float64Array(4)]), null);
    // Directions only: the same two sources scaled to unit norm are of full rank.
    const G = new Float64Array([9, 0, 0, 1]);
    close(effectiveRankFromGram(...unitGram(G, 2)), 2, 1e-9, "unit-norm rank");
    // A zero source is left out of the unit-norm Gram matrix.
    const [U, m] = unitGram(new Float64Array([4, 0, 2, 0, 0, 0, 2, 0, 1]), 3);
    assert.equal(m, 2);
    close(U[1]!, 1, 1e-15, "cos of parallel sources");
  });

  test("flattening point: the first call of the flat tail, ignoring single-source calls", () => {
    const mk = (flat: (boolean | null)[]) =>
      flat.map((f, j) => ({ key: j, label: callLabel(j), layer: j >> 1, flat: f }));
    assert.equal(flatteningPoint(mk([null, false, true, false, true, true]))?.label, "L2.attn");
    assert.equal(flatteningPoint(mk([null, true, true, null, true]))?.label, "L0.mlp");
    assert.equal(flatteningPoint(mk([true, true, false])), null);
    assert.equal(flatteningPoint(mk([null, null])), null);
  });
});

// ---------------------------------------------------------------------------------------------

const backbone: DecoderLMConfig = {
  model_type: "qwen3",
  vocab_size: 256,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 3,
  num_attention_heads: 2,
  max_position_embeddings: 32,
};
const L = backbone.num_hidden_layers;

const MODES: [
  string,
  Record<string, unknown>,
  { calls: number; widest: number; beta: number; stream: number },
][] = [
  ["standard", {}, { calls: 0, widest: 0, beta: 0, stream: 2 * L }],
  // N = j + 1 at sublayer j (h0 and every earlier output); the final call reads all 2L + 1.
  ["attnres-full", { attnres_mode: "full" }, { calls: 2 * L + 1, widest: 2 * L + 1, beta: 0, stream: 0 }],
  [
    "attnres-block",
    { attnres_mode: "block", attnres_num_blocks: 2 },
    { calls: 2 * L + 1, widest: 3, beta: 0, stream: 0 },
  ],
  // Sublayer 0 has no sources (no call) unless there is a null source.
  ["delta", { attnres_mode: "delta" }, { calls: 2 * L - 1, widest: 2 * L, beta: 0, stream: 2 * L }],
  [
    "delta+null+gate",
    { attnres_mode: "delta", attnres_use_null_source: true, attnres_gate_type: "learnable_alpha" },
    { calls: 2 * L, widest: 2 * L + 1, beta: 0, stream: 2 * L },
  ],
  [
    "delta-block",
    { attnres_mode: "delta_block", attnres_num_blocks: 2 },
    { calls: 2 * L - 1, widest: 2, beta: 0, stream: 2 * L },
  ],
  ["ddl", { attnres_mode: "ddl" }, { calls: 0, widest: 0, beta: 2 * L, stream: 2 * L }],
  ["ddl-expanded", { attnres_mode: "ddl_expanded" }, { calls: 0, widest: 0, beta: 2 * L, stream: 0 }],
];

/** A tiny model with random routing queries and null sources (so routing is not uniform). */
function tinyModel(extra: Record<string, unknown>, opts: { randomRouting?: boolean } = {}): DecoderLM {
  const model = new DecoderLM({ ...backbone, ...extra }, { seed: 1 });
  if (opts.randomRouting ?? true) {
    const rng = new Rng(9);
    for (const [name, p] of model.namedParameters())
      if (/res_proj|null_source|res_alpha/.test(name))
        for (let i = 0; i < p.size; i++)
          p.data[i] = (name.includes("res_proj") ? 2 : 0.5) * rng.normal() + (name.includes("alpha") ? 1 : 0);
  }
  return model;
}

const text = sampleText(6000);
const tokens = Int32Array.from(Buffer.from(text, "utf8"));
const batches = evalBatches(tokens, 2, 16, 2);

describe("analyzeModel in every mode", () => {
  for (const [name, extra, want] of MODES)
    test(name, () => {
      const model = tinyModel(extra);
      try {
        const r = analyzeModel(model, batches, { rankTokens: 8 });
        assert.equal(r.sample.tokens, 2 * 2 * 16);
        assert.equal(r.routed, want.calls > 0);
        assert.equal(r.calls.length, want.calls, "routed calls");
        assert.equal(r.columns.length, want.widest, "heatmap columns");
        assert.equal(r.beta.length, want.beta, "β sublayers");
        assert.equal(r.stream.length, want.stream, "stream entries");
        if (!r.routed) {
          assert.equal(r.flattening, null);
          assert.match(r.notes.join(" "), /do(es)? not route over depth/);
          assert.match(flatteningVerdict(r), /no depth routing/);
        } else {
          assert.ok(r.flattening);
          if (r.calls.some((s) => s.key === "final")) assert.equal(r.calls.at(-1)!.key, "final");
        }
        for (const s of r.calls) {
          const N = s.sources;
          assert.equal(s.meanAlpha.length, N, `${s.label}: one mean α per source`);
          assert.equal(s.sourceNorms.length, N);
          assert.equal(s.sourceLabels.length, N);
          assert.deepEqual(
            s.sourceLabels,
            r.columns.slice(0, N),
            `${s.label}: labels are the columns' prefix`,
          );
          assert.equal(s.adjacentCosine.length, N - 1);
          close(
            s.meanAlpha.reduce((p, q) => p + q, 0),
            1,
            1e-5,
            `${s.label}: mean α sums to 1`,
          );
          assert.ok(
            s.meanMaxWeight >= 1 / N - 1e-6 && s.meanMaxWeight <= 1 + 1e-6,
            `${s.label}: max weight in [1/N, 1]`,
          );
          assert.ok(
            s.meanEntropy >= -1e-9 && s.meanEntropy <= Math.log(N) + 1e-6,
            `${s.label}: entropy in [0, ln N]`,
          );
          if (s.effectiveRank !== null)
            assert.ok(
              s.effectiveRank >= 1 - 1e-6 && s.effectiveRank <= N + 1e-6,
              `${s.label}: rank in [1, N]`,
            );
          for (const c of s.adjacentCosine) if (c !== null) assert.ok(c >= -1 && c <= 1);
          assert.equal(s.flat, N > 1 ? s.meanMaxWeight <= 1.5 / N : null);
        }
        for (const b of r.beta) {
          assert.equal(
            b.counts.reduce((p, q) => p + q, 0),
            r.sample.tokens,
            `${b.label}: every token binned`,
          );
          assert.ok(b.min > 0 && b.max < 2 && b.mean >= b.min && b.mean <= b.max);
        }
        for (const s of r.stream) assert.ok(s.meanNorm > 0);
      } finally {
        model.dispose();
      }
    });

  test("over hidden states the sources are named as the stream after each sublayer", () => {
    for (const mode of ["full", "delta"]) {
      const model = tinyModel({ attnres_mode: mode, attnres_sources: "states" });
      try {
        const r = analyzeModel(model, batches, { rankTokens: 8 });
        assert.deepEqual(
          r.columns.slice(0, 4),
          ["h0", "after L0.attn", "after L0.mlp", "after L1.attn"],
          mode,
        );
        for (const s of r.calls) assert.deepEqual(s.sourceLabels, r.columns.slice(0, s.sources), s.label);
      } finally {
        model.dispose();
      }
    }
    assert.equal(sourceLabel("delta", false, 2, "states"), "after L0.mlp");
    assert.equal(sourceLabel("delta", false, 2), "L0.mlp");
  });

  test("max weight, entropy and mean α agree with model.analyze on each batch", () => {
    for (const [, extra] of MODES.filter(([, , w]) => w.calls > 0)) {
      const model = tinyModel(extra);
      try {
        const r = analyzeModel(model, batches);
        const sums = new Map<string, { max: number; ent: number; alpha: number[] }>();
        for (const b of batches)
          noGrad(() =>
            tidy(() => {
              for (const s of model.analyze(b.ids, b.B, b.T).report.routing) {
                const acc = sums.get(String(s.j)) ?? { max: 0, ent: 0, alpha: s.meanAlpha.map(() => 0) };
                acc.max += s.meanMaxWeight / batches.length;
                acc.ent += s.meanEntropy / batches.length;
                s.meanAlpha.forEach((a, i) => (acc.alpha[i]! += a / batches.length));
                sums.set(String(s.j), acc);
              }
            }),
          );
        assert.equal(sums.size, r.calls.length);
        for (const s of r.calls) {
          const want = sums.get(String(s.key))!;
          close(s.meanMaxWeight, want.max, 1e-9, `${s.label} max`);
          close(s.meanEntropy, want.ent, 1e-9, `${s.label} entropy`);
          s.meanAlpha.forEach((a, i) => close(a, want.alpha[i]!, 1e-9, `${s.label} α${i}`));
        }
      } finally {
        model.dispose();
      }
    }
  });

  test("norms, cosines and effective rank match the traced sources token by token", () => {
    const model = tinyModel({ attnres_mode: "full" });
    try {
      const one = [batches[0]!];
      const rows = one[0]!.B * one[0]!.T;
      const r = analyzeModel(model, one, { rankTokens: rows });
      const d = backbone.hidden_size;
      const want = noGrad(() =>
        tidy(() => {
          const trace = model.run(one[0]!.ids, one[0]!.B, one[0]!.T, { trace: true }).trace!;
          return [...trace.sources.entries()].map(([key, src]) => {
            const bufs = src.map((t) => Float64Array.from(t.data.subarray(0, t.size)));
            const norm = bufs.map((b) => {
              let s = 0;
              for (let t = 0; t < rows; t++) s += l2Norm(b, d, t * d);
              return s / rows;
            });
            let rank = 0;
            for (let t = 0; t < rows; t++)
              rank += effectiveRank(bufs.map((b) => b.subarray(t * d, (t + 1) * d)))!;
            const cos0 =
              bufs.length > 1
                ? Array.from({ length: rows }, (_, t) => cosine(bufs[0]!, bufs[1]!, d, t * d, t * d)!).reduce(
                    (p, q) => p + q,
                  ) / rows
                : null;
            return { key, norm, rank: rank / rows, cos0 };
          });
        }),
      );
      for (const w of want) {
        const s = r.calls.find((c) => c.key === w.key)!;
        w.norm.forEach((n, i) => close(s.sourceNorms[i]!, n, 1e-9 * (1 + n), `${s.label} norm ${i}`));
        close(s.effectiveRank, w.rank, 1e-9, `${s.label} effective rank`);
        if (w.cos0 !== null) close(s.adjacentCosine[0]!, w.cos0, 1e-9, `${s.label} cos(h0, o0)`);
      }
      // The same source tensor is measured the same in every call that reads it.
      const h0 = r.calls.map((c) => c.sourceNorms[0]!);
      for (const n of h0) close(n, h0[0]!, 1e-12, "‖h0‖ in every call");
      assert.ok(r.calls.at(-1)!.effectiveRank! > 1.2, "outputs and h0 are not parallel");
    } finally {
      model.dispose();
    }
  });

  test("zero queries route uniformly: every call is flat from the first one with a choice", () => {
    const model = tinyModel({ attnres_mode: "full" }, { randomRouting: false });
    try {
      const r = analyzeModel(model, batches);
      for (const s of r.calls) {
        close(s.meanMaxWeight, 1 / s.sources, 1e-6, `${s.label} max`);
        close(s.meanEntropy, Math.log(s.sources), 1e-5, `${s.label} entropy`);
        close(s.sharpness, 1, 1e-5, `${s.label} sharpness`);
      }
      assert.equal(r.flattening!.all?.label, "L0.mlp"); // L0.attn routes over h0 alone
      assert.equal(r.flattening!.attn?.label, "L1.attn");
      assert.equal(r.flattening!.mlp?.label, "L0.mlp");
      assert.match(flatteningVerdict(r), /flat from the first routed call/);
      const sharp = tinyModel({ attnres_mode: "full" });
      try {
        const rs = analyzeModel(sharp, batches, { flatFactor: 1 });
        // Random queries are never exactly uniform: nothing is flat at factor 1.
        assert.equal(rs.flattening!.all, null);
        assert.match(flatteningVerdict(rs), /stays sharp/);
      } finally {
        sharp.dispose();
      }
    } finally {
      model.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function checkFigure(base: string): void {
  const svg = fs.readFileSync(`${base}.svg`, "utf8");
  assert.ok(svg.startsWith("<svg"), `${base}.svg starts with <svg`);
  assert.ok(svg.trimEnd().endsWith("</svg>"));
  // resvg parses SVG with a strict XML parser: malformed XML throws.
  const parsed = new Resvg(svg, resvgOptions(1));
  assert.ok(parsed.width > 100 && parsed.height > 80, `${base}.svg size ${parsed.width}×${parsed.height}`);
  const png = fs.readFileSync(`${base}.png`);
  assert.ok(png.subarray(0, 8).equals(PNG_SIGNATURE), `${base}.png has the PNG signature`);
  const w = png.readUInt32BE(16);
  const h = png.readUInt32BE(20);
  assert.ok(w >= 200 && w <= 4000 && h >= 150 && h <= 4000, `${base}.png is ${w}×${h}`);
  assert.equal(w, Math.round(parsed.width * PNG_SCALE), "PNG at PNG_SCALE × the SVG size");
  assert.ok(
    png.length < 150_000 && svg.length < 150_000,
    `${base}: small files (${png.length}, ${svg.length} bytes)`,
  );
}

describe("writeAnalysis", () => {
  const reports = new Map<string, AnalysisReport>();
  const reportOf = (name: string): AnalysisReport => {
    if (!reports.has(name)) {
      const model = tinyModel(MODES.find(([n]) => n === name)![1]);
      try {
        reports.set(name, analyzeModel(model, batches));
      } finally {
        model.dispose();
      }
    }
    return reports.get(name)!;
  };

  test("a routed mode: report.json, summary tables and every figure", async () => {
    const r = reportOf("delta+null+gate");
    const dir = path.join(work, "delta");
    const w = await writeAnalysis(r, dir, { checkpoint: "ck", data: "dd", split: "val" });
    assert.deepEqual(w.figures, [
      "alpha-heatmap",
      "max-weight",
      "entropy",
      "source-norms",
      "adjacent-cosine",
      "effective-rank",
      "stream-norms",
    ]);
    for (const f of w.files) assert.ok(fs.statSync(f).size > 0, `${f} is not empty`);
    for (const f of w.figures) checkFigure(path.join(dir, f));
    const json = JSON.parse(fs.readFileSync(path.join(dir, "report.json"), "utf8")) as AnalysisReport & {
      verdict: string;
    };
    assert.equal(json.calls.length, r.calls.length);
    assert.equal(json.mode, "delta");
    assert.equal(json.verdict, flatteningVerdict(r));
    const md = fs.readFileSync(path.join(dir, "summary.md"), "utf8");
    assert.match(md, /^# Routing analysis: delta \(null source, gate\)/);
    assert.match(md, /\| call \| N \| mean max α \| × uniform \|/);
    assert.match(md, /\| call \| null \| h0 \| L0\.attn \|/, "mean α table headed by the sources");
    for (const s of r.calls)
      assert.match(
        md,
        new RegExp(
          `\\| ${s.label.replace(".", "\\.")} \\| ${s.sources} \\| ${s.meanMaxWeight.toFixed(3)} \\|`,
        ),
      );
    for (const f of w.figures)
      assert.ok(md.includes(`](${f}.png)`) && md.includes(`](${f}.svg)`), `summary links ${f}`);
    assert.match(md, /## Residual stream/);
  });

  test("the heatmap has one row per routed call and one column per source", async () => {
    const r = reportOf("attnres-full");
    const dir = path.join(work, "full");
    await writeAnalysis(r, dir);
    const svg = fs.readFileSync(path.join(dir, "alpha-heatmap.svg"), "utf8");
    // One rect per (call, source) cell: N = 1 … 2L+1 sources per call.
    const cells = r.calls.reduce((p, s) => p + s.sources, 0);
    const rectMarks = svg.match(/<g class="mark-rect role-mark[^>]*>(.*?)<\/g>/s)![1]!;
    assert.equal((rectMarks.match(/<path /g) ?? []).length, cells, "heatmap cells");
    for (const label of [...r.calls.map((s) => s.label), ...r.columns])
      assert.ok(svg.includes(`>${label}<`), `label ${label}`);
  });

  test("ddl: β histograms and the β table, no routing figures", async () => {
    const r = reportOf("ddl");
    const dir = path.join(work, "ddl");
    const w = await writeAnalysis(r, dir);
    assert.deepEqual(w.figures, ["beta-histograms", "stream-norms"]);
    for (const f of w.figures) checkFigure(path.join(dir, f));
    const md = fs.readFileSync(path.join(dir, "summary.md"), "utf8");
    assert.match(md, /## DDL β per sublayer/);
    assert.match(md, /\| sublayer \| mean \| std \| min \| max \|/);
    assert.match(md, /does not route over depth/);
    assert.doesNotMatch(md, /## Per routed call/);
  });

  test("standard: the stream only, and the note that there is no routing", async () => {
    const w = await writeAnalysis(reportOf("standard"), path.join(work, "standard"));
    assert.deepEqual(w.figures, ["stream-norms"]);
    const md = fs.readFileSync(path.join(work, "standard", "summary.md"), "utf8");
    assert.match(md, /standard residuals do not route over depth/);
    assert.match(md, /\| sublayer \| mean ‖h‖ \| cos\(h_j, h_j\+1\) \|/);
  });
});

describe("charts", () => {
  test("text is drawn in the PNG with the bundled font", () => {
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40"><text x="5" y="28" font-family="DejaVu Sans" font-size="24">Ag α</text></svg>`;
    const img = new Resvg(svg, resvgOptions(1)).render();
    let dark = 0;
    for (let i = 0; i < img.pixels.length; i += 4) if (img.pixels[i]! < 128) dark++;
    assert.ok(dark > 100, `${dark} dark pixels`);
  });

  test("line chart with a log axis and labelled series; histograms check their bins", async () => {
    const base = path.join(work, "charts", "loss");
    await lineChart(base, {
      title: "Validation loss",
      xTitle: "step",
      yTitle: "loss",
      logY: true,
      series: ["standard", "delta"].map((name, k) => ({
        name,
        points: Array.from({ length: 30 }, (_, i) => ({
          x: 10 * i,
          y: i === 3 ? null : 3 * Math.exp(-i / 9) + 1 + k / 10,
        })),
      })),
    });
    checkFigure(base);
    const svg = fs.readFileSync(`${base}.svg`, "utf8");
    assert.ok(svg.includes(">standard<") && svg.includes(">delta<"), "legend names the series");
    const hm = path.join(work, "charts", "hm");
    await heatmap(hm, { title: "m", rows: ["a", "b"], columns: ["x", "y"], values: [[1], [0.5, 0.25]] });
    checkFigure(hm);
    assert.ok(fs.readFileSync(`${hm}.svg`, "utf8").includes(">0.25<"), "small heatmaps show their values");
    await assert.rejects(
      histogram(path.join(work, "charts", "bad"), {
        title: "h",
        xTitle: "x",
        edges: [0, 1, 2],
        panels: [{ name: "p", counts: [1] }],
      }),
      /panel "p" has 1 counts for 2 bins/,
    );
  });
});

// ---------------------------------------------------------------------------------------------

describe("attnres analyze (command)", () => {
  const data = path.join(work, "data");
  writePreparedBytes(data, sampleText(12000));
  const ckpt = path.join(work, "ckpt-delta");
  const m = tinyModel({ attnres_mode: "delta_block", attnres_num_blocks: 2 });
  saveCheckpoint(ckpt, m);
  m.dispose();

  async function run(args: string[]): Promise<void> {
    const program = new Command().exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
    registerAnalyze(program);
    await program.parseAsync(["analyze", ...args], { from: "user" });
  }

  test("writes the report into <checkpoint>/analysis by default", async () => {
    await run([
      "--checkpoint",
      ckpt,
      "--data",
      data,
      "--batches",
      "2",
      "--batch-size",
      "2",
      "--seq-len",
      "16",
      "--quiet",
    ]);
    const out = path.join(ckpt, "analysis");
    const report = JSON.parse(fs.readFileSync(path.join(out, "report.json"), "utf8")) as AnalysisReport & {
      checkpoint: string;
    };
    assert.equal(report.mode, "delta-block");
    assert.equal(report.sample.tokens, 2 * 2 * 16);
    assert.equal(report.checkpoint, ckpt);
    assert.deepEqual(report.columns, ["h0", "Δ1"]); // 3 layers in blocks of 2: Δ1 from layer 2 on
    for (const f of [
      "summary.md",
      "alpha-heatmap.png",
      "alpha-heatmap.svg",
      "max-weight.png",
      "effective-rank.svg",
    ])
      assert.ok(fs.statSync(path.join(out, f)).size > 0, f);
  });

  test("clear errors: missing checkpoint, missing data, vocabulary too large, bad options", async () => {
    await assert.rejects(
      run(["--checkpoint", path.join(work, "nope"), "--data", data]),
      /checkpoint folder .*nope does not exist/,
    );
    await assert.rejects(
      run(["--checkpoint", ckpt, "--data", path.join(work, "nodata")]),
      /data folder .*nodata does not exist/,
    );
    await assert.rejects(
      run(["--checkpoint", data, "--data", data]),
      /is not a checkpoint folder: config\.json is missing/,
    );
    await assert.rejects(run(["--checkpoint", ckpt, "--data", ckpt]), /is not a prepared dataset/);
    const small = path.join(work, "ckpt-small-vocab");
    const sm = new DecoderLM({ ...backbone, vocab_size: 200 }, { seed: 1 });
    saveCheckpoint(small, sm);
    sm.dispose();
    await assert.rejects(
      run(["--checkpoint", small, "--data", data, "--quiet"]),
      /the dataset's tokenizer has 256 ids but the model embeds only 200/,
    );
    assert.ok(!fs.existsSync(path.join(small, "analysis")), "nothing written on error");
    await assert.rejects(run(["--checkpoint", ckpt, "--data", data, "--batches", "0"]), /positive integer/);
    await assert.rejects(
      run(["--checkpoint", ckpt, "--data", data, "--flat-factor", "0.5", "--quiet"]),
      /--flat-factor must be at least 1/,
    );
    await assert.rejects(run(["--data", data]), /required option/);
  });
});
