/**
 * `npm run bench:convert` (or `npm run bench -- --convert`) — time and peak memory of
 * `attnres convert` on a checkpoint of the real Qwen3-0.6B shape. No weights are downloaded: the
 * checkpoint is synthetic. Prints a table; `--json` prints one JSON object instead.
 *
 *   source     written into a fresh folder under os.tmpdir() (removed at the end, also on error
 *              or Ctrl-C): config.json of Qwen3-0.6B (28 layers, d 1024, 16 q / 8 kv heads of 128,
 *              SwiGLU 3072, vocab 151936, tied embeddings, eps 1e-6, θ 1e6) and its 596M
 *              parameters as BF16 in 2 shards with model.safetensors.index.json, as HF ships large
 *              models. Matrices hold seeded N(0, 0.02) values (65,536 Box–Muller draws rounded to
 *              BF16 once; each weight picks one with 16 bits of a mulberry32 stream), norm gains
 *              are 1. Shards are generated and written in 1 Mi-value chunks, so generating them
 *              needs a few MB, not GBs. Tensor names are the HF Qwen3 names.
 *   measured   `node bin/attnres.mjs convert --from SRC --to OUT --mode M` for each mode (default
 *              delta and delta-block --blocks 4), each in its own child process with stdout piped
 *              (so progress is a line per ~10 %; convert has no --quiet): wall time from spawn to
 *              exit (node start-up included), and the child's peak RSS. The
 *              child is started with `--import` of a tiny inline module that, on process exit,
 *              writes `process.resourceUsage().maxRSS` (getrusage's ru_maxrss: the kernel's
 *              high-water mark of the process's resident set, all threads and native allocations
 *              included) to a file the bench names. This is the number
 *              `/usr/bin/time -v` reports, but needs no external tool and cannot miss a short
 *              peak the way polling /proc/PID/status would; it exists only if the child exits
 *              normally (a crash or OOM kill fails the bench).
 *   reported   source size (bytes of the .safetensors shards), parameter count (from the
 *              headers), per mode: wall s, peak RSS MiB, peak RSS / source size, output size
 *              (bytes of the written folder), the output's parameter count and the max |logit
 *              difference| the converter's own check printed.
 *
 * It writes ~1.2 GB of source plus ~1.2 GB per mode (each output is removed after it is
 * measured) and takes minutes, so `npm run bench` runs it only with `--convert`.
 * Options: --json, --modes delta,delta-block (any of delta, delta-block, attnres-full,
 *          attnres-block; block modes use 4 blocks), --layers N / --vocab N (a smaller
 *          checkpoint for a quick smoke run; documented numbers use the defaults).
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { f32ToBf16Bits, readCheckpointHeader } from "../src/io/safetensors.js";
import { CONVERT_MODES, type ConvertMode } from "../src/workflows/convert.js";
import { BLOCK_MODES } from "../src/model/names.js";
import { QWEN3_0_6B_MODEL } from "./qwen3-shape.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);

/** Qwen3-0.6B's config.json (the keys that matter; the rest as transformers writes them). */
const QWEN3_0_6B = {
  architectures: ["Qwen3ForCausalLM"],
  ...QWEN3_0_6B_MODEL,
  rope_scaling: null,
  max_window_layers: 28,
  torch_dtype: "bfloat16",
  hidden_act: "silu",
  attention_bias: false,
  attention_dropout: 0.0,
  initializer_range: 0.02,
  use_cache: true,
  use_sliding_window: false,
  sliding_window: null,
  bos_token_id: 151643,
  eos_token_id: 151645,
  transformers_version: "4.51.0",
};
type Qwen3Config = typeof QWEN3_0_6B;

interface TensorSpec {
  name: string;
  shape: number[];
  /** Norm gains are 1; matrices are N(0, 0.02). */
  kind: "gain" | "matrix";
}

