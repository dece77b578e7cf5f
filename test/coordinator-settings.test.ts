/** The coordinator's settings are written once (COORDINATOR_SETTINGS): the env parser and docs/DEPLOY.md follow. */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  COORDINATOR_SETTINGS,
  configFromEnv,
  resolveSettings,
  settingsMarkdown,
} from "../coordinator.ts";

/** A table row's cells, trimmed: the same however the formatter pads the columns. */
const cells = (row: string): string =>
  row
    .slice(1, -1)
    .split(" | ")
    .map((cell) => cell.trim())
    .join(" | ");

/** The rows of the first table under a heading of a markdown page, separator row left out. */
function tableAfter(page: string, heading: string): string[] {
  const lines = page.split("\n");
  let i = lines.indexOf(heading);
  expect(i, `${heading} is missing`).toBeGreaterThanOrEqual(0);
  while (i < lines.length && !lines[i]?.startsWith("|")) i++;
  const rows: string[] = [];
  while (i < lines.length && lines[i]?.startsWith("|")) rows.push(lines[i++] as string);
  return rows.filter((row) => !/^\|[\s|:-]+\|$/.test(row)).map(cells);
}

/** A valid value of a setting's kind, as its environment variable would hold it. */
const SAMPLE: Record<string, string> = {
  token: "a-token-of-its-own",
  bool: "true",
  positive: "7",
  count: "3",
  share: "0.4",
  text: "https://app.example",
  url: "https://hooks.example/scale",
  cookies: "strip",
  aliases: '{"/old": "svc"}',
  upstreams: "loopback",
};

describe("coordinator settings", () => {
  it("docs/DEPLOY.md shows every setting, as the settings table says", () => {
    const page = readFileSync(new URL("../docs/DEPLOY.md", import.meta.url), "utf8");
    const shown = tableAfter(page, "## Settings");
    const expected = tableAfter(`## Settings\n\n${settingsMarkdown()}`, "## Settings");
    // Row by row first, so a failure names the row that is missing or differs.
    for (const row of expected)
      expect(shown, "regenerate it with settingsMarkdown()").toContain(row);
    expect(shown).toEqual(expected);
  });

  it.each(Object.entries(COORDINATOR_SETTINGS).filter(([, row]) => row.env !== null))(
    "reads %s from its environment variable",
    (key, row) => {
      const base = { ROLLCALL_CLUSTER_TOKEN: "c", ROLLCALL_ADMIN_TOKEN: "a" };
      const env: Record<string, unknown> = { ...base, [row.env as string]: SAMPLE[row.kind] };
      const init = configFromEnv(env) as Record<string, unknown>;
      expect(init[key]).not.toBeUndefined();
      expect(init[key]).not.toEqual((configFromEnv(base) as Record<string, unknown>)[key] ?? null);
      expect(() => resolveSettings(init)).not.toThrow();
    },
  );
});
