/**
 * Docs that are tests: every fenced shell block (```bash, ```sh, ```shell) of README.md and
 * docs/*.md — whatever files are there when the test runs — is run as written, block by block in
 * the order of its file, in a fresh copy of the repository (the files git tracks plus new
 * untracked ones that .gitignore does not exclude, with node_modules, build/ and dist/ linked in:
 * what a clone holds after `npm ci`), with ATTNRES_DOCTEST=1 so that training is tiny
 * (src/train/doctest-scale.ts). Each file gets its own copy, so a file's commands may only rely on
 * what its own earlier blocks made.
 *
 * A block that needs what a clone cannot have (a model download, apt, hours) is marked with an
 * HTML comment on the last non-blank line before its fence:
 *
 *     <!-- doctest: syntax-only (why) -->
 *
 * and is only checked: `bash -n`, and for every `npx attnres <cmd> …` (or `node bin/attnres.mjs`)
 * in it, that <cmd> exists and each flag appears in `attnres <cmd> --help`; every `npm run X`
 * names a script of package.json; every `bash <file>` names a file of the repository. Run blocks
 * get the same checks first. Other rules: no bare `attnres` (it is not on PATH in a clone);
 * commands do not hide in unmarked or ```text blocks; a doctest comment must be one of the
 * above.
 *
 * Speed: `npx attnres` in a clone runs the package's own bin; spawning npm for each of ~40
 * commands costs about a second of CPU each, so the copies get an `npx` on PATH that runs that
 * same bin directly (package.json "bin".attnres) and defers to the real npx for anything else.
 * One test runs the real `npx attnres --help` in a copy to show that the shortcut changes nothing.
 *
 * Also here: short flags mean one thing across subcommands, and the commands that read a
 * checkpoint / write an output folder call the flags --checkpoint / --out (the older
 * --from / --to still work); and the parameter-count formulas of docs/methods.md.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import type { DecoderLMConfig } from "../src/model/config.js";
import { countParameters } from "../src/model/decoder.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const BIN = path.join(ROOT, "bin", "attnres.mjs");
const SHELL_LANGS = new Set(["bash", "sh", "shell"]);
const MARK = /^<!--\s*doctest:\s*(.*?)\s*-->$/;

interface Block {
  file: string;
  line: number;
  lang: string;
  body: string;
  syntaxOnly: boolean;
}

/** README.md and every docs/*.md, as they are now. */
function docFiles(): string[] {
  const docs = fs
    .readdirSync(path.join(ROOT, "docs"))
    .filter((f) => f.endsWith(".md"))
    .sort()
    .map((f) => path.join("docs", f));
  return ["README.md", ...docs];
}

/** The fenced blocks of a markdown file (``` or ~~~ fences, any indentation of the opener). */
export function fencedBlocks(md: string, file: string): Block[] {
  const lines = md.split("\n");
  const out: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([\w+-]*)/.exec(lines[i]!);
    if (!open) continue;
    const fence = open[2]!;
    const body: string[] = [];
    let j = i + 1;
    while (j < lines.length && !lines[j]!.trim().startsWith(fence)) body.push(lines[j++]!);
    let k = i - 1;
    while (k >= 0 && lines[k]!.trim() === "") k--;
    const mark = k >= 0 ? MARK.exec(lines[k]!.trim()) : null;
    if (mark && !/^syntax-only\b/.test(mark[1]!))
      throw new Error(`${file}:${k + 1}: unknown doctest comment "${mark[1]}" (only "syntax-only (why)")`);
    out.push({ file, line: i + 1, lang: open[3]!.toLowerCase(), body: body.join("\n"), syntaxOnly: !!mark });
    i = j;
  }
  return out;
}

