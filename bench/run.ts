/**
 * `npm run bench` — the speed and memory targets, measured in one run so ratios are fair on a
 * shared, noisy machine. Prints a table; `--json` prints one JSON object instead.
 *
 *   fp32 peak         measured by the native addon's FMA microbenchmark on all threads: the best
 *                     of 5 short samples (their spread is printed: how noisy the machine is)
 *   matmul            GFLOP/s at 512³, 1024³ and batched [8,256,64]x[8,64,256], as % of that peak
 *   products alone    every product of the reference step with a weight (x·Wᵀ, g·W, gᵀ·x of each
 *                     Linear), timed alone on hot operands once per round of the reference step
 *                     (the fastest round counts): their summed time is a floor for the step on
 *                     this machine's GEMM, and bounds the step's % of peak from above
 *   reference step    forward+backward+AdamW of the 4-layer, d=256 model on 8×256 tokens, in a
 *                     fresh process; and the same step in PyTorch when `import torch` works. When
 *                     the environment pins OpenBLAS's kernels (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE,
 *                     set on some machines because old OpenBLAS releases misbehave on new CPUs),
 *                     PyTorch runs twice per round: as the environment says, and with both unset in
 *                     that command alone (OpenBLAS's own choice), so neither baseline is hidden.
 *                     On a CPU with AVX-512 BF16, ours also runs with bfloat16 matmul operands
 *                     (train.matmul_dtype bfloat16), reported beside float32; on AMX tiles where the
 *                     CPU has them (the row says "(AMX)"; ATTNRES_AMX=0 times the AVX-512 kernel)
 *
 *   engines           the reference step as a training run on the TypeScript engine and on the torch
 *                     engine (python/attnres_torch) with 1 and 2 DDP processes (bench/engines.ts),
 *                     with the torch engine's largest loss difference as a correctness check
 *   routing step      the reference step at 12 and at 24 layers for every residual mode, ratios to standard
 *   start-up          `attnres --help`, `attnres train --help` and `attnres --version` (the compiled
 *                     command line, bin/attnres.mjs → dist/, as installed) against `node -e ''`:
 *                     median wall time of interleaved runs and the ratio (target: at most 3×)
 *   view              `attnres view` (bench/view.ts): token-explorer query of a 12-layer d128 model on
 *                     256 tokens (target < 200 ms), runs page with 50 runs drawn in chromium (< 1 s)
 *   convert           only with --convert: bench/convert.ts (`npm run bench:convert`), time and
 *                     peak RSS of `attnres convert` on a synthetic Qwen3-0.6B-shaped checkpoint; it
 *                     writes ~2.5 GB of temporary files and takes minutes, so it is opt-in
 *   generate          only with --generate: bench/generate.ts (`npm run bench:generate`), greedy
 *                     generation prefill and decode tokens/s against PyTorch at two shapes (minutes)
 *
 * Options: --json, --steps N (timed steps per configuration, default 10), --quick (fewer reps),
 *          --no-torch (skip PyTorch and the torch engine), --no-engines (skip the engines row),
 *          --no-routing (skip the routing step), --no-startup (skip the start-up times), --no-view
 *          (skip the viewer), --convert (add the convert benchmark), --generate (add the generation
 *          benchmark).
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { nativeBackend, nativeError } from "../src/backend/index.js";
import { describeNative, measurePeakGflops, nativeInfo } from "../src/backend/native/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const { values: args } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    steps: { type: "string", default: "10" },
    quick: { type: "boolean", default: false },
    "no-torch": { type: "boolean", default: false },
    "no-routing": { type: "boolean", default: false },
    "no-startup": { type: "boolean", default: false },
    "no-view": { type: "boolean", default: false },
    "no-engines": { type: "boolean", default: false },
    convert: { type: "boolean", default: false },
    generate: { type: "boolean", default: false },
  },
});
const log = (s: string): void => {
  if (!args.json) process.stdout.write(s + "\n");
};
const progress = (s: string): void => {
  process.stderr.write(`  … ${s}\n`);
};

/** The reference step of the compute-core issue. */
const REF = { layers: 4, d: 256, heads: 4, seq: 256, batch: 8, vocab: 256, ff: 768 };

