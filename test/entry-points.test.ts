/**
 * Every entry point a person types answers --help and --version (exit 0) and a bad flag with one
 * line and exit 2, never a stack trace; the Node, Bun and Deno coordinators log JSON lines with
 * a time and a level when asked, and the access log when asked.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { COORDINATOR_VERSION } from "../coordinator.ts";
import { missingNodeFlags } from "../scripts/serve-node.ts";
import { NODE_FLAGS } from "../scripts/starter.ts";
import { BIN, ROOT, spawnUntil, tempDir } from "./helpers/coord-runtimes.ts";

const run = promisify(execFile);
const TSX = [process.execPath, "--import", "tsx"];
const DENO = [BIN("deno"), "run", "-A", "--unstable-kv"];

const entries: [name: string, argv: string[], usage: RegExp, version: string][] = [
  [
    "npm run dev",
    ["npm", "run", "--silent", "dev", "--"],
    /Usage: npm run dev -- \[options\]/,
    `rollcall ${COORDINATOR_VERSION}`,
  ],
  [
    "npm run coordinator",
    ["npm", "run", "--silent", "coordinator", "--"],
    /Usage: npm run coordinator -- \[options\]/,
    `rollcall-coordinator ${COORDINATOR_VERSION}`,
  ],
  [
    "bun scripts/start-bun.ts",
    [BIN("bun"), "scripts/start-bun.ts"],
    /Usage: bun scripts\/start-bun.ts/,
    `rollcall-coordinator ${COORDINATOR_VERSION}`,
  ],
  [
    "deno task coordinator",
    [...DENO, "scripts/start-deno.ts"],
    /Usage: deno task coordinator/,
    `rollcall-coordinator ${COORDINATOR_VERSION}`,
  ],
  [
    "the agent",
    [...TSX, "agent/cli.ts"],
    /Usage: rollcall-agent \[options\]/,
    `rollcall-agent ${COORDINATOR_VERSION}`,
  ],
  [
    "rollcall",
    [...TSX, "scripts/rollcall.ts"],
    /Usage: rollcall <command>/,
    `rollcall ${COORDINATOR_VERSION}`,
  ],
];

describe.each(entries)("%s", (_name, argv, usage, version) => {
  const [bin, ...pre] = argv as [string, ...string[]];
  const call = (...args: string[]) =>
    run(bin, [...pre, ...args], { cwd: ROOT }).catch(
      (e: { code: number; stdout: string; stderr: string }) => e,
    );

  it("answers --help and --version, and a bad flag with one line and exit 2", async () => {
    const [help, ver, bad] = (await Promise.all([
      call("--help"),
      call("--version"),
      call("--no-such-flag"),
    ])) as { code?: number; stdout: string; stderr: string }[];
    expect(help?.stdout).toMatch(usage);
    expect(ver?.stdout.trim()).toBe(version);
    if (!bad) throw new Error("no answer");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--no-such-flag/);
    expect(bad.stderr).not.toMatch(/^\s+at /m); // no stack trace
  }, 60_000);
});

const starters: [name: string, argv: string[]][] = [
  ["node", [...TSX, "scripts/start-node.ts", "--data", "DATA/c.json"]],
  ["bun", [BIN("bun"), "scripts/start-bun.ts", "--data", "DATA/c.json"]],
  ["deno", [...DENO, "scripts/start-deno.ts", "--kv", "DATA/kv.sqlite"]],
];

describe.each(starters)("the coordinator on %s", (_name, argv) => {
  it("logs JSON lines with a time and a level, and one access line per request", async () => {
    const data = tempDir("entry");
    const [bin, ...args] = argv.map((a) => a.replace("DATA", data)) as [string, ...string[]];
    const p = await spawnUntil(bin, [...args, "--port", "0", "--access-log"], {
      ready: /listening on (http:\/\/[0-9.:]+)/,
      env: { ROLLCALL_LOG_FORMAT: "json" },
    });
    try {
      const res = await fetch(`${p.match[1]}/api/service/nope/x?secret=1`);
      expect(res.status).toBe(503);
      const access = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const find = () => {
          const line = p
            .output()
            .split("\n")
            .find((l) => l.includes('"msg":"access"'));
          if (line) resolve(JSON.parse(line));
        };
        p.child.stdout?.on("data", find);
        find();
        setTimeout(() => reject(new Error(`no access line:\n${p.output()}`)), 10_000);
      });
      expect(access).toMatchObject({
        level: "info",
        method: "GET",
        path: "/api/service/nope/x",
        service: "nope",
        worker: null,
        status: 503,
      });
      expect(typeof access.ms).toBe("number");
      const first = JSON.parse(p.output().split("\n")[0] as string);
      expect(first).toMatchObject({
        level: "info",
        msg: expect.stringMatching(/^rollcall coordinator \(\w+\) listening on http/),
      });
      expect(Date.parse(first.time)).not.toBeNaN();
      expect(p.output()).not.toContain("secret");
    } finally {
      await p.stop();
    }
  }, 60_000);
});

it("a bad ROLLCALL_* setting stops the Node coordinator with one error line naming it", async () => {
  const bad = await run(
    process.execPath,
    [
      "--import",
      "tsx",
      "scripts/start-node.ts",
      "--port",
      "0",
      "--data",
      path.join(tempDir("bad"), "c.json"),
    ],
    {
      cwd: ROOT,
      env: { ...process.env, ROLLCALL_WRITE_CAP: "abc" },
    },
  ).catch((e: { code: number; stdout: string; stderr: string }) => e);
  expect(bad).toMatchObject({ code: 2 });
  expect((bad as { stderr: string }).stderr).toMatch(
    /ERROR rollcall-coordinator: ROLLCALL_WRITE_CAP must be a positive number/,
  );
  expect((bad as { stderr: string }).stderr).not.toMatch(/^\s+at /m);
});

it("npm run coordinator starts Node with the starter's young-generation flags, and says when they are missing", () => {
  const scripts = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")).scripts;
  for (const flag of NODE_FLAGS) expect(scripts.coordinator).toContain(` ${flag} `);
  expect(missingNodeFlags([], false)).toEqual([...NODE_FLAGS]);
  expect(missingNodeFlags(["--import", "tsx", ...NODE_FLAGS], false)).toEqual([]);
  expect(missingNodeFlags([], true)).toEqual([]); // Bun: no V8 flags to give
});