/** The tensors of a tied Qwen3 checkpoint, in HF order and with HF names. */
function qwen3Tensors(c: Qwen3Config): TensorSpec[] {
  const d = c.hidden_size;
  const q = c.num_attention_heads * c.head_dim;
  const kv = c.num_key_value_heads * c.head_dim;
  const ff = c.intermediate_size;
  const out: TensorSpec[] = [{ name: "model.embed_tokens.weight", shape: [c.vocab_size, d], kind: "matrix" }];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      { name: `${p}input_layernorm.weight`, shape: [d], kind: "gain" },
      { name: `${p}self_attn.q_proj.weight`, shape: [q, d], kind: "matrix" },
      { name: `${p}self_attn.k_proj.weight`, shape: [kv, d], kind: "matrix" },
      { name: `${p}self_attn.v_proj.weight`, shape: [kv, d], kind: "matrix" },
      { name: `${p}self_attn.o_proj.weight`, shape: [d, q], kind: "matrix" },
      { name: `${p}self_attn.q_norm.weight`, shape: [c.head_dim], kind: "gain" },
      { name: `${p}self_attn.k_norm.weight`, shape: [c.head_dim], kind: "gain" },
      { name: `${p}post_attention_layernorm.weight`, shape: [d], kind: "gain" },
      { name: `${p}mlp.gate_proj.weight`, shape: [ff, d], kind: "matrix" },
      { name: `${p}mlp.up_proj.weight`, shape: [ff, d], kind: "matrix" },
      { name: `${p}mlp.down_proj.weight`, shape: [d, ff], kind: "matrix" },
    );
  }
  out.push({ name: "model.norm.weight", shape: [d], kind: "gain" });
  return out;
}

const numel = (shape: readonly number[]): number => shape.reduce((p, s) => p * s, 1);

/** mulberry32: a fast seeded 32-bit generator (uniform 32-bit integers). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** 65,536 seeded N(0, std) draws (Box–Muller) as BF16 bits. */
function normalTable(rand: () => number, std: number): Uint16Array {
  const table = new Uint16Array(65536);
  for (let i = 0; i < table.length; i += 2) {
    const u1 = (rand() + 1) / 4294967297; // (0, 1)
    const u2 = rand() / 4294967296;
    const r = std * Math.sqrt(-2 * Math.log(u1));
    table[i] = f32ToBf16Bits(r * Math.cos(2 * Math.PI * u2));
    table[i + 1] = f32ToBf16Bits(r * Math.sin(2 * Math.PI * u2));
  }
  return table;
}

const CHUNK = 1 << 20; // values per write
const BF16_ONE = f32ToBf16Bits(1);

/**
 * Writes `tensors` as one BF16 safetensors file, chunk by chunk (the header first, from the
 * shapes alone). Returns the file's size in bytes.
 */
