/**
 * The library states problems in its own terms, with fields; the CLI words them in flags.
 *   - runFolderError (src/train/run.ts): a plain Error with reason, path, problem, step — each reason maps to the
 *     one-line advice `attnres train` / `finetune` print (src/cli/errors.ts)
 *   - TrainingDiverged (src/train/trainer.ts): step and loss; its message names training settings
 *     (train.lr, …), the CLI's names the flags (--lr, …)
 *   - optionError (src/io/errors.ts): a plain Error about the caller's options, naming them by
 *     their library names (`blocks 9`, `pass allowBinary: true`); the CLI says the same sentence
 *     with its flags (`--blocks 9`, `pass --allow-binary`), in-process and at the command line
 *   - no thrown message outside src/cli/ names a flag (`--something`): a scan of src/
 *   - fine-tune defaults live in the library (src/workflows/finetune.ts FINETUNE_DEFAULTS) and the
 *     help of `attnres finetune` states the same numbers
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import ts from "typescript";
import { cliError, flagName } from "../src/cli/errors.js";
import { loadCorpus } from "../src/data/corpus.js";
import { resolveTokenizer } from "../src/data/prepare.js";
import { isOptionError, libraryName, optionError } from "../src/io/errors.js";
import { readSafetensors, writeSafetensors } from "../src/io/safetensors.js";
import { parseConfig } from "../src/model/config.js";
import { planRow } from "../src/plan/estimate.js";
import { checkTorchOptions, type TorchProbe } from "../src/train/torch-engine.js";
import { convertCheckpoint, convertedConfig } from "../src/workflows/convert.js";
import { isRunFolderError, runFolderError } from "../src/train/run.js";
import { TrainingDiverged } from "../src/train/trainer.js";
import { checkFinetuneCheckpoint, FINETUNE_DEFAULTS } from "../src/workflows/finetune.js";

const root = path.resolve(import.meta.dirname, "..");

test("a run folder problem is a RunFolderError with its reason; the CLI adds the flags", () => {
  const dir = "/runs/a";
  const noRun = runFolderError(
    "no-run",
    dir,
    `${dir} holds no run to resume (no run.json or checkpoint)`,
    "x",
  );
  assert.equal(
    (cliError(noRun) as Error).message,
    `${dir} holds no run to resume (no run.json or checkpoint); drop --resume to start one`,
  );
  const exists = runFolderError("exists", dir, `${dir} already holds a run (step 3)`, "x", 3);
  assert.equal(
    (cliError(exists) as Error).message,
    `${dir} already holds a run (step 3); pass --resume to continue it, --overwrite to start over, or choose another --out`,
  );
  assert.equal((cliError(exists) as Error).cause, exists);
  for (const [reason, advice] of [
    ["different-settings", "choose another --out"],
    ["damaged-spec", "start over with --overwrite"],
    ["damaged-state", "resume from another copy or start over with --overwrite"],
  ] as const)
    assert.equal((cliError(runFolderError(reason, dir, "P", "x")) as Error).message, `P; ${advice}`);
  const other = new Error("something else");
  assert.equal(cliError(other), other, "other errors pass through");
});

test("the library's run-folder messages name options, the CLI's name flags", () => {
  const e = runFolderError(
    "different-settings",
    "/r",
    "/r holds a run with different settings",
    "choose another folder",
  );
  assert.equal(e.message, "/r holds a run with different settings; choose another folder");
  assert.equal(e.constructor, Error, "a plain Error, as every error attnres means to throw");
  assert.ok(isRunFolderError(e) && e.reason === "different-settings");
  assert.ok(!isRunFolderError(new Error("x")));
  assert.doesNotMatch(e.message, /--/);
});

test("TrainingDiverged carries step and loss; the CLI's message names the flags", () => {
  const e = new TrainingDiverged(7, Number.NaN);
  assert.equal(e.step, 7);
  assert.ok(Number.isNaN(e.loss));
  assert.match(e.message, /diverged at step 7: the loss is NaN/);
  assert.match(e.message, /lower learning rate \(train\.lr\)/);
  assert.doesNotMatch(e.message, /--/);
  assert.equal(
    (cliError(e) as Error).message,
    "training diverged at step 7: the loss is NaN. The weights were not updated with it. " +
      "Try a lower learning rate (--lr), a longer warmup (--warmup), or gradient clipping (--clip 1.0).",
  );
});

test("fine-tune defaults: the library holds them, the help states them", () => {
  assert.throws(
    () => checkFinetuneCheckpoint(path.join(root, "no-such-checkpoint")),
    /^Error: checkpoint folder .*no-such-checkpoint does not exist$/,
  );
  const help = spawnSync(
    process.execPath,
    ["--import", "tsx", path.join(root, "src", "cli", "main.ts"), "finetune", "--help"],
    {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, COLUMNS: "200" },
    },
  );
  assert.equal(help.status, 0, help.stderr);
  const text = help.stdout.replace(/\s+/g, " ");
  const D = FINETUNE_DEFAULTS;
  const number = (re: RegExp): number => {
    const m = re.exec(text);
    assert.ok(m, `finetune --help lacks ${String(re)}`);
    return Number(m[1]);
  };
  assert.equal(number(/optimizer steps \(default ([^)]+)\)/), D.steps);
  assert.equal(number(/sequences per micro-batch \(default ([^)]+)\)/), D.batch_size);
  assert.equal(number(/\(default min\((\d+), max_position_embeddings\)\)/), D.max_seq_len);
  assert.equal(number(/peak learning rate of the backbone \(default ([^)]+)\)/), D.lr);
  assert.equal(number(/--routing-lr <x> [^(]*\(default ([^)]+)\)/), D.routing_lr);
});

/** The error `f` throws (the test fails when it returns). */
function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  assert.fail("expected an error");
}

