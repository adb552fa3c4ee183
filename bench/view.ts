/**
 * `attnres view` speed (run by bench/run.ts, or alone: node --import tsx bench/view.ts [--json]):
 *
 *   token query   POST /api/trace for a 12-layer d128 Delta AttnRes model (random weights, byte
 *                 tokenizer) on 256 tokens, model already loaded: median over 10 queries of the
 *                 round trip (HTTP + forward with trace + JSON), and the server's forward time
 *   runs page     50 runs (3 layers, 500 metrics lines and a checkpoint each) under RUNS_DIR:
 *                 ms from navigation start until the runs table is drawn (and first contentful
 *                 paint), median of 5 loads in Debian's chromium; skipped without /usr/bin/chromium
 * Targets: token query < 200 ms, runs page < 1 s. Prints one JSON line last. Like `attnres view`,
 * it sets OMP_WAIT_POLICY=passive (unless set) before the native addon loads.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { ByteTokenizer } from "../src/data/tokenizer.js";
import { saveCheckpoint } from "../src/model/checkpoint.js";
import { DecoderLM } from "../src/model/decoder.js";
import { startViewServer } from "../src/view/server.js";
import { CHROMIUM, launchChromium } from "../test/support/chromium.js";

// As `attnres view` runs (src/cli/view.ts): idle OpenMP threads sleep instead of spinning.
process.env.OMP_WAIT_POLICY ??= "passive";
const { values: args } = parseArgs({ options: { json: { type: "boolean", default: false } } });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function makeRun(dir: string, model: Record<string, unknown>, steps: number, ckpt: string | null): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, "run.json"),
    JSON.stringify({
      model,
      data: "data/none",
      train: { steps, batch_size: 8, seq_len: 256, lr: 1e-3, seed: 0 },
    }),
  );
  let m = "";
  for (let s = 1; s <= steps; s++)
    m +=
      JSON.stringify({
        step: s,
        loss: 5 / Math.sqrt(s),
        grad_norm: 1,
        lr: 1e-3,
        tokens_per_s: 1000,
        ...(s % 50 === 0 ? { val_loss: 5 / Math.sqrt(s) + 0.1 } : {}),
        time: new Date().toISOString(),
        elapsed_s: s,
      }) + "\n";
  fs.writeFileSync(path.join(dir, "metrics.jsonl"), m);
  if (ckpt) {
    fs.cpSync(ckpt, path.join(dir, "checkpoint"), { recursive: true });
    fs.writeFileSync(
      path.join(dir, "checkpoint", "trainer_state.json"),
      JSON.stringify({ step: steps, adam_t: steps, sampler: [], done: false, seconds: 1 }),
    );
  }
}

async function tokenQuery(
  root: string,
): Promise<{ round_trip_ms: number; forward_ms: number; load_ms: number }> {
  const model = {
    vocab_size: 256,
    hidden_size: 128,
    intermediate_size: 384,
    num_hidden_layers: 12,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 256,
    attnres_mode: "delta" as const,
  };
  const ck = path.join(root, "ckpt-12");
  const m = new DecoderLM(model, { seed: 1 });
  saveCheckpoint(ck, m);
  m.dispose();
  new ByteTokenizer().save(ck);
  makeRun(path.join(root, "runs", "delta-12l"), model, 10, ck);
  const srv = await startViewServer({ root: path.join(root, "runs") });
  try {
    let text = "";
    while (Buffer.byteLength(text) < 256) text += "the state of the union is strong. ";
    text = text.slice(0, 256);
    const query = async () => {
      const t0 = performance.now();
      const r = await fetch(new URL("/api/trace", srv.url), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ run: "delta-12l", text }),
      });
      const body = (await r.json()) as { ids: number[]; runMs: number; loadMs: number; error?: string };
      if (!r.ok || body.error) throw new Error(`trace failed: ${body.error}`);
      if (body.ids.length !== 256) throw new Error(`expected 256 tokens, got ${body.ids.length}`);
      return { ms: performance.now() - t0, run: body.runMs, load: body.loadMs };
    };
    const first = await query();
    const rs = [];
    for (let i = 0; i < 10; i++) rs.push(await query());
    return {
      round_trip_ms: median(rs.map((r) => r.ms)),
      forward_ms: median(rs.map((r) => r.run)),
      load_ms: first.load,
    };
  } finally {
    await srv.close();
  }
}

async function runsPage(
  root: string,
): Promise<{ table_ms: number; fcp_ms: number | null; scan_ms: number } | null> {
  if (!fs.existsSync(CHROMIUM)) return null;
  const model = {
    vocab_size: 256,
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 3,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    attnres_mode: "delta" as const,
  };
  const ck = path.join(root, "ckpt-small");
  const m = new DecoderLM(model, { seed: 1 });
  saveCheckpoint(ck, m);
  m.dispose();
  const runs = path.join(root, "runs50");
  for (let i = 0; i < 50; i++) makeRun(path.join(runs, `cmp${i % 5}`, `delta-s${i}`), model, 500, ck);
  const srv = await startViewServer({ root: runs });
  const ctx = await launchChromium(fs.mkdtempSync(path.join(os.tmpdir(), "attnres-bench-chromium-")));
  try {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    const table: number[] = [];
    const fcp: number[] = [];
    const scans: number[] = [];
    for (let i = 0; i < 6; i++) {
      await page.goto("about:blank");
      await page.goto(`${srv.url}#/runs`);
      await page.waitForFunction("document.body.dataset.runsRendered !== undefined");
      const n = await page.locator("#runs-table tbody tr[data-run]").count();
      if (n !== 50) throw new Error(`the runs page shows ${n} runs, expected 50`);
      const t = Number(await page.evaluate("document.body.dataset.runsRendered"));
      const f = (await page.evaluate(
        "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null",
      )) as number | null;
      const scan = (await (await fetch(new URL("/api/runs", srv.url))).json()) as { scanMs: number };
      if (i === 0) continue; // the first load warms the server's caches and the browser
      table.push(t);
      if (f !== null) fcp.push(f);
      scans.push(scan.scanMs);
    }
    return { table_ms: median(table), fcp_ms: fcp.length ? median(fcp) : null, scan_ms: median(scans) };
  } finally {
    await ctx.close();
    await srv.close();
  }
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), "attnres-bench-view-"));
try {
  const token = await tokenQuery(root);
  const page = await runsPage(root);
  if (!args.json) {
    process.stdout.write(
      `token query (12 layers, d128, 256 tokens, loaded model): ${token.round_trip_ms.toFixed(0)} ms round trip, forward ${token.forward_ms.toFixed(0)} ms (first load ${token.load_ms.toFixed(0)} ms)\n`,
    );
    process.stdout.write(
      page
        ? `runs page (50 runs): table drawn ${page.table_ms.toFixed(0)} ms after navigation, first paint ${page.fcp_ms?.toFixed(0) ?? "?"} ms, server scan ${page.scan_ms.toFixed(0)} ms\n`
        : `runs page: not measured (${CHROMIUM} is absent)\n`,
    );
  }
  process.stdout.write(JSON.stringify({ token_query: token, runs_page: page }) + "\n");
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
