#!/usr/bin/env node
// The command line straight from the TypeScript sources (src/cli/main.ts through tsx's loader, no
// build step): what the tests run, and a way to try a change without `npm run build`. Needs the
// devDependencies (a clone after `npm ci`); the installed package runs bin/attnres.mjs instead.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/main.ts");
