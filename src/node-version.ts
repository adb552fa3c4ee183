/**
 * The Node.js versions attnres supports (the same range as `engines.node` in package.json; a
 * test keeps them equal). Importing this module on any other version prints one line naming the
 * supported versions and exits with status 1, before anything that could fail obscurely loads:
 * the library entry (src/index.ts) and the `attnres` executable import it first.
 */

/** Supported Node.js versions, as an npm semver range. */
export const SUPPORTED_NODE = "^20.19.0 || ^22.12.0 || >=23";

/** Whether a Node.js version ("20.19.0", "v22.12.1") lies in SUPPORTED_NODE. */
export function nodeSupported(version: string): boolean {
  const [major = 0, minor = 0] = version.replace(/^v/, "").split(".").map(Number);
  return (major === 20 && minor >= 19) || (major === 22 && minor >= 12) || major >= 23;
}

if (!nodeSupported(process.versions.node)) {
  process.stderr.write(
    `attnres: Node.js ${process.versions.node} is not supported; attnres needs Node.js ${SUPPORTED_NODE}\n`,
  );
  process.exit(1);
}