/** Shell words of one line (quotes and backslash escapes resolved, `#` comments dropped). */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let cur = "";
  let has = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      cur += line.slice(i + 1, end < 0 ? line.length : end);
      has = true;
      i = end < 0 ? line.length : end;
    } else if (c === '"') {
      let j = i + 1;
      while (j < line.length && line[j] !== '"') {
        if (line[j] === "\\" && j + 1 < line.length) j++;
        cur += line[j++];
      }
      has = true;
      i = j;
    } else if (c === "\\" && i + 1 < line.length) {
      cur += line[++i];
      has = true;
    } else if (/\s/.test(c)) {
      if (has) words.push(cur);
      cur = "";
      has = false;
    } else if (c === "#" && !has) break;
    else if ("|&;".includes(c)) {
      if (has) words.push(cur);
      let op = c;
      while (i + 1 < line.length && "|&;".includes(line[i + 1]!)) op += line[++i];
      words.push(op);
      cur = "";
      has = false;
    } else {
      cur += c;
      has = true;
    }
  }
  if (has) words.push(cur);
  return words;
}

/** The simple commands of a block: continuation lines joined, split at | && || ;. */
export function simpleCommands(body: string): string[][] {
  const logical = body.replace(/\\\n/g, " ").split("\n");
  const cmds: string[][] = [];
  for (const l of logical) {
    let cur: string[] = [];
    for (const w of shellWords(l)) {
      if (/^[|&;]+$/.test(w)) {
        if (cur.length) cmds.push(cur);
        cur = [];
      } else cur.push(w);
    }
    if (cur.length) cmds.push(cur);
  }
  return cmds.map((c) => {
    let i = 0;
    while (i < c.length && /^[A-Za-z_][A-Za-z0-9_]*=/.test(c[i]!)) i++; // VAR=value prefixes
    return c.slice(i);
  });
}

const helpCache = new Map<string, string>();
/** `attnres [cmd] --help` as a user sees it. */
function help(cmd: string | null): string {
  const key = cmd ?? "";
  if (!helpCache.has(key)) {
    const r = spawnSync(process.execPath, [BIN, ...(cmd ? [cmd] : []), "--help"], {
      encoding: "utf8",
      input: "",
      env: { ...process.env, COLUMNS: "400" },
    });
    helpCache.set(key, r.status === 0 ? r.stdout : "");
  }
  return helpCache.get(key)!;
}

function subcommands(): string[] {
  const top = help(null);
  const at = top.indexOf("Commands:");
  assert.ok(at >= 0, "attnres --help lists its commands");
  return [...top.slice(at).matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1]!).filter((c) => c !== "help");
}

const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")) as {
  scripts: Record<string, string>;
  bin: Record<string, string>;
};

/** Problems of one block's commands (empty when it is fine); the checks of the file header. */
function checkCommands(b: Block): string[] {
  const where = `${b.file}:${b.line}`;
  const problems: string[] = [];
  const syntax = spawnSync("bash", ["-n"], { input: b.body, encoding: "utf8" });
  if (syntax.status !== 0) problems.push(`${where}: bash -n: ${syntax.stderr.trim()}`);
  for (const words of simpleCommands(b.body)) {
    const [w0, w1, w2] = words;
    let args: string[] | null = null;
    if (w0 === "attnres")
      problems.push(`${where}: bare \`attnres\` is not on PATH in a clone; use npx attnres`);
    if (w0 === "npx" && w1 === "attnres") args = words.slice(2);
    if (w0 === "node" && w1 === "bin/attnres.mjs") args = words.slice(2);
    if (args) {
      const sub = args[0] && !args[0].startsWith("-") ? args[0] : null;
      if (sub && !subcommands().includes(sub)) {
        problems.push(`${where}: attnres has no subcommand "${sub}"`);
        continue;
      }
      const text = help(sub);
      for (const a of args.slice(sub ? 1 : 0)) {
        if (a === "--") break;
        if (!a.startsWith("-") || /^-\d/.test(a)) continue;
        const flag = a.split("=")[0]!;
        if (flag === "-h" || flag === "--help") continue;
        const re = new RegExp(`(^|[\\s,])${flag.replace(/[-]/g, "\\-")}([\\s,=]|$)`, "m");
        if (!re.test(text)) problems.push(`${where}: attnres ${sub ?? ""} has no flag ${flag}`);
      }
    }
    if (w0 === "npm") {
      const script = w1 === "run" || w1 === "run-script" ? w2 : w1 === "start" || w1 === "test" ? w1 : null;
      if (script && !pkg.scripts[script]) problems.push(`${where}: package.json has no script "${script}"`);
    }
    if ((w0 === "bash" || w0 === "sh") && w1 && !w1.startsWith("-") && !fs.existsSync(path.join(ROOT, w1)))
      problems.push(`${where}: ${w1} is not in the repository`);
  }
  return problems;
}

