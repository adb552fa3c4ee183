#!/usr/bin/env node
/**
 * Formats the repository's Python files with ruff's formatter (the npm package
 * @astral-sh/ruff-wasm-nodejs: no Python, no download). Files: every *.py git tracks or would
 * track (untracked files not ignored). Settings: line length 120, ruff's defaults otherwise.
 *   node scripts/format-python.mjs          rewrite files in place
 *   node scripts/format-python.mjs --check  list files that are not formatted; exit 1 if any
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { PositionEncoding, Workspace } from "@astral-sh/ruff-wasm-nodejs";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const check = process.argv.includes("--check");
const files = execFileSync("git", ["ls-files", "--cached", "--others", "--exclude-standard", "*.py"], {
  cwd: root,
  encoding: "utf8",
})
  .split("\n")
  .filter((f) => f && fs.existsSync(path.join(root, f)));

const ws = new Workspace({ "line-length": 120 }, PositionEncoding.Utf16);
const bad = [];
for (const f of files) {
  const file = path.join(root, f);
  const src = fs.readFileSync(file, "utf8");
  let out;
  try {
    out = ws.format(src);
  } catch (e) {
    process.stderr.write(`${f}: ruff cannot format it: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
    continue;
  }
  if (out === src) continue;
  if (check) bad.push(f);
  else fs.writeFileSync(file, out);
}
if (check && bad.length) {
  for (const f of bad) process.stderr.write(`[ruff format] ${f}\n`);
  process.stderr.write(`${bad.length} Python file(s) not formatted; run npm run format\n`);
  process.exitCode = 1;
}
