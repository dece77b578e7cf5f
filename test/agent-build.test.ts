/**
 * The built agent (`npm run build:agent`): one JS file for plain Node, as a worker runs it
 * without tsx. It must start real libp2p on Node 20 (the shim loaded in time), find its default
 * manifest next to it, serve its gateway and stop cleanly.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, killAll, pollUntil, ROOT, startNode } from "./helpers/processes.ts";

const BUILT = "dist/agent/rollcall-agent.mjs";
let dataDir = "";

beforeAll(() => {
  execFileSync("npm", ["run", "--silent", "build:agent"], { cwd: ROOT, stdio: "pipe" });
  dataDir = mkdtempSync(path.join(tmpdir(), "rollcall-built-agent-"));
}, 60_000);

afterAll(async () => {
  await killAll();
  rmSync(dataDir, { recursive: true, force: true });
});

const exitOf = (p: ReturnType<typeof startNode>) =>
  new Promise<number | null>((resolve) => {
    if (p.proc.exitCode !== null) resolve(p.proc.exitCode);
    else p.proc.once("exit", (code) => resolve(code));
  });

describe("the built agent", () => {
  it("prints its help, and stops at once on a bad setting, naming it", async () => {
    const help = startNode("help", [BUILT, "--help"]);
    expect(await exitOf(help)).toBe(0);
    expect(help.output()).toContain("Usage: rollcall-agent [options]");
    const bad = startNode("bad", [BUILT, "--mode", "sideways"]);
    expect(await exitOf(bad)).toBe(2);
    expect(bad.output()).toMatch(/rollcall-agent: .*mode/);
  });

  it("joins a mesh on loopback, serves its gateway and leaves cleanly on SIGTERM", async () => {
    const port = await freePort();
    const agent = startNode("built-agent", [
      BUILT,
      "--data-dir",
      dataDir,
      "--listen",
      `127.0.0.1:${port}`,
      "--mesh-listen",
      "/ip4/127.0.0.1/tcp/0",
      "--probe-interval",
      "1",
    ]);
    await agent.waitForLine(/Joined cluster "default" as /);
    expect(agent.output()).toContain("Detecting available services...");
    const health = await pollUntil("the gateway's health", async () => {
      const res = await fetch(`http://127.0.0.1:${port}/_agent/health`);
      return res.ok ? ((await res.json()) as Record<string, unknown>) : undefined;
    });
    expect(health).toMatchObject({ status: "healthy" });
    const exit = exitOf(agent);
    agent.proc.kill("SIGTERM");
    expect(await exit).toBe(0);
    expect(agent.output()).toContain("Stopped.");
  });
});
