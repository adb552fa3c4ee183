/**
 * Debian's chromium driven by playwright-core (never a downloaded browser), as the view's browser
 * tests and `bench/view.ts` start it: headless, no sandbox (CI runs as root), no GPU, and none
 * of the background traffic (updates, sync, QUIC) a machine without network would stall on.
 */
import type { BrowserContext } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

/** A headless 1280 × 860 chromium with its profile in `profileDir` (a fresh folder). */
export async function launchChromium(profileDir: string): Promise<BrowserContext> {
  const { chromium } = await import("playwright-core");
  return chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
