/**
 * `attnres plan`: the estimator against measured peaks at small scale (within 15 %) — the
 * TypeScript engine's buffer pool during a training step, and PyTorch's allocator during a step of
 * the reference model (scripts/plan_measure_torch.py; not run, with a notice, when
 * /usr/bin/python3 has no torch, unless ATTNRES_REQUIRE_TORCH=1) — and the command line.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { Command } from "commander";
import { formatPlan, planCommand, type PlanFlags, registerPlan } from "../src/cli/plan.js";
import { MODE_LIST } from "../src/cli/common.js";
import { countParameters } from "../src/model/decoder.js";
import { plan, planRow, withMode } from "../src/plan/estimate.js";
import { measureTsPeak } from "../src/plan/measure.js";
import { NAMED_SIZES, SIZE_NAMES } from "../src/plan/sizes.js";

const TOL = 0.15;
const root = path.resolve(import.meta.dirname, "..");

const qwen = {
  model_type: "qwen3",
  vocab_size: 256,
  hidden_size: 64,
  intermediate_size: 160,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
};

function within(est: number, meas: number, what: string): void {
  const rel = Math.abs(est - meas) / meas;
  assert.ok(
    rel <= TOL,
    `${what}: estimated ${(est / 2 ** 20).toFixed(3)} MiB, measured ${(meas / 2 ** 20).toFixed(3)} MiB (${(100 * rel).toFixed(1)} % off)`,
  );
}

test("plan matches the TypeScript engine's measured peak in every mode (within 15 %)", () => {
  const B = 4;
  const T = 32;
  const cases = [
    ...MODE_LIST.map((m) => ({ name: m, c: withMode(qwen, m, 2) })),
    {
      name: "delta + null source + gate",
      c: withMode({ ...qwen, attnres_use_null_source: true, attnres_gate_type: "learnable_alpha" }, "delta"),
    },
    {
      name: "attnres-full, 8 layers",
      c: withMode({ ...qwen, num_hidden_layers: 8, hidden_size: 32 }, "attnres-full"),
    },
  ];
  for (const { name, c } of cases) {
    const est = planRow(c, {
      batch: B,
      seq: T,
      worldSize: 1,
      dtype: "float32",
      sharding: "ddp",
      engine: "ts",
    });
    const meas = measureTsPeak(c, B, T);
    within(est.paramBytes + est.gradBytes + est.adamBytes, meas.persistentBytes, `${name}: persistent`);
    within(est.peakBytes, meas.peakBytes, `${name}: peak`);
  }
});

function torchPython(): string | null {
  const py = fs.existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const r = spawnSync(py, ["-c", "import torch"], { stdio: "ignore" });
  return r.status === 0 ? py : null;
}

test("plan matches PyTorch's measured peak in every mode (within 15 %)", (t) => {
  const py = torchPython();
  if (!py) {
    if (process.env.ATTNRES_REQUIRE_TORCH === "1")
      assert.fail("ATTNRES_REQUIRE_TORCH=1 but /usr/bin/python3 cannot import torch");
    t.diagnostic("not run: /usr/bin/python3 has no torch (apt-get install python3-torch)");
    return;
  }
  const B = 4;
  const T = 32;
  const base = { ...qwen, model_type: "llama", num_hidden_layers: 3, max_position_embeddings: T };
  const configs = MODE_LIST.map((m) => withMode(base, m, 2));
  const out = JSON.parse(
    execFileSync(py, [path.join(root, "scripts/plan_measure_torch.py")], {
      input: JSON.stringify({ configs, batch: B, seq: T }),
      encoding: "utf8",
    }),
  ) as { results: { peak_bytes: number; persistent_bytes: number }[] };
  configs.forEach((c, i) => {
    const est = planRow(c, {
      batch: B,
      seq: T,
      worldSize: 1,
      dtype: "float32",
      sharding: "ddp",
      engine: "torch",
      attention: "math",
      routing: "stacked",
    });
    within(est.peakBytes, out.results[i]!.peak_bytes, `torch ${MODE_LIST[i]}: peak`);
  });
});

test("named sizes land on their parameter counts", () => {
  const want = { "220m": 220e6, "533m": 533e6, "1b": 1e9, "8b": 8.19e9 };
  for (const s of SIZE_NAMES) {
    const n = countParameters(NAMED_SIZES[s].config);
    assert.ok(Math.abs(n - want[s]) / want[s] < 0.02, `${s}: ${n} parameters`);
  }
});

test("sharding, dtype and checkpointing move the numbers the way they must", () => {
  const base = NAMED_SIZES["1b"].config;
  const o = {
    batch: 4,
    seq: 2048,
    worldSize: 8,
    dtype: "float32",
    sharding: "ddp",
    engine: "torch",
  } as const;
  const [ddp] = plan(base, ["delta"], o);
  const [fsdp] = plan(base, ["delta"], { ...o, sharding: "fsdp" });
  const [bf] = plan(base, ["delta"], { ...o, dtype: "bfloat16" });
  assert.equal(fsdp!.paramBytes * 8, ddp!.paramBytes);
  assert.equal(fsdp!.adamBytes * 8, ddp!.adamBytes);
  assert.equal(fsdp!.activationBytes, ddp!.activationBytes);
  assert.ok(bf!.activationBytes < 0.6 * ddp!.activationBytes);
  assert.ok(ddp!.checkpointedPeakBytes! < ddp!.peakBytes);
  assert.ok(ddp!.checkpointedFlopsPerToken! > ddp!.flopsPerToken);
  // 6N rule of thumb: FLOPs per token ≈ 6 × parameters (+ attention) for the standard model.
  const [std] = plan(base, ["standard"], o);
  assert.ok(std!.flopsPerToken > 6 * std!.params * 0.7 && std!.flopsPerToken < 6 * std!.params * 1.5);
  // Fused routing keeps O(L) per network; the stacked reference keeps O(L²) for attnres-full.
  const [stacked] = plan(base, ["attnres-full"], o);
  const [fused] = plan(base, ["attnres-full"], { ...o, routing: "fused" });
  assert.ok(fused!.activationBytes < stacked!.activationBytes / 2);
});

test("attnres plan: table of every mode, and one-line errors", () => {
  const r = planCommand({
    size: "8b",
    worldSize: 8,
    sharding: "fsdp",
    dtype: "bfloat16",
    batchSize: 1,
    seqLen: 4096,
  });
  assert.equal(r.rows.length, MODE_LIST.length);
  const text = formatPlan(r);
  for (const m of MODE_LIST) assert.match(text, new RegExp(`^${m} `, "m"));
  assert.match(text, /8 devices, fsdp, bfloat16/);
  const tiny = planCommand({ preset: "sotu-tiny", engine: "ts", modes: "standard,delta" });
  assert.deepEqual(
    tiny.rows.map((x) => x.mode),
    ["standard", "delta"],
  );
  assert.equal(tiny.settings.batch_size, 16);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "plan-"));
  const cfg = path.join(dir, "config.json");
  fs.writeFileSync(cfg, JSON.stringify(NAMED_SIZES["220m"].config));
  assert.equal(
    planCommand({ config: cfg, modes: "standard" }).rows[0]!.params,
    countParameters(NAMED_SIZES["220m"].config),
  );
  const cli = (args: string[]) =>
    spawnSync(process.execPath, [path.join(root, "bin/attnres.mjs"), "plan", ...args], { encoding: "utf8" });
  for (const [flags, msg] of [
    [{ size: "1b", modes: "foo" }, /"foo" is not a mode/],
    [{}, /name one model: --size, --preset or --config/],
    [{ size: "1b", preset: "sotu-tiny" }, /name one model/],
    [{ config: path.join(dir, "missing.json") }, /does not exist/],
    [{ preset: "sotu-tiny", engine: "ts", worldSize: 2 }, /TypeScript engine trains on one process/],
    [{ size: "1b", dtype: "fp16" }, /--dtype must be one of float32, bfloat16/],
  ] as const)
    assert.throws(() => planCommand(flags), msg);
  const bad = cli(["--size", "9b"]);
  assert.equal(bad.status, 1);
  assert.equal(bad.stderr, 'attnres: unknown size "9b" (sizes: 220m, 533m, 1b, 8b)\n');
  const ok = cli(["--size", "220m", "--modes", "standard,attnres-full", "--json"]);
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal((JSON.parse(ok.stdout) as { rows: unknown[] }).rows.length, 2);
});

/**
 * What `attnres plan <args>` prints, computed in this process: the command's own option parsing,
 * with its action replaced by one that returns the text (the real action loads the implementation
 * asynchronously, and stdout cannot be captured around that without catching the test runner's
 * own output).
 */
