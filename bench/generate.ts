/**
 * `npm run bench:generate` (or `npm run bench -- --generate`) — greedy generation with a KV cache,
 * float32, batch 1, a 128-token prompt then 128 new tokens: prefill tokens/s (the prompt's one
 * forward, the LM head on its last position, and the first token's argmax) and decode tokens/s
 * (the 127 one-token steps after it) reported apart, for the standard and delta modes, against a
 * plain PyTorch decoder with a hand-written KV cache (bench/torch_generate.py) in the same run.
 *
 *   shapes     a: 12 layers, d 768, 12 query / 4 kv heads of 64, SwiGLU 2048, vocab 32000, Llama
 *                 (no qk-norm), untied LM head (110M parameters)
 *              b: Qwen3-0.6B: 28 layers, d 1024, 16 / 8 heads of 128, SwiGLU 3072, vocab 151936,
 *                 qk-norm, tied embeddings (596M parameters)
 *   weights    random (seeded N(0, 0.02), norm gains 1), built in this process and written once as
 *              a float32 checkpoint into a temporary folder (removed at the end), which PyTorch
 *              reads; our child rebuilds the same weights from the same seed. The delta model is the standard one plus its
 *              routers at their initial values (zero queries: uniform routing), on shared weights.
 *   rounds     each round runs ours (a fresh child process: `--child`, both modes on one loaded
 *              model) and then PyTorch (a fresh python process, standard only), each after one
 *              warm-up generation of 8 tokens. Each side's row is its best round; the ratios are
 *              medians of per-round ratios (load on a shared machine falls on both sides alike).
 *   bandwidth  the native addon's read-bandwidth kernel (every thread streams its own 64 MiB
 *              slice, summing it), measured in our child right before its timed runs. Weight bytes
 *              per decoded token = 4 × every parameter a step reads (every matrix and gain; the
 *              embedding is one row unless tied, when the LM head reads all of it); the decode
 *              limit is bandwidth ÷ those bytes, and decode is reported as % of that limit.
 *   agreement  ours (standard) and PyTorch's greedy tokens from the same weights and prompt:
 *              how many of the 128 agree, and the first position where they differ (float32
 *              rounding differs between the two, so a near-tie in the logits may flip a token;
 *              everything after a flip differs legitimately).
 *
 * Options: --json, --shapes a,b (default both), --rounds N (default 3), --new N (default 128),
 *          --prompt N (default 128), --no-torch, --quick (shape a only, 1 round, 32 new tokens).
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { nativeBackend, nativeError } from "../src/backend/index.js";
import { describeNative, measureReadBandwidth, nativeInfo } from "../src/backend/native/index.js";
import { readConfig, saveCheckpoint } from "../src/model/checkpoint.js";
import type { DecoderLMConfig } from "../src/model/config.js";
import { DecoderLM } from "../src/model/decoder.js";
import { generate } from "../src/model/generate.js";
import { QWEN3_0_6B_MODEL } from "./qwen3-shape.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);

const { values: args } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    shapes: { type: "string", default: "a,b" },
    rounds: { type: "string", default: "3" },
    new: { type: "string", default: "128" },
    prompt: { type: "string", default: "128" },
    "no-torch": { type: "boolean", default: false },
    quick: { type: "boolean", default: false },
    // internal: run ours on a checkpoint folder and print one JSON line
    child: { type: "string" },
  },
});

const SHAPES: Record<string, { name: string; config: DecoderLMConfig }> = {
  a: {
    name: "12 layers, d 768, 12/4 heads, SwiGLU 2048, vocab 32000",
    config: {
      model_type: "llama",
      vocab_size: 32000,
      hidden_size: 768,
      intermediate_size: 2048,
      num_hidden_layers: 12,
      num_attention_heads: 12,
      num_key_value_heads: 4,
      rms_norm_eps: 1e-6,
      rope_theta: 10000,
      max_position_embeddings: 2048,
      tie_word_embeddings: false,
    },
  },
  b: {
    name: "Qwen3-0.6B: 28 layers, d 1024, 16/8 heads of 128, SwiGLU 3072, vocab 151936, tied",
    config: QWEN3_0_6B_MODEL,
  },
};
const MODES = ["standard", "delta"] as const;

/** The prompt both sides feed: ids (i · 7919 + 13) mod vocab (bench/torch_generate.py has the same). */
function promptIds(P: number, vocab: number): Int32Array {
  return Int32Array.from({ length: P }, (_, i) => (i * 7919 + 13) % vocab);
}

/** Bytes of weights one decode step reads (float32): every parameter, but one embedding row if untied. */
function bytesPerToken(model: DecoderLM): number {
  const c = model.config;
  const embedRows = c.tie_word_embeddings ? 0 : (c.vocab_size - 1) * c.hidden_size;
  return 4 * (model.numParameters() - embedRows);
}

interface GenTiming {
  prefill_s: number;
  decode_s: number;
  prefill_tok_s: number;
  decode_tok_s: number;
  ids: number[];
}

