/**
 * Builds the `attnres view` front end (src/view/web → dist/view-web; src/view/bundle.ts). Run by
 * `npm run build:view` and by npm's `prepare` step (npm ci / npm install); the server also
 * rebuilds on demand when the bundle is missing or older than its sources.
 */
import { buildBundle } from "../src/view/bundle.js";

const t0 = performance.now();
const out = await buildBundle();
process.stdout.write(
  `attnres view: front end built in ${out} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`,
);