function writeShard(file: string, tensors: TensorSpec[], table: Uint16Array, rand: () => number): number {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const t of tensors) {
    const bytes = 2 * numel(t.shape);
    header[t.name] = { dtype: "BF16", shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " ";
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8, "utf8");
  const chunk = new Uint16Array(CHUNK);
  const bytes = Buffer.from(chunk.buffer); // little-endian hosts (x86, arm64): the file's byte order
  const fd = fs.openSync(file, "w");
  try {
    fs.writeSync(fd, head);
    for (const t of tensors) {
      const n = numel(t.shape);
      for (let at = 0; at < n; at += CHUNK) {
        const m = Math.min(CHUNK, n - at);
        if (t.kind === "gain") chunk.fill(BF16_ONE, 0, m);
        else
          for (let i = 0; i < m; i += 2) {
            const r = rand();
            chunk[i] = table[r & 0xffff]!;
            if (i + 1 < m) chunk[i + 1] = table[r >>> 16]!;
          }
        fs.writeSync(fd, bytes, 0, 2 * m);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return head.length + offset;
}

interface SyntheticCheckpoint {
  dir: string;
  parameters: number;
  /** Bytes of the .safetensors shards. */
  bytes: number;
  shards: number;
  seconds: number;
}

/** Writes the synthetic checkpoint of `config` into `dir` (2 shards split by size, plus the index). */
function writeSyntheticCheckpoint(dir: string, config: Qwen3Config, seed = 1): SyntheticCheckpoint {
  const t0 = performance.now();
  const rand = mulberry32(seed);
  const table = normalTable(rand, config.initializer_range);
  const tensors = qwen3Tensors(config);
  const total = tensors.reduce((s, t) => s + 2 * numel(t.shape), 0);
  // HF fills shards in order up to a size limit; splitting at half the bytes gives 2 shards.
  const shards: TensorSpec[][] = [[], []];
  let acc = 0;
  for (const t of tensors) {
    shards[acc < total / 2 ? 0 : 1]!.push(t);
    acc += 2 * numel(t.shape);
  }
  const names = shards.map((_, i) => `model-${String(i + 1).padStart(5, "0")}-of-00002.safetensors`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  let bytes = 0;
  for (const [i, s] of shards.entries()) bytes += writeShard(path.join(dir, names[i]!), s, table, rand);
  const weightMap: Record<string, string> = {};
  for (const [i, s] of shards.entries()) for (const t of s) weightMap[t.name] = names[i]!;
  fs.writeFileSync(
    path.join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + "\n",
  );
  return {
    dir,
    parameters: total / 2,
    bytes,
    shards: shards.length,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Bytes of every file under `dir`. */
function folderBytes(dir: string): number {
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true }))
    n += e.isDirectory() ? folderBytes(path.join(dir, e.name)) : fs.statSync(path.join(dir, e.name)).size;
  return n;
}

/** Written on the child's exit: its peak RSS in KiB (getrusage ru_maxrss), to $ATTNRES_BENCH_RSS. */
const RSS_REPORTER =
  "data:text/javascript," +
  encodeURIComponent(
    'import { writeFileSync } from "node:fs";' +
      'process.on("exit", () => { const f = process.env.ATTNRES_BENCH_RSS;' +
      " if (f) writeFileSync(f, String(process.resourceUsage().maxRSS)); });",
  );

interface ConvertRun {
  mode: ConvertMode;
  blocks: number | null;
  wall_s: number;
  peak_rss_mib: number;
  /** Peak RSS in bytes over the source's .safetensors bytes. */
  peak_rss_vs_source: number;
  output_bytes: number;
  output_parameters: number;
  /** The max |logit difference| of the converter's check (at the model's eps). */
  max_abs_logit_diff: number;
}

/** Runs the CLI's convert in a child process (see the file comment for what is measured). */
async function runConvert(
  from: string,
  to: string,
  mode: ConvertMode,
  sourceBytes: number,
  active: Set<number>,
): Promise<ConvertRun> {
  const blocks = BLOCK_MODES.includes(mode) ? 4 : null;
  const rssFile = `${to}.rss`;
  const argv = [
    "--import",
    RSS_REPORTER,
    path.join(root, "bin", "attnres.mjs"),
    "convert",
    "--from",
    from,
    "--to",
    to,
    "--mode",
    mode,
    ...(blocks === null ? [] : ["--blocks", String(blocks)]),
  ];
  const t0 = performance.now();
  const { code, signal, stdout, stderr } = await new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>((resolve, reject) => {
    const child = spawn(process.execPath, argv, {
      cwd: root,
      env: { ...process.env, ATTNRES_BENCH_RSS: rssFile },
      stdio: ["ignore", "pipe", "pipe"],
    });
    if (child.pid !== undefined) active.add(child.pid);
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (s: string) => (out += s));
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (s: string) => (err += s));
    child.on("error", reject);
    child.on("close", (c, s) => {
      if (child.pid !== undefined) active.delete(child.pid);
      resolve({ code: c, signal: s, stdout: out, stderr: err });
    });
  });
  const wall = (performance.now() - t0) / 1000;
  if (code !== 0)
    throw new Error(
      `attnres convert --mode ${mode} failed (${signal ? `signal ${signal}` : `exit code ${code}`}):\n${stdout}${stderr}`,
    );
  const diff = /max \|logit difference\| (\S+)/.exec(stdout);
  if (!diff) throw new Error(`attnres convert --mode ${mode} printed no logit difference:\n${stdout}`);
  const kib = Number(fs.readFileSync(rssFile, "utf8"));
  fs.rmSync(rssFile);
  const header = readCheckpointHeader(to);
  const run: ConvertRun = {
    mode,
    blocks,
    wall_s: wall,
    peak_rss_mib: kib / 1024,
    peak_rss_vs_source: (kib * 1024) / sourceBytes,
    output_bytes: folderBytes(to),
    output_parameters: [...header.values()].reduce((s, t) => s + numel(t.shape), 0),
    max_abs_logit_diff: Number(diff[1]),
  };
  fs.rmSync(to, { recursive: true, force: true }); // free the disk before the next mode
  return run;
}

const MIB = 2 ** 20;

async function main(): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      json: { type: "boolean", default: false },
      modes: { type: "string", default: "delta,delta-block" },
      layers: { type: "string" },
      vocab: { type: "string" },
    },
  });
  const modes = args.modes.split(",").map((m): ConvertMode => {
    if (!(CONVERT_MODES as readonly string[]).includes(m))
      throw new Error(`--modes: ${m} is not one of ${CONVERT_MODES.join(", ")}`);
    return m as ConvertMode;
  });
  const config: Qwen3Config = {
    ...QWEN3_0_6B,
    ...(args.layers
      ? { num_hidden_layers: Number(args.layers), max_window_layers: Number(args.layers) }
      : {}),
    ...(args.vocab ? { vocab_size: Number(args.vocab) } : {}),
  };
  const log = (s: string): void => {
    if (!args.json) process.stdout.write(s + "\n");
  };
  const progress = (s: string): void => {
    process.stderr.write(`  … ${s}\n`);
  };

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "attnres-bench-convert-"));
  const active = new Set<number>();
  const cleanup = (): void => {
    for (const pid of active)
      try {
        process.kill(pid);
      } catch {
        /* already gone */
      }
    fs.rmSync(tmp, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    cleanup();
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    progress(`writing the synthetic checkpoint into ${tmp}`);
    const src = writeSyntheticCheckpoint(path.join(tmp, "src"), config);
    const runs: ConvertRun[] = [];
    for (const mode of modes) {
      progress(`attnres convert --mode ${mode}`);
      runs.push(await runConvert(src.dir, path.join(tmp, `out-${mode}`), mode, src.bytes, active));
    }
    const cpu = os.cpus()[0]?.model ?? "unknown CPU";
    const shape = `${config.num_hidden_layers} layers, d ${config.hidden_size}, ${config.num_attention_heads}/${config.num_key_value_heads} heads of ${config.head_dim}, SwiGLU ${config.intermediate_size}, vocab ${config.vocab_size}, tied`;
    log(`attnres convert — ${cpu}, ${os.cpus().length} CPUs, node ${process.version}`);
    log(`synthetic Qwen3-0.6B-shaped checkpoint: ${shape}`);
    log(
      `  source: ${src.parameters.toLocaleString("en-US")} parameters, BF16 in ${src.shards} shards, ` +
        `${src.bytes.toLocaleString("en-US")} bytes (${(src.bytes / MIB).toFixed(0)} MiB; written in ${src.seconds.toFixed(1)} s)`,
    );
    log(
      "  mode                    wall s   peak RSS MiB   × source   output MiB   output parameters   max |Δlogit|",
    );
    for (const r of runs)
      log(
        `  ${(r.blocks === null ? r.mode : `${r.mode} --blocks ${r.blocks}`).padEnd(22)} ${r.wall_s.toFixed(1).padStart(7)}   ${r.peak_rss_mib.toFixed(0).padStart(12)}   ${r.peak_rss_vs_source.toFixed(2).padStart(8)}   ${(r.output_bytes / MIB).toFixed(0).padStart(10)}   ${r.output_parameters.toLocaleString("en-US").padStart(17)}   ${r.max_abs_logit_diff.toExponential(2).padStart(12)}`,
      );
    if (args.json)
      console.log(
        JSON.stringify(
          {
            cpu,
            cpus: os.cpus().length,
            node: process.version,
            config,
            source: {
              parameters: src.parameters,
              bytes: src.bytes,
              shards: src.shards,
              dtype: "BF16",
              write_s: src.seconds,
            },
            runs,
          },
          null,
          2,
        ),
      );
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    cleanup();
  }
}

await main();
