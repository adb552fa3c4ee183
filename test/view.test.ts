/**
 * `attnres view`: the server's API and safety (path traversal, malformed runs, body limits, the
 * command line), then the pages in a real browser — Debian's chromium driven by playwright-core
 * (never a downloaded browser): the runs page lists a run trained here, the routing heatmap has
 * one cell per sublayer × source pair holding model.analyze()'s mean α, clicking a token shows the
 * α that model.run(…, { trace: true }) gives, a run that gains a step shows it within 5 s (runs
 * table and live curves), and no page logs a console error. Screenshots go to
 * test-artifacts/view/ (gitignored; docs/view/ holds copies chosen for docs/view.md).
 *
 * Without /usr/bin/chromium the browser tests are not run (one line says so), unless
 * ATTNRES_REQUIRE_BROWSER=1 (set by .ci/run), which makes that a failure.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { evalBatches } from "../src/data/batches.js";
import { loadPrepared } from "../src/data/prepared.js";
import { loadCheckpoint } from "../src/model/checkpoint.js";
import { tidy } from "../src/tensor/memory.js";
import { noGrad } from "../src/tensor/tensor.js";
import { runTraining, TrainSettingsSchema } from "../src/train/run.js";
import type { RunsResponse, TraceResponse } from "../src/view/api.js";
import { safeResolve } from "../src/view/runs.js";
import { isLoopback, MAX_BODY, startViewServer, type ViewServer } from "../src/view/server.js";
import { sampleText, tempDir, writePreparedBytes } from "./helpers.js";
import { CHROMIUM, launchChromium } from "./support/chromium.js";

const repo = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const bin = path.join(repo, "bin", "attnres.mjs");
const SHOTS = path.join(repo, "test-artifacts", "view");
const ROUTING = { batches: 1, batchSize: 2, seqLen: 32 };

const MODEL = {
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 3,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  max_position_embeddings: 64,
  vocab_size: 256,
};
const TRAIN = { steps: 4, batch_size: 2, seq_len: 32, lr: 3e-3, eval_every: 2, eval_batches: 1 };

let tmp = "";
let runs = "";
let data = "";
let srv: ViewServer;

const get = async (p: string) => fetch(new URL(p, srv.url));
const getJson = async <T>(p: string): Promise<T> => {
  const r = await get(p);
  assert.equal(r.status, 200, `${p}: ${r.status} ${await r.clone().text()}`);
  return (await r.json()) as T;
};
const f32 = (b64: string) => {
  const b = Buffer.from(b64, "base64");
  return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
};
/** The answer to a GET sent byte for byte (no URL normalisation), with this Host header. */
const rawGet = (target: string, host = new URL(srv.url).host) =>
  new Promise<string>((resolve, reject) => {
    const u = new URL(srv.url);
    const sock = net.connect(Number(u.port), u.hostname, () =>
      sock.write(`GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
    );
    let s = "";
    sock.on("data", (c) => (s += c));
    sock.on("end", () => resolve(s));
    sock.on("error", reject);
  });
const metricLine = (step: number, loss: number) =>
  JSON.stringify({
    step,
    loss,
    grad_norm: 1,
    lr: 1e-3,
    tokens_per_s: 100,
    time: new Date().toISOString(),
    elapsed_s: step,
  }) + "\n";

before(async () => {
  tmp = tempDir("view");
  runs = path.join(tmp, "runs");
  data = path.join(tmp, "data");
  writePreparedBytes(data, sampleText(12000));
  for (const [name, key] of [
    ["delta", "delta"],
    ["attnres-full", "full"],
  ])
    await runTraining(
      { model: { ...MODEL, attnres_mode: key }, data, train: TrainSettingsSchema.parse(TRAIN) },
      path.join(runs, "cmp", `${name}-s0`),
    );
  const good = path.join(runs, "cmp", "delta-s0");
  // A run that is still going: run.json and three metrics lines, no checkpoint yet.
  fs.mkdirSync(path.join(runs, "live"));
  fs.copyFileSync(path.join(good, "run.json"), path.join(runs, "live", "run.json"));
  fs.writeFileSync(
    path.join(runs, "live", "metrics.jsonl"),
    [1, 2, 3].map((s) => metricLine(s, 5 - s)).join(""),
  );
  // Malformed runs.
  fs.mkdirSync(path.join(runs, "bad-metrics"));
  fs.copyFileSync(path.join(good, "run.json"), path.join(runs, "bad-metrics", "run.json"));
  fs.writeFileSync(path.join(runs, "bad-metrics", "metrics.jsonl"), metricLine(1, 4) + '{"step": 2, "lo');
  const old = new Date(Date.now() - 3600_000);
  fs.utimesSync(path.join(runs, "bad-metrics", "metrics.jsonl"), old, old);
  fs.cpSync(good, path.join(runs, "bad-ckpt"), { recursive: true });
  const st = path.join(runs, "bad-ckpt", "checkpoint", "model.safetensors");
  fs.truncateSync(st, fs.statSync(st).size - 100);
  fs.mkdirSync(path.join(runs, "bad-json"));
  fs.writeFileSync(path.join(runs, "bad-json", "run.json"), "{ not json");
  // Files for the traversal tests: a secret beside RUNS_DIR, a symlink out of it, a legal file.
  fs.writeFileSync(path.join(tmp, "secret.txt"), "secret");
  fs.symlinkSync(tmp, path.join(runs, "escape"));
  fs.symlinkSync(path.join(tmp, "secret.txt"), path.join(runs, "cmp", "link.txt"));
  fs.writeFileSync(path.join(good, "note.txt"), "hello");
  srv = await startViewServer({ root: runs, routing: ROUTING });
});

after(async () => {
  await srv?.close();
});

describe("view server", () => {
  test("lists every run with its numbers; malformed runs are errors on their row", async () => {
    const r = await getJson<RunsResponse>("/api/runs");
    const by = new Map(r.runs.map((x) => [x.id, x]));
    const d = by.get("cmp/delta-s0")!;
    assert.ok(d, `runs: ${[...by.keys()].join(", ")}`);
    assert.equal(d.mode, "delta");
    assert.equal(d.seed, 0);
    assert.equal(d.steps, 4);
    assert.equal(d.totalSteps, 4);
    assert.equal(d.status, "finished");
    assert.equal(d.checkpoint, "cmp/delta-s0/checkpoint");
    assert.ok(d.valLoss !== null && d.valLoss > 0);
    assert.equal(by.get("live")!.status, "training");
    assert.equal(by.get("live")!.steps, 3);
    assert.equal(by.get("bad-metrics")!.status, "error");
    assert.match(by.get("bad-metrics")!.error!, /truncated line/);
    assert.equal(by.get("bad-metrics")!.steps, 1);
    assert.equal(by.get("bad-ckpt")!.status, "error");
    assert.match(by.get("bad-ckpt")!.error!, /model\.safetensors/);
    assert.equal(by.get("bad-json")!.status, "error");
    assert.match(by.get("bad-json")!.error!, /run\.json is damaged/);
    assert.ok(
      ![...by.keys()].some((k) => k.startsWith("escape")),
      "runs found through a symlink out of the folder",
    );
    const g = r.groups.find((x) => x.id === "cmp")!;
    assert.deepEqual(g.runs.sort(), ["cmp/attnres-full-s0", "cmp/delta-s0"]);
    assert.deepEqual(g.table.map((m) => m.mode).sort(), ["attnres-full", "delta"]);
    assert.equal(g.table.find((m) => m.mode === "delta")!.valLoss[0], d.result!.valLoss);
  });

  test("serves only files under RUNS_DIR: traversal, encoded variants and symlinks out are 404", async () => {
    assert.equal(await (await get("/files/cmp/delta-s0/note.txt")).text(), "hello");
    assert.match(await rawGet("/files/cmp/delta-s0/note.txt"), /^HTTP\/1\.1 200[^]*hello/);
    for (const p of [
      "/files/../secret.txt",
      "/files/%2e%2e/secret.txt",
      "/files/%2E%2E%2Fsecret.txt",
      "/files/..%2fsecret.txt",
      "/files/..%5csecret.txt",
      "/files/%252e%252e/secret.txt",
      "/files/cmp/..%2f..%2fsecret.txt",
      "/files/escape/secret.txt",
      "/files/cmp/link.txt",
      "/files/%2fetc%2fpasswd",
      "/files//etc/passwd",
      "/files/cmp/note.txt%00.png",
      "/files/%zz",
      "/assets/..%2f..%2fpackage.json",
      "/api/metrics?run=../secret.txt",
      "/api/metrics?run=escape",
      "/api/routing?run=%2e%2e",
      "/files/cmp/delta-s0/../../../secret.txt",
    ]) {
      // Sent byte for byte, as curl --path-as-is would (fetch would normalise "..", "%2e%2e").
      const r = await rawGet(p);
      assert.match(r, /^HTTP\/1\.1 404/, `${p} answered ${r.split("\r\n")[0]}`);
      assert.doesNotMatch(r, /secret\s*$/, p);
    }
    assert.equal(safeResolve(runs, "cmp/../../secret.txt"), null);
    assert.equal(safeResolve(runs, "escape"), null);
    assert.ok(safeResolve(runs, "cmp/delta-s0/note.txt"));
  });

  test("bad requests get errors and the server keeps answering", async () => {
    const post = (body: string) =>
      fetch(new URL("/api/trace", srv.url), {
        method: "POST",
        body,
        headers: { "content-type": "application/json" },
      });
    assert.equal((await post("x".repeat(MAX_BODY + 1))).status, 413);
    assert.equal((await post("{not json")).status, 400);
    assert.equal((await post(JSON.stringify({ run: "nope", text: "a" }))).status, 404);
    assert.equal((await post(JSON.stringify({ run: "cmp/delta-s0" }))).status, 400);
    assert.equal((await post(JSON.stringify({ run: "live", text: "a" }))).status, 404); // no checkpoint
    // A run's own problem (a corrupt checkpoint) is an answer with an error, shown on the page.
    const bad = await getJson<{ error?: string }>("/api/routing?run=bad-ckpt");
    assert.match(bad.error ?? "", /model\.safetensors|bytes|truncated/);
    const badTrace = await post(JSON.stringify({ run: "bad-ckpt", text: "a" }));
    assert.equal(badTrace.status, 200);
    assert.match(((await badTrace.json()) as { error: string }).error, /model\.safetensors|bytes|truncated/);
    const m = await getJson<{ rows: unknown[]; error: string | null }>("/api/metrics?run=bad-metrics");
    assert.equal(m.rows.length, 1);
    assert.match(m.error!, /truncated/);
    assert.equal((await get("/api/runs")).status, 200);
  });

  test("the trace API returns model.run's routing weights", async () => {
    const text = "the state of the union is strong";
    assert.equal((await get("/api/trace")).status, 405); // GET is not the way to trace
    const body = JSON.stringify({ run: "cmp/delta-s0", text });
    const url = new URL("/api/trace", srv.url);
    assert.equal((await fetch(url, { method: "POST", body })).status, 415); // text/plain: a cross-site form could send it
    const res = await fetch(url, { method: "POST", body, headers: { "content-type": "application/json" } });
    assert.equal(res.status, 200);
    const t = (await res.json()) as TraceResponse;
    assert.equal(t.ids.length, Buffer.byteLength(text));
    assert.equal(t.pieces.join(""), text);
    const model = loadCheckpoint(path.join(runs, "cmp", "delta-s0", "checkpoint"));
    try {
      noGrad(() =>
        tidy(() => {
          const tr = model.run(Int32Array.from(t.ids), 1, t.ids.length, { trace: true }).trace!;
          assert.equal(t.calls.length, tr.alphas.size);
          for (const c of t.calls) {
            const want = tr.alphas.get(c.key)!.data;
            const got = f32(c.alpha);
            assert.equal(got.length, want.length);
            for (let i = 0; i < got.length; i++)
              assert.ok(Math.abs(got[i]! - want[i]!) < 1e-6, `${c.label}[${i}]`);
          }
        }),
      );
    } finally {
      model.dispose();
    }
  });

  test("answers only to its own address (no DNS rebinding)", async () => {
    const u = new URL(srv.url);
    const ask = (host: string) => rawGet("/api/runs", host);
    assert.match(await ask("evil.example:" + u.port), /^HTTP\/1\.1 421/);
    assert.match(await ask("127.0.0.1:" + u.port), /^HTTP\/1\.1 200/);
    assert.match(await ask("localhost:" + u.port), /^HTTP\/1\.1 200/);
  });

  test("isLoopback", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1"]) assert.ok(isLoopback(h), h);
    for (const h of ["0.0.0.0", "::", "192.168.1.2", "example.org"]) assert.ok(!isLoopback(h), h);
  });

  test("attnres view: one-line error for a missing folder; serves and prints its URL", async () => {
    const r = spawnSync(process.execPath, [bin, "view", path.join(tmp, "nope")], { encoding: "utf8" });
    assert.equal(r.status, 1);
    assert.match(r.stderr.trim(), /^attnres: the runs folder .*nope does not exist/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
    const child = spawn(process.execPath, [bin, "view", runs, "--port", "0"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let out = "";
        const timer = setTimeout(() => reject(new Error(`no URL printed: ${out}`)), 60_000);
        child.stdout.on("data", (c) => {
          out += c;
          const m = /(http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
          if (m) {
            clearTimeout(timer);
            resolve(m[1]!);
          }
        });
        child.on("exit", (code) => reject(new Error(`exited ${code}: ${out}`)));
      });
      const list = (await (await fetch(new URL("/api/runs", url))).json()) as RunsResponse;
      assert.ok(list.runs.some((x) => x.id === "cmp/delta-s0"));
      const page = await (await fetch(url)).text();
      assert.match(page, /<script type="module" src="\/assets\/main\.js">/);
      assert.doesNotMatch(page, /https?:\/\//, "the page loads nothing from the network");
    } finally {
      child.kill("SIGTERM");
    }
  });
});

// ------------------------------------------------------------------------------------------------
// In the browser.

const haveBrowser = fs.existsSync(CHROMIUM);
if (!haveBrowser) {
  if (process.env.ATTNRES_REQUIRE_BROWSER === "1")
    test("browser tests need chromium", () =>
      assert.fail(`${CHROMIUM} is absent (apt-get install chromium)`));
  else
    process.stdout.write(
      `# view browser tests not run: ${CHROMIUM} is absent (apt-get install chromium; ATTNRES_REQUIRE_BROWSER=1 makes this a failure)\n`,
    );
} else {
  describe("view in chromium", () => {
    type Ctx = import("playwright-core").BrowserContext;
    type Page = import("playwright-core").Page;
    let ctx: Ctx;
    let page: Page;
    const problems: string[] = [];

    before(async () => {
      ctx = await launchChromium(tempDir("chromium-profile"));
      page = ctx.pages()[0] ?? (await ctx.newPage());
      page.setDefaultTimeout(30_000);
      page.on("console", (m) => {
        if (m.type() === "error") problems.push(`${page.url()}: console error: ${m.text()}`);
      });
      page.on("pageerror", (e) => problems.push(`${page.url()}: ${e.message}`));
      page.on("requestfailed", (r) => {
        // Leaving a page aborts its open event stream: that is not a failure.
        if (r.failure()?.errorText !== "net::ERR_ABORTED")
          problems.push(`${page.url()}: request failed ${r.url()} (${r.failure()?.errorText})`);
      });
      fs.mkdirSync(SHOTS, { recursive: true });
    });
    after(async () => {
      await ctx?.close();
    });
    const lastStepIs = (n: number) =>
      `document.querySelector('#curves-table tr[data-run="live"] .last-step')?.textContent === "${n}"`;
    const shot = (name: string) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });

    test("the runs page lists the run trained here, errors on their rows, the compare group", async () => {
      await page.goto(`${srv.url}#/runs`);
      const row = page.locator('tr[data-run="cmp/delta-s0"]');
      await row.waitFor();
      assert.equal(await row.locator(".c-mode").textContent(), "delta");
      assert.equal(await row.locator(".c-steps").getAttribute("data-steps"), "4");
      assert.match(
        (await page.locator('tr[data-error-for="bad-ckpt"]').textContent())!,
        /model\.safetensors/,
      );
      assert.equal(await page.locator('tr[data-run="bad-json"]').getAttribute("data-status"), "error");
      await page.locator('.group[data-group="cmp"] tr[data-mode="delta"]').waitFor();
      // Sorting by val loss puts the runs with a val loss first, ascending.
      await page.click('th[data-sort="valLoss"]');
      const ids = await page
        .locator("#runs-table tbody tr[data-run]")
        .evaluateAll((rs) => rs.map((r) => r.getAttribute("data-run")));
      const list = (await getJson<RunsResponse>("/api/runs")).runs;
      const withVal = list
        .filter((r) => r.valLoss !== null)
        .sort((a, b) => a.valLoss! - b.valLoss!)
        .map((r) => r.id);
      assert.deepEqual(ids.slice(0, withVal.length), withVal);
      await shot("runs");
    });

    test("the routing heatmap has one cell per sublayer × source pair, holding model.analyze()'s mean α", async () => {
      await page.goto(`${srv.url}#/routing?run=cmp/delta-s0&vs=cmp/attnres-full-s0`);
      await page.waitForFunction('document.body.dataset.routingRendered === "1"', null, { timeout: 60_000 });
      for (const [i, run] of [
        [0, "delta-s0"],
        [1, "attnres-full-s0"],
      ] as const) {
        const cells = await page
          .locator(`#heatmap-${i} rect.cell`)
          .evaluateAll((els) =>
            els.map(
              (e) =>
                [
                  e.getAttribute("data-call"),
                  Number(e.getAttribute("data-source")),
                  Number(e.getAttribute("data-alpha")),
                ] as const,
            ),
          );
        const model = loadCheckpoint(path.join(runs, "cmp", run, "checkpoint"));
        try {
          const val = loadPrepared(data).val;
          const [b] = evalBatches(val, ROUTING.batchSize, ROUTING.seqLen, ROUTING.batches);
          const report = noGrad(() => tidy(() => model.analyze(b!.ids, b!.B, b!.T).report));
          const pairs = report.routing.reduce((n, s) => n + s.sources, 0);
          assert.equal(
            cells.length,
            pairs,
            `${run}: ${cells.length} cells for ${pairs} sublayer×source pairs`,
          );
          for (const s of report.routing)
            s.meanAlpha.forEach((a, src) => {
              const c = cells.find(([k, p]) => k === String(s.j) && p === src);
              assert.ok(c, `${run}: no cell for ${s.j} ← ${src}`);
              assert.ok(Math.abs(c[2] - a) < 1e-9, `${run} ${s.j} ← ${src}: ${c[2]} vs ${a}`);
            });
        } finally {
          model.dispose();
        }
      }
      await page.locator("#chart-maxweight svg").waitFor();
      await shot("routing");
    });

    test("clicking a token shows the α that model.run(…, {trace: true}) gives", async () => {
      await page.goto(`${srv.url}#/tokens?run=cmp/delta-s0`);
      await page.locator("#tokens .tok").first().waitFor({ timeout: 60_000 }); // the first passage, traced at load
      const text = "the state of the union";
      await page.fill("#tok-text", text);
      await page.click("#tok-go");
      await page.waitForFunction(
        `document.querySelectorAll("#tokens .tok").length === ${Buffer.byteLength(text)}`,
      );
      const model = loadCheckpoint(path.join(runs, "cmp", "delta-s0", "checkpoint"));
      try {
        const ids = Int32Array.from(Buffer.from(text));
        const trace = noGrad(() =>
          tidy(() => {
            const tr = model.run(ids, 1, ids.length, { trace: true }).trace!;
            return new Map(
              [...tr.alphas].map(([k, a]) => [k, { N: a.shape[2]!, data: Float64Array.from(a.data) }]),
            );
          }),
        );
        const keys = [...trace.keys()];
        for (const [tok, k] of [
          [7, keys.length - 1],
          [15, 1],
        ] as const) {
          await page.click(`#tokens .tok[data-i="${tok}"]`);
          await page.selectOption("#sublayer", String(k));
          await page.waitForSelector(`#alpha-bars[data-token="${tok}"][data-call="${String(keys[k])}"]`);
          const got = await page
            .locator("#alpha-bars .alpha-bar")
            .evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-alpha"))));
          const { N, data: a } = trace.get(keys[k]!)!;
          assert.equal(got.length, N);
          for (let i = 0; i < N; i++)
            assert.ok(
              Math.abs(got[i]! - a[tok * N + i]!) < 1e-6,
              `token ${tok}, call ${String(keys[k])}, source ${i}: ${got[i]} vs ${a[tok * N + i]}`,
            );
          const strip = await page.locator("#max-strip .strip-cell").count();
          assert.equal(strip, keys.length);
        }
      } finally {
        model.dispose();
      }
      await shot("tokens");
    });

    test("a run that gains a step shows it within 5 s (runs table and live curves)", async () => {
      const metrics = path.join(runs, "live", "metrics.jsonl");
      await page.goto(`${srv.url}#/runs`);
      await page.locator('tr[data-run="live"] .c-steps[data-steps="3"]').waitFor();
      fs.appendFileSync(metrics, metricLine(4, 0.9));
      await page.locator('tr[data-run="live"] .c-steps[data-steps="4"]').waitFor({ timeout: 5000 });
      await page.goto(`${srv.url}#/curves?run=live&run=cmp/delta-s0&run=cmp/attnres-full-s0&bands=0`);
      const last = page.locator('#curves-table tr[data-run="live"] .last-step');
      await page.waitForFunction(lastStepIs(4));
      const t0 = Date.now();
      fs.appendFileSync(metrics, metricLine(5, 0.8));
      await page.waitForFunction(lastStepIs(5), null, { timeout: 5000 });
      assert.equal(await last.textContent(), "5");
      assert.ok(Date.now() - t0 < 5000);
      await page.locator("#chart-train svg").waitFor();
      await shot("curves");
    });

    test("no page logged a console error", async () => {
      for (const hash of [
        "#/runs",
        "#/curves",
        "#/routing",
        "#/tokens",
        "#/routing?run=bad-ckpt",
        "#/curves?run=bad-metrics",
      ]) {
        await page.goto(`${srv.url}${hash}`);
        await page.waitForTimeout(600);
      }
      // The corrupt checkpoint's error is shown on the page, not thrown.
      await page.goto(`${srv.url}#/routing?run=bad-ckpt`);
      await page.locator(".error-box").waitFor();
      assert.deepEqual(problems, []);
    });
  });
}
