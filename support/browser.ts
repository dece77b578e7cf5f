/**
 * Debian's Chromium driven by playwright-core, for the dashboard's browser tests and its
 * screenshot script: headless, background networking off (the machine allows loopback only),
 * a fresh profile per launch (playwright makes one). `.ci/run` installs the `chromium` package.
 */
import { existsSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";

/** Where Debian's `chromium` package puts the browser. */
const CHROMIUM = "/usr/bin/chromium";

const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Launches headless Chromium, or says why it cannot (the caller skips with that reason). */
export async function launchChromium(): Promise<Browser | string> {
  if (!existsSync(CHROMIUM)) {
    return `Chromium is not installed at ${CHROMIUM} (Debian: apt-get install -y chromium)`;
  }
  try {
    return await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
  } catch (err) {
    return `Chromium at ${CHROMIUM} could not be launched: ${(err as Error).message.split("\n")[0]}`;
  }
}