// A block fenced ```output is a program's printed output (the bench's start-up table names the
// commands it timed); it is not checked for commands.
const COMMANDISH =
  /^\s*(?:\$\s+)?(?:npx\s+attnres|node\s+bin\/attnres\.mjs|attnres)\s+([a-z][a-z-]*)(?:\s+-|\s*$)/m;

/** A fresh copy of the repository, as a clone after npm ci has it. */
function freshCopy(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "attnres-doctest-"));
  const ls = spawnSync("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  assert.equal(ls.status, 0, `git ls-files: ${ls.stderr}`);
  for (const f of ls.stdout.split("\0").filter(Boolean)) {
    const src = path.join(ROOT, f);
    if (!fs.existsSync(src) || fs.statSync(src).isDirectory()) continue; // deleted, or a submodule
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.copyFileSync(src, path.join(dir, f));
  }
  for (const l of ["node_modules", "build", "dist"])
    if (fs.existsSync(path.join(ROOT, l))) fs.symlinkSync(path.join(ROOT, l), path.join(dir, l));
  // `npx attnres` → the package's own bin, directly (see the header); anything else → real npx.
  const shim = path.join(dir, ".doctest-bin");
  fs.mkdirSync(shim);
  const realNpx = spawnSync("bash", ["-c", "command -v npx"], { encoding: "utf8" }).stdout.trim();
  fs.writeFileSync(
    path.join(shim, "npx"),
    `#!/usr/bin/env bash\nif [ "$1" = attnres ]; then shift; exec node "${path.join(dir, pkg.bin.attnres!)}" "$@"; fi\nexec "${realNpx}" "$@"\n`,
    { mode: 0o755 },
  );
  return dir;
}

const copies: string[] = [];
after(() => {
  for (const d of copies) fs.rmSync(d, { recursive: true, force: true });
});

function run(dir: string, script: string, env: Record<string, string> = {}) {
  return spawnSync("bash", ["-eo", "pipefail", "-c", script], {
    cwd: dir,
    encoding: "utf8",
    input: "",
    timeout: 600_000,
    env: {
      ...process.env,
      ATTNRES_DOCTEST: "1",
      // The runs are tiny: OpenMP threads that spin between parallel regions only burn the CPU
      // other commands need (on a busy machine, by orders of magnitude).
      OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? "passive",
      PATH: `${path.join(dir, ".doctest-bin")}:${process.env.PATH}`,
      ...env,
    },
  });
}

const tail = (s: string | null, n = 2500) => ((s ?? "").length > n ? "…" + s!.slice(-n) : (s ?? ""));

/** Commands that install software: never run from a doc (see the check below). */
const INSTALLS = /\bsetup\.sh\b|\bnpm (ci|install|i)\b|\bapt(-get)? /;

const files = docFiles();
const all = files.flatMap((f) => fencedBlocks(fs.readFileSync(path.join(ROOT, f), "utf8"), f));

describe("the docs' commands: checks", () => {
  test("every command is in a ```bash/```sh block and checks: subcommands, flags, scripts, files", () => {
    const problems: string[] = [];
    for (const b of all) {
      if (SHELL_LANGS.has(b.lang)) {
        problems.push(...checkCommands(b));
        // The copies link the checkout's node_modules: a set-up or install run from a doc would
        // rebuild (and first delete) the very tree the tests run from.
        if (!b.syntaxOnly && INSTALLS.test(b.body))
          problems.push(`${b.file}:${b.line}: installs software; mark the block syntax-only`);
      } else if ((b.lang === "" || b.lang === "text" || b.lang === "console") && COMMANDISH.test(b.body))
        problems.push(
          `${b.file}:${b.line}: a command in a \`\`\`${b.lang} block; put commands in \`\`\`bash`,
        );
      else if (b.syntaxOnly) problems.push(`${b.file}:${b.line}: doctest comment before a non-shell block`);
    }
    assert.deepEqual(problems, []);
  });
});

