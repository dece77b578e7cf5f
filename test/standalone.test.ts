/**
 * The artefacts a worker machine runs without a checkout, each built once here
 * (`npm run build:binary`), copied into an empty directory and run from there: the bundled
 * `rollcall` command for plain Node (dist/rollcall.mjs), the agent alone
 * (dist/agent/rollcall-agent.mjs) and the standalone executable with Bun inside
 * (dist/bin/rollcall). Each prints its help, then runs as an agent in front of a real service,
 * against a coordinator started from the same copy, and a call routed through the coordinator
 * reaches the service. Then `npm pack` + an offline install into a temp dir: `npx rollcall` works.
 */
import { execFile, execFileSync } from "node:child_process";
import {
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { COORDINATOR_VERSION } from "../coordinator.ts";
import { tempDir } from "./helpers/coord-runtimes.ts";
import { freePort, killAll, pollUntil, ROOT, startNode } from "../support/processes.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

const run = promisify(execFile);
let service: Upstream;

beforeAll(async () => {
  execFileSync("npm", ["run", "--silent", "build:binary"], { cwd: ROOT, stdio: "pipe" });
  service = await startUpstream("ocr-service");
}, 120_000);

afterAll(async () => {
  await killAll();
  await service?.close();
});

/** Copies a built file into a new empty directory; returns its path there. */
function isolated(file: string, mode = 0o644): string {
  const dir = tempDir("standalone");
  const copy = path.join(dir, path.basename(file));
  copyFileSync(path.join(ROOT, file), copy);
  statSync(copy); // exists
  if (mode !== 0o644) execFileSync("chmod", [mode.toString(8), copy]);
  expect(readdirSync(dir)).toEqual([path.basename(file)]);
  return copy;
}

/** How to run an artefact: argv before the subcommand's own flags. */
const artefacts = [
  {
    name: "dist/rollcall.mjs on Node",
    file: "dist/rollcall.mjs",
    argv: (f: string) => [process.execPath, f],
  },
  { name: "dist/bin/rollcall (Bun inside)", file: "dist/bin/rollcall", argv: (f: string) => [f] },
];

describe.each(artefacts)("$name, alone in an empty directory", (artefact) => {
  let copy = "";
  beforeAll(() => {
    copy = isolated(artefact.file, artefact.file.endsWith(".mjs") ? 0o644 : 0o755);
  });
  const cmd = (...args: string[]) => {
    const [bin, ...pre] = artefact.argv(copy);
    return run(bin as string, [...pre, ...args], { cwd: path.dirname(copy) });
  };

  it("prints its help and version, and the help of its subcommands", async () => {
    expect((await cmd("--help")).stdout).toContain("Usage: rollcall <command>");
    expect((await cmd("--version")).stdout.trim()).toBe(`rollcall ${COORDINATOR_VERSION}`);
    expect((await cmd("agent", "--help")).stdout).toContain("Usage: rollcall-agent [options]");
    expect((await cmd("coordinator", "--help")).stdout).toContain(
      "Starts the rollcall coordinator",
    );
    const bad = await cmd("agent", "--mode", "sideways").catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect(bad).toMatchObject({ code: 2 });
    expect((bad as { stderr: string }).stderr).toMatch(/rollcall-agent: .*mode/);
  });

  it("runs a coordinator and an agent; a call routed through the coordinator reaches the agent's service", async () => {
    const dir = path.dirname(copy);
    const [bin, ...pre] = artefact.argv(copy);
    const coordPort = await freePort();
    const coord = startNode(
      "coordinator",
      [
        ...pre,
        "coordinator",
        "--port",
        String(coordPort),
        "--data",
        path.join(dir, "coord.json"),
        "--access-log",
      ],
      // The agent's gateway is on loopback, which the proxy refuses by default.
      { ROLLCALL_UPSTREAM_ALLOW: "loopback" },
      bin,
    );
    await coord.waitForLine(/listening on http/);
    writeFileSync(
      path.join(dir, "services.json"),
      JSON.stringify({ services: [{ name: "ocr", url: service.url, health: "/health" }] }),
    );
    const gateway = await freePort();
    const agent = startNode(
      "agent",
      [
        ...pre,
        "agent",
        "--coordinator",
        `http://127.0.0.1:${coordPort}`,
        "--name",
        "box-1",
        "--data-dir",
        path.join(dir, "agent"),
        "--listen",
        `127.0.0.1:${gateway}`,
        "--mesh-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--services",
        path.join(dir, "services.json"),
        "--probe-interval",
        "1",
        "--debounce",
        "0",
      ],
      {},
      bin,
    );
    await agent.waitForLine(/Joined cluster "default" as \S+ \(name box-1/);
    expect(agent.output()).toMatch(/✓ ocr: healthy, 200 in \d+ ms/);
    const answer = await pollUntil(
      "a routed call to reach the service",
      async () => {
        const res = await fetch(`http://127.0.0.1:${coordPort}/api/service/ocr/scan?page=1`);
        if (res.status !== 200) return undefined;
        return {
          worker: res.headers.get("x-rollcall-worker"),
          name: res.headers.get("x-rollcall-worker-name"),
          body: (await res.json()) as { upstream: string; url: string },
        };
      },
      60_000,
      250,
    );
    expect(answer.body).toEqual(
      expect.objectContaining({ upstream: "ocr-service", url: "/scan?page=1" }),
    );
    expect(answer.name).toBe("box-1");
    expect(answer.worker).toMatch(/^12D3Koo/);
    const workers = (await (
      await fetch(`http://127.0.0.1:${coordPort}/api/admin/workers`)
    ).json()) as { worker_id: string; name: string }[];
    expect(workers).toEqual([expect.objectContaining({ worker_id: answer.worker, name: "box-1" })]);
    await coord.waitForLine(
      /access method=GET path=\/api\/service\/ocr\/scan service=ocr worker=12D3Koo\S+ worker_name=box-1 status=200 ms=/,
    );
    await agent.kill("SIGTERM");
    expect(agent.output()).toContain("Stopped.");
    await coord.kill("SIGTERM");
  }, 90_000);
});

describe("dist/agent/rollcall-agent.mjs, the agent alone", () => {
  it("runs from an empty directory: help, then an agent with no manifest that says so", async () => {
    const copy = isolated("dist/agent/rollcall-agent.mjs");
    const { stdout } = await run(process.execPath, [copy, "--help"], { cwd: path.dirname(copy) });
    expect(stdout).toContain("Usage: rollcall-agent [options]");
    const agent = startNode("agent-alone", [
      copy,
      "--data-dir",
      path.join(path.dirname(copy), "d"),
      "--listen",
      `127.0.0.1:${await freePort()}`,
      "--mesh-listen",
      "/ip4/127.0.0.1/tcp/0",
    ]);
    await agent.waitForLine(/Joined cluster/);
    expect(agent.output()).toMatch(/WARN {2}No services manifest \(--services\): .*"services": \[/);
    await agent.kill("SIGTERM");
  });
});

describe("the npm package", () => {
  it("installs from its tarball with no registry, and `npx rollcall` runs: version, keygen (0600)", async () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as {
      version: string;
    };
    expect(pkg.version).toBe(COORDINATOR_VERSION);
    const dir = tempDir("pack");
    const { stdout } = await run("npm", ["pack", "--silent", "--pack-destination", dir], {
      cwd: ROOT,
    });
    const tarball = path.join(dir, stdout.trim().split("\n").pop() as string);
    expect(statSync(tarball).size).toBeLessThan(2 * 1024 * 1024);
    const app = path.join(dir, "app");
    mkdirSync(app);
    writeFileSync(path.join(app, "package.json"), '{"name": "app", "private": true}\n');
    // --offline: nothing may come from a registry (the package needs nothing: all is bundled).
    await run("npm", ["install", "--offline", "--no-audit", "--no-fund", tarball], { cwd: app });
    const npx = (...args: string[]) =>
      run("npx", ["--no", "--", "rollcall", ...args], { cwd: app });
    expect((await npx("--version")).stdout.trim()).toBe(`rollcall ${COORDINATOR_VERSION}`);
    await npx("keygen", "swarm.key");
    const key = path.join(app, "swarm.key");
    expect(statSync(key).mode & 0o777).toBe(0o600);
    const text = execFileSync("cat", [key], { encoding: "utf8" });
    expect(text).toMatch(/^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/);
    const again = await npx("keygen", "swarm.key").catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect(again).toMatchObject({ code: 1 });
    expect((again as { stderr: string }).stderr).toContain("it exists");
  }, 120_000);
});
