#!/usr/bin/env node
// `npm run test:node-versions`: the package test (test/package.test.ts) on more Node.js majors than
// the one running it, and the refusal on an unsupported one. Node.js binaries come from the npm
// registry as the packages node-<platform>-<arch>@<major> (the official builds), installed once
// into node_modules/.cache/attnres-node/<major>/ (later runs reuse them, offline).
//
//   node scripts/test-node-versions.mjs [--supported 22,24] [--unsupported 18]
//
// Supported majors run the whole package test with ATTNRES_TEST_NODES set (the consumer program and
// the executable run on each); an unsupported major must print exactly one line and exit 1, both
// for `attnres --help` and for `import "attnres"`. Needs this checkout built (`npm run build`).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: {
    supported: { type: "string", default: "22,24" },
    unsupported: { type: "string", default: "18" },
  },
});
const majors = (s) => s.split(",").filter(Boolean).map(Number);
const npmCli = process.env.npm_execpath?.endsWith(".js")
  ? [process.execPath, process.env.npm_execpath]
  : ["npm"];

/** The node binary of the latest release of `major`, installed from the npm registry if needed. */
function nodeBinary(major) {
  const dir = join(root, "node_modules", ".cache", "attnres-node", String(major));
  const name = `node-${process.platform === "win32" ? "win" : process.platform}-${process.arch}`;
  const bin = join(dir, "node_modules", name, "bin", process.platform === "win32" ? "node.exe" : "node");
  if (!existsSync(bin)) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "package.json"), '{ "private": true }\n');
    process.stderr.write(`installing Node.js ${major} (${name}@${major}) into ${dir}\n`);
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("npm_")));
    const r = spawnSync(
      npmCli[0],
      [...npmCli.slice(1), "install", "--prefer-offline", "--no-audit", "--no-fund", `${name}@${major}`],
      { cwd: dir, stdio: "inherit", env },
    );
    if (r.status !== 0 || !existsSync(bin)) throw new Error(`could not install ${name}@${major}`);
  }
  return bin;
}

let failed = false;
for (const major of majors(values.unsupported)) {
  const node = nodeBinary(major);
  const version = spawnSync(node, ["--version"], { encoding: "utf8" }).stdout.trim();
  for (const [what, argv, cwd] of [
    ["attnres --help", [join(root, "bin", "attnres.mjs"), "--help"], root],
    ['import "attnres"', ["--input-type=module", "-e", 'await import("attnres")'], root],
  ]) {
    const r = spawnSync(node, argv, { cwd, encoding: "utf8" });
    const lines = r.stderr.split("\n").filter(Boolean);
    const ok =
      r.status === 1 && lines.length === 1 && /is not supported; attnres needs Node\.js/.test(lines[0]);
    process.stdout.write(`${ok ? "ok" : "FAILED"}: Node.js ${version}, ${what}: ${lines.join(" | ")}\n`);
    if (!ok) failed = true;
  }
}

const supported = majors(values.supported).map(nodeBinary);
for (const node of supported)
  process.stdout.write(
    `package test also on Node.js ${spawnSync(node, ["--version"], { encoding: "utf8" }).stdout}`,
  );
const r = spawnSync(process.execPath, ["--import", "tsx", "--test", join(root, "test", "package.test.ts")], {
  cwd: root,
  stdio: "inherit",
  env: { ...process.env, ATTNRES_TEST_NODES: supported.join(":") },
});
if (r.status !== 0) failed = true;
process.exit(failed ? 1 : 0);
