/**
 * The `attnres view` web server (Node's http): the bundled front end (dist/view-web, src/view/bundle.ts)
 * and the JSON API of src/view/api.ts over the runs under one folder (RUNS_DIR).
 *
 * Safety: every path a request names goes through safeResolve (src/view/runs.ts), so only files
 * under RUNS_DIR are read (.., encoded variants and symlinks out of the folder → 404); a run id
 * must name a run folder that a scan found. Request bodies (the token explorer's POST) are limited
 * to MAX_BODY bytes (413 beyond) and must be sent as application/json (so that another site's page
 * cannot send one without a CORS preflight, which fails). On a loopback address, requests must
 * name the server by its own address in Host (no DNS rebinding). Every handler's error becomes a JSON error answer; nothing a
 * request sends or a run folder holds can stop the server.
 *
 * Live curves: /api/events keeps the connection open (server-sent events) and sends new
 * metrics.jsonl rows of the runs it names every POLL_MS (files are polled by size).
 */
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import type {
  ErrorResponse,
  MetricsEvent,
  MetricsResponse,
  PassagesResponse,
  RoutingResponse,
  RunProblem,
  RunRow,
  TraceResponse,
} from "./api.js";
import { ensureBundle } from "./bundle.js";
import { type LoadedModel, ModelCache, tokenPieces } from "./models.js";
import { readMetrics, safeResolve, scanOne, scanRuns } from "./runs.js";

/** Largest accepted request body (the token explorer's text), bytes. */
export const MAX_BODY = 64 * 1024;
/** How often the live-curve stream looks at the metrics files. */
export const POLL_MS = 500;

export interface ViewServerOptions {
  root: string;
  host?: string;
  port?: number;
  /** Routing page sample: batches × batchSize × seqLen validation tokens (default 2 × 4 × 128). */
  routing?: { batches?: number; batchSize?: number; seqLen?: number };
  /** Models kept loaded (default 4). */
  cacheModels?: number;
}

export interface ViewServer {
  url: string;
  port: number;
  server: http.Server;
  models: ModelCache;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".md": "text/markdown; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".jsonl": "text/plain; charset=utf-8",
  ".csv": "text/csv; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

const CSP =
  "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

function send(res: http.ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, {
    "content-type": type,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "content-security-policy": CSP,
  });
  res.end(body);
}

function json(res: http.ServerResponse, status: number, value: unknown): void {
  send(res, status, TYPES[".json"]!, JSON.stringify(value));
}

