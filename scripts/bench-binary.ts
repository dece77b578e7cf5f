/**
 * The standalone agent, built three ways, measured in one run: size on disk, start time
 * (spawn to `--version` exit, and spawn to "Joined cluster" as an agent) and RSS of an idle
 * agent after it joined (a one-member mesh on loopback with one service), median of --runs.
 *
 *   - bun:  dist/bin/rollcall, `bun build --compile` (Bun inside);
 *   - node: node dist/rollcall.mjs (the bundle; Node not counted in the size);
 *   - deno: deno run dist/rollcall.mjs: what `deno compile` would embed, run by the full deno
 *           binary. `deno compile` itself needs its runtime (denort) from dl.deno.land, which this
 *           machine cannot reach, so its size is not measured here.
 *
 *   npm run build:binary && npx tsx scripts/bench-binary.ts [--runs 5] [--json out.json]
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { ROOT } from "../support/processes.ts";

const { values } = parseArgs({
  options: { runs: { type: "string", default: "5" }, json: { type: "string" } },
});
const RUNS = Number(values.runs);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const rssMb = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const ways = [
  { name: "bun", argv: [path.join(ROOT, "dist/bin/rollcall")], size: ["dist/bin/rollcall"] },
  {
    name: "node",
    argv: [process.execPath, path.join(ROOT, "dist/rollcall.mjs")],
    size: ["dist/rollcall.mjs"],
  },
  {
    name: "deno",
    argv: [
      path.join(ROOT, "node_modules/deno/deno"),
      "run",
      "-A",
      path.join(ROOT, "dist/rollcall.mjs"),
    ],
    size: ["dist/rollcall.mjs"],
  },
];

/** Spawns argv; resolves with ms until it printed `ready` (or exited, for null), and the child. */
function timed(argv: string[], ready: RegExp | null) {
  const started = performance.now();
  const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  return new Promise<{ ms: number; child: typeof child }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${ready} in 30 s:\n${out}`)), 30_000);
    const onData = (c: Buffer) => {
      out += c.toString();
      if (ready?.test(out)) {
        clearTimeout(timer);
        resolve({ ms: performance.now() - started, child });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", () => {
      if (ready) return;
      clearTimeout(timer);
      resolve({ ms: performance.now() - started, child });
    });
  });
}

const service = http.createServer((_q, r) => r.end("ok"));
await new Promise<void>((r) => service.listen(0, "127.0.0.1", r));
const servicePort = (service.address() as AddressInfo).port;
const results: Record<
  string,
  { size_mb: number; version_ms: number; join_ms: number; rss_mb: number }
> = {};
for (const way of ways) {
  const version: number[] = [];
  const join: number[] = [];
  const rss: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    version.push((await timed([...way.argv, "--version"], null)).ms);
    const dir = mkdtempSync(path.join(tmpdir(), `rollcall-bench-binary-${way.name}-`));
    writeFileSync(
      path.join(dir, "s.json"),
      JSON.stringify({ services: [{ name: "svc", port: servicePort }] }),
    );
    const { ms, child } = await timed(
      [
        ...way.argv,
        "agent",
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--mesh-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--services",
        path.join(dir, "s.json"),
      ],
      /Joined cluster/,
    );
    join.push(ms);
    await sleep(3000); // idle, past the first heartbeats and probes
    rss.push(rssMb(child.pid as number));
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
  const size = way.size.reduce((n, f) => n + statSync(path.join(ROOT, f)).size, 0) / 1024 / 1024;
  results[way.name] = {
    size_mb: Math.round(size * 10) / 10,
    version_ms: Math.round(median(version)),
    join_ms: Math.round(median(join)),
    rss_mb: Math.round(median(rss) * 10) / 10,
  };
  console.log(way.name, JSON.stringify(results[way.name]));
}
service.close();
const base = results.node as { version_ms: number; join_ms: number; rss_mb: number };
console.log(
  "\n| way | size (MB) | --version (ms) | start to joined (ms) | idle RSS (MB) | vs node: start, RSS |",
);
console.log("| --- | --- | --- | --- | --- | --- |");
for (const [name, r] of Object.entries(results)) {
  console.log(
    `| ${name} | ${r.size_mb} | ${r.version_ms} | ${r.join_ms} | ${r.rss_mb} | ${(r.join_ms / base.join_ms).toFixed(2)}, ${(r.rss_mb / base.rss_mb).toFixed(2)} |`,
  );
}
if (values.json) writeFileSync(values.json, `${JSON.stringify(results, null, 2)}\n`);
