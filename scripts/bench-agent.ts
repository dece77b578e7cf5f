/**
 * Per-agent memory and idle CPU of the whole agent (mesh, gateway, service detection, leader
 * reporting), N agents in mesh mode on loopback reporting to a coordinator, run two ways in the
 * same script: the built agent on plain Node (`npm run build:agent`, as a worker runs it) and
 * `node --import tsx agent/cli.ts` (as `npm run dev` runs agents). Bounded: one idle window per
 * way, every process stopped at the end.
 *
 *   npm run bench:agent -- [--n 10] [--idle-s 60]
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { serve } from "@hono/node-server";
import { createCoordinator, memoryStore } from "../coordinator.ts";

const { values } = parseArgs({
  options: { n: { type: "string", default: "10" }, "idle-s": { type: "string", default: "60" } },
});
const N = Number(values.n);
const IDLE_S = Number(values["idle-s"]);
const ROOT = path.resolve(import.meta.dirname, "..");
const TICKS = 100; // clock ticks per second in /proc/<pid>/stat (USER_HZ)

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const rssMb = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
const cpuTicks = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return Number(fields[11]) + Number(fields[12]); // utime + stime
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function listen(server: http.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return (server.address() as AddressInfo).port;
}

async function freePort(): Promise<number> {
  const probe = http.createServer();
  const port = await listen(probe);
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

/** One agent process and what it printed. */
interface Running {
  proc: ChildProcess;
  out: string;
}

function startAgent(command: string[], args: string[]): Running {
  const proc = spawn(command[0] as string, [...command.slice(1), ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const r: Running = { proc, out: "" };
  proc.stdout?.on("data", (c: Buffer) => {
    r.out += c.toString("utf8");
  });
  proc.stderr?.on("data", (c: Buffer) => {
    r.out += c.toString("utf8");
  });
  return r;
}

async function until(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function run(name: string, command: string[], coordinator: string, manifest: string) {
  const dir = mkdtempSync(path.join(tmpdir(), `rollcall-bench-agent-${name}-`));
  const agents: Running[] = [];
  try {
    const t0 = Date.now();
    let bootstrap = "";
    for (let i = 0; i < N; i++) {
      const gateway = await freePort();
      const args = [
        ...["--coordinator", coordinator, "--data-dir", path.join(dir, String(i))],
        ...["--listen", `127.0.0.1:${gateway}`, "--mesh-listen", "/ip4/127.0.0.1/tcp/0"],
        ...["--services", manifest, "--public-url", `http://127.0.0.1:${gateway}`],
      ];
      if (bootstrap) args.push("--bootstrap", bootstrap);
      const a = startAgent(command, args);
      agents.push(a);
      if (i === 0) {
        await until(
          "the first agent's mesh address",
          () => /Mesh listening on/.test(a.out),
          30_000,
        );
        bootstrap = /Mesh listening on (\S+)/.exec(a.out)?.[1] ?? "";
      }
    }
    const ups = (a: Running) => (a.out.match(/Member up: /g) ?? []).length;
    await until(
      "every agent to see every other",
      () => agents.every((a) => ups(a) >= N - 1),
      60_000,
    );
    const convergeS = (Date.now() - t0) / 1000;
    await sleep(5000); // let the start settle
    const pids = agents.map((a) => a.proc.pid as number);
    const before = pids.map(cpuTicks);
    const started = Date.now();
    await sleep(IDLE_S * 1000);
    const seconds = (Date.now() - started) / 1000;
    const cpu = pids.map(
      (pid, i) => ((cpuTicks(pid) - (before[i] as number)) / TICKS / seconds) * 100,
    );
    const rss = pids.map(rssMb);
    return {
      name,
      convergeS,
      rssMedian: median(rss),
      rssMax: Math.max(...rss),
      cpuMedian: median(cpu),
    };
  } finally {
    await Promise.all(
      agents.map(
        (a) =>
          new Promise<void>((resolve) => {
            if (a.proc.exitCode !== null) return resolve();
            a.proc.once("exit", () => resolve());
            a.proc.kill("SIGTERM");
            setTimeout(() => a.proc.kill("SIGKILL"), 5000).unref();
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  execFileSync("npm", ["run", "--silent", "build:agent"], { cwd: ROOT, stdio: "inherit" });
  // One sample service every agent detects, and a coordinator the leader reports to.
  const service = http.createServer((_req, res) => res.end("ok"));
  const servicePort = await listen(service);
  const dir = mkdtempSync(path.join(tmpdir(), "rollcall-bench-agent-"));
  const manifest = path.join(dir, "services.json");
  writeFileSync(
    manifest,
    JSON.stringify({ services: [{ name: "notes", port: servicePort, health: "/" }] }),
  );
  const coordinator = createCoordinator({ liveView: false }, { store: memoryStore() });
  const server = serve({ fetch: coordinator.fetch, port: 0, hostname: "127.0.0.1" });
  await new Promise<void>((r) => server.once("listening", () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  console.log(
    `N = ${N} agents per way, idle ${IDLE_S} s; load before: ${readFileSync("/proc/loadavg", "utf8").trim()}`,
  );
  const results = [];
  try {
    results.push(
      await run("built", [process.execPath, "dist/agent/rollcall-agent.mjs"], url, manifest),
    );
    results.push(
      await run("tsx", [process.execPath, "--import", "tsx", "agent/cli.ts"], url, manifest),
    );
  } finally {
    server.close();
    service.close();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log("\n| agent | converge | RSS MB median / max | idle CPU % of a core (median) |");
  console.log("| --- | ---: | ---: | ---: |");
  for (const r of results) {
    console.log(
      `| ${r.name} | ${r.convergeS.toFixed(1)} s | ${r.rssMedian.toFixed(1)} / ${r.rssMax.toFixed(1)} | ${r.cpuMedian.toFixed(2)} |`,
    );
  }
  const [built, tsx] = results;
  if (built && tsx)
    console.log(`\nbuilt / tsx RSS: ${(built.rssMedian / tsx.rssMedian).toFixed(2)}`);
  process.exit(0);
}

await main();