/** One greedy generation through generate(): prefill ends when the first token is out. */
function timeGenerate(model: DecoderLM, prompt: Int32Array, N: number): GenTiming {
  let first = 0;
  const t0 = performance.now();
  const r = generate(model, prompt, {
    maxNewTokens: N,
    temperature: 0,
    onToken: () => {
      if (first === 0) first = performance.now();
    },
  });
  const t1 = performance.now();
  const prefill = (first - t0) / 1000;
  const decode = (t1 - first) / 1000;
  return {
    prefill_s: prefill,
    decode_s: decode,
    prefill_tok_s: prompt.length / prefill,
    decode_tok_s: N > 1 ? (N - 1) / decode : 0,
    ids: Array.from(r.ids[0]!),
  };
}

/** The child: ours on a checkpoint folder, each mode after a warm-up, one JSON line. */
function child(dir: string): void {
  const P = Number(args.prompt);
  const N = Number(args.new);
  // The seed that wrote the checkpoint rebuilds the same weights (a single-file checkpoint of the
  // larger shape is beyond what one read can load); the agreement with PyTorch, which reads the
  // file, shows they are the same.
  const standard = new DecoderLM(readConfig(dir), { seed: 0 });
  const prompt = promptIds(P, standard.config.vocab_size);
  const bandwidth = measureReadBandwidth(1);
  const out: Record<string, unknown> = { bandwidth_gb_s: bandwidth, threads: nativeBackend()!.threads() };
  for (const mode of MODES) {
    const model =
      mode === "standard"
        ? standard
        : new DecoderLM({ ...standard.config, attnres_mode: mode }, { shareWeightsOf: standard, seed: 1 });
    timeGenerate(model, prompt, Math.min(N, 8));
    out[mode] = { ...timeGenerate(model, prompt, N), bytes_per_token: bytesPerToken(model) };
    if (model !== standard) model.dispose();
  }
  out.peak_rss_mb = process.resourceUsage().maxRSS / 1024;
  console.log(JSON.stringify(out));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function runJson<T>(cmd: string, argv: string[]): T {
  const r = spawnSync(cmd, argv, { cwd: root, encoding: "utf8", maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${path.basename(cmd)} ${argv.join(" ")} failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as T;
}

function findTorch(): string | null {
  for (const py of ["python3", "/usr/bin/python3"]) {
    const r = spawnSync(py, ["-c", "import torch"], { stdio: "ignore" });
    if (r.status === 0) return py;
  }
  return null;
}

type OursRound = {
  bandwidth_gb_s: number;
  threads: number;
  peak_rss_mb: number;
} & Record<(typeof MODES)[number], GenTiming & { bytes_per_token: number }>;
type TorchRound = GenTiming & { torch: string; threads: number; peak_rss_mb: number };

function agreement(a: number[], b: number[]): { agree: number; first_diff: number | null } {
  let agree = 0;
  let first: number | null = null;
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] === b[i]) agree++;
    else first ??= i;
  }
  return { agree, first_diff: first };
}

