// The package's install script: builds the native addon (build/Release/attnres_native.node) with
// node-gyp. node-gyp is taken from npm's lifecycle env (npm_config_node_gyp), else npm's bundled copy,
// else `node-gyp` on PATH. Exits non-zero with a clear message when the build cannot run — except
// when npm runs it while installing attnres as a dependency of another project: then a missing
// compiler or a failed build is a warning and the install goes on (the library falls back to its
// reference backend, with one notice saying how to build the addon: `npm rebuild attnres`).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const asDependency =
  process.env.npm_lifecycle_event === "install" && resolve(process.env.INIT_CWD ?? root) !== root;

/** Ends the script after a failure: an error, or a warning when installing as a dependency. */
function fail(message, status = 1) {
  if (asDependency) {
    console.warn(
      `${message}\nattnres: installed without the native addon; it uses the slow reference backend until ` +
        "`npm rebuild attnres` builds the addon.",
    );
    process.exit(0);
  }
  console.error(message);
  process.exit(status);
}

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
  fail(
    "attnres: no C++ compiler found (tried $CXX, c++, g++, clang++). The native backend needs one:\n" +
      "  Debian/Ubuntu: apt-get install -y build-essential libopenblas-dev\n" +
      "then run `npm rebuild attnres` (in a clone of attnres: `npm run build:native`). " +
      "Meanwhile ATTNRES_BACKEND=reference works without it.",
  );
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
if (r.error) fail(`attnres: could not run node-gyp (${cmd}): ${r.error.message}`);
if (r.status !== 0)
  fail(
    "attnres: building the native addon failed (see the compiler output above). " +
      "ATTNRES_BACKEND=reference works without it.",
    r.status ?? 1,
  );
