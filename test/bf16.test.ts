/**
 * bfloat16 matmul operands (Backend.setMatmulDtype, train.matmul_dtype / --matmul-dtype).
 *
 * On a CPU with AVX-512 BF16 (nativeInfo().bf16): the native GEMM in bfloat16 mode against the
 * reference GEMM in float64 on the same operands rounded to bfloat16 (nearest even) — awkward sizes,
 * both transposes, beta 0 over NaN-poisoned C and beta 0.5, odd K (a half-filled last pair), K over
 * several packed slices; its result differs from the float32 GEMM's (the mode really rounds); float32
 * mode is restored exactly. Bit for bit, through a selecting operand: every layout rounds ties, carries,
 * the largest denormal, NaN payloads and overflow exactly like the scalar definition, including the
 * half-filled last vector of a K slice. A training run with matmul_dtype bfloat16: finite, close to the float32
 * run but not identical, recorded in run.json, resumed bit for bit, and the backend back in float32
 * afterwards. Without AVX-512 BF16 the same calls fail with one clear sentence. Everywhere: the
 * reference backend and the torch engine refuse the setting, and the CLI names the flag.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { loadNativeBackend, nativeInfo, setNativeAmx } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { runTraining, type RunSpec } from "../src/train/run.js";
import { readMetrics, sampleText, tempDir, writePreparedBytes } from "./helpers.js";
import { nans, rand, randInt, rnd, SEED } from "./native-buffers.js";

const nat = loadNativeBackend();
const hasBf16 = nativeInfo().bf16;
/** The bfloat16 GEMM kernels this machine has: AVX-512 BF16, and AMX tiles where the CPU has them. */
const amxDefault = nativeInfo().amx;
const kernels = amxDefault ? (["avx512-bf16", "amx"] as const) : (["avx512-bf16"] as const);

/** fn() with bfloat16 matmuls on `kernel`; float32 and the default kernel afterwards. */
function inBf16<T>(kernel: (typeof kernels)[number], fn: () => T): T {
  if (amxDefault) setNativeAmx(kernel === "amx");
  nat.setMatmulDtype!("bfloat16");
  try {
    return fn();
  } finally {
    nat.setMatmulDtype!("float32");
    if (amxDefault) setNativeAmx(true);
  }
}

/** x rounded to bfloat16, nearest even (as the native packing does), as a float64. */
function bf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = ((u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) & 0xffff0000) >>> 0;
  return f[0]!;
}

function gemm(
  be: typeof nat,
  tA: boolean,
  tB: boolean,
  M: number,
  N: number,
  K: number,
  A: Float32Array | Float64Array,
  B: Float32Array | Float64Array,
  beta: number,
  C: Float32Array | Float64Array,
  alpha = 0.75,
): void {
  be.gemm(tA, tB, 1, M, N, K, alpha, A, 0, tA ? M : K, 0, B, 0, tB ? K : N, 0, beta, C, 0, N, 0);
}

const data = tempDir("bf16");
writePreparedBytes(data, sampleText(20000));
const spec = (train: Record<string, unknown> = {}): RunSpec => ({
  model: {
    model_type: "qwen3",
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: 2,
    num_attention_heads: 2,
  },
  data,
  train: {
    steps: 8,
    batch_size: 4,
    seq_len: 32,
    lr: 3e-3,
    warmup: 2,
    eval_every: 4,
    eval_batches: 2,
    seed: 5,
    ...train,
  } as RunSpec["train"],
});
const curve = (dir: string) => readMetrics(dir, ["step", "loss", "grad_norm", "val_loss"]);

