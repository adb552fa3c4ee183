/**
 * The registry of residual modes (src/model/residual.ts, one file per mode in src/model/modes/):
 *   - the light lists the command line reads (src/model/names.ts) and the mode tables of
 *     docs/residual-modes.md and docs/methods.md agree with the modes' own declarations, and the
 *     parameter-name rule (isResidualParam) is exactly the modes' parameters;
 *   - `run` is reentrant in every mode: a forward pass started inside another one (from a
 *     sublayer of the outer pass) leaves both with the logits they have when run one after the
 *     other (all mode state lives in the per-call object begin() returns);
 *   - a throwaway mode added through the registry alone (registerMode; nothing else changed) is
 *     accepted by the config schema, offered by the command line (`train --mode`, `convert
 *     --mode`, parsed in-process), trains, converts from a standard checkpoint as exactly as it
 *     declares, and is analysed (routing statistics), then is removed again (unregisterMode).
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { Command } from "commander";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { analyzeModel } from "../src/analysis/routing.js";
import { loadCheckpoint } from "../src/model/checkpoint.js";
import { registerConvert } from "../src/cli/commands/convert.js";
import { registerTrain } from "../src/cli/commands/train.js";
import { planCommand } from "../src/cli/plan.js";
import { loadPreset } from "../src/cli/preset.js";
import { specFrom } from "../src/cli/train.js";
import { type DecoderLMConfig, type ModeName, parseConfig } from "../src/model/config.js";
import { type ConvertMode, convertCheckpoint, exactness, logitsOf } from "../src/workflows/convert.js";
import { DecoderLM } from "../src/model/decoder.js";
import { ADDITIVE_MODES, BLOCK_MODES, CONVERT_MODES, MODE_NAMES } from "../src/model/names.js";
import {
  callLabel,
  isResidualParam,
  type ModeDef,
  type ModeRun,
  modes,
  registerMode,
  type SublayerResult,
  type Trace,
  unregisterMode,
} from "../src/model/residual.js";
import { tidy } from "../src/tensor/memory.js";
import { add, mul, scale } from "../src/tensor/ops.js";
import { Rng } from "../src/tensor/random.js";
import { full, noGrad, type Tensor } from "../src/tensor/tensor.js";
import { AdamW } from "../src/train/optim.js";
import { paramGroups, trainStep } from "../src/train/trainer.js";
import { tempDir } from "./helpers.js";

const base: DecoderLMConfig = {
  vocab_size: 48,
  hidden_size: 16,
  intermediate_size: 32,
  num_hidden_layers: 3,
  num_attention_heads: 2,
  max_position_embeddings: 16,
};

/** Every built-in mode and option cell, with the non-default options switched on. */
const CELLS: [string, Partial<DecoderLMConfig>][] = [
  ["standard", {}],
  ["attnres-full", { attnres_mode: "full" }],
  ["attnres-full (states)", { attnres_mode: "full", attnres_sources: "states" }],
  ["attnres-block", { attnres_mode: "block", attnres_num_blocks: 2 }],
  [
    "delta (null source, gate)",
    { attnres_mode: "delta", attnres_use_null_source: true, attnres_gate_type: "learnable_alpha" },
  ],
  ["delta (states)", { attnres_mode: "delta", attnres_sources: "states" }],
  ["delta-block", { attnres_mode: "delta_block", attnres_num_blocks: 2 }],
  ["ddl", { attnres_mode: "ddl" }],
  ["ddl-expanded", { attnres_mode: "ddl_expanded" }],
];

const ids = (n: number, seed: number) => {
  const rng = new Rng(seed);
  return Int32Array.from({ length: n }, () => rng.int(base.vocab_size));
};

/** Moves every parameter off its initial value (zero queries and gates would hide routing). */
function perturb(model: DecoderLM, seed: number): void {
  const rng = new Rng(seed);
  for (const p of model.parameters()) for (let i = 0; i < p.size; i++) p.data[i]! += 0.2 * rng.normal();
}