/** Library message and CLI message of the error `f` throws; both are checked to be plain Errors. */
function both(f: () => unknown): [library: string, cli: string] {
  const e = thrown(f);
  assert.equal(e.constructor, Error, "a plain Error");
  assert.ok(isOptionError(e), `not an option error: ${e.message}`);
  const c = cliError(e) as Error;
  assert.equal(c.cause, e);
  assert.doesNotMatch(e.message, /--/, "the library's words name no flag");
  return [e.message, c.message];
}

test("optionError: the message names options by library name; the CLI's namer gives the flags", () => {
  const e = optionError(
    (n) =>
      `${n("vocabSize", 300)} only applies to ${n("tokenizer", "bpe")}; ${n("allowBinary", true)}, ${n("verify", false)}, ${n("blocks")}`,
  );
  assert.equal(
    e.message,
    "vocabSize 300 only applies to tokenizer bpe; allowBinary: true, verify: false, blocks",
  );
  assert.deepEqual(e.options, ["vocabSize", "tokenizer", "allowBinary", "verify", "blocks"]);
  assert.equal(e.say(libraryName), e.message);
  assert.equal(
    e.say(flagName),
    "--vocab-size 300 only applies to --tokenizer bpe; --allow-binary, --no-verify, --blocks",
  );
  assert.equal(flagName("storage", "f8"), "--dtype f8");
  assert.equal(flagName("dir"), "--out");
  assert.equal(flagName("nprocPerNode", 3), "--nproc-per-node 3");
  assert.ok(!isOptionError(new Error("x")));
});