for (const file of files) {
  const blocks = all.filter((b) => b.file === file && SHELL_LANGS.has(b.lang) && !b.syntaxOnly);
  if (blocks.length === 0) continue;
  describe(`runs as written: ${file}`, () => {
    let dir = "";
    for (const b of blocks)
      test(`line ${b.line}: ${b.body.split("\n")[0]!.slice(0, 80)}`, () => {
        assert.ok(!INSTALLS.test(b.body), `${file}:${b.line} installs software; mark it syntax-only`);
        if (!dir) copies.push((dir = freshCopy()));
        const r = run(dir, b.body);
        assert.equal(
          r.status,
          0,
          `${file}:${b.line} failed (exit ${r.status}${r.signal ? `, ${r.signal}` : ""}):\n${b.body}\n--- stdout\n${tail(r.stdout)}\n--- stderr\n${tail(r.stderr)}`,
        );
      });
  });
}

describe("npx in a clone", () => {
  test("the real npx attnres runs the clone's own command line", () => {
    const dir = freshCopy();
    copies.push(dir);
    const r = spawnSync("npx", ["--offline", "attnres", "--help"], { cwd: dir, encoding: "utf8", input: "" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Usage: attnres/);
  });
});

describe("the docs-test machinery", () => {
  test("blocks, markers and shell words are read as written", () => {
    const md = [
      "text",
      "<!-- doctest: syntax-only (a download) -->",
      "",
      "```bash",
      "npx attnres generate -c \"a b\" --prompt 'x # y' -n 3 # comment",
      "echo a | npx attnres eval --json && \\",
      "  npm run bench",
      "```",
      "```ts",
      "x",
      "```",
    ].join("\n");
    const [a, b] = fencedBlocks(md, "t.md");
    assert.equal(a!.syntaxOnly, true);
    assert.equal(a!.line, 4);
    assert.equal(b!.lang, "ts");
    assert.equal(b!.syntaxOnly, false);
    assert.deepEqual(simpleCommands(a!.body), [
      ["npx", "attnres", "generate", "-c", "a b", "--prompt", "x # y", "-n", "3"],
      ["echo", "a"],
      ["npx", "attnres", "eval", "--json"],
      ["npm", "run", "bench"],
    ]);
    assert.throws(() => fencedBlocks("<!-- doctest: skip -->\n```bash\nls\n```", "t.md"), /unknown doctest/);
  });

  test("the command checks catch a bare attnres, a wrong flag, a missing subcommand or script", () => {
    const b = (body: string): Block => ({ file: "t.md", line: 1, lang: "bash", body, syntaxOnly: true });
    assert.deepEqual(checkCommands(b("npx attnres train --preset sotu-tiny --steps 2")), []);
    assert.match(checkCommands(b("attnres train"))[0]!, /bare `attnres`/);
    assert.match(checkCommands(b("npx attnres train --stepz 2"))[0]!, /has no flag --stepz/);
    assert.match(checkCommands(b("npx attnres trian"))[0]!, /no subcommand "trian"/);
    assert.match(checkCommands(b("npm run nope"))[0]!, /no script "nope"/);
    assert.match(checkCommands(b("bash scripts/nope.sh"))[0]!, /not in the repository/);
    assert.match(checkCommands(b("npx attnres train --steps 'oops"))[0]!, /bash -n/);
  });
});

describe("flags", () => {
  test("a short flag means the same long flag in every subcommand", () => {
    const seen = new Map<string, string>();
    const clashes: string[] = [];
    for (const cmd of subcommands()) {
      for (const m of help(cmd).matchAll(/^\s+(-[a-zA-Z]), (--[a-z][a-z-]*)/gm)) {
        const [short, long] = [m[1]!, m[2]!];
        const prev = seen.get(short);
        if (prev && prev !== long) clashes.push(`${short} is ${prev} elsewhere but ${long} in ${cmd}`);
        seen.set(short, long);
      }
    }
    assert.deepEqual(clashes, []);
    assert.equal(seen.get("-c"), "--checkpoint");
    assert.equal(seen.get("-o"), "--out");
    assert.equal(seen.get("-d"), "--data");
  });

  test("--checkpoint for the checkpoint a command reads, --out for what it writes", () => {
    for (const cmd of ["eval", "eval-mc", "analyze", "generate", "convert", "finetune"])
      assert.match(help(cmd), /-c, --checkpoint <dir>/, `${cmd} reads --checkpoint`);
    for (const cmd of ["prepare", "train", "compare", "analyze", "convert", "finetune", "eval-mc"])
      assert.match(help(cmd), /-o, --out </, `${cmd} writes --out`);
  });

  test("--from/--to still work; both names at once must agree; one missing is one line", () => {
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", input: "", cwd: os.tmpdir() });
    const nope = path.join(os.tmpdir(), "attnres-no-such-checkpoint");
    const alias = cli("convert", "--from", nope, "--to", `${nope}-out`, "--mode", "delta");
    assert.equal(alias.status, 1);
    assert.match(alias.stderr, /attnres-no-such-checkpoint/, "the alias reached the command");
    const both = cli("convert", "-c", nope, "--from", `${nope}2`, "-o", "x", "--mode", "delta");
    assert.equal(
      both.stderr.trim(),
      `attnres: --checkpoint ${nope} and its alias --from ${nope}2 disagree; give one of them`,
    );
    const none = cli("finetune", "--data", "d");
    assert.equal(none.status, 1);
    assert.equal(none.stderr.trim(), "attnres: required option '--checkpoint' not specified");
  });
});

describe("docs/methods.md parameter counts", () => {
  // The sotu-tiny backbone (V = 256 bytes), and a Llama without q/k norms, tied.
  const qwen: DecoderLMConfig = {
    model_type: "qwen3",
    vocab_size: 256,
    hidden_size: 128,
    intermediate_size: 384,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
  };
  test("the backbone formula", () => {
    const [V, d, f, L, H, Hkv, D] = [256, 128, 384, 4, 4, 2, 32];
    const layer = d * H * D + 2 * d * Hkv * D + H * D * d + 3 * d * f + 2 * d;
    assert.equal(countParameters(qwen), V * d + L * (layer + 2 * D) + d + V * d);
    const llama: DecoderLMConfig = { ...qwen, model_type: "llama", tie_word_embeddings: true };
    assert.equal(countParameters(llama), V * d + L * layer + d);
  });
  test("what each mode adds", () => {
    const [d, L, m] = [128, 4, 4];
    const base = countParameters(qwen);
    const added = (extra: Partial<DecoderLMConfig>) => countParameters({ ...qwen, ...extra }) - base;
    assert.equal(added({ attnres_mode: "full" }), 4 * d * L + 2 * d);
    assert.equal(added({ attnres_mode: "block", attnres_num_blocks: 2 }), 4 * d * L + 2 * d);
    assert.equal(added({ attnres_mode: "delta" }), 4 * d * L);
    assert.equal(added({ attnres_mode: "delta_block", attnres_num_blocks: 2 }), 4 * d * L);
    assert.equal(
      added({ attnres_mode: "delta", attnres_use_null_source: true, attnres_gate_type: "learnable_alpha" }),
      4 * d * L + 2 * d * L + 2 * L,
    );
    assert.equal(added({ attnres_mode: "full", attnres_sources: "states" }), 4 * d * L + 2 * d + 2 * L + 1);
    assert.equal(added({ attnres_mode: "delta", attnres_sources: "states" }), 4 * d * L + 2 * L);
    assert.equal(added({ attnres_mode: "ddl" }), 2 * L * (2 * d + 2));
    assert.equal(added({ attnres_mode: "ddl_expanded" }), 2 * L * (d + 1 + m * d + m * d) + m * d);
  });
});
