/**
 * `npm run bench` — the speed and memory targets, measured in one run so ratios are fair on a
 * shared, noisy machine. Prints a table; `--json` prints one JSON object instead.
 *
 *   fp32 peak         measured by the native addon's FMA microbenchmark on all threads
 *   matmul            GFLOP/s at 512³, 1024³ and batched [8,256,64]x[8,64,256], as % of that peak
 *   reference step    forward+backward+AdamW of the 4-layer, d=256 model on 8×256 tokens, in a
 *                     fresh process; and the same step in PyTorch when `import torch` works
 *
 * Options: --json, --steps N (timed steps per configuration, default 10), --quick (fewer reps),
 *          --no-torch (skip PyTorch).
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { nativeBackend, nativeError } from "../src/backend/index.js";
import { measurePeakGflops, nativeInfo } from "../src/backend/native/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const { values: args } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    steps: { type: "string", default: "10" },
    quick: { type: "boolean", default: false },
    "no-torch": { type: "boolean", default: false },
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

/** Matmul FLOPs (6·N·tokens over the matmul parameters) + attention counted as full T×T. */
function stepFlops(c: typeof REF): number {
  const tokens = c.batch * c.seq;
  const matParams = c.layers * (4 * c.d * c.d + 3 * c.d * c.ff) + c.vocab * c.d;
  const attn = c.layers * 3 * (2 * 2 * c.batch * c.seq * c.seq * c.d);
  return 6 * matParams * tokens + attn;
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

function runJson(cmd: string, argv: string[]): StepResult {
  const r = spawnSync(cmd, argv, { cwd: root, encoding: "utf8", maxBuffer: 1 << 24 });
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

function gemmGflops(M: number, N: number, K: number, batch: number, minSeconds: number): number {
  const be = nativeBackend()!;
  const A = be.alloc("float32", batch * M * K);
  const B = be.alloc("float32", batch * K * N);
  const C = be.alloc("float32", batch * M * N);
  for (let i = 0; i < A.length; i++) A[i] = Math.sin(i);
  for (let i = 0; i < B.length; i++) B[i] = Math.cos(i);
  const run = () =>
    be.gemm(false, false, batch, M, N, K, 1, A, 0, K, M * K, B, 0, N, K * N, 0, C, 0, N, M * N);
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

function main(): void {
  const steps = Number(args.steps);
  const native = nativeBackend();
  if (!native) throw new Error(`the native backend is unavailable: ${nativeError()}`);
  const info = nativeInfo();
  const threads = native.threads();
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  log(
    `attnres bench — ${cpu}, ${threads} threads, BLAS: ${info.blas}, SIMD: ${info.simd}, node ${process.version}`,
  );

  progress("measuring fp32 peak");
  const peak = measurePeakGflops(args.quick ? 0.3 : 1.0);
  log(
    `fp32 peak: ${peak.toFixed(1)} GFLOP/s (measured: independent vector FMA chains on ${threads} threads)`,
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
  progress("reference step (attnres)");
  const ours = runJson(process.execPath, [
    "--import",
    "tsx",
    path.join(here, "step.ts"),
    ...stepArgs(REF, steps),
  ]);
  const py = args["no-torch"] ? null : findTorch();
  let torch: StepResult | null = null;
  if (py) {
    progress("reference step (pytorch)");
    torch = runJson(py, [
      path.join(here, "torch_step.py"),
      ...stepArgs(REF, steps),
      "--threads",
      String(threads),
    ]);
  }
  log(
    `\nreference step: ${REF.layers} layers, d ${REF.d}, ${REF.heads} heads, seq ${REF.seq}, batch ${REF.batch}, vocab ${REF.vocab}, SwiGLU ${REF.ff}; ${(flops / 1e9).toFixed(1)} GFLOP/step`,
  );
  log("                      median s   cold s   cold/median   tokens/s   GFLOP/s   peak RSS MB");
  const row = (name: string, r: StepResult) =>
    log(
      `  ${name.padEnd(19)} ${r.median_step_s.toFixed(3).padStart(8)}   ${r.cold_step_s.toFixed(3).padStart(6)}   ${(r.cold_step_s / r.median_step_s).toFixed(2).padStart(11)}   ${r.tokens_per_s.toFixed(0).padStart(8)}   ${(flops / r.median_step_s / 1e9).toFixed(1).padStart(7)}   ${r.peak_rss_mb.toFixed(0).padStart(11)}`,
    );
  row(`attnres (${info.blas})`, ours);
  if (torch) row(`pytorch ${String(torch.torch)}`, torch);
  else log('  pytorch: not measured (`python3 -c "import torch"` failed; apt-get install python3-torch)');
  const ratio = torch ? ours.median_step_s / torch.median_step_s : null;
  const rssRatio = torch ? ours.peak_rss_mb / torch.peak_rss_mb : null;
  if (ratio !== null)
    log(`  step time ours/pytorch: ${ratio.toFixed(2)}   peak RSS ours/pytorch: ${rssRatio!.toFixed(2)}`);

  if (args.json)
    console.log(
      JSON.stringify(
        {
          cpu,
          threads,
          blas: info.blas,
          peak_gflops: peak,
          matmul: mm.map((m) => ({ ...m, pct_of_peak: (100 * m.gflops) / peak })),
          reference_step: {
            config: REF,
            gflop: flops / 1e9,
            attnres: ours,
            pytorch: torch,
            ratio_time: ratio,
            ratio_rss: rssRatio,
          },
        },
        null,
        2,
      ),
    );
}

main();
