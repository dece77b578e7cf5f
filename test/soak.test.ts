/**
 * The soak's 60-second form (`npm run soak` runs it for 10 minutes): a local cluster under
 * churn (agents join, leave, crash every 10 s) and a steady GET load; 0 failed requests, memory
 * and open descriptors of the long-lived processes flat after the warm-up, writes within what
 * the events explain. The figures of a full run are in docs/RELIABILITY.md.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { expect, it } from "vitest";
import { ROOT } from "../support/processes.ts";

it("a 60-second soak: 0 failed requests, flat memory and descriptors, writes within budget", async () => {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ["--import", "tsx", "scripts/soak.ts", "--duration", "60", "--every", "10"],
    { cwd: ROOT, timeout: 170_000 },
  ).catch((err: { stdout?: string; stderr?: string }) => ({
    stdout: `${err.stdout ?? ""}${err.stderr ?? ""}`,
  }));
  const line = stdout.trim().split("\n").at(-1) ?? "";
  console.log(`soak (60 s): ${line}`);
  const figures = JSON.parse(line) as { failed: number; problems: string[]; requests: number };
  expect(figures.problems).toEqual([]);
  expect(figures.failed).toBe(0);
  expect(figures.requests).toBeGreaterThan(1000);
}, 180_000);
