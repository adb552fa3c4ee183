/**
 * The one writer of markdown reports: the routing analysis's summary.md (src/analysis/report.ts),
 * the comparison's results.md (src/workflows/compare.ts, compare-figures.ts) and the study's
 * docs/results.md (scripts/study-report.ts) are lines built from these pieces and written with
 * `writeReport` (atomic, durable: src/io/atomic.ts).
 *
 *   heading(2, "Verdict")                  ## Verdict
 *   table(["a", "b"], [["1", "2"]])        | a | b |  /  | --- | --- |  /  | 1 | 2 |   (one line each)
 *   tableHead(["a", "b"]), tableRow(cells) the same, for tables whose rows come one by one
 *   figure("alt", "x.png")                 ![alt](x.png)
 *   figureWithSvg("caption", "x")          ![caption](x.png) ([SVG](x.svg))
 *
 * Figures themselves are drawn by src/plot/; a report only links them.
 */
import { writeFileAtomic } from "./atomic.js";

/** A markdown heading of `level` (1–4). */
export const heading = (level: 1 | 2 | 3 | 4, text: string): string => `${"#".repeat(level)} ${text}`;

/** One table row: `| a | b |`. */
export const tableRow = (cells: readonly string[]): string => `| ${cells.join(" | ")} |`;

/** A table's header row and its separator row. */
export const tableHead = (head: readonly string[]): string[] => [
  tableRow(head),
  tableRow(head.map(() => "---")),
];

/** A whole table: header, separator, one line per row. */
export const table = (head: readonly string[], rows: readonly (readonly string[])[]): string[] => [
  ...tableHead(head),
  ...rows.map(tableRow),
];

/** An image link. */
export const figure = (alt: string, src: string): string => `![${alt}](${src})`;

/** A PNG figure `base`.png with a link to its SVG twin `base`.svg. */
export const figureWithSvg = (caption: string, base: string): string =>
  `${figure(caption, `${base}.png`)} ([SVG](${base}.svg))`;

/** Writes a report: its lines joined by newlines (or the text as it is), atomically. */
export function writeReport(file: string, text: readonly string[] | string): void {
  writeFileAtomic(file, typeof text === "string" ? text : text.join("\n"));
}