describe("bfloat16 matmuls", () => {
  if (hasBf16)
    test("nativeInfo().amx: on where AVX-512 BF16 is, only with AMX tiles; setNativeAmx switches it", () => {
      if (!amxDefault) {
        assert.throws(() => setNativeAmx(true), /no AMX-BF16 tiles/);
        return;
      }
      setNativeAmx(false);
      assert.equal(nativeInfo().amx, false);
      setNativeAmx(true);
      assert.equal(nativeInfo().amx, true);
    });
  if (hasBf16)
    for (const kernel of kernels) {
      // alpha 0.75 with beta 0 (C never read) and 0.5; alpha 1 with beta 0 and 1 (where the AMX GEMM
      // keeps whole 32 x 32 blocks in C itself). The larger shapes take several threads, row and column
      // tails, K tails, and (K long, few output blocks) the split-K path.
      for (const [M, N, K, ab] of [
        [7, 13, 37, 0.75],
        [33, 65, 1, 0.75],
        [129, 67, 255, 0.75],
        [70, 300, 521, 0.75],
        [2, 40, 16, 0.75],
        [96, 160, 1100, 1],
        [200, 72, 2080, 1],
        [75, 40, 33, 1],
      ] as const)
        for (const tA of [false, true])
          for (const tB of [false, true])
            for (const beta of ab === 1 ? [0, 1] : [0, 0.5])
              test(`${kernel} gemm M=${M} N=${N} K=${K} tA=${tA} tB=${tB} alpha=${ab} beta=${beta}: the float64 product of bf16-rounded operands`, () => {
                const A = rnd(M * K);
                const B = rnd(K * N);
                const C0 = rnd(M * N);
                const C = beta === 0 ? new Float32Array(M * N).fill(NaN) : Float32Array.from(C0);
                inBf16(kernel, () => gemm(nat, tA, tB, M, N, K, A, B, beta, C, ab));
                const want = Float64Array.from(C0);
                gemm(
                  ref,
                  tA,
                  tB,
                  M,
                  N,
                  K,
                  Float64Array.from(A, bf16),
                  Float64Array.from(B, bf16),
                  beta,
                  want,
                  ab,
                );
                const terms = new Float64Array(M * N).fill(0);
                gemm(
                  ref,
                  tA,
                  tB,
                  M,
                  N,
                  K,
                  Float64Array.from(A, Math.abs),
                  Float64Array.from(B, Math.abs),
                  0,
                  terms,
                  Math.abs(ab),
                );
                for (let i = 0; i < M * N; i++) {
                  const tol = 1e-6 * (1 + Math.sqrt(K)) * (terms[i]! + Math.abs(beta * C0[i]!)) + 1e-30;
                  assert.ok(
                    Math.abs(C[i]! - want[i]!) <= tol,
                    `C[${i}] = ${C[i]}, want ${want[i]} (tol ${tol})`,
                  );
                }
                // The float32 GEMM (restored) differs: the operands really were rounded.
                const C32 = beta === 0 ? new Float32Array(M * N) : Float32Array.from(C0);
                gemm(nat, tA, tB, M, N, K, A, B, beta, C32, ab);
                if (M * N * K > 64)
                  assert.ok(
                    C32.some((v, i) => v !== C[i]),
                    "bf16 and f32 results are identical",
                  );
              });

      // Bit-exact rounding in every operand layout: one operand selects (a 1 at one k per output, zeros
      // elsewhere), so each C entry is one rounded value of the other operand times 1, exactly. The values
      // include ties, carries into the exponent, the largest denormal (rounds up to a normal), a NaN whose
      // payload would truncate to infinity, and the largest float (rounds to infinity); one such special
      // per row or column, as it turns the zero terms of its row/column into NaN (inf * 0).
      // K = 38 and 70 leave a half-filled vector at the end of every K slice; 1030 spans three slices;
      // N = 4133 spans two blocks of columns packed at once (op(A)'s slices are packed once for both).
      for (const [M, N, K] of [
        [9, 80, 38],
        [19, 47, 70],
        [17, 45, 1030],
        [5, 4133, 1030],
      ] as const)
        for (const tA of [false, true])
          for (const tB of [false, true])
            for (const side of ["A", "B"] as const)
              test(`${kernel} gemm M=${M} N=${N} K=${K} tA=${tA} tB=${tB}: op(${side}) rounded bit for bit (specials included)`, () => {
                const bits = new Uint32Array(1);
                const f = new Float32Array(bits.buffer);
                const fromBits = (u: number) => ((bits[0] = u), f[0]!);
                // the packing's rounding, then the dot product's: bf16 denormals count as zero
                const toBits = (x: number) => ((f[0] = x), bits[0]!);
                // (operand values are kept as bit patterns: a NaN read into a JS number may lose its payload)
                const rounded = (u: number): number => {
                  if ((u & 0x7fffffff) > 0x7f800000) return NaN;
                  const r = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
                  return (r & 0x7f800000) === 0 ? 0 : fromBits(r >>> 0);
                };
                const awkward = [
                  0x3f808000, 0x3f818000, 0xbf808000, 0x3fffffff, 0x007fffff, 0x00018000, 0x40490fdb,
                ];
                const specials = [0x7f800001, 0xffc12345, 0x7f800000, 0x7f7fffff, 0xff7fffff];
                // values: rows (side A) or columns (side B) of op(values), R x K; sel[r] the k picked for output r
                const R = side === "A" ? M : N;
                const outs = side === "A" ? N : M;
                const vals = Array.from({ length: R }, () =>
                  Array.from({ length: K }, () =>
                    rand() < 0.2 ? awkward[randInt(awkward.length)]! : toBits(2 * rand() - 1),
                  ),
                );
                const sel = Array.from({ length: outs }, (_, o) => (o * 7 + 3) % K);
                const special = new Map<number, number>(); // row of vals -> output index whose k holds a special
                for (let r = 1; r < R; r += 3) {
                  const o = (r * 5) % outs;
                  vals[r]![sel[o]!] = specials[r % specials.length]!;
                  special.set(r, o);
                }
                // op(A)[i][k] and op(B)[k][j] into their stored layouts
                const A = nat.alloc("float32", M * K) as Float32Array;
                const B = nat.alloc("float32", K * N) as Float32Array;
                const one = toBits(1);
                const opA = (i: number, k: number) => (side === "A" ? vals[i]![k]! : sel[i] === k ? one : 0);
                const opB = (k: number, j: number) => (side === "B" ? vals[j]![k]! : sel[j] === k ? one : 0);
                const Au = new Uint32Array(A.buffer, A.byteOffset, A.length);
                const Bu = new Uint32Array(B.buffer, B.byteOffset, B.length);
                for (let i = 0; i < M; i++)
                  for (let k = 0; k < K; k++) Au[tA ? k * M + i : i * K + k] = opA(i, k);
                for (let k = 0; k < K; k++)
                  for (let j = 0; j < N; j++) Bu[tB ? j * K + k : k * N + j] = opB(k, j);
                const C = nans(M * N);
                inBf16(kernel, () =>
                  nat.gemm(tA, tB, 1, M, N, K, 1, A, 0, tA ? M : K, 0, B, 0, tB ? K : N, 0, 0, C, 0, N, 0),
                );
                for (let i = 0; i < M; i++)
                  for (let j = 0; j < N; j++) {
                    const [r, o] = side === "A" ? [i, j] : [j, i];
                    let want = rounded(vals[r]![sel[o]!]!);
                    const so = special.get(r);
                    if (
                      so !== undefined &&
                      sel[so] !== sel[o] &&
                      !Number.isFinite(rounded(vals[r]![sel[so]!]!))
                    )
                      want = NaN;
                    const got = C[i * N + j]!;
                    assert.ok(
                      Number.isNaN(want) ? Number.isNaN(got) : got === want,
                      `C[${i}][${j}] = ${got}, want ${want} (seed ${SEED})`,
                    );
                  }
              });
    }

  if (hasBf16) {
    test("training with matmul_dtype bfloat16: close to float32, not equal; resumed bit for bit; float32 afterwards", async () => {
      const f32 = tempDir("bf16-run");
      const b = tempDir("bf16-run");
      const b2 = tempDir("bf16-run");
      await runTraining(spec(), f32);
      const rb = await runTraining(spec({ matmul_dtype: "bfloat16" }), b);
      assert.equal(rb.done, true);
      assert.ok(Number.isFinite(rb.valLoss));
      const l32 = curve(f32);
      const lb = curve(b);
      assert.notDeepEqual(lb, l32, "bf16 training equals float32 training bit for bit");
      // Step 1 starts from the same weights: its loss differs by rounding only.
      assert.ok(
        Math.abs(lb[0]![1]! - l32[0]![1]!) < 2e-2 * l32[0]![1]!,
        `step-1 losses ${lb[0]![1]} vs ${l32[0]![1]}`,
      );
      assert.ok(Math.abs(rb.valLoss - (l32.at(-1)![3] as number)) < 0.1, "final validation losses close");
      const saved = JSON.parse(fs.readFileSync(path.join(b, "run.json"), "utf8")) as RunSpec;
      assert.equal(saved.train.matmul_dtype, "bfloat16");
      // An interrupted bf16 run resumes bit for bit.
      await runTraining(spec({ matmul_dtype: "bfloat16" }), b2, { stopAfter: 3 });
      await runTraining(spec({ matmul_dtype: "bfloat16" }), b2, { resume: true });
      assert.deepEqual(curve(b2), lb);
      // A bf16 run refused before it starts (its folder holds a run) leaves float32 too.
      await assert.rejects(runTraining(spec({ matmul_dtype: "bfloat16" }), b), /already holds a run/);
      // The backend is back in float32: a GEMM equals the one computed after setting float32 explicitly.
      const A = rnd(40 * 50);
      const B = rnd(50 * 30);
      const C1 = new Float32Array(40 * 30);
      const C2 = new Float32Array(40 * 30);
      gemm(nat, false, false, 40, 30, 50, A, B, 0, C1);
      nat.setMatmulDtype!("float32");
      gemm(nat, false, false, 40, 30, 50, A, B, 0, C2);
      assert.deepEqual(C1, C2);
    });
  } else {
    test("without AVX-512 BF16, asking for bfloat16 matmuls fails with one clear sentence", async () => {
      assert.throws(() => nat.setMatmulDtype!("bfloat16"), /bfloat16 matmuls need a CPU with AVX-512 BF16/);
      const dir = tempDir("bf16-run");
      await assert.rejects(runTraining(spec({ matmul_dtype: "bfloat16" }), dir), /AVX-512 BF16/);
      assert.equal(fs.existsSync(path.join(dir, "run.json")), false, "the run folder was touched");
    });
  }

  test("the reference backend has no bfloat16 matmuls: the run is refused before its folder is touched", () => {
    assert.equal(ref.setMatmulDtype, undefined);
    const dir = tempDir("bf16-ref");
    const r = spawnSync(
      process.execPath,
      [
        "--import",
        "tsx",
        "-e",
        `import("./src/train/run.ts").then((m) => m.runTraining(${JSON.stringify(spec({ matmul_dtype: "bfloat16" }))}, ${JSON.stringify(dir)})).catch((e) => { console.error(e.message); process.exit(3); })`,
      ],
      { env: { ...process.env, ATTNRES_BACKEND: "reference" }, encoding: "utf8" },
    );
    assert.equal(r.status, 3, r.stderr);
    assert.match(
      r.stderr,
      /matmul_dtype bfloat16 needs the native backend \(the reference backend has none\)/,
    );
    assert.equal(fs.existsSync(path.join(dir, "run.json")), false);
  });

  test("the CLI: --matmul-dtype with the torch engine, or on the reference backend, is one line naming the flags", () => {
    const cli = (args: string[], env: Record<string, string> = {}) =>
      spawnSync(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
        env: { ...process.env, ...env },
        encoding: "utf8",
      });
    const out = tempDir("bf16-cli");
    const base = ["train", "-p", "sotu-tiny", "-d", data, "--steps", "2", "--matmul-dtype", "bfloat16"];
    const t = cli([...base, "--engine", "torch", "-o", path.join(out, "t")]);
    assert.notEqual(t.status, 0);
    assert.match(
      t.stderr.trim(),
      /^attnres: --matmul-dtype bfloat16 is a setting of the TypeScript engine; the torch engine's compute dtype is --dtype bfloat16 \(autocast\)$/,
    );
    const r = cli([...base, "-o", path.join(out, "r")], { ATTNRES_BACKEND: "reference" });
    assert.notEqual(r.status, 0);
    assert.match(
      r.stderr.trim(),
      /^attnres: --matmul-dtype bfloat16 needs the native backend \(the reference backend has none\)$/,
    );
    const bad = cli([...base.slice(0, -2), "--matmul-dtype", "fp8", "-o", path.join(out, "b")]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--matmul-dtype.*fp8.*float32, bfloat16|Allowed choices are float32, bfloat16/);
  });
});
