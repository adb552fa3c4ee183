/**
 * The layer rule (docs/architecture.md "Layers"): every folder of src/ sits on one layer, and a
 * module imports only from its own folder and from folders on LOWER layers. Folders on the same
 * layer (eval and analysis; workflows, plan and view; cli and the public entries) are independent
 * of each other. The test parses every import of src/ (static, re-exports, `import "x"` and
 * `import("x")`, type-only ones too) with the TypeScript scanner and names each offending edge.
 *
 * Layers, bottom (0) to top:
 *   0 io, plot, node-version   safetensors, atomic files, package paths, option errors, reports; Vega-Lite → SVG/PNG
 *   1 backend                  the Backend contract, reference and native kernels
 *   2 tensor                   tensors, autograd ops, memory pools, random numbers
 *   3 data                     corpora, tokenizers, prepared datasets, batches
 *   4 nn                       modules and layers
 *   5 model                    config, residual modes, decoder, weights, checkpoints, generation
 *   6 eval, analysis           evaluation (loss, multiple choice); routing analysis and its report
 *   7 train                    the training step, the run loop, checkpointing, metrics
 *   8 workflows, plan, view    convert, compare, finetune; run planning; the run browser
 *   9 cli, index, entries      the executable; the package's public entry points
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import ts from "typescript";

const SRC = path.resolve(import.meta.dirname, "..", "src");

/** The layer of each top-level folder (or file, without .ts) of src/. */
const LAYER: Record<string, number> = {
  io: 0,
  plot: 0,
  "node-version": 0,
  backend: 1,
  tensor: 2,
  data: 3,
  nn: 4,
  model: 5,
  eval: 6,
  analysis: 6,
  train: 7,
  workflows: 8,
  plan: 8,
  view: 8,
  cli: 9,
  index: 9,
  entries: 9,
};

/**
 * Known exceptions, as exact edges "from/file.ts -> to/file.ts" (paths under src/), each with the
 * reason. Empty: every import looks down. An entry here is a debt to pay, not a licence.
 */
const ALLOWED = new Set<string>([]);

/** Every .ts file under dir. */
function sources(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) =>
      e.isDirectory()
        ? sources(path.join(dir, e.name))
        : /\.tsx?$/.test(e.name)
          ? [path.join(dir, e.name)]
          : [],
    );
}

/** The top-level folder of src/ that holds `file` (or the file's own name for a file at the top). */
function unit(file: string): string {
  const parts = path.relative(SRC, file).split(path.sep);
  return parts.length === 1 ? parts[0]!.replace(/\.(ts|js)$/, "") : parts[0]!;
}

/** The edges of src/: [importing file, imported file], both relative to src/ with a .ts extension. */
function importEdges(): [string, string][] {
  const edges: [string, string][] = [];
  for (const file of sources(SRC)) {
    const info = ts.preProcessFile(fs.readFileSync(file, "utf8"), true, true);
    for (const { fileName } of info.importedFiles) {
      if (!fileName.startsWith(".")) continue;
      const target = path.resolve(path.dirname(file), fileName).replace(/\.js$/, ".ts");
      edges.push([path.relative(SRC, file), path.relative(SRC, target)]);
    }
  }
  return edges;
}

test("every folder of src/ has a layer", () => {
  const units = [...new Set(sources(SRC).map(unit))].sort();
  const missing = units.filter((u) => LAYER[u] === undefined);
  assert.deepEqual(missing, [], `src/ folders without a layer in test/layers.test.ts: ${missing.join(", ")}`);
});

/** The edges that break the rule, one readable line each. */
function violations(edges: [string, string][]): string[] {
  const bad: string[] = [];
  for (const [from, to] of edges) {
    const a = unit(path.join(SRC, from));
    const b = unit(path.join(SRC, to));
    if (a === b || ALLOWED.has(`${from} -> ${to}`)) continue;
    const la = LAYER[a];
    const lb = LAYER[b];
    if (la === undefined || lb === undefined) continue; // reported by "every folder of src/ has a layer"
    if (lb >= la)
      bad.push(
        `src/${from} (${a}, layer ${la}) imports src/${to} (${b}, layer ${lb}): ${lb === la ? "same layer" : "upward"}`,
      );
  }
  return bad;
}

test("imports only look down: no module imports a folder on its own or a higher layer", () => {
  const edges = importEdges();
  assert.ok(edges.length > 200, `parsed only ${edges.length} imports: the scanner missed them`);
  const bad = violations(edges);
  assert.deepEqual(bad, [], `imports that do not look down:\n  ${bad.join("\n  ")}`);
});

test("the allow-list holds only edges that still exist", () => {
  const edges = new Set(importEdges().map(([a, b]) => `${a} -> ${b}`));
  const stale = [...ALLOWED].filter((e) => !edges.has(e));
  assert.deepEqual(stale, [], `allow-listed edges that no longer exist (remove them): ${stale.join(", ")}`);
});

test("the rule names an upward or sideways import and lets a downward one pass", () => {
  assert.deepEqual(
    violations([
      ["model/decoder.ts", "train/trainer.ts"],
      ["eval/mc.ts", "analysis/routing.ts"],
      ["train/run.ts", "model/decoder.ts"],
      ["data/bpe.ts", "io/atomic.ts"],
    ]),
    [
      "src/model/decoder.ts (model, layer 5) imports src/train/trainer.ts (train, layer 7): upward",
      "src/eval/mc.ts (eval, layer 6) imports src/analysis/routing.ts (analysis, layer 6): same layer",
    ],
  );
  const source =
    'import { x } from "../a.js";\nexport { y } from "../b.js";\nimport type { Z } from "../c.js";\nawait import("../d.js");';
  const found = ts.preProcessFile(source, true, true).importedFiles.map((f) => f.fileName);
  assert.deepEqual(found, ["../a.js", "../b.js", "../c.js", "../d.js"]);
});
