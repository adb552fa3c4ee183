// Format check for the C/C++ sources (prettier covers everything else): clang-format --dry-run --Werror.
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";

const files = readdirSync("native")
  .filter((f) => /\.(cc|h)$/.test(f))
  .map((f) => `native/${f}`);
try {
  execFileSync("clang-format", ["--dry-run", "--Werror", ...files], { stdio: "inherit" });
} catch (e) {
  if (e.code === "ENOENT") {
    console.error(
      "clang-format is not installed (apt-get install clang-format); cannot check C++ formatting",
    );
  } else {
    console.error("C++ sources are not clang-formatted: run `npm run format`");
  }
  process.exit(1);
}
