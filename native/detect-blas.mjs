// Finds a CBLAS for the native addon at build time; called from binding.gyp via <!@(...).
//
//   node native/detect-blas.mjs defines   -> ATTNRES_OPENBLAS | ATTNRES_CBLAS | ATTNRES_BUILTIN_GEMM
//   node native/detect-blas.mjs cflags    -> compiler flags (include dirs) of the BLAS, or nothing
//   node native/detect-blas.mjs libs      -> linker flags (plus an rpath for every -L dir), or nothing
//
// Looks up pkg-config `openblas`, else `cblas`. Setting ATTNRES_NO_BLAS=1 forces the built-in GEMM.
// Never fails: without a BLAS the addon compiles its own blocked GEMM, and the `defines` query
// prints a one-line notice on stderr (gyp shows it during the build).
import { execFileSync } from "node:child_process";

function pkgConfig(pkg, what) {
  try {
    return execFileSync("pkg-config", [what, pkg], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] })
      .trim()
      .split(/\s+/)
      .filter((s) => s.length > 0);
  } catch {
    return null;
  }
}

function detect() {
  const forced = process.env.ATTNRES_NO_BLAS;
  if (forced !== undefined && forced !== "" && forced !== "0") return null;
  for (const pkg of ["openblas", "cblas"]) {
    const cflags = pkgConfig(pkg, "--cflags");
    const libs = pkgConfig(pkg, "--libs");
    if (cflags !== null && libs !== null) return { pkg, cflags, libs };
  }
  return null;
}

const what = process.argv[2];
const found = detect();
let out = [];
if (what === "defines") {
  if (found === null) {
    out = ["ATTNRES_BUILTIN_GEMM"];
    process.stderr.write(
      "attnres: no OpenBLAS found via pkg-config; using the built-in GEMM (slower). " +
        "Install libopenblas-dev for full speed.\n",
    );
  } else {
    out = [found.pkg === "openblas" ? "ATTNRES_OPENBLAS" : "ATTNRES_CBLAS"];
  }
} else if (what === "cflags") {
  out = found === null ? [] : found.cflags;
} else if (what === "libs") {
  if (found !== null) {
    const rpaths = found.libs.filter((f) => f.startsWith("-L")).map((f) => `-Wl,-rpath,${f.slice(2)}`);
    out = [...found.libs, ...rpaths];
  }
} else {
  process.stderr.write("usage: node native/detect-blas.mjs defines|cflags|libs\n");
  process.exit(2);
}
process.stdout.write(out.join(" ") + "\n");
