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
 * The JSONL is the record of truth (append-only, recovered after a crash by MetricsLog in
 * checkpointing.ts); the CSV is derived from it: rewritten from the kept JSONL records whenever a
 * run resumes, so a resumed run's logs read as those of an uninterrupted one.
 */

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

/** One CSV line (with its newline) of a metrics record, in METRICS_COLUMNS order. */
export function csvLine(r: Partial<Record<string, unknown>>): string {
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
