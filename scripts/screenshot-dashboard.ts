/**
 * A screenshot of a running coordinator's dashboard (docs/dashboard.png is one of `npm run dev`),
 * taken with Debian's Chromium through playwright-core, signed in with ROLLCALL_ADMIN_TOKEN
 * when the coordinator asks for it (never in a URL or a flag):
 *
 *   npx tsx scripts/screenshot-dashboard.ts [--url http://127.0.0.1:8787] [--out docs/dashboard.png]
 *     [--width 1280] [--scheme light|dark]
 */
import { parseArgs } from "node:util";
import { launchChromium } from "../support/browser.ts";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:8787" },
    out: { type: "string", default: "docs/dashboard.png" },
    width: { type: "string", default: "1280" },
    scheme: { type: "string", default: "light" },
  },
});
const scheme = values.scheme === "dark" ? "dark" : "light";
const width = Number(values.width);
if (!Number.isInteger(width) || width < 320 || width > 4000) {
  console.error("Invalid --width: use a number of pixels from 320 to 4000");
  process.exit(2);
}

const browser = await launchChromium();
if (typeof browser === "string") {
  console.error(browser);
  process.exit(1);
}
try {
  const page = await browser.newPage({ viewport: { width, height: 900 }, colorScheme: scheme });
  await page.goto(`${values.url.replace(/\/+$/, "")}/admin`);
  await page.locator("#app:not([hidden]), #signin:not([hidden])").first().waitFor();
  if (await page.locator("#signin").isVisible()) {
    const token = process.env.ROLLCALL_ADMIN_TOKEN;
    if (!token)
      throw new Error("The coordinator asks for the admin token: set ROLLCALL_ADMIN_TOKEN");
    await page.fill("#token", token);
    await page.click("#signin button[type=submit]");
  }
  await page.locator("#workers .card").first().waitFor();
  await page.locator("#conn.ok").waitFor(); // one poll rendered after the first paint
  await page.screenshot({ path: values.out, fullPage: true });
  console.log(`Saved ${values.out}`);
} finally {
  await browser.close();
}
