/** The definition of `attnres view` (options, help); the work is in ../view.ts, loaded on use. */
import type { Command } from "commander";
import { nonNegativeInt } from "../common.js";
import type { ViewFlags } from "../view.js";

export function registerView(program: Command): void {
  program
    .command("view")
    .description("browse runs in a local web page: runs, live curves, routing heatmaps, token explorer")
    .argument("[runs_dir]", "folder holding the runs", "runs")
    .option("--port <n>", "port (0: any free port)", nonNegativeInt, 8008)
    .option("--host <address>", "address to bind (default 127.0.0.1: this machine only)", "127.0.0.1")
    .addHelpText(
      "after",
      [
        "",
        "Examples:",
        "  attnres view                      # the runs under ./runs, at http://127.0.0.1:8008/",
        "  attnres view runs/compare-start --port 0",
        "",
        "Pages and what they show: docs/view.md.",
        "",
      ].join("\n"),
    )
    .action(async (dir: string, o: ViewFlags) => {
      const { viewCommand } = await import("../view.js");
      await viewCommand(dir, o);
    });
}