describe("the registry and the light lists agree", () => {
  const builtin = modes().slice(0, Object.keys(MODE_NAMES).length);
  test("names and config values", () => {
    assert.deepEqual(
      builtin.map((m) => [m.name, m.key]),
      Object.entries(MODE_NAMES),
    );
  });
  test("block, additive and convertible modes", () => {
    assert.deepEqual(
      builtin.filter((m) => m.options.blocks).map((m) => m.name),
      [...BLOCK_MODES],
    );
    assert.deepEqual(
      builtin.filter((m) => m.options.additive).map((m) => m.name),
      [...ADDITIVE_MODES],
    );
    assert.deepEqual(
      builtin
        .filter((m) => m.convert)
        .map((m) => m.name)
        .sort(),
      [...CONVERT_MODES].sort(),
    );
    assert.equal(exactness({ mode: "delta-block" }), "exact");
    assert.equal(exactness({ mode: "attnres-full" }), "eps-residue");
  });
  test("the mode tables of the docs list every built-in mode with its config value", () => {
    for (const doc of ["residual-modes.md", "methods.md"]) {
      const lines = fs.readFileSync(path.join(import.meta.dirname, "..", "docs", doc), "utf8").split("\n");
      const head = lines.findIndex((l) => /^\| mode .*\| `attnres_mode` /.test(l));
      assert.ok(head >= 0, `${doc} has a mode table`);
      const rows: [string, string][] = [];
      for (let i = head + 2; lines[i]?.startsWith("|"); i++) {
        const [name, key] = lines[i]!.split("|").slice(1, 3);
        const keys = [...key!.matchAll(/`([a-z_]+)`/g)].map((m) => m[1]!);
        rows.push([
          name!.replace(/`/g, "").trim().split(" ")[0]!,
          keys.find((k) => k !== "standard") ?? keys[0]!,
        ]);
      }
      assert.deepEqual(rows, Object.entries(MODE_NAMES), doc);
    }
  });
  test("isResidualParam is true exactly for the parameters a mode adds to the standard model", () => {
    const backbone = new Set(new DecoderLM(base, { meta: true }).namedParameters().map(([n]) => n));
    let added = 0;
    for (const [label, extra] of CELLS) {
      for (const [n] of new DecoderLM({ ...base, ...extra }, { meta: true }).namedParameters()) {
        assert.equal(isResidualParam(n), !backbone.has(n), `${label}: ${n}`);
        if (!backbone.has(n)) added++;
      }
    }
    assert.ok(added > 0);
  });
});

describe("run is reentrant: a forward pass inside another gives the sequential results", () => {
  const B = 2;
  const T = 5;
  const outerIds = ids(B * T, 1);
  const innerIds = ids(B * T, 2);
  for (const [label, extra] of CELLS)
    test(label, () => {
      const model = new DecoderLM({ ...base, ...extra }, { backend: ref, dtype: "float64", seed: 3 });
      perturb(model, 4);
      const sequential = noGrad(() =>
        tidy(() => [model.forward(outerIds, B, T).toArray(), model.forward(innerIds, B, T).toArray()]),
      );
      // The inner pass starts while the outer one is inside layer 1's MLP (half-way through its depth).
      const layer = model.model.layers[1]!;
      const mlp = layer.mlpSublayer.bind(layer);
      let inner: number[] | null = null;
      layer.mlpSublayer = (x: Tensor): SublayerResult => {
        layer.mlpSublayer = mlp; // once: the inner pass runs the plain sublayer
        inner = model.forward(innerIds, B, T).toArray();
        return mlp(x);
      };
      const outer = noGrad(() => tidy(() => model.forward(outerIds, B, T).toArray()));
      assert.deepEqual(outer, sequential[0]);
      assert.deepEqual(inner, sequential[1]);
      model.dispose();
    });
});

// ---- a throwaway mode, through the registry alone

/**
 * "uniform-test": keeps the stream h ← h + o_j and adds, behind a zero-initialised scalar gate
 * per sublayer, the plain mean of h0 and every earlier sublayer output (fixed uniform routing):
 * x_j = h + g_j · mean(h0, o_0 … o_{j−1}) for j ≥ 1, x_0 = h0. Zero gates give the standard model
 * exactly, so it converts exactly.
 */
const uniform: ModeDef = {
  name: "uniform-test",
  key: "uniform_test",
  configKeys: [],
  options: { blocks: false, states: false, additive: false },
  params: /_uniform_gate$/,
  convert: { exactness: "exact", zeroParams: /_uniform_gate$/ },
  sourceLabel: (p) => (p === 0 ? "h0" : callLabel(p - 1)),
  build(_c, host, ctx) {
    const gates: Tensor[] = [];
    for (const layer of host.layers)
      for (const kind of ["attn", "mlp"])
        gates.push(layer.param(`${kind}_uniform_gate`, [], { kind: "const", value: 0 }, ctx));
    class Run implements ModeRun {
      private readonly sources: Tensor[];
      constructor(
        private h: Tensor,
        private readonly trace: Trace | null,
      ) {
        this.sources = [h];
      }
      input(j: number): Tensor {
        this.trace?.streams.set(j, this.h);
        if (j === 0) return this.h;
        const S = this.sources;
        if (this.trace) {
          const [b, t] = this.h.shape as [number, number, number];
          const opts = { backend: this.h.backend, dtype: this.h.dtype };
          this.trace.alphas.set(j, full([b, t, S.length], 1 / S.length, opts));
          this.trace.sources.set(j, [...S]);
        }
        const mean = scale(
          S.slice(1).reduce((s, x) => add(s, x), S[0]!),
          1 / S.length,
        );
        return add(this.h, mul(mean, gates[j]!));
      }
      update(_j: number, _x: Tensor, r: SublayerResult): void {
        this.sources.push(r.out);
        this.h = add(this.h, r.out);
      }
      end(): Tensor {
        return this.h;
      }
    }
    return { name: "uniform-test", begin: (h0, trace) => new Run(h0, trace) };
  },
};

describe("a throwaway mode added through the registry alone", () => {
  registerMode(uniform);
  after(() => {
    unregisterMode("uniform-test");
    assert.throws(
      () => parseConfig({ ...base, attnres_mode: "uniform_test" }),
      /unknown residual mode "uniform_test"/,
    );
  });
  const source = path.join(import.meta.dirname, "fixtures", "hf-qwen3-untied");
  const to = path.join(tempDir("registry"), "uniform");
  let converted: DecoderLM | null = null;

  test("the config schema accepts it and lists it among the modes", () => {
    assert.equal(parseConfig({ ...base, attnres_mode: "uniform_test" }).attnres_mode, "uniform_test");
    assert.throws(
      () => parseConfig({ ...base, attnres_mode: "nope" }),
      /expected one of .*ddl_expanded, uniform_test/,
    );
    assert.throws(() => registerMode(uniform), /already registered/);
  });

  test("the command line offers it: train --mode and convert --mode take it, the run gets its config value", async () => {
    /** The mode each subcommand's action receives when the CLI's definitions parse `args`. */
    const parse = async (args: string[]): Promise<string | undefined> => {
      const program = new Command()
        .exitOverride()
        .configureOutput({ writeErr: () => {}, writeOut: () => {} });
      registerTrain(program);
      registerConvert(program);
      let mode: string | undefined;
      for (const c of program.commands) c.action((o: { mode?: string }) => void (mode = o.mode));
      await program.parseAsync(args, { from: "user" });
      return mode;
    };
    assert.equal(await parse(["train", "--mode", "uniform-test"]), "uniform-test");
    assert.equal(await parse(["convert", "-c", "a", "-o", "b", "--mode", "uniform-test"]), "uniform-test");
    assert.equal(await parse(["train", "--mode", "delta"]), "delta");
    await assert.rejects(
      parse(["train", "--mode", "nope"]),
      /argument 'nope' is invalid\. expected one of standard, .*ddl-expanded, uniform-test$/,
    );
    await assert.rejects(
      parse(["convert", "-c", "a", "-o", "b", "--mode", "ddl"]),
      /argument 'ddl' is invalid\. expected one of attnres-full, .*delta-block, uniform-test$/,
    );
    const spec = await specFrom(loadPreset("sotu-tiny"), {
      preset: "sotu-tiny",
      mode: "uniform-test" as ModeName,
      data: "unused",
    });
    assert.equal(spec.model.attnres_mode, "uniform_test");
    // attnres plan --modes takes it too, and sizes it (a mode without memory facts is costed as
    // the standard model plus its parameters).
    const planned = planCommand({ preset: "sotu-tiny", engine: "ts", modes: "standard,uniform-test" });
    assert.deepEqual(
      planned.rows.map((r) => r.mode),
      ["standard", "uniform-test"],
    );
    assert.ok(planned.rows[1]!.params > planned.rows[0]!.params);
    assert.throws(
      () => planCommand({ preset: "sotu-tiny", engine: "ts", modes: "nope" }),
      /"nope" is not a mode \(expected one of standard, .*, uniform-test, or all\)/,
    );
  });

  test("a standard checkpoint converts to it exactly, as it declares", () => {
    const r = convertCheckpoint({
      from: source,
      to,
      mode: "uniform-test" as ConvertMode,
      backend: ref,
      dtype: "float64",
    });
    assert.equal(r.verification.exactness, "exact");
    assert.ok(r.verification.ok);
    assert.equal(r.verification.maxAbsDiff, 0);
    assert.equal(r.addedParameters, 2 * parseConfig(r.config).num_hidden_layers);
    converted = loadCheckpoint(to, { backend: ref, dtype: "float64" });
    const standard = loadCheckpoint(source, { backend: ref, dtype: "float64" });
    const x = ids(2 * 6, 5).map((v) => v % standard.config.vocab_size);
    assert.deepEqual(logitsOf(converted, x, 2, 6), logitsOf(standard, x, 2, 6));
    standard.dispose();
  });

  test("it trains: the loss falls and the gates move", () => {
    const model = converted!;
    const V = model.config.vocab_size;
    const B = 2;
    const T = 8;
    const x = ids(B * (T + 1), 6).map((v) => v % V);
    const batch = {
      ids: Int32Array.from({ length: B * T }, (_, i) => x[Math.floor(i / T) * (T + 1) + (i % T)]!),
      targets: Int32Array.from({ length: B * T }, (_, i) => x[Math.floor(i / T) * (T + 1) + (i % T) + 1]!),
      B,
      T,
    };
    const opt = new AdamW(paramGroups(model, 1e-2, 0));
    const losses = Array.from({ length: 6 }, (_, s) => trainStep(model, opt, batch, s + 1, 1, 1).loss);
    assert.ok(losses[5]! < losses[0]!, `losses ${losses.join(", ")}`);
    const gates = model.namedParameters().filter(([n]) => /_uniform_gate$/.test(n));
    assert.equal(gates.length, 2 * model.config.num_hidden_layers);
    assert.ok(gates.every(([n]) => isResidualParam(n)));
    assert.ok(gates.some(([, g]) => g.data[0] !== 0));
  });

  test("it is analysed: uniform routing weights 1/N, its source labels, the flattening verdict", () => {
    const model = converted!;
    const V = model.config.vocab_size;
    const b = { ids: ids(12, 7).map((v) => v % V), targets: ids(12, 8).map((v) => v % V), B: 2, T: 6 };
    const rep = analyzeModel(model, [b]);
    assert.equal(rep.mode, "uniform-test");
    assert.ok(rep.routed);
    const J = 2 * model.config.num_hidden_layers;
    assert.deepEqual(
      rep.calls.map((c) => c.key),
      Array.from({ length: J - 1 }, (_, j) => j + 1),
    );
    for (const c of rep.calls) {
      assert.equal(c.sources, (c.key as number) + 1);
      assert.ok(Math.abs(c.meanMaxWeight - 1 / c.sources) < 1e-12);
      assert.equal(c.flat, true);
      assert.deepEqual(c.sourceLabels.slice(0, 2), ["h0", "L0.attn"]);
    }
    assert.equal(rep.flattening!.all!.key, 1);
    const { report } = noGrad(() => tidy(() => model.analyze(b.ids, b.B, b.T)));
    assert.deepEqual(
      report.routing.map((r) => [r.j, r.meanMaxWeight]),
      rep.calls.map((c) => [c.key, c.meanMaxWeight]),
    );
    model.dispose();
  });
});