test("the library's option errors, and the flags the CLI names in them", () => {
  const c = parseConfig({
    vocab_size: 16,
    hidden_size: 8,
    intermediate_size: 16,
    num_attention_heads: 2,
    num_hidden_layers: 2,
  });
  const cases: [() => unknown, string, string][] = [
    [
      () => convertedConfig(c, { mode: "attnres-full", gate: true }),
      "nullSource and gate are options of delta and delta-block, not of attnres-full",
      "--null-source and --gate are options of delta and delta-block, not of attnres-full",
    ],
    [
      () => convertedConfig(c, { mode: "delta-block", blocks: 3 }),
      "blocks 3 is more than the 2 layers",
      "--blocks 3 is more than the 2 layers",
    ],
    [
      () => convertedConfig(c, { mode: "delta", blocks: 2 }),
      "blocks applies to the block modes, not to delta",
      "--blocks applies to the block modes, not to delta",
    ],
    [
      () => resolveTokenizer("byte", 300),
      "the byte tokenizer has 256 tokens; vocabSize 300 only applies to tokenizer bpe",
      "the byte tokenizer has 256 tokens; --vocab-size 300 only applies to --tokenizer bpe",
    ],
    [
      () => resolveTokenizer("bpe", 300.5),
      "vocabSize must be an integer, got 300.5",
      "--vocab-size must be an integer, got 300.5",
    ],
  ];
  const probe: TorchProbe = {
    python: "py",
    pythonVersion: "3.11.2",
    torch: "1.13.0",
    torchrun: false,
    fsdp: false,
    compile: false,
    cuda: 0,
    cpus: 2,
  };
  const torch = (o: Parameters<typeof checkTorchOptions>[0]) => () =>
    checkTorchOptions(o, probe, 8, () => {});
  cases.push(
    [
      torch({ nnodes: 2, nodeRank: 2 }),
      "nodeRank 2 must be below nnodes 2",
      "--node-rank 2 must be below --nnodes 2",
    ],
    [
      torch({ nnodes: 2 }),
      "nnodes > 1 needs masterAddr and masterPort (the address of node 0)",
      "--nnodes > 1 needs --master-addr and --master-port (the address of node 0)",
    ],
    [
      torch({ compile: true }),
      "compile needs torch >= 2.0 (torch.compile); py has torch 1.13.0",
      "--compile needs torch >= 2.0 (torch.compile); py has torch 1.13.0",
    ],
    [
      torch({ device: "cuda" }),
      "device cuda: torch 1.13.0 under py sees no CUDA device",
      "--device cuda: torch 1.13.0 under py sees no CUDA device",
    ],
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "attnres-liberr-"));
  try {
    const bin = path.join(dir, "bin.txt");
    fs.writeFileSync(bin, Buffer.from([104, 105, 0]));
    cases.push([
      () => loadCorpus(bin),
      `${bin} looks binary (a NUL byte at offset 2); pass allowBinary: true to use it anyway`,
      `${bin} looks binary (a NUL byte at offset 2); pass --allow-binary to use it anyway`,
    ]);
    const st = path.join(dir, "t.safetensors");
    writeSafetensors(st, new Map([["a", { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) }]]));
    const buf = fs.readFileSync(st);
    buf[buf.length - 1]! ^= 0x10;
    fs.writeFileSync(st, buf);
    const [lib, cli] = both(() => readSafetensors(st));
    assert.match(lib, /tensor a is corrupt: .* \(pass verify: false to load it anyway\)$/);
    assert.match(cli, /tensor a is corrupt: .* \(pass --no-verify to load it anyway\)$/);
    const full = path.join(dir, "full");
    fs.mkdirSync(full);
    fs.writeFileSync(path.join(full, "x"), "");
    cases.push(
      [
        () => convertCheckpoint({ from: dir, to: full, mode: "delta" }),
        `${full} already exists and is not empty; choose another output folder (to)`,
        `${full} already exists and is not empty; choose another output folder (--to)`,
      ],
      [
        () =>
          convertCheckpoint({ from: dir, to: path.join(dir, "new"), mode: "delta", storage: "f8" as "f32" }),
        "storage f8 is not one of auto, f32, bf16, f16",
        "--dtype f8 is not one of auto, f32, bf16, f16",
      ],
    );
    cases.push([
      () => planRow(c, { batch: 1, seq: 8, worldSize: 2, engine: "ts", sharding: "ddp", dtype: "float32" }),
      "plan: the TypeScript engine trains on one process in float32 (use engine torch for sharding, several devices or bfloat16)",
      "plan: the TypeScript engine trains on one process in float32 (use --engine torch for sharding, several devices or bfloat16)",
    ]);
    for (const [f, library, cli] of cases) assert.deepEqual(both(f), [library, cli]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the command line names the flags in the library's option errors", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "attnres-liberr-cli-"));
  try {
    const full = path.join(dir, "full");
    fs.mkdirSync(full);
    fs.writeFileSync(path.join(full, "x"), "");
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [path.join(root, "scripts", "attnres-dev.mjs"), ...args], {
        cwd: dir,
        encoding: "utf8",
      });
    const prep = cli("prepare", "--tokenizer", "byte", "--vocab-size", "300", "--out", "p");
    assert.equal(prep.status, 1);
    assert.equal(
      prep.stderr,
      "attnres: the byte tokenizer has 256 tokens; --vocab-size 300 only applies to --tokenizer bpe\n",
    );
    const conv = cli("convert", "--from", "nowhere", "--to", full, "--mode", "delta");
    assert.equal(conv.status, 1);
    assert.equal(
      conv.stderr,
      `attnres: ${full} already exists and is not empty; choose another output folder (--to)\n`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * Every string (literal or template part) inside a `throw` statement or an argument of a call or
 * `new` whose callee ends in "Error" (Error, optionError, runFolderError, …), in src/ outside cli/.
 */
function thrownTexts(): { file: string; line: number; text: string }[] {
  const src = path.join(root, "src");
  const files = (fs.readdirSync(src, { recursive: true }) as string[])
    .filter((f) => /\.ts$/.test(f) && !f.startsWith(`cli${path.sep}`))
    .map((f) => path.join(src, f));
  const out: { file: string; line: number; text: string }[] = [];
  for (const file of files) {
    const sf = ts.createSourceFile(file, fs.readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true);
    const strings = (n: ts.Node): void => {
      if (
        ts.isStringLiteral(n) ||
        ts.isNoSubstitutionTemplateLiteral(n) ||
        ts.isTemplateHead(n) ||
        ts.isTemplateMiddle(n) ||
        ts.isTemplateTail(n)
      )
        out.push({
          file: path.relative(root, file),
          line: sf.getLineAndCharacterOfPosition(n.getStart()).line + 1,
          text: n.text,
        });
      ts.forEachChild(n, strings);
    };
    const calleeName = (e: ts.Expression): string =>
      ts.isIdentifier(e) ? e.text : ts.isPropertyAccessExpression(e) ? e.name.text : "";
    const visit = (n: ts.Node): void => {
      if (ts.isThrowStatement(n)) return strings(n);
      if ((ts.isNewExpression(n) || ts.isCallExpression(n)) && /error$/i.test(calleeName(n.expression)))
        return strings(n);
      ts.forEachChild(n, visit);
    };
    visit(sf);
  }
  return out;
}

test("no error thrown outside src/cli/ names a command-line flag", () => {
  const texts = thrownTexts();
  assert.ok(texts.length > 300, `found only ${texts.length} strings in thrown errors: the scan missed them`);
  assert.ok(
    texts.some((t) => t.text.includes("is not one of")),
    "the scan sees optionError's templates",
  );
  const flags = texts
    .filter((t) => /(^|[\s("'`])--[a-z]/.test(t.text))
    .map((t) => `${t.file}:${t.line}: ${t.text}`);
  assert.deepEqual(
    flags,
    [],
    `library errors naming flags (say them with optionError):\n  ${flags.join("\n  ")}`,
  );
});
