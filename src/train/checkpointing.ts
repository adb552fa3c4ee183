/**
 * The save protocol of a run folder: checkpoints that survive a crash (kill -9, power loss) at any
 * instant, and an append-only metrics log whose torn tail is cut on recovery.
 *
 * Saving checkpoint folder NAME (`checkpoint`, or `best` for --keep-best) in run folder <run>:
 *   1. write every file into <run>/NAME.tmp/ and fsync each;
 *   2. write <run>/NAME.tmp/manifest.json LAST:
 *        {"step": n, "files": {"<file>": {"bytes": n, "crc32": "<8 hex digits>"}, ...}}
 *      listing every other file of the folder; fsync it and the folder;
 *   3. if <run>/NAME exists, rename it to <run>/NAME.old; rename NAME.tmp → NAME; fsync <run>/;
 *   4. remove NAME.old.
 * A folder is complete when its manifest parses and every file it lists has the listed size and
 * CRC-32 (sizes only with `verify: false`). Recovery (`recoverCheckpoint`) takes, among NAME,
 * NAME.old and NAME.tmp, the complete one with the highest step (ties: NAME, then NAME.tmp, then
 * NAME.old), removes the others and renames it to NAME (fsync <run>/) BEFORE anything is saved
 * again: so the next save's step 1 never deletes the only complete copy. A crash at any step of
 * any save, including the first save after a recovery, therefore leaves at least the previous
 * complete checkpoint. A `checkpoint` folder without manifest.json but with trainer_state.json was
 * written by an older attnres (which renamed the folder into place only when it was complete): it
 * is accepted with a notice when no candidate has a manifest.
 *
 * metrics.jsonl is append-only (one JSON record per line). `MetricsLog.recover(step)` keeps the
 * records up to the checkpoint's step and truncates the file after them: a torn last line (a crash
 * or a full disk mid-write) is cut with a notice; a damaged line that is not the last is an error
 * naming the file and line. `sync()` fsyncs the log; the run calls it before each checkpoint, so a
 * checkpoint never claims steps whose records could be lost.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileCrc32, fsyncPath, removeTempFiles, writeAll, writeFileDurable } from "../io/atomic.js";
import { csvLine, METRICS_COLUMNS } from "./metrics.js";

export const MANIFEST = "manifest.json";
/** Files a run folder holds directly (their leftover temporary copies are removed on recovery). */
export const RUN_FILES = ["run.json", "metrics.jsonl", "metrics.csv"] as const;

export interface Manifest {
  step: number;
  files: Record<string, { bytes: number; crc32: string }>;
}

/** Files of a folder, sorted (the manifest lists them all). */
function filesOf(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && e.name !== MANIFEST)
    .map((e) => e.name)
    .sort();
}

/**
 * Saves checkpoint folder `name` of run folder `runDir` by the protocol above: `write(tmp)` puts
 * the files into the temporary folder; the rest (fsyncs, manifest, renames, clean-up) is done here.
 * If writing fails (a full disk), the temporary folder is removed and the error rethrown.
 */