function main(): void {
  const native = nativeBackend();
  if (!native) throw new Error(`the native backend is unavailable: ${nativeError()}`);
  const quick = args.quick;
  const shapes = (quick ? "a" : args.shapes).split(",").filter(Boolean);
  for (const s of shapes)
    if (!SHAPES[s]) throw new Error(`unknown shape ${s}; expected ${Object.keys(SHAPES).join(", ")}`);
  const rounds = quick ? 1 : Number(args.rounds);
  const N = quick ? 32 : Number(args.new);
  const P = Number(args.prompt);
  for (const [k, v] of [
    ["rounds", rounds],
    ["new", N],
    ["prompt", P],
  ] as const)
    if (!Number.isInteger(v) || v < 1) throw new Error(`--${k} must be a positive integer, not ${v}`);
  const py = args["no-torch"] ? null : findTorch();
  const info = nativeInfo();
  const threads = native.threads();
  const log = (s: string): void => {
    if (!args.json) process.stdout.write(s + "\n");
  };
  const progress = (s: string): void => {
    process.stderr.write(`  … ${s}\n`);
  };
  log(
    `attnres bench:generate — ${os.cpus()[0]?.model ?? "unknown CPU"}, ${describeNative(info)}, node ${process.version}`,
  );
  log(`greedy, KV cache, float32, batch 1, prompt ${P} + ${N} new tokens; ${rounds} alternating rounds`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "attnres-bench-gen-"));
  const cleanup = () => fs.rmSync(tmp, { recursive: true, force: true });
  for (const [signal, code] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const)
    process.once(signal, () => {
      cleanup();
      process.exit(code);
    });
  const results: Record<string, unknown>[] = [];
  try {
    for (const key of shapes) {
      const shape = SHAPES[key]!;
      const dir = path.join(tmp, key);
      progress(`shape ${key}: writing the random float32 checkpoint`);
      const m = new DecoderLM(shape.config, { seed: 0 });
      const params = m.numParameters();
      saveCheckpoint(dir, m);
      m.dispose();
      const ours: OursRound[] = [];
      const torch: TorchRound[] = [];
      for (let r = 0; r < rounds; r++) {
        progress(`shape ${key}: attnres, round ${r + 1}/${rounds}`);
        ours.push(
          runJson<OursRound>(process.execPath, [
            "--import",
            "tsx",
            fileURLToPath(import.meta.url),
            "--child",
            dir,
            "--prompt",
            String(P),
            "--new",
            String(N),
          ]),
        );
        if (py) {
          progress(`shape ${key}: pytorch, round ${r + 1}/${rounds}`);
          torch.push(
            runJson<TorchRound>(py, [
              path.join(here, "torch_generate.py"),
              "--checkpoint",
              dir,
              "--prompt",
              String(P),
              "--new",
              String(N),
              "--threads",
              String(threads),
            ]),
          );
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
      const bw = median(ours.map((o) => o.bandwidth_gb_s));
      log(`\nshape ${key}: ${shape.name}; ${params.toLocaleString("en-US")} parameters`);
      log(
        `  read bandwidth ${bw.toFixed(1)} GB/s (median of rounds: ${ours.map((o) => o.bandwidth_gb_s.toFixed(1)).join(", ")})`,
      );
      log(
        "  model                prefill tok/s   × torch   decode tok/s   × torch   weight MB/token   decode % of bw limit",
      );
      const shapeOut: Record<string, unknown> = {
        shape: key,
        description: shape.name,
        params,
        bandwidth_gb_s: bw,
        rounds: ours,
        ...(py ? { torch_rounds: torch } : {}),
      };
      const best = <T extends GenTiming>(xs: T[], f: (x: T) => number): T =>
        xs.reduce((p, q) => (f(q) > f(p) ? q : p));
      for (const mode of MODES) {
        const runs = ours.map((o) => o[mode]);
        const bpt = runs[0]!.bytes_per_token;
        const pctRounds = ours.map((o) => (100 * o[mode].decode_tok_s * bpt) / (o.bandwidth_gb_s * 1e9));
        const pct = median(pctRounds);
        const pre = py ? median(runs.map((o, r) => o.prefill_tok_s / torch[r]!.prefill_tok_s)) : null;
        const dec = py ? median(runs.map((o, r) => o.decode_tok_s / torch[r]!.decode_tok_s)) : null;
        const bp = best(runs, (x) => x.prefill_tok_s).prefill_tok_s;
        const bd = best(runs, (x) => x.decode_tok_s).decode_tok_s;
        log(
          `  attnres ${mode.padEnd(12)} ${bp.toFixed(0).padStart(13)}   ${pre === null ? "    –" : pre.toFixed(2).padStart(7)}   ${bd.toFixed(1).padStart(12)}   ${dec === null ? "    –" : dec.toFixed(2).padStart(7)}   ${(bpt / 1e6).toFixed(0).padStart(15)}   ${pct.toFixed(0).padStart(17)} %`,
        );
        shapeOut[mode] = {
          prefill_tok_s: bp,
          decode_tok_s: bd,
          prefill_ratio_to_torch: pre,
          decode_ratio_to_torch: dec,
          bytes_per_token: bpt,
          decode_pct_of_bandwidth_limit: pct,
          decode_pct_rounds: pctRounds,
        };
      }
      if (py) {
        const t = {
          prefill_tok_s: best(torch, (x) => x.prefill_tok_s).prefill_tok_s,
          decode_tok_s: best(torch, (x) => x.decode_tok_s).decode_tok_s,
        };
        log(
          `  pytorch ${torch[0]!.torch.padEnd(12)} ${t.prefill_tok_s.toFixed(0).padStart(13)}   ${"1.00".padStart(7)}   ${t.decode_tok_s.toFixed(1).padStart(12)}   ${"1.00".padStart(7)}`,
        );
        const ag = torch.map((tr, r) => agreement(ours[r]!.standard.ids, tr.ids));
        log(
          `  greedy tokens, attnres standard vs pytorch (same weights): ${ag.map((a) => `${a.agree}/${N}${a.first_diff === null ? "" : ` (first difference at ${a.first_diff})`}`).join(", ")}`,
        );
        log(
          `  peak RSS MB: attnres ${Math.max(...ours.map((o) => o.peak_rss_mb)).toFixed(0)} (both modes, shared weights), pytorch ${Math.max(...torch.map((x) => x.peak_rss_mb)).toFixed(0)}`,
        );
        shapeOut.torch = { ...t, torch: torch[0]!.torch };
        shapeOut.agreement = ag;
      } else log('  pytorch: not measured (--no-torch, or `python3 -c "import torch"` failed)');
      results.push(shapeOut);
    }
  } finally {
    cleanup();
  }
  if (args.json)
    console.log(
      JSON.stringify({
        cpu: os.cpus()[0]?.model,
        threads,
        blas: info.blas,
        prompt: P,
        new: N,
        shapes: results,
      }),
    );
}

if (args.child) child(args.child);
else main();
