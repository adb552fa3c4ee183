/** Locations inside the installed package (works from src/ under tsx and from dist/src/ when built). */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

let root: string | null = null;

/** The folder holding attnres's package.json. */
export function packageRoot(): string {
  if (root) return root;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (
      fs.existsSync(pj) &&
      (JSON.parse(fs.readFileSync(pj, "utf8")) as { name?: string }).name === "attnres"
    )
      return (root = dir);
    const up = path.dirname(dir);
    if (up === dir) throw new Error("cannot find the attnres package root");
    dir = up;
  }
}