export function saveCheckpointFolder(
  runDir: string,
  name: string,
  step: number,
  write: (tmp: string) => void,
): void {
  const cur = path.join(runDir, name);
  const tmp = `${cur}.tmp`;
  const old = `${cur}.old`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    fs.mkdirSync(tmp, { recursive: true });
    write(tmp);
    const files: Manifest["files"] = {};
    for (const f of filesOf(tmp)) {
      const p = path.join(tmp, f);
      fsyncPath(p);
      files[f] = fileCrc32(p);
    }
    const manifest: Manifest = { step, files };
    writeFileDurable(path.join(tmp, MANIFEST), JSON.stringify(manifest, null, 2) + "\n");
    fsyncPath(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  fs.rmSync(old, { recursive: true, force: true }); // only a leftover; recovery removed any real one
  if (fs.existsSync(cur)) fs.renameSync(cur, old);
  fs.renameSync(tmp, cur);
  fsyncPath(runDir);
  fs.rmSync(old, { recursive: true, force: true });
}

/** A candidate folder's manifest when the folder is complete, else a reason it is not. */
export function checkFolder(dir: string, verify = true): { manifest: Manifest } | { problem: string } {
  const mf = path.join(dir, MANIFEST);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(mf, "utf8"));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return { problem: code === "ENOENT" ? "no manifest.json" : `manifest.json is damaged` };
  }
  const m = raw as Partial<Manifest> | null;
  if (
    !m ||
    typeof m !== "object" ||
    !Number.isSafeInteger(m.step) ||
    m.step! < 0 ||
    !m.files ||
    typeof m.files !== "object"
  )
    return { problem: "manifest.json is damaged" };
  for (const [f, want] of Object.entries(m.files)) {
    const p = path.join(dir, f);
    if (f.includes("/") || f.includes("\\") || f.startsWith("."))
      return { problem: `manifest.json names ${f}` };
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch {
      return { problem: `${f} is missing` };
    }
    if (!want || st.size !== want.bytes) return { problem: `${f} has ${st.size} bytes, not ${want?.bytes}` };
    if (verify && fileCrc32(p).crc32 !== want.crc32) return { problem: `${f} does not match its checksum` };
  }
  return { manifest: m as Manifest };
}

export interface Recovered {
  /** The checkpoint folder to load (<run>/NAME after `recoverCheckpoint`). */
  dir: string;
  /** Its step (from the manifest; from trainer_state.json for an older attnres's folder). */
  step: number;
  /** What recovery found and did, one line each (for the log). */
  notes: string[];
}

const SUFFIXES = ["", ".tmp", ".old"] as const;

/**
 * The complete checkpoint folder `name` of `runDir` with the highest step, without changing
 * anything, or null. `notes` say which candidates are incomplete and why.
 */
export function findCheckpoint(runDir: string, name = "checkpoint", verify = true): Recovered | null {
  const notes: string[] = [];
  let best: Recovered | null = null;
  for (const suf of SUFFIXES) {
    const dir = path.join(runDir, name + suf);
    if (!fs.existsSync(dir)) continue;
    const r = checkFolder(dir, verify);
    if ("problem" in r) {
      notes.push(`${name + suf} is incomplete (${r.problem})`);
      continue;
    }
    if (!best || r.manifest.step > best.step) best = { dir, step: r.manifest.step, notes };
  }
  if (!best) {
    const legacy = path.join(runDir, name);
    const st = path.join(legacy, "trainer_state.json");
    if (fs.existsSync(st) && !fs.existsSync(path.join(legacy, MANIFEST))) {
      let step = -1;
      try {
        step = (JSON.parse(fs.readFileSync(st, "utf8")) as { step?: unknown }).step as number;
      } catch {
        /* damaged: reported when the state is read */
      }
      notes.push(`${name} has no manifest (written by an older attnres); using it unverified`);
      return { dir: legacy, step: Number.isSafeInteger(step) ? step : 0, notes };
    }
  }
  return best ? { ...best, notes } : null;
}

/**
 * Recovery before a run continues: picks the newest complete checkpoint (`findCheckpoint`),
 * removes every other candidate and leftover temporary file, and renames it to <run>/NAME, fsyncing
 * <run>/. Safe to interrupt at any point (it only ever deletes folders that are not the chosen
 * one, and moves the chosen one with one rename). `checkpoint` is null when there is none.
 */
export function recoverCheckpoint(
  runDir: string,
  name = "checkpoint",
  verify = true,
): { checkpoint: Omit<Recovered, "notes"> | null; notes: string[] } {
  const found = findCheckpoint(runDir, name, verify);
  const notes = found ? [...found.notes] : [];
  const cur = path.join(runDir, name);
  // <run>/NAME is only ever a complete folder renamed into place (step 3 above): damaged with no
  // complete copy left, the disk changed it after the save. Never delete the only copy of a run's
  // progress and start over silently.
  if (!found && fs.existsSync(path.join(cur, MANIFEST))) {
    const r = checkFolder(cur, verify);
    if ("problem" in r)
      throw new Error(
        `${cur} is damaged (${r.problem}) and no complete copy of it is left: restore it from a backup, or move it away to start ${name === "checkpoint" ? "the run over from step 0" : "it over"}`,
      );
  }
  let changed = false;
  for (const suf of SUFFIXES) {
    const dir = path.join(runDir, name + suf);
    if (dir === found?.dir || !fs.existsSync(dir)) continue;
    fs.rmSync(dir, { recursive: true, force: true });
    notes.push(`removed ${name + suf}`);
    changed = true;
  }
  if (found && found.dir !== cur) {
    fs.renameSync(found.dir, cur);
    notes.push(`recovered ${path.basename(found.dir)} (step ${found.step}) as ${name}`);
    changed = true;
  }
  for (const f of removeTempFiles(runDir, RUN_FILES)) notes.push(`removed the leftover ${f}`);
  if (changed) fsyncPath(runDir);
  return { checkpoint: found ? { dir: cur, step: found.step } : null, notes };
}

