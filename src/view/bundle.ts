/**
 * The browser front end of `attnres view`: src/view/web/*.ts (plus src/view/api.ts) bundled with
 * esbuild into dist/view-web/ (gitignored) as ES modules — main.js, lazily loaded chunks (the vega
 * charts), index.html and style.css — so the page loads nothing from the network.
 *
 * The bundle is built by `npm run build:view` (which `npm ci`/`npm install` run through the
 * `prepare` script) and, on demand, by `ensureBundle()` when it is missing or older than any
 * source file (esbuild comes with the package's dependencies). The build writes a temporary
 * folder and renames it into place, so concurrent builds never serve a half-written bundle.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { packageRoot } from "../io/paths.js";

export const webSourceDir = (): string => path.join(packageRoot(), "src", "view", "web");
export const bundleDir = (): string => path.join(packageRoot(), "dist", "view-web");
const STAMP = "build.json";

function newestSource(): number {
  let newest = 0;
  const files = [path.join(packageRoot(), "src", "view", "api.ts")];
  for (const f of fs.readdirSync(webSourceDir())) files.push(path.join(webSourceDir(), f));
  for (const f of files) newest = Math.max(newest, fs.statSync(f).mtimeMs);
  return newest;
}

/** Whether dist/view-web holds a bundle at least as new as every source file. */
export function bundleFresh(): boolean {
  const stamp = path.join(bundleDir(), STAMP);
  if (!fs.existsSync(stamp)) return false;
  if (!fs.existsSync(webSourceDir())) return true; // an installed package without sources
  return fs.statSync(stamp).mtimeMs >= newestSource();
}

/** Builds the bundle into dist/view-web (replacing it). */
export async function buildBundle(opts: { minify?: boolean } = {}): Promise<string> {
  let esbuild: typeof import("esbuild");
  try {
    esbuild = await import("esbuild");
  } catch {
    throw new Error("the viewer's front end is not built and esbuild is not installed: run npm ci");
  }
  const out = bundleDir();
  const tmp = `${out}.tmp-${process.pid}-${Date.now()}`;
  fs.mkdirSync(tmp, { recursive: true });
  try {
    await esbuild.build({
      entryPoints: [path.join(webSourceDir(), "main.ts")],
      outdir: tmp,
      bundle: true,
      splitting: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      minify: opts.minify ?? true,
      sourcemap: false,
      logLevel: "silent",
      legalComments: "none",
      chunkNames: "chunk-[hash]",
    });
    for (const f of ["index.html", "style.css"])
      fs.copyFileSync(path.join(webSourceDir(), f), path.join(tmp, f));
    fs.writeFileSync(path.join(tmp, STAMP), JSON.stringify({ built: new Date().toISOString() }) + "\n");
    const old = `${out}.old-${process.pid}-${Date.now()}`;
    if (fs.existsSync(out)) fs.renameSync(out, old);
    try {
      fs.renameSync(tmp, out);
    } catch (e) {
      // Another process put its bundle there first: use that one.
      if (!fs.existsSync(path.join(out, STAMP))) throw e;
      fs.rmSync(tmp, { recursive: true, force: true });
    }
    fs.rmSync(old, { recursive: true, force: true });
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return out;
}

let building: Promise<string> | null = null;

/** The bundle folder, built first when it is missing or stale. */
export async function ensureBundle(): Promise<string> {
  if (bundleFresh()) return bundleDir();
  building ??= buildBundle().finally(() => (building = null));
  return building;
}