async function planOutput(args: string[]): Promise<string> {
  const program = new Command().exitOverride();
  registerPlan(program);
  let out = "";
  program.commands[0]!.action((o: PlanFlags & { json?: boolean }) => {
    const r = planCommand(o);
    out = o.json ? JSON.stringify(r) + "\n" : formatPlan(r);
  });
  await program.parseAsync(["plan", ...args], { from: "user" });
  return out;
}

test("docs/scale-out.md: each plan table is what its command prints; the SLURM script is the repo's", async () => {
  const md = fs.readFileSync(path.join(root, "docs/scale-out.md"), "utf8");
  const re = /```bash\nnode bin\/attnres\.mjs plan ([^\n]*)\n```\n\n```text\n([\s\S]*?)```/g;
  let tables = 0;
  for (const m of md.matchAll(re)) {
    assert.equal(await planOutput(m[1]!.split(" ")), m[2], `docs/scale-out.md: attnres plan ${m[1]}`);
    tables++;
  }
  assert.ok(tables >= 5, `${tables} plan tables found`);
  const script = fs.readFileSync(path.join(root, "scripts/slurm-scale-out.sh"), "utf8");
  assert.ok(
    md.includes("```bash\n" + script + "```"),
    "the SLURM example differs from scripts/slurm-scale-out.sh",
  );
  assert.equal(spawnSync("bash", ["-n", path.join(root, "scripts/slurm-scale-out.sh")]).status, 0);
});