/** One metrics record: a JSON object with at least `step`. */
export type MetricsRecord = Record<string, unknown> & { step: number };

/**
 * The append-only metrics log of a run (metrics.jsonl), and metrics.csv beside it: the same records
 * as CSV (src/train/metrics.ts), derived from the JSONL — rebuilt from the kept records whenever
 * the log is recovered, so a torn or stale CSV never outlives a resume.
 */
export class MetricsLog {
  private fd: number | null = null;
  readonly csv: string;
  constructor(readonly file: string) {
    this.csv = file.replace(/\.jsonl$/, "") + ".csv";
  }

  /** Starts an empty log (a new run). */
  reset(): void {
    this.close();
    writeFileDurable(this.file, "");
    fs.writeFileSync(this.csv, METRICS_COLUMNS.join(",") + "\n");
  }

  /** Rewrites metrics.csv from the records of metrics.jsonl. */
  private rebuildCsv(): void {
    const lines = fs.readFileSync(this.file, "utf8").split("\n").filter(Boolean);
    fs.writeFileSync(
      this.csv,
      METRICS_COLUMNS.join(",") +
        "\n" +
        lines.map((l) => csvLine(JSON.parse(l) as Record<string, unknown>)).join(""),
    );
  }

  /**
   * Keeps the records with step ≤ `step` (a resumed run's checkpoint step) and truncates the file
   * after them. Returns the notices to log (a torn tail that was cut). A damaged line before the
   * last one is an error naming the file and line.
   */
  recover(step: number): string[] {
    this.close();
    if (!fs.existsSync(this.file)) {
      writeFileDurable(this.file, "");
      return [];
    }
    const buf = fs.readFileSync(this.file);
    const notes: string[] = [];
    let keep = 0;
    let at = 0;
    let line = 0;
    while (at < buf.length) {
      const nl = buf.indexOf(10, at);
      const end = nl < 0 ? buf.length : nl;
      line++;
      let rec: MetricsRecord | null = null;
      try {
        const r = JSON.parse(buf.subarray(at, end).toString("utf8")) as unknown;
        if (r && typeof r === "object" && typeof (r as MetricsRecord).step === "number")
          rec = r as MetricsRecord;
      } catch {
        rec = null;
      }
      const last = nl < 0 || nl === buf.length - 1;
      if (!rec || nl < 0) {
        if (!last)
          throw new Error(
            `${this.file}: line ${line} is damaged; delete the run folder or fix the line to resume`,
          );
        notes.push(
          `${path.basename(this.file)}: cut a torn last line (${end - at} bytes) left by an interrupted write`,
        );
        break;
      }
      if (rec.step > step) break;
      keep = nl + 1;
      at = nl + 1;
    }
    if (keep < buf.length) {
      const fd = fs.openSync(this.file, "r+");
      try {
        fs.ftruncateSync(fd, keep);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    this.rebuildCsv();
    return notes;
  }

  /** Appends one record as a line (and as a CSV row). */
  append(rec: MetricsRecord): void {
    this.fd ??= fs.openSync(this.file, "a");
    writeAll(this.fd, Buffer.from(JSON.stringify(rec) + "\n", "utf8"));
    fs.appendFileSync(this.csv, csvLine(rec));
  }

  /** Makes every appended record durable. */
  sync(): void {
    if (this.fd !== null) fs.fsyncSync(this.fd);
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}
