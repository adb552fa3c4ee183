/**
 * `attnres view [RUNS_DIR]`: a local web server (src/view/server.ts) showing the runs under a
 * folder — runs table, live loss curves, routing heatmaps, token explorer. Binds to 127.0.0.1
 * unless --host says otherwise (a warning then: the runs become visible to the network), prints
 * the URL and serves until Ctrl-C.
 */
import * as fs from "node:fs";
import { isLoopback, startViewServer } from "../view/server.js";

export interface ViewFlags {
  port: number;
  host: string;
}

/** Starts the server as the CLI does (checks, warning, URL line, Ctrl-C stops it). */
export async function viewCommand(dir: string, o: ViewFlags): Promise<void> {
  if (!fs.existsSync(dir))
    throw new Error(`the runs folder ${dir} does not exist (train a run first, or name the folder)`);
  if (!fs.statSync(dir).isDirectory()) throw new Error(`${dir} is not a folder (name the folder of runs)`);
  if (o.port > 65535) throw new Error(`--port ${o.port} is not a port (0 … 65535)`);
  if (!isLoopback(o.host))
    process.stderr.write(
      `attnres view: warning: listening on ${o.host}, not only on this machine — anyone who can reach it can read the runs under ${dir}\n`,
    );
  // The viewer answers now and then, often beside a training run: idle OpenMP threads should
  // sleep, not spin (read when the native addon loads, on the first model).
  process.env.OMP_WAIT_POLICY ??= "passive";
  let s;
  try {
    s = await startViewServer({ root: dir, host: o.host, port: o.port });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE")
      throw new Error(`port ${o.port} is in use; pick another with --port`, { cause: e });
    if (code === "EADDRNOTAVAIL" || code === "ENOTFOUND")
      throw new Error(`cannot listen on ${o.host}: not an address of this machine`, { cause: e });
    throw e;
  }
  process.stdout.write(`attnres view: serving ${dir} at ${s.url} (Ctrl-C to stop)\n`);
  const stop = () => {
    void s.close().then(() => process.exit(0));
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

export { registerView } from "./commands/view.js";
