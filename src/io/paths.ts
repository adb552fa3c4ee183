/**
 * Locations inside the installed package (works from src/ under tsx and from dist/ when built):
 * `packageRoot()` is the one place that finds it (the native backend's addon, the presets, the
 * Python helpers and the CLI's version all start from it).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

let root: string | null = null;

/** The `name` of a package.json, or undefined when it is not readable JSON (then keep walking up). */
function packageName(file: string): unknown {
  try {
    return (JSON.parse(fs.readFileSync(file, "utf8")) as { name?: unknown }).name;
  } catch {
    return undefined;
  }
}

/** The folder holding attnres's package.json. */
export function packageRoot(): string {
  if (root) return root;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (fs.existsSync(pj) && packageName(pj) === "attnres") return (root = dir);
    const up = path.dirname(dir);
    if (up === dir) throw new Error("cannot find the attnres package root");
    dir = up;
  }
}
