// The package's install script: builds the native addon (build/Release/attnres_native.node) with
// node-gyp. node-gyp is taken from npm's lifecycle env (npm_config_node_gyp), else npm's bundled copy,
// else `node-gyp` on PATH. Exits non-zero with a clear message when the build cannot run.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function findNodeGyp() {
  const fromEnv = process.env.npm_config_node_gyp;
  if (fromEnv && existsSync(fromEnv)) return [process.execPath, fromEnv];
  const prefixes = [
    join(dirname(process.execPath), "..", "lib", "node_modules", "npm"),
    "/usr/lib/node_modules/npm",
    "/usr/local/lib/node_modules/npm",
    "/usr/share/nodejs/npm",
  ];
  for (const p of prefixes) {
    const js = join(p, "node_modules", "node-gyp", "bin", "node-gyp.js");
    if (existsSync(js)) return [process.execPath, js];
  }
  return ["node-gyp"];
}

function hasCompiler() {
  for (const cxx of [process.env.CXX, "c++", "g++", "clang++"]) {
    if (!cxx) continue;
    const r = spawnSync(cxx, ["--version"], { stdio: "ignore" });
    if (r.status === 0) return true;
  }
  return false;
}

if (!hasCompiler()) {
  console.error(
    "attnres: no C++ compiler found (tried $CXX, c++, g++, clang++). The native backend needs one:\n" +
      "  Debian/Ubuntu: apt-get install -y build-essential libopenblas-dev\n" +
      "then run `npm rebuild attnres` (or `node scripts/build-native.mjs`). " +
      "Meanwhile ATTNRES_BACKEND=reference works without it.",
  );
  process.exit(1);
}

// Headers installed next to this node (e.g. /usr/include/node) avoid a download; npm passes its own
// nodedir setting as npm_config_nodedir.
function nodedirArgs() {
  if (process.env.npm_config_nodedir || process.argv.some((a) => a.startsWith("--nodedir"))) return [];
  const prefix = resolve(dirname(process.execPath), "..");
  return existsSync(join(prefix, "include", "node", "common.gypi")) ? [`--nodedir=${prefix}`] : [];
}

const [cmd, ...pre] = findNodeGyp();
const args = [...pre, "rebuild", ...nodedirArgs(), ...process.argv.slice(2)];
const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", env: process.env });
if (r.error) {
  console.error(`attnres: could not run node-gyp (${cmd}): ${r.error.message}`);
  process.exit(1);
}
if (r.status !== 0) {
  console.error(
    "attnres: building the native addon failed (see the compiler output above). " +
      "ATTNRES_BACKEND=reference works without it.",
  );
  process.exit(r.status ?? 1);
}
