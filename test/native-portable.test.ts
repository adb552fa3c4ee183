/**
 * The native kernels' portable paths. The addon is built with -march=native, so on this CI machine
 * (AVX-512) the code under `#if defined(__AVX512F__)` runs and the `#else` branches (GCC's generic
 * vectors, `omp simd` loops) are never compiled. This test compiles every kernel source (not
 * addon.cc, which needs Node's headers) for x86-64 without AVX-512 — AVX2 (x86-64-v3) and the
 * SSE2 baseline — and asserts the compiler says nothing: no error, no warning under -Wall -Wextra.
 * That includes gemm.cc's static_assert that its task blocks are whole register tiles: with the AVX2
 * tile of 6 rows, 128-row tasks started mid-tile and the built-in GEMM returned wrong rows past 128
 * (caught by building the addon with -mno-avx512f and running test/native-kernels.test.ts on it).
 * On other architectures it compiles for the default target, which is the portable path there too.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";

const native = path.join(import.meta.dirname, "..", "native");
const sources = fs
  .readdirSync(native)
  .filter((f) => f.endsWith(".cc") && f !== "addon.cc")
  .sort();
const targets = process.arch === "x64" ? ["-march=x86-64-v3", "-march=x86-64"] : [""];

describe("native kernels compile without AVX-512", () => {
  test("there are kernel sources besides addon.cc", () => {
    assert.ok(sources.includes("depth_route.cc") && sources.includes("gemm.cc"), sources.join(" "));
  });
  for (const target of targets)
    for (const file of sources)
      test(`${file} ${target || "(default target)"}`, () => {
        const flags = [
          "-fsyntax-only",
          "-std=c++17",
          "-fopenmp",
          "-Wall",
          "-Wextra",
          "-Wno-unused-parameter",
        ];
        const r = spawnSync("g++", [...flags, ...(target ? [target] : []), path.join(native, file)], {
          encoding: "utf8",
        });
        assert.equal(r.error, undefined, `g++ did not run: ${String(r.error)}`);
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stderr.trim(), "", r.stderr);
      });
});
