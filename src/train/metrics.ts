/**
 * The per-step training log of a run folder, in two files kept in step:
 *
 *   <run>/metrics.jsonl  one JSON object per optimizer step: step, loss, grad_norm, lr,
 *                        tokens_per_s, val_loss (at evaluations), time (ISO-8601 UTC of when the
 *                        step ended), elapsed_s (training seconds since the run began, cumulative
 *                        across resumes)
 *   <run>/metrics.csv    the same records as CSV with the header
 *                        step,loss,grad_norm,lr,tokens_per_s,val_loss,time,elapsed_s
 *                        (an empty cell where a record has no value)
 *
 * The JSONL is the record of truth: on resume both files are cut back to the checkpoint's step
 * (the CSV is rewritten from the JSONL records that are kept), so a resumed run's logs read as
 * those of an uninterrupted one.
 */
import * as fs from "node:fs";
import * as path from "node:path";

export const METRICS_COLUMNS = [
  "step",
  "loss",
  "grad_norm",
  "lr",
  "tokens_per_s",
  "val_loss",
  "time",
  "elapsed_s",
] as const;

function csvLine(r: Partial<Record<string, unknown>>): string {
  return (
    METRICS_COLUMNS.map((c) => {
      const v = r[c];
      if (v === undefined || v === null) return "";
      if (typeof v === "number")
        return Number.isFinite(v) ? String(v) : v > 0 ? "inf" : v < 0 ? "-inf" : "nan";
      return String(v);
    }).join(",") + "\n"
  );
}

export class MetricsLog {
  readonly jsonl: string;
  readonly csv: string;
  constructor(dir: string) {
    this.jsonl = path.join(dir, "metrics.jsonl");
    this.csv = path.join(dir, "metrics.csv");
  }

  /** Starts empty logs (a new run). */
  reset(): void {
    fs.writeFileSync(this.jsonl, "");
    fs.writeFileSync(this.csv, METRICS_COLUMNS.join(",") + "\n");
  }

  /** Keeps the records up to `step` in both files (resuming from a checkpoint at `step`). */
  truncate(step: number): void {
    const kept = fs.existsSync(this.jsonl)
      ? fs
          .readFileSync(this.jsonl, "utf8")
          .split("\n")
          .filter((l) => l && (JSON.parse(l) as { step: number }).step <= step)
      : [];
    fs.writeFileSync(this.jsonl, kept.map((l) => l + "\n").join(""));
    fs.writeFileSync(
      this.csv,
      METRICS_COLUMNS.join(",") +
        "\n" +
        kept.map((l) => csvLine(JSON.parse(l) as Record<string, unknown>)).join(""),
    );
  }

  /** Appends a step's values ({step, loss, grad_norm, lr, tokens_per_s, val_loss?}) with its time. */
  append(values: Readonly<Record<string, number>>, ended: Date, elapsedSeconds: number): void {
    const r = { ...values, time: ended.toISOString(), elapsed_s: elapsedSeconds };
    fs.appendFileSync(this.jsonl, JSON.stringify(r) + "\n");
    fs.appendFileSync(this.csv, csvLine(r));
  }
}