/** The request body as text, at most MAX_BODY bytes (HttpError 413 beyond). */
function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > MAX_BODY) {
      reject(new HttpError(413, `the request body is larger than ${MAX_BODY} bytes`));
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    let n = 0;
    let failed = false;
    req.on("data", (c: Buffer) => {
      if (failed) return;
      n += c.length;
      if (n > MAX_BODY) {
        failed = true;
        reject(new HttpError(413, `the request body is larger than ${MAX_BODY} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      if (!failed) resolve(Buffer.concat(chunks).toString("utf8"));
    });
    req.on("error", (e) => {
      if (!failed) reject(e);
    });
  });
}

const b64 = (a: Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");

/** Starts the server; resolves once it listens. */
export async function startViewServer(o: ViewServerOptions): Promise<ViewServer> {
  if (!fs.existsSync(o.root) || !fs.statSync(o.root).isDirectory())
    throw new Error(`the runs folder ${o.root} does not exist`);
  const root = fs.realpathSync(o.root);
  const bundle = await ensureBundle();
  const models = new ModelCache(o.cacheModels ?? 4);
  const routingOpts = {
    batches: o.routing?.batches ?? 2,
    batchSize: o.routing?.batchSize ?? 4,
    seqLen: o.routing?.seqLen ?? 128,
  };
  const streams = new Set<http.ServerResponse>();

  /** The run row of an id (404 when it names no run folder under root). */
  const findRun = (id: string | null): { row: RunRow; dir: string } => {
    if (!id) throw new HttpError(400, "no run given (?run=ID)");
    const dir = safeResolve(root, id);
    const row = dir ? scanOne(root, dir) : null;
    if (
      !dir ||
      !row ||
      row.id !==
        id
          .split("/")
          .filter((p) => p && p !== ".")
          .join("/")
    )
      throw new HttpError(404, `no run ${id}`);
    return { row, dir };
  };
  const checkpointOf = (row: RunRow): string => {
    if (!row.checkpoint) throw new HttpError(404, `run ${row.id} has no checkpoint yet`);
    const ck = safeResolve(root, row.checkpoint);
    if (!ck) throw new HttpError(404, `run ${row.id} has no checkpoint yet`);
    return ck;
  };

  const api = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> => {
    const route = url.pathname;
    const q = url.searchParams;
    if (route === "/api/runs") return json(res, 200, scanRuns(root));
    if (route === "/api/metrics") {
      const { row, dir } = findRun(q.get("run"));
      const m = readMetrics(path.join(dir, "metrics.jsonl"));
      const body: MetricsResponse = { run: row.id, rows: m.rows, error: m.error };
      return json(res, 200, body);
    }
    if (route === "/api/events") return events(req, res, q.getAll("run"));
    if (route === "/api/routing") {
      const { row, dir } = findRun(q.get("run"));
      const ck = checkpointOf(row);
      const t0 = performance.now();
      let analysed: ReturnType<ModelCache["routing"]>;
      try {
        analysed = models.routing(dir, ck, routingOpts);
      } catch (e) {
        const problem: RunProblem = { run: row.id, error: (e as Error).message };
        return json(res, 200, problem);
      }
      const { report, loaded, seqLen, batchSize } = analysed;
      const body: RoutingResponse = {
        run: row.id,
        checkpoint: row.checkpoint!,
        checkpointStep: loaded.step,
        mode: report.mode,
        layers: report.model.layers,
        hidden: report.model.hiddenSize,
        routed: report.routed,
        sample: { batches: report.sample.batches, batchSize, seqLen, tokens: report.sample.tokens },
        calls: report.calls.map((c) => ({
          key: c.key,
          label: c.label,
          layer: c.layer,
          kind: c.kind,
          sources: c.sources,
          sourceLabels: c.sourceLabels,
          meanAlpha: c.meanAlpha,
          meanMaxWeight: c.meanMaxWeight,
          uniformWeight: c.uniformWeight,
          meanEntropy: c.meanEntropy,
          normalizedEntropy: c.normalizedEntropy,
        })),
        columns: report.columns,
        beta: report.beta.map((b) => ({
          j: b.j,
          label: b.label,
          kind: b.kind,
          mean: b.mean,
          std: b.std,
          min: b.min,
          max: b.max,
        })),
        stream: report.stream.map((s) => ({ j: s.j, label: s.label, meanNorm: s.meanNorm })),
        notes: report.notes,
        ms: performance.now() - t0,
      };
      return json(res, 200, body);
    }
    if (route === "/api/passages") {
      const { row, dir } = findRun(q.get("run"));
      const ck = checkpointOf(row);
      let body: PassagesResponse;
      try {
        const { tokens, tokenizer } = models.passages(dir, ck);
        body = {
          run: row.id,
          passages: tokens.map((t, index) => ({
            index,
            tokens: t.length,
            preview: tokenizer.decode(t.subarray(0, 48)).replace(/\s+/g, " ").trim(),
          })),
          error: null,
        };
      } catch (e) {
        body = { run: row.id, passages: [], error: (e as Error).message };
      }
      return json(res, 200, body);
    }
    if (route === "/api/trace") {
      if (req.method !== "POST") throw new HttpError(405, "POST a JSON body {run, text} or {run, passage}");
      // A JSON content type makes a cross-site page's request need a CORS preflight, which fails.
      if (!/^application\/json\b/.test(req.headers["content-type"] ?? ""))
        throw new HttpError(415, "send the body as application/json");
      const raw = await readBody(req);
      let b: { run?: unknown; text?: unknown; passage?: unknown };
      try {
        b = JSON.parse(raw) as typeof b;
      } catch {
        throw new HttpError(400, "the request body is not JSON");
      }
      if (!b || typeof b !== "object" || typeof b.run !== "string")
        throw new HttpError(400, "the request names no run");
      const { row, dir } = findRun(b.run);
      const ck = checkpointOf(row);
      let loaded: LoadedModel;
      let loadMs: number;
      try {
        ({ loaded, ms: loadMs } = models.get(ck));
      } catch (e) {
        const problem: RunProblem = { run: row.id, error: (e as Error).message };
        return json(res, 200, problem);
      }
      const ctx = loaded.model.config.max_position_embeddings;
      let ids: Int32Array;
      let tok = loaded.tokenizer;
      if (typeof b.passage === "number") {
        const { tokens, tokenizer } = models.passages(dir, ck);
        const p = tokens[b.passage];
        if (!Number.isInteger(b.passage) || !p) throw new HttpError(400, `there is no passage ${b.passage}`);
        ids = p;
        tok = tokenizer;
      } else if (typeof b.text === "string") {
        if (!tok) {
          try {
            tok = models.runData(dir).tokenizer;
          } catch {
            throw new HttpError(422, "the checkpoint has no tokenizer, and the run's data is not here");
          }
        }
        if (b.text.length === 0) throw new HttpError(400, "the text is empty");
        ids = tok.encode(b.text);
      } else throw new HttpError(400, "give text (a string) or passage (a number)");
      const truncated = ids.length > ctx;
      if (truncated) ids = ids.slice(0, ctx);
      const t = models.trace(ck, ids);
      const body: TraceResponse = {
        run: row.id,
        mode: loaded.model.residual.name,
        ids: Array.from(ids),
        pieces: tokenPieces(tok, ids),
        truncated,
        calls: t.calls.map((c) => ({ ...c, alpha: b64(c.alpha) })),
        beta: t.beta.map((x) => ({ j: x.j, label: x.label, values: b64(x.values) })),
        loadMs: loadMs + t.loadMs,
        runMs: t.runMs,
      };
      return json(res, 200, body);
    }
    throw new HttpError(404, `no API ${route}`);
  };

  /** Server-sent events of new metrics rows for the named runs. */
  const events = (req: http.IncomingMessage, res: http.ServerResponse, ids: string[]): void => {
    if (ids.length === 0 || ids.length > 64) throw new HttpError(400, "name 1 to 64 runs (?run=ID&run=ID)");
    const files = ids.map((id) => {
      const dir = safeResolve(root, id);
      if (!dir) throw new HttpError(404, `no run ${id}`);
      return { id, file: path.join(dir, "metrics.jsonl"), sent: -1, size: -1 };
    });
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      connection: "keep-alive",
      "x-content-type-options": "nosniff",
    });
    res.write("retry: 1000\n\n");
    streams.add(res);
    let beat = 0;
    const tick = () => {
      for (const f of files) {
        let size: number;
        try {
          size = fs.statSync(f.file).size;
        } catch {
          size = 0;
        }
        if (size === f.size) continue;
        const m = readMetrics(f.file);
        const reset = f.sent < 0 || size < f.size || m.rows.length < f.sent;
        const rows = reset ? m.rows : m.rows.slice(f.sent);
        f.size = size;
        if (!reset && rows.length === 0) continue;
        f.sent = m.rows.length;
        const ev: MetricsEvent = { run: f.id, rows, error: m.error, reset };
        res.write(`event: metrics\ndata: ${JSON.stringify(ev)}\n\n`);
      }
      if (++beat % 30 === 0) res.write(": keep-alive\n\n");
    };
    tick();
    const timer = setInterval(() => {
      try {
        tick();
      } catch {
        /* a file vanished between stat and read: next tick */
      }
    }, POLL_MS);
    const stop = () => {
      clearInterval(timer);
      streams.delete(res);
    };
    req.on("close", stop);
    res.on("close", stop);
  };

  const staticFile = (res: http.ServerResponse, name: string): void => {
    if (!/^[\w.-]+$/.test(name) || name.startsWith(".")) throw new HttpError(404, "not found");
    const f = path.join(bundle, name);
    if (!fs.existsSync(f)) throw new HttpError(404, "not found");
    send(res, 200, TYPES[path.extname(f)] ?? "application/octet-stream", fs.readFileSync(f));
  };

  const handler = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    try {
      // Refuse other host names (DNS rebinding: a web page whose name resolves to 127.0.0.1).
      if (loopbackOnly && !allowedHosts.has((req.headers.host ?? "").toLowerCase()))
        throw new HttpError(421, "this server answers only to its own address");
      const raw = req.url ?? "/";
      const url = new URL(raw, "http://localhost");
      const p = url.pathname;
      if (p.startsWith("/api/")) return await api(req, res, url);
      if (req.method !== "GET" && req.method !== "HEAD") throw new HttpError(405, "method not allowed");
      if (p === "/" || p === "/index.html") return staticFile(res, "index.html");
      if (p.startsWith("/assets/")) return staticFile(res, p.slice("/assets/".length));
      if (p.startsWith("/files/")) {
        // The raw (still encoded) path: URL parsing already removed plain "..", so check the original too.
        const rawPath = raw.split("?")[0]!;
        if (!rawPath.startsWith("/files/")) throw new HttpError(404, "not found");
        const f = safeResolve(root, rawPath.slice("/files/".length), true);
        if (!f || !fs.statSync(f).isFile()) throw new HttpError(404, "not found");
        // Streamed: a run folder can hold checkpoints of gigabytes.
        res.writeHead(200, {
          "content-type": TYPES[path.extname(f)] ?? "application/octet-stream",
          "content-length": fs.statSync(f).size,
          "cache-control": "no-store",
          "x-content-type-options": "nosniff",
          "content-security-policy": CSP,
        });
        if (req.method === "HEAD") return void res.end();
        fs.createReadStream(f)
          .on("error", () => res.destroy())
          .pipe(res);
        return;
      }
      throw new HttpError(404, "not found");
    } catch (e) {
      const status = e instanceof HttpError ? e.status : 500;
      const body: ErrorResponse = { error: (e as Error).message };
      if (!res.headersSent) json(res, status, body);
      else res.end();
    }
  };

  const host = o.host ?? "127.0.0.1";
  const loopbackOnly = isLoopback(host);
  const allowedHosts = new Set<string>();

  const server = http.createServer((req, res) => void handler(req, res));
  server.on("clientError", (_e, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port ?? 0, o.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(":") ? `[${host}]` : host === "0.0.0.0" ? "127.0.0.1" : host;
  for (const name of [shown, "localhost", "127.0.0.1", "[::1]"]) allowedHosts.add(`${name}:${port}`);
  return {
    url: `http://${shown}:${port}/`,
    port,
    server,
    models,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of streams) s.end();
        server.closeAllConnections();
        server.close(() => resolve());
        models.dispose();
      }),
  };
}

/** Whether a host name binds only to this machine. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}
