/**
 * The preset folder (configs/ of the installed package) and the names of the presets in it
 * ("sotu-tiny", "study/main-standard", …). Cheap to import: the command definitions list the
 * presets in their help; src/cli/preset.ts loads and validates them.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { packageRoot } from "../io/paths.js";

export const configDir = (): string => path.join(packageRoot(), "configs");

/** Every preset name, sorted, with sub-folders as path prefixes. */
export function listPresets(): string[] {
  const out: string[] = [];
  const walk = (dir: string, prefix: string) => {
    for (const f of fs
      .readdirSync(dir, { withFileTypes: true })
      .sort((a, b) => a.name.localeCompare(b.name))) {
      if (f.isDirectory()) walk(path.join(dir, f.name), `${prefix}${f.name}/`);
      else if (f.name.endsWith(".json")) out.push(prefix + f.name.replace(/\.json$/, ""));
    }
  };
  walk(configDir(), "");
  return out;
}