/** The products with the weights: 6 · (matmul parameters) · tokens (forward, and two backward). */
function stepMatmulFlops(c: typeof REF): number {
  const matParams = c.layers * (4 * c.d * c.d + 3 * c.d * c.ff) + c.vocab * c.d;
  return 6 * matParams * c.batch * c.seq;
}

/** Attention counted as full T×T: QKᵀ and PV, forward and backward (3×). */
function stepAttentionFlops(c: typeof REF): number {
  return c.layers * 3 * (2 * 2 * c.batch * c.seq * c.seq * c.d);
}

function stepFlops(c: typeof REF): number {
  return stepMatmulFlops(c) + stepAttentionFlops(c);
}

interface StepResult {
  framework: string;
  cold_step_s: number;
  median_step_s: number;
  tokens_per_s: number;
  peak_rss_mb: number;
  threads: number;
  [k: string]: unknown;
}

function runJson(cmd: string, argv: string[], env: NodeJS.ProcessEnv = process.env): StepResult {
  const r = spawnSync(cmd, argv, { cwd: root, encoding: "utf8", maxBuffer: 1 << 24, env });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(" ")} failed:\n${r.stderr}`);
  const line = r.stdout.trim().split("\n").pop()!;
  return JSON.parse(line) as StepResult;
}

function stepArgs(c: typeof REF, steps: number): string[] {
  return [
    "--layers",
    String(c.layers),
    "--d",
    String(c.d),
    "--heads",
    String(c.heads),
    "--seq",
    String(c.seq),
    "--batch",
    String(c.batch),
    "--vocab",
    String(c.vocab),
    "--ff",
    String(c.ff),
    "--steps",
    String(steps),
  ];
}

function findTorch(): string | null {
  for (const py of ["python3", "/usr/bin/python3"]) {
    try {
      execFileSync(py, ["-c", "import torch"], { stdio: "ignore" });
      return py;
    } catch {
      /* try the next */
    }
  }
  return null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Median GFLOP/s of C = op(A) op(B) ([M,K] × [K,N], batched), repeated on the same hot operands. */
function gemmGflops(
  M: number,
  N: number,
  K: number,
  batch: number,
  minSeconds: number,
  transA = false,
  transB = false,
): number {
  const be = nativeBackend()!;
  const A = be.alloc("float32", batch * M * K);
  const B = be.alloc("float32", batch * K * N);
  const C = be.alloc("float32", batch * M * N);
  for (let i = 0; i < A.length; i++) A[i] = Math.sin(i);
  for (let i = 0; i < B.length; i++) B[i] = Math.cos(i);
  const [lda, ldb] = [transA ? M : K, transB ? K : N];
  const run = () =>
    be.gemm(transA, transB, batch, M, N, K, 1, A, 0, lda, M * K, B, 0, ldb, K * N, 0, C, 0, N, M * N);
  run();
  run();
  const rates: number[] = [];
  const t0 = performance.now();
  while (rates.length < 5 || performance.now() - t0 < minSeconds * 1000) {
    const s = performance.now();
    run();
    rates.push((2 * M * N * K * batch) / ((performance.now() - s) / 1000) / 1e9);
    if (rates.length > 2000) break;
  }
  return median(rates);
}

/**
 * The reference step's products with the weights, each timed alone on hot operands: every Linear
 * (in → out) over the step's T tokens runs y = x Wᵀ (T×out×in), dx = g W (T×in×out) and
 * dW = gᵀ x (out×in×T). Their summed time is a floor for the step on this machine's GEMM (in the
 * step the operands come from memory, not cache), so flops / (floor + attention at the peak) bounds
 * the step's fraction of the peak from above.
 */
function stepGemmFloor(c: typeof REF, peak: number, minSeconds: number) {
  const T = c.batch * c.seq;
  const linears: { inF: number; outF: number; count: number }[] = [];
  const add = (inF: number, outF: number, count: number) => {
    const same = linears.find((l) => l.inF === inF && l.outF === outF);
    if (same) same.count += count;
    else linears.push({ inF, outF, count });
  };
  add(c.d, c.d, 4 * c.layers); // q, k, v, o
  add(c.d, c.ff, 2 * c.layers); // SwiGLU gate, up
  add(c.ff, c.d, c.layers); // SwiGLU down
  add(c.d, c.vocab, 1); // the output head
  const rows: { gemm: string; calls: number; gflops: number; ms_per_step: number }[] = [];
  let seconds = 0;
  let gemmFlops = 0;
  for (const { inF, outF, count } of linears)
    for (const [name, M, N, K, tA, tB] of [
      ["x·Wᵀ", T, outF, inF, false, true],
      ["g·W", T, inF, outF, false, false],
      ["gᵀ·x", outF, inF, T, true, false],
    ] as const) {
      const gflops = gemmGflops(M, N, K, 1, minSeconds, tA, tB);
      const flops = 2 * M * N * K * count;
      seconds += flops / (gflops * 1e9);
      gemmFlops += flops;
      rows.push({
        gemm: `${M}×${N}×${K} ${name}`,
        calls: count,
        gflops,
        ms_per_step: (1e3 * flops) / (gflops * 1e9),
      });
    }
  if (gemmFlops !== stepMatmulFlops(c))
    throw new Error("stepGemmFloor and stepFlops disagree on the products");
  const minStep = seconds + stepAttentionFlops(c) / (peak * 1e9);
  return {
    rows,
    seconds,
    gemm_gflop: gemmFlops / 1e9,
    gflops: gemmFlops / seconds / 1e9,
    min_step_s: minStep,
    max_pct_of_peak: (100 * stepFlops(c)) / minStep / 1e9 / peak,
  };
}

/** Median wall times (ms) of `node -e ''` and of the compiled CLI's help and version, interleaved. */
function startupTimes(reps: number): { command: string; median_ms: number; ratio_to_node: number }[] {
  const bin = path.join(root, "bin", "attnres.mjs");
  const cases: [string, string[]][] = [
    ["node -e ''", ["-e", ""]],
    ["attnres --help", [bin, "--help"]],
    ["attnres train --help", [bin, "train", "--help"]],
    ["attnres --version", [bin, "--version"]],
  ];
  const times = cases.map((): number[] => []);
  for (let r = 0; r < reps; r++)
    cases.forEach(([name, argv], i) => {
      const t0 = performance.now();
      const p = spawnSync(process.execPath, argv, { cwd: root, encoding: "utf8" });
      times[i]!.push(performance.now() - t0);
      if (p.status !== 0) throw new Error(`${name} failed:\n${p.stderr}`);
      if (p.stderr)
        throw new Error(`${name} printed on stderr (is dist/ stale? npm run build):\n${p.stderr}`);
    });
  const base = median(times[0]!);
  return cases.map(([command], i) => ({
    command,
    median_ms: median(times[i]!),
    ratio_to_node: median(times[i]!) / base,
  }));
}

function main(): void {
  const steps = Number(args.steps);
  const native = nativeBackend();
  if (!native) throw new Error(`the native backend is unavailable: ${nativeError()}`);
  const info = nativeInfo();
  const threads = native.threads();
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  log(`attnres bench — ${cpu}, ${describeNative(info)}, node ${process.version}`);

  progress("measuring fp32 peak");
  // The best of several short samples: on a shared machine one long sample can land in a slow
  // phase and flatter every "% of peak" below; the spread of the samples shows how noisy it is.
  const samples = Array.from({ length: 5 }, () => measurePeakGflops(args.quick ? 0.06 : 0.2));
  const peak = Math.max(...samples);
  log(
    `fp32 peak: ${peak.toFixed(1)} GFLOP/s (measured: independent vector FMA chains on ${threads} threads; best of 5 samples, ${Math.min(...samples).toFixed(0)}–${peak.toFixed(0)})`,
  );

  progress("matmul");
  const mm = [
    { name: "512×512×512", gflops: gemmGflops(512, 512, 512, 1, args.quick ? 0.3 : 1) },
    { name: "1024×1024×1024", gflops: gemmGflops(1024, 1024, 1024, 1, args.quick ? 0.5 : 2) },
    { name: "batched [8,256,64]×[8,64,256]", gflops: gemmGflops(256, 256, 64, 8, args.quick ? 0.3 : 1) },
  ];
  log("\nmatmul                             GFLOP/s   % of peak");
  for (const m of mm)
    log(
      `  ${m.name.padEnd(32)} ${m.gflops.toFixed(1).padStart(7)}   ${((100 * m.gflops) / peak).toFixed(1).padStart(6)} %`,
    );

  const flops = stepFlops(REF);
  // Ours and PyTorch alternate for a few rounds; each side's row is its best-median round, and the
  // ratio is the median of the per-round ratios (noise on a shared machine hits both sides).
  const py = args["no-torch"] ? null : findTorch();
  const rounds = args.quick ? 1 : 3;
  const oursRuns: StepResult[] = [];
  const torchRuns: StepResult[] = [];
  const pinned = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"].filter((k) => process.env[k] !== undefined);
  const torchFreeRuns: StepResult[] = [];
  const bf16Runs: StepResult[] = [];
  // The products alone are timed once per round, beside the steps, and the fastest round is the
  // floor: a floor timed in one slow phase could sit above steps timed in a fast one.
  const floors: ReturnType<typeof stepGemmFloor>[] = [];
  for (let r = 0; r < rounds; r++) {
    progress(`the reference step's products, each alone, round ${r + 1}/${rounds}`);
    floors.push(stepGemmFloor(REF, peak, args.quick ? 0.1 : 0.3));
    progress(`reference step (attnres), round ${r + 1}/${rounds}`);
    oursRuns.push(
      runJson(process.execPath, ["--import", "tsx", path.join(here, "step.ts"), ...stepArgs(REF, steps)]),
    );
    if (info.bf16) {
      progress(`reference step (attnres, bfloat16 matmuls), round ${r + 1}/${rounds}`);
      bf16Runs.push(
        runJson(process.execPath, [
          "--import",
          "tsx",
          path.join(here, "step.ts"),
          ...stepArgs(REF, steps),
          "--matmul-dtype",
          "bfloat16",
        ]),
      );
    }
    if (py) {
      progress(`reference step (pytorch), round ${r + 1}/${rounds}`);
      torchRuns.push(
        runJson(py, [
          path.join(here, "torch_step.py"),
          ...stepArgs(REF, steps),
          "--threads",
          String(threads),
        ]),
      );
      if (pinned.length > 0) {
        progress(`reference step (pytorch, ${pinned.join(" and ")} unset), round ${r + 1}/${rounds}`);
        const env = { ...process.env };
        for (const k of pinned) delete env[k];
        torchFreeRuns.push(
          runJson(
            py,
            [path.join(here, "torch_step.py"), ...stepArgs(REF, steps), "--threads", String(threads)],
            env,
          ),
        );
      }
    }
  }
  const best = (rs: StepResult[]) => rs.reduce((p, q) => (q.median_step_s < p.median_step_s ? q : p));
  const ours = best(oursRuns);
  const floor = floors.reduce((p, q) => (q.seconds < p.seconds ? q : p));
  const torch = py ? best(torchRuns) : null;
  log(
    `\nreference step: ${REF.layers} layers, d ${REF.d}, ${REF.heads} heads, seq ${REF.seq}, batch ${REF.batch}, vocab ${REF.vocab}, SwiGLU ${REF.ff}; ${(flops / 1e9).toFixed(1)} GFLOP/step`,
  );
  log("                                 median s   cold s   cold/median   tokens/s   GFLOP/s   peak RSS MB");
  const row = (name: string, r: StepResult) =>
    log(
      `  ${name.padEnd(30)} ${r.median_step_s.toFixed(3).padStart(8)}   ${r.cold_step_s.toFixed(3).padStart(6)}   ${(r.cold_step_s / r.median_step_s).toFixed(2).padStart(11)}   ${r.tokens_per_s.toFixed(0).padStart(8)}   ${(flops / r.median_step_s / 1e9).toFixed(1).padStart(7)}   ${r.peak_rss_mb.toFixed(0).padStart(11)}`,
    );
  row(`attnres (GEMM ${info.gemm})`, ours);
  const bf16 = bf16Runs.length > 0 ? best(bf16Runs) : null;
  if (bf16) row(info.amx ? "attnres, bf16 matmuls (AMX)" : "attnres, bf16 matmuls", bf16);
  const torchFree = torchFreeRuns.length > 0 ? best(torchFreeRuns) : null;
  const core = (r: StepResult) => (r.blas_core ? `, ${String(r.blas_core)}` : "");
  if (torch) row(`pytorch ${String(torch.torch)}${core(torch)}`, torch);
  else log('  pytorch: not measured (`python3 -c "import torch"` failed; apt-get install python3-torch)');
  if (torchFree) row(`pytorch${core(torchFree)} *`, torchFree);
  log(
    `  its products alone (every Linear's x·Wᵀ, g·W and gᵀ·x, each timed on hot operands): ${floor.seconds.toFixed(3)} s for their ${floor.gemm_gflop.toFixed(1)} GFLOP, ${floor.gflops.toFixed(1)} GFLOP/s = ${((100 * floor.gflops) / peak).toFixed(0)} % of peak;`,
  );
  log(
    `  so with this GEMM, and attention at the peak, the step could reach at most ${floor.max_pct_of_peak.toFixed(0)} % of peak (${floor.min_step_s.toFixed(3)} s)`,
  );
  const ratio = torch ? median(oursRuns.map((o, r) => o.median_step_s / torchRuns[r]!.median_step_s)) : null;
  const ratioFree = torchFree
    ? median(oursRuns.map((o, r) => o.median_step_s / torchFreeRuns[r]!.median_step_s))
    : null;
  const rssRatio = torch ? ours.peak_rss_mb / torch.peak_rss_mb : null;
  if (ratio !== null)
    log(
      `  step time ours/pytorch: ${ratio.toFixed(2)} (median of ${rounds} alternating rounds: ${oursRuns.map((o, r) => (o.median_step_s / torchRuns[r]!.median_step_s).toFixed(2)).join(", ")})   peak RSS ours/pytorch: ${rssRatio!.toFixed(2)}`,
    );
  if (bf16)
    log(
      `  bf16 matmuls / float32 step time: ${median(bf16Runs.map((b, r) => b.median_step_s / oursRuns[r]!.median_step_s)).toFixed(2)} (train.matmul_dtype bfloat16; operands rounded to bfloat16, float32 accumulation)`,
    );
  if (ratioFree !== null)
    log(
      `  * with ${pinned.join(" and ")} unset for that command (OpenBLAS picks its kernels): ours/pytorch ${ratioFree.toFixed(2)} (rounds: ${oursRuns.map((o, r) => (o.median_step_s / torchFreeRuns[r]!.median_step_s).toFixed(2)).join(", ")})`,
    );

  // ---- engines: the reference step as a training run, TypeScript engine vs torch engine (1 and 2
  // DDP processes), one after the other in one child process.
  let engines: Record<string, unknown> | null = null;
  if (!args["no-engines"] && !args["no-torch"]) {
    progress("engines: the reference step as a training run (bench/engines.ts)");
    const r = spawnSync(
      process.execPath,
      [
        "--import",
        "tsx",
        path.join(here, "engines.ts"),
        "--steps",
        String(Math.max(4, Math.ceil(steps / 2))),
      ],
      { cwd: root, encoding: "utf8", maxBuffer: 1 << 24, stdio: ["ignore", "pipe", "inherit"] },
    );
    if (r.status === 0) {
      const e = JSON.parse(r.stdout.trim().split("\n").pop()!) as {
        steps: number;
        ts: { median_step_s: number; tokens_per_s: number };
        torch_1: { median_step_s: number; tokens_per_s: number };
        torch_2: { median_step_s: number; tokens_per_s: number };
        max_rel_loss_diff_torch1_vs_ts: number;
        max_rel_loss_diff_torch2_vs_torch1: number;
      };
      engines = e;
      log(
        `\nengines: the reference step as a training run of ${e.steps} steps (median over steps 2…${e.steps})`,
      );
      log("  engine                          median s   tokens/s   time × TS engine");
      const erow = (name: string, x: { median_step_s: number; tokens_per_s: number }) =>
        log(
          `  ${name.padEnd(30)} ${x.median_step_s.toFixed(3).padStart(8)}   ${x.tokens_per_s.toFixed(0).padStart(8)}   ${(x.median_step_s / e.ts.median_step_s).toFixed(2).padStart(16)}`,
        );
      erow(`TypeScript engine (GEMM ${info.gemm})`, e.ts);
      erow("torch engine, 1 process", e.torch_1);
      erow("torch engine, 2 processes DDP", e.torch_2);
      log(
        `  losses: torch 1 process vs TS engine within ${e.max_rel_loss_diff_torch1_vs_ts.toExponential(1)} relative; 2 processes vs 1 within ${e.max_rel_loss_diff_torch2_vs_torch1.toExponential(1)}`,
      );
    } else log("  engines: not measured (the torch engine did not run; its error is above)");
  }

  // ---- routing step: the reference step at 12 and 24 layers, every residual mode, ratios to
  // standard. Times come from one process per depth that interleaves the modes' steps (noise falls
  // on all alike); peak RSS from one fresh process per mode.
  type RoutingRow = {
    mode: string;
    layers: number;
    median_step_s: number;
    ratio_to_standard: number;
    params: number;
    peak_rss_mb: number;
    rss_vs_standard: number;
  };
  const routing: RoutingRow[] = [];
  const routing24: RoutingRow[] = [];
  const routingDepth = (layers: number, rows: RoutingRow[]): void => {
    progress(`routing step: all modes at ${layers} layers, interleaved`);
    const r = spawnSync(
      process.execPath,
      [
        "--import",
        "tsx",
        path.join(here, "routing.ts"),
        "--layers",
        String(layers),
        "--rounds",
        String(Math.max(3, steps)),
      ],
      {
        cwd: root,
        encoding: "utf8",
      },
    );
    if (r.status !== 0) throw new Error(`bench/routing.ts failed:\n${r.stderr}`);
    const times = JSON.parse(r.stdout.trim().split("\n").pop()!) as {
      mode: string;
      median_step_s: number;
      ratio_to_standard: number;
      params: number;
    }[];
    for (const t of times) {
      progress(`routing step: peak RSS of ${t.mode} at ${layers} layers`);
      const m = runJson(process.execPath, [
        "--import",
        "tsx",
        path.join(here, "step.ts"),
        ...stepArgs({ ...REF, layers }, 1),
        "--warmup",
        "1",
        "--mode",
        t.mode,
      ]);
      rows.push({ ...t, layers, peak_rss_mb: m.peak_rss_mb, rss_vs_standard: 0 });
    }
    for (const m of rows) m.rss_vs_standard = m.peak_rss_mb / rows[0]!.peak_rss_mb;
    log(
      `\nrouting step: the reference step with ${layers} layers (block modes: 4 blocks); times interleaved in one process`,
    );
    log("  mode              median s   × standard   peak RSS MB   × standard      params");
    for (const m of rows)
      log(
        `  ${m.mode.padEnd(16)} ${m.median_step_s.toFixed(3).padStart(8)}   ${m.ratio_to_standard.toFixed(2).padStart(10)}   ${m.peak_rss_mb.toFixed(0).padStart(11)}   ${m.rss_vs_standard.toFixed(2).padStart(10)}   ${String(m.params).padStart(9)}`,
      );
  };
  if (!args["no-routing"]) {
    routingDepth(12, routing);
    routingDepth(24, routing24);
  }

  // ---- start-up: the compiled command line's help and version against a bare node.
  let startup: ReturnType<typeof startupTimes> = [];
  if (!args["no-startup"]) {
    progress("start-up: node -e '' and attnres --help / train --help / --version, interleaved");
    const reps = args.quick ? 5 : 15;
    startup = startupTimes(reps);
    log(`\nstart-up: median wall time of ${reps} interleaved runs of each (compiled CLI, bin/attnres.mjs)`);
    log("  command                  median ms   × node -e ''");
    for (const t of startup)
      log(
        `  ${t.command.padEnd(24)} ${t.median_ms.toFixed(0).padStart(9)}   ${t.ratio_to_node.toFixed(2).padStart(12)}`,
      );
  }

  // ---- view: the viewer's token query and runs page, in a fresh process (bench/view.ts).
  let view: unknown = null;
  if (!args["no-view"]) {
    progress("view: token query and runs page");
    const r = spawnSync(process.execPath, ["--import", "tsx", path.join(here, "view.ts")], {
      cwd: root,
      encoding: "utf8",
    });
    if (r.status !== 0) throw new Error(`bench/view.ts failed:\n${r.stderr}`);
    const v = JSON.parse(r.stdout.trim().split("\n").pop()!) as {
      token_query: { round_trip_ms: number; forward_ms: number };
      runs_page: { table_ms: number; fcp_ms: number | null } | null;
    };
    view = v;
    log("\nattnres view                                         ms   target");
    log(
      `  token query, 12 layers d128, 256 tokens      ${v.token_query.round_trip_ms.toFixed(0).padStart(8)}   < 200   (forward ${v.token_query.forward_ms.toFixed(0)} ms)`,
    );
    log(
      v.runs_page
        ? `  runs page, 50 runs: table drawn              ${v.runs_page.table_ms.toFixed(0).padStart(8)}   < 1000  (first paint ${v.runs_page.fcp_ms?.toFixed(0) ?? "?"} ms)`
        : "  runs page: not measured (/usr/bin/chromium is absent)",
    );
  }

  // ---- convert: opt-in (large temporary files); its own table, or its JSON object under "convert".
  let convert: unknown = null;
  if (args.convert) {
    progress("convert: synthetic Qwen3-0.6B checkpoint (bench/convert.ts)");
    log("");
    const argv = ["--import", "tsx", path.join(here, "convert.ts"), ...(args.json ? ["--json"] : [])];
    const r = spawnSync(process.execPath, argv, {
      cwd: root,
      encoding: "utf8",
      maxBuffer: 1 << 24,
      stdio: ["ignore", args.json ? "pipe" : "inherit", "inherit"],
    });
    if (r.status !== 0) throw new Error("bench/convert.ts failed (its error is above)");
    if (args.json) convert = JSON.parse(r.stdout) as unknown;
  }

  // ---- generate: opt-in (minutes); its own table, or its JSON object under "generate".
  let generate: unknown = null;
  if (args.generate) {
    progress("generate: greedy generation against PyTorch (bench/generate.ts)");
    log("");
    const argv = [
      "--import",
      "tsx",
      path.join(here, "generate.ts"),
      ...(args.json ? ["--json"] : []),
      ...(args["no-torch"] ? ["--no-torch"] : []),
      ...(args.quick ? ["--quick"] : []),
    ];
    const r = spawnSync(process.execPath, argv, {
      cwd: root,
      encoding: "utf8",
      maxBuffer: 1 << 24,
      stdio: ["ignore", args.json ? "pipe" : "inherit", "inherit"],
    });
    if (r.status !== 0) throw new Error("bench/generate.ts failed (its error is above)");
    if (args.json) generate = JSON.parse(r.stdout) as unknown;
  }

  if (args.json)
    console.log(
      JSON.stringify(
        {
          cpu,
          threads,
          blas: info.blas,
          blas_core: info.blasCore,
          gemm: info.gemm,
          bf16_gemm: info.bf16 ? (info.amx ? "amx" : "avx512-bf16") : null,
          peak_gflops: peak,
          peak_gflops_samples: samples,
          matmul: mm.map((m) => ({ ...m, pct_of_peak: (100 * m.gflops) / peak })),
          reference_step: {
            config: REF,
            gflop: flops / 1e9,
            attnres: ours,
            pytorch: torch,
            ratio_time: ratio,
            attnres_bf16_matmuls: bf16,
            pytorch_openblas_unpinned: torchFree,
            ratio_time_openblas_unpinned: ratioFree,
            ratio_rss: rssRatio,
            products_alone: floor,
          },
          engines,
          routing_step: routing,
          routing_step_24: routing24,
          startup,
          view,
          convert,
          generate,
        },
        null,
        2,
      ),
    );
}

main();
