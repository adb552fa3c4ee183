/**
 * attnres as a user gets it from npm: `npm pack` of the built dist/ (`npm test` builds it first, as
 * `prepare` does on a plain `npm pack`) → the tarball installed into a fresh project → plain
 * Node.js and strict TypeScript consumers.
 *
 * The project is installed offline, with the exact dependency versions of this repository's
 * package-lock.json (the entries attnres's dependencies reach, plus the tarball), from the npm cache
 * `npm ci` filled:
 * `npm ci --offline --ignore-scripts`, so no network and no native build. Without install scripts
 * the addon is missing, which is the first case tested (the reference backend and one notice naming
 * the command that builds it); then this checkout's build/Release/attnres_native.node is copied in
 * (the N-API addon is ABI-stable) and the same consumer runs on the native backend.
 *
 * The strict TypeScript consumer compiles with NodeNext and Bundler resolution, with the Node.js
 * types the package brings (@types/node is a dependency: the declarations use Buffer, AbortSignal,
 * and those of zod and resvg need Node's globals), not ones of its own; every ```ts/```js example of
 * README.md and docs/*.md compiles against the installed package and runs; a CommonJS file can
 * require() and import() every entry point and draw a chart. Every relative link of every shipped
 * Markdown file leads to a shipped file.
 *
 * Also: the executable's --version, help and usage errors; that help loads only the command
 * definitions (a module-resolution hook lists every module loaded); an unsupported Node.js gets one
 * line; engines.node agrees with every installed dependency's engines.
 *
 * ATTNRES_TEST_NODES=/path/to/node[:/path/to/node…] runs the consumer and the executable with
 * those Node.js binaries too (`npm run test:node-versions` fetches Node 22 and 24 from the npm
 * registry and sets it; see scripts/test-node-versions.mjs).
 */
import assert from "node:assert/strict";
import { spawnSync, type SpawnSyncOptions } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { before, describe, test } from "node:test";
import semver from "semver";
import { SUPPORTED_NODE } from "../src/node-version.js";
import { tempDir } from "./helpers.js";

const root = path.dirname(import.meta.dirname);
const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as {
  version: string;
  license: string;
  engines: { node: string };
  dependencies: Record<string, string>;
  bin: Record<string, string>;
  exports: Record<string, unknown>;
};
const extraNodes = (process.env.ATTNRES_TEST_NODES ?? "").split(":").filter(Boolean);

/** The environment without npm's lifecycle variables (a nested npm would read them as config). */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith("npm_") && k !== "ATTNRES_BACKEND" && k !== "INIT_CWD") env[k] = v;
  return { ...env, ATTNRES_THREADS: "1", ...extra };
}

function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 1 << 26, env: cleanEnv(), ...opts });
  if (r.error) throw r.error;
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** npm itself: the one running `npm test` when there is one, else the npm on PATH. */
function npm(args: string[], cwd: string) {
  const cli = process.env.npm_execpath;
  const r =
    cli && cli.endsWith(".js") ? run(process.execPath, [cli, ...args], { cwd }) : run("npm", args, { cwd });
  assert.equal(r.status, 0, `npm ${args.join(" ")} failed:\n${r.stderr}`);
  return r.stdout;
}

/** Whether dist/ is missing or older than some source file. */
function distStale(): boolean {
  const built = path.join(root, "dist", "index.js");
  if (!fs.existsSync(built)) return true;
  const t = fs.statSync(built).mtimeMs;
  const newer = (dir: string): boolean =>
    fs
      .readdirSync(dir, { withFileTypes: true })
      .some((e) =>
        e.isDirectory() ? newer(path.join(dir, e.name)) : fs.statSync(path.join(dir, e.name)).mtimeMs > t,
      );
  return newer(path.join(root, "src"));
}

/**
 * The library examples of the docs: every ```ts / ```js (typescript, javascript, mjs) block of
 * README.md and docs/*.md, named after its file and line. Each must be a whole program that imports
 * the installed package.
 */
