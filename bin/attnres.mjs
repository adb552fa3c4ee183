#!/usr/bin/env node
// The `attnres` executable: runs the compiled command line (dist/cli/main.js, built by `npm run
// build`, which `npm ci` / `npm install` run through the `prepare` script and `npm pack` through
// `prepack`). The Node.js version is checked first (one line on an unsupported version). In a clone
// (src/ present), a dist/ missing or older than src/ is reported in one line; the test suite runs
// the TypeScript sources directly instead (scripts/attnres-dev.mjs).
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const main = join(root, "dist", "cli", "main.js");
const src = join(root, "src");

if (!existsSync(main)) {
  process.stderr.write(
    `attnres: ${main} is missing: build it with \`npm run build\` (npm ci and npm install run it too)\n`,
  );
  process.exit(1);
}
await import(pathToFileURL(join(root, "dist", "node-version.js")).href);

if (existsSync(src)) {
  const built = statSync(main).mtimeMs;
  const newer = (dir) =>
    readdirSync(dir, { withFileTypes: true }).some((e) =>
      e.isDirectory()
        ? newer(join(dir, e.name))
        : e.name.endsWith(".ts") && statSync(join(dir, e.name)).mtimeMs > built,
    );
  if (newer(src))
    process.stderr.write("attnres: dist/ is older than src/; run `npm run build` to use your changes\n");
}
await import(pathToFileURL(main).href);