function docExamples(): { name: string; body: string }[] {
  const files = [
    "README.md",
    ...fs
      .readdirSync(path.join(root, "docs"))
      .filter((f) => f.endsWith(".md"))
      .sort()
      .map((f) => `docs/${f}`),
  ];
  const out: { name: string; body: string }[] = [];
  for (const file of files) {
    const lines = fs.readFileSync(path.join(root, file), "utf8").split("\n");
    for (let i = 0; i < lines.length; i++) {
      const open = /^\s*(`{3,}|~{3,})\s*([\w+-]*)/.exec(lines[i]!);
      if (!open) continue;
      let j = i + 1;
      while (j < lines.length && !lines[j]!.trim().startsWith(open[1]!)) j++;
      if (/^(ts|typescript|js|javascript|mjs|mts)$/i.test(open[2]!))
        out.push({
          name: `${file.replace(/\W/g, "_")}_${i + 1}`,
          body: lines.slice(i + 1, j).join("\n") + "\n",
        });
      i = j;
    }
  }
  return out;
}

interface LockEntry {
  dev?: boolean;
  link?: boolean;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

/**
 * The entries of a package-lock.json that `npm install` of a package with these dependencies puts
 * in node_modules: the dependencies, theirs (optional and peer ones too) and so on, each found as
 * Node.js resolves it (the nearest node_modules up the tree). Taken from package.json's
 * dependencies rather than from the lock's dev flags, which lag when a package moves from
 * devDependencies to dependencies. Optional dependencies the lock lacks are skipped.
 */
function lockClosure(
  lock: Record<string, LockEntry>,
  dependencies: Record<string, string>,
): Record<string, LockEntry> {
  const out: Record<string, LockEntry> = {};
  const visit = (from: string, name: string) => {
    for (let dir = from; ;) {
      const at = `${dir ? `${dir}/` : ""}node_modules/${name}`;
      const entry = lock[at];
      if (entry) {
        if (out[at]) return;
        const { dev: _dev, ...rest } = entry;
        out[at] = rest;
        for (const dep of Object.keys({
          ...entry.dependencies,
          ...entry.optionalDependencies,
          ...entry.peerDependencies,
        }))
          visit(at, dep);
        return;
      }
      if (!dir) return;
      const up = dir.lastIndexOf("/node_modules/");
      dir = up < 0 ? "" : dir.slice(0, up);
    }
  };
  for (const name of Object.keys(dependencies)) visit("", name);
  return out;
}

/**
 * The relative link targets of a Markdown text: inline links and images (`[text](target)`,
 * `![alt](target "title")`), reference definitions (`[id]: target`) and HTML src/href attributes,
 * outside fenced code blocks and code spans. Web addresses, mail links and anchors are left out.
 */
function relativeLinks(markdown: string): string[] {
  const prose = markdown
    .replace(/^ {0,3}(`{3,}|~{3,})[^\n]*\n[\s\S]*?(?:^ {0,3}\1[^\n]*$|(?![\s\S]))/gm, "")
    .replace(/(`+)[^`]*?\1/g, "");
  const targets = [
    ...[...prose.matchAll(/\]\(\s*<?([^\s)>]+)/g)].map((m) => m[1]!),
    ...[...prose.matchAll(/^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)/gm)].map((m) => m[1]!),
    ...[...prose.matchAll(/\b(?:src|href)\s*=\s*["']([^"']+)["']/gi)].map((m) => m[1]!),
  ];
  return targets.filter((t) => !/^(https?:|mailto:|#)/i.test(t));
}

/** The only files `--help` / `--version` may load: commander and the command definitions. */
const helpModules =
  /\/node_modules\/commander\/|\/node_modules\/attnres\/(bin\/attnres\.mjs|dist\/(node-version|cli\/(main|common|engine|preset-names|commands\/[\w-]+)|io\/paths|model\/names|plan\/sizes)\.js)$/;

test("the install script without a compiler: a warning as a dependency, an error in a clone", () => {
  const script = path.join(root, "scripts", "build-native.mjs");
  const noCompiler = { PATH: "/nonexistent", CXX: "" };
  const dep = run(process.execPath, [script], {
    env: cleanEnv({ ...noCompiler, npm_lifecycle_event: "install", INIT_CWD: tempDir("consumer") }),
  });
  assert.equal(dep.status, 0, dep.stderr);
  assert.match(dep.stderr, /no C\+\+ compiler found/);
  assert.match(dep.stderr, /installed without the native addon; .*`npm rebuild attnres`/);
  const clone = run(process.execPath, [script], {
    env: cleanEnv({ ...noCompiler, npm_lifecycle_event: "install", INIT_CWD: root }),
  });
  assert.equal(clone.status, 1);
  assert.match(clone.stderr, /no C\+\+ compiler found/);
});

describe("the npm package", { timeout: 20 * 60_000 }, () => {
  let work = "";
  let project = "";
  let packed: { filename: string; size: number; files: { path: string }[] };
  const bin = () => path.join(project, "node_modules", "attnres", "bin", "attnres.mjs");
  const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");

  before(() => {
    work = tempDir("package");
    project = path.join(work, "consumer");
    fs.mkdirSync(project);
    // dist/ is what `prepare` builds on `npm pack`; `npm test` has just built it, so it is rebuilt
    // here only when missing or older than a source file (this file run on its own).
    if (distStale()) npm(["run", "build"], root);
    packed = (
      JSON.parse(
        npm(["pack", "--ignore-scripts", "--json", "--pack-destination", work], root),
      ) as (typeof packed)[]
    )[0]!;
    const tgz = packed.filename;
    fs.renameSync(path.join(work, tgz), path.join(project, tgz));
    const integrity =
      "sha512-" +
      crypto
        .createHash("sha512")
        .update(fs.readFileSync(path.join(project, tgz)))
        .digest("base64");
    const repoLock = JSON.parse(fs.readFileSync(path.join(root, "package-lock.json"), "utf8")) as {
      packages: Record<string, LockEntry>;
    };
    const spec = `file:${tgz}`;
    const packages: Record<string, unknown> = {
      "": { name: "consumer", version: "1.0.0", dependencies: { attnres: spec } },
      "node_modules/attnres": {
        version: pkg.version,
        resolved: spec,
        integrity,
        hasInstallScript: true,
        license: pkg.license,
        dependencies: pkg.dependencies,
        bin: pkg.bin,
        engines: pkg.engines,
      },
    };
    Object.assign(packages, lockClosure(repoLock.packages, pkg.dependencies));
    const manifest = { name: "consumer", version: "1.0.0", private: true, type: "module" };
    fs.writeFileSync(
      path.join(project, "package.json"),
      JSON.stringify({ ...manifest, dependencies: { attnres: spec } }, null, 2),
    );
    fs.writeFileSync(
      path.join(project, "package-lock.json"),
      JSON.stringify({ ...manifest, lockfileVersion: 3, requires: true, packages }, null, 2),
    );
    npm(["ci", "--offline", "--ignore-scripts", "--no-audit", "--no-fund"], project);
    for (const f of ["index.mjs", "index.ts"])
      fs.copyFileSync(path.join(root, "test", "consumer", f), path.join(project, f));
    const tsconfig = JSON.parse(
      fs.readFileSync(path.join(root, "test", "consumer", "tsconfig.json"), "utf8"),
    ) as {
      compilerOptions: Record<string, unknown>;
    };
    // Its "types": ["node"] is the @types/node that attnres brings, not this checkout's.
    fs.writeFileSync(path.join(project, "tsconfig.json"), JSON.stringify(tsconfig, null, 2));
  });

  test("the tarball: compiled code, types, presets, examples, addon sources, LICENSE; no sources, no study", () => {
    const files = packed.files.map((f) => f.path);
    for (const f of [
      "bin/attnres.mjs",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/cli/main.js",
      "dist/entries/analysis.d.ts",
      "binding.gyp",
      "native/addon.cc",
      "scripts/build-native.mjs",
      "configs/sotu-tiny.json",
      "examples/tasks/tiny-mc.jsonl",
      "LICENSE",
      "README.md",
    ])
      assert.ok(files.includes(f), `${f} is not in the tarball`);
    // Python ships only as the torch engine (python/attnres_torch), never compiled. The only images
    // are docs/view.md's four screenshots; the study report (docs/results.md) and its figures stay
    // in the repository with the study/ outputs it is generated from.
    const unwanted = files.filter(
      (f) =>
        /^(src|test|bench|study)\/|\.(svg|pyc)$|(?<!\.d)\.ts$|^docs\/results/.test(f) ||
        (f.endsWith(".png") && !f.startsWith("docs/view/")) ||
        (f.endsWith(".py") && !f.startsWith("python/")),
    );
    assert.deepEqual(unwanted, []);
    // Of scripts/, only the install script (npm packs README files whatever "files" says).
    assert.deepEqual(
      files.filter((f) => f.startsWith("scripts/")),
      ["scripts/build-native.mjs"],
    );
    // Nothing names the machine it was packed on (this checkout's path).
    const installed = path.join(project, "node_modules", "attnres");
    const named = files.filter(
      (f) => !f.startsWith("corpora/") && fs.readFileSync(path.join(installed, f), "utf8").includes(root),
    );
    assert.deepEqual(named, []);
    // ~220 kB of code and docs, the viewer's front-end bundle (vega, ~350 kB compressed), the
    // shipped tinyshakespeare corpus (~450 kB compressed) and docs/view.md's screenshots (~130 kB).
    assert.ok(packed.size < 1_400_000, `the tarball is ${packed.size} bytes`);
  });

  test("every relative link of every shipped Markdown file leads to a file in the tarball", () => {
    const files = new Set(packed.files.map((f) => f.path));
    const installed = path.join(project, "node_modules", "attnres");
    const docs = [...files].filter((f) => f.endsWith(".md")).sort();
    assert.ok(docs.includes("README.md") && docs.includes("docs/view.md"), docs.join(" "));
    let checked = 0;
    const broken: string[] = [];
    for (const doc of docs)
      for (const link of relativeLinks(fs.readFileSync(path.join(installed, doc), "utf8"))) {
        checked++;
        const target = path.posix.join(
          path.posix.dirname(doc),
          decodeURIComponent(link.replace(/[?#].*/, "")),
        );
        const dir = target.replace(/\/$/, "") + "/";
        if (!files.has(target) && ![...files].some((f) => f.startsWith(dir))) broken.push(`${doc}: ${link}`);
      }
    assert.ok(checked >= 30, `only ${checked} relative links found`);
    assert.deepEqual(broken, []);
  });

  test("plain Node without the addon: reference backend, one notice naming `npm rebuild attnres`", () => {
    assert.ok(!fs.existsSync(path.join(project, "node_modules", "attnres", "build")));
    const out = path.join(work, "no-addon");
    const r = run(process.execPath, ["index.mjs", out], { cwd: project });
    assert.equal(r.status, 0, r.stderr);
    const res = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(res.backend, "reference");
    const notices = r.stderr.split("\n").filter(Boolean);
    assert.equal(notices.length, 1, r.stderr);
    assert.match(
      notices[0]!,
      /^attnres: using the slow reference backend because the native addon .* is not built: build it with `npm rebuild attnres`/,
    );
    assert.ok(Number.isFinite(res.loss) && (res.loss as number) > 0);
    assert.equal(res.same, true, "the reloaded checkpoint differs from the saved model");
    assert.equal(res.mode, "delta");
    assert.equal(res.routed, true);
    for (const f of ["report.json", "summary.md", "alpha-heatmap.png"])
      assert.ok((res.files as string[]).includes(f), `${f} missing from ${String(res.files)}`);
    assert.ok((res.pngBytes as number) > 1000);
  });

  test("plain Node with the addon in the installed package: native backend, no notice", () => {
    const dest = path.join(project, "node_modules", "attnres", "build", "Release");
    fs.mkdirSync(dest, { recursive: true });
    fs.copyFileSync(
      path.join(root, "build", "Release", "attnres_native.node"),
      path.join(dest, "attnres_native.node"),
    );
    for (const [i, node] of [process.execPath, ...extraNodes].entries()) {
      const r = run(node, ["index.mjs", path.join(work, `native-${i}`)], {
        cwd: project,
        env: cleanEnv({ ATTNRES_BACKEND: "native" }),
      });
      assert.equal(r.status, 0, `${node}: ${r.stderr}`);
      const res = JSON.parse(r.stdout) as Record<string, unknown>;
      assert.equal(res.backend, "native");
      assert.equal(res.same, true);
      assert.equal(r.stderr, "");
    }
  });

  test("a strict TypeScript consumer compiles (exactOptionalPropertyTypes, skipLibCheck false)", () => {
    // NodeNext (tsconfig.json) and a bundler's resolution (Vite, esbuild, webpack).
    const variants: [string, Record<string, string>][] = [
      ["tsconfig.json", {}],
      ["tsconfig.bundler.json", { module: "ESNext", moduleResolution: "Bundler" }],
    ];
    for (const [file, compilerOptions] of variants) {
      if (file !== "tsconfig.json")
        fs.writeFileSync(
          path.join(project, file),
          JSON.stringify({ extends: "./tsconfig.json", compilerOptions }),
        );
      const r = run(process.execPath, [tsc, "-p", file], { cwd: project });
      assert.equal(r.status, 0, `${file}:\n${r.stdout}${r.stderr}`);
    }
  });

  test("a TypeScript consumer needs no @types/node of its own: the package depends on it", () => {
    // The declarations name Buffer and AbortSignal, and zod's and resvg's (reached through them)
    // need Node's globals, so @types/node is a dependency, over the supported Node.js range.
    assert.equal(pkg.dependencies["@types/node"], pkg.engines.node);
    const manifest = JSON.parse(fs.readFileSync(path.join(project, "package.json"), "utf8")) as {
      dependencies: Record<string, string>;
    };
    assert.deepEqual(Object.keys(manifest.dependencies), ["attnres"]);
    assert.ok(fs.existsSync(path.join(project, "node_modules", "@types", "node", "package.json")));
    const entries = Object.keys(pkg.exports)
      .filter((k) => k !== "./package.json")
      .map((k) => `attnres${k.slice(1)}`);
    const source = (list: string[]) =>
      list.map((e, i) => `import * as m${i} from "${e}";\n`).join("") +
      `export const entries = [${list.map((_, i) => `m${i}`).join(", ")}];\n`;
    // Every entry's declarations reference Node's types themselves (`/// <reference types="node"
    // />`), so they compile even with "types": [] (TypeScript 6's default).
    const variants: [string, string[], Record<string, unknown>][] = [
      ["every-entry", entries, {}],
      ["every-entry-no-default-types", entries, { types: [] }],
    ];
    for (const [name, list, extra] of variants) {
      fs.writeFileSync(path.join(project, `${name}.ts`), source(list));
      fs.writeFileSync(
        path.join(project, `tsconfig.${name}.json`),
        JSON.stringify({
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            lib: ["ES2022"],
            strict: true,
            exactOptionalPropertyTypes: true,
            skipLibCheck: false,
            noEmit: true,
            ...extra,
          },
          files: [`${name}.ts`],
        }),
      );
      const r = run(process.execPath, [tsc, "-p", `tsconfig.${name}.json`], { cwd: project });
      assert.equal(r.status, 0, `${name}:\n${r.stdout}${r.stderr}`);
    }
  });

  test("every ```ts/```js example of README.md and docs/*.md compiles and runs as written", () => {
    const examples = docExamples();
    assert.ok(examples.length >= 3, `${examples.length} examples`);
    const dir = path.join(project, "doc-examples");
    fs.mkdirSync(dir, { recursive: true });
    for (const e of examples) {
      assert.match(e.body, /\bfrom "attnres(\/[\w-]+)?";/, `${e.name} does not import attnres`);
      assert.doesNotMatch(e.body, /from "\.{1,2}\//, `${e.name} imports a file of the repository`);
      fs.writeFileSync(path.join(dir, `${e.name}.ts`), e.body);
    }
    fs.writeFileSync(
      path.join(project, "tsconfig.examples.json"),
      JSON.stringify({
        extends: "./tsconfig.json",
        compilerOptions: { noEmit: false, outDir: "doc-examples-out" },
        files: examples.map((e) => `doc-examples/${e.name}.ts`),
      }),
    );
    const c = run(process.execPath, [tsc, "-p", "tsconfig.examples.json"], { cwd: project });
    assert.equal(c.status, 0, c.stdout + c.stderr);
    for (const e of examples) {
      const r = run(process.execPath, [path.join("doc-examples-out", `${e.name}.js`)], { cwd: project });
      assert.equal(r.status, 0, `${e.name}:\n${r.stderr}`);
    }
  });

  test("a CommonJS consumer: require() and import() of every entry point, a chart drawn", () => {
    // require() of an ES module works when its graph has no top-level await (vega's has one: it is
    // loaded by the first chart), so every entry point must be require()-able.
    const entries = Object.keys(pkg.exports)
      .filter((k) => k !== "./package.json")
      .map((k) => `attnres${k.slice(1)}`);
    fs.writeFileSync(
      path.join(project, "consumer.cjs"),
      [
        'const fs = require("node:fs");',
        `const entries = ${JSON.stringify(entries)};`,
        "const names = (m) => Object.keys(m).filter((k) => k !== '__esModule').sort();",
        "const required = entries.map((e) => names(require(e)));",
        'const { DecoderLM } = require("attnres");',
        'const { heatmap } = require("attnres/plot");',
        "Promise.all(entries.map((e) => import(e))).then(async (ms) => {",
        "  const values = [[0.5, 1], [0.25, 0]];",
        "  const chart = await heatmap(process.argv[2], { title: 't', rows: ['a', 'b'], columns: ['x', 'y'], values });",
        "  const png = fs.statSync(chart.png).size;",
        "  console.log(JSON.stringify({ ctor: typeof DecoderLM, required, imported: ms.map(names), png }));",
        "});",
      ].join("\n"),
    );
    const r = run(process.execPath, ["consumer.cjs", path.join(work, "cjs-chart", "heatmap")], {
      cwd: project,
      env: cleanEnv({ ATTNRES_BACKEND: "reference" }),
    });
    assert.equal(r.status, 0, r.stderr);
    const res = JSON.parse(r.stdout) as {
      ctor: string;
      required: string[][];
      imported: string[][];
      png: number;
    };
    assert.equal(res.ctor, "function");
    assert.equal(res.required.length, entries.length);
    assert.deepEqual(res.required, res.imported);
    assert.ok(
      res.required.every((names) => names.length > 0),
      r.stdout,
    );
    assert.ok(res.png > 1000, `${res.png} bytes of PNG`);
  });

  test("attnres --version, help, and one-line usage errors with the valid choices", () => {
    for (const node of [process.execPath, ...extraNodes]) {
      const v = run(node, [bin(), "--version"]);
      assert.equal(v.status, 0, v.stderr);
      assert.equal(v.stdout, `${pkg.version}\n`);
      const h = run(node, [bin(), "--help"]);
      assert.equal(h.status, 0, h.stderr);
      assert.match(h.stdout, /^Usage: attnres/);
      assert.match(h.stdout, /eval-mc/);
    }
    const bad = run(process.execPath, [bin(), "train", "--stepz", "3"]);
    assert.equal(bad.status, 1);
    assert.match(
      bad.stderr,
      /^attnres train: unknown option '--stepz' \(Did you mean --steps\?\); options: .*--preset.*\n$/,
    );
    const cmd = run(process.execPath, [bin(), "trian"]);
    assert.equal(cmd.status, 1);
    assert.match(
      cmd.stderr,
      /^attnres: unknown command 'trian' .*; commands: prepare, train, .*generate, plan, view\n$/,
    );
    const value = run(process.execPath, [bin(), "train", "--mode", "dense"]);
    assert.equal(value.status, 1);
    assert.match(
      value.stderr,
      /^attnres train: .*'dense' is invalid\. expected one of standard, .*ddl-expanded\n$/,
    );
  });

  test("help loads only commander and the command definitions, never the library", () => {
    const log = path.join(work, "modules.log");
    const hook = path.join(work, "log-modules.mjs");
    fs.writeFileSync(
      hook,
      [
        'import { appendFileSync } from "node:fs";',
        "export async function resolve(spec, ctx, next) {",
        "  const r = await next(spec, ctx);",
        "  appendFileSync(process.env.ATTNRES_MODULE_LOG, r.url + '\\n');",
        "  return r;",
        "}",
      ].join("\n"),
    );
    const register = path.join(work, "register.mjs");
    fs.writeFileSync(
      register,
      `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(hook).href)});\n`,
    );
    const commands = [
      "prepare",
      "train",
      "eval",
      "eval-mc",
      "analyze",
      "compare",
      "convert",
      "finetune",
      "generate",
    ];
    for (const args of [["--help"], ["--version"], ...commands.map((c) => [c, "--help"])]) {
      fs.rmSync(log, { force: true });
      const r = run(process.execPath, ["--import", pathToFileURL(register).href, bin(), ...args], {
        env: cleanEnv({ ATTNRES_MODULE_LOG: log }),
      });
      assert.equal(r.status, 0, r.stderr);
      const loaded = fs.readFileSync(log, "utf8").split("\n").filter(Boolean);
      assert.ok(
        loaded.some((u) => u.includes("/attnres/dist/cli/commands/")),
        loaded.join("\n"),
      );
      assert.deepEqual(
        loaded.filter((u) => u.startsWith("file:") && !helpModules.test(u)),
        [],
        `attnres ${args.join(" ")} loads more than the command definitions`,
      );
    }
  });

  test("an unsupported Node.js gets one line naming the supported versions", () => {
    for (const version of ["18.20.4", "22.11.0"]) {
      const spoof = `data:text/javascript,Object.defineProperty(process.versions,"node",{value:"${version}"})`;
      const expected = `attnres: Node.js ${version} is not supported; attnres needs Node.js ${SUPPORTED_NODE}\n`;
      const cli = run(process.execPath, ["--import", spoof, bin(), "--help"]);
      assert.equal(cli.status, 1);
      assert.equal(cli.stderr, expected);
      const lib = run(
        process.execPath,
        ["--import", spoof, "--input-type=module", "-e", 'await import("attnres")'],
        {
          cwd: project,
        },
      );
      assert.equal(lib.status, 1);
      assert.equal(lib.stderr, expected);
    }
  });

  test("engines.node is the supported range, and every installed dependency accepts all of it", () => {
    assert.equal(pkg.engines.node, SUPPORTED_NODE);
    assert.ok(semver.satisfies(process.versions.node, SUPPORTED_NODE));
    const modules = path.join(project, "node_modules");
    const manifests: string[] = [];
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        if (!e.isDirectory() || e.name.startsWith(".")) continue;
        const d = path.join(dir, e.name);
        if (e.name.startsWith("@")) walk(d);
        else {
          if (fs.existsSync(path.join(d, "package.json"))) manifests.push(path.join(d, "package.json"));
          if (fs.existsSync(path.join(d, "node_modules"))) walk(path.join(d, "node_modules"));
        }
      }
    };
    walk(modules);
    assert.ok(manifests.length > 100, `${manifests.length} packages installed`);
    const disagree = manifests.flatMap((m) => {
      const j = JSON.parse(fs.readFileSync(m, "utf8")) as { name: string; engines?: { node?: string } };
      const range = j.engines?.node;
      return range && !semver.subset(SUPPORTED_NODE, range) ? [`${j.name}: ${range}`] : [];
    });
    assert.deepEqual(disagree, []);
  });
});
