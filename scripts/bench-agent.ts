/**
 * Per-agent memory and idle CPU of the whole agent (mesh, gateway, service detection, leader
 * reporting), N agents in mesh mode on loopback reporting to a coordinator, run two ways in the
 * same script: the built agent on plain Node (`npm run build:agent`, as a worker runs it) and
 * `node --import tsx agent/cli.ts` (as `npm run dev` runs agents). Bounded: one idle window per
 * way, every process stopped at the end.
 *
 * `--imports` measures instead what single imports cost: RSS of a fresh Node process after
 * `import()` of zod, hono, libp2p, the coordinator and the mesh (each bundled as the built
 * agent bundles them), minus before; a few seconds.
 *
 *   npm run bench:agent -- [--n 10] [--idle-s 60]
 *   npm run bench:agent -- --imports [--runs 5]
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { serve } from "@hono/node-server";
import { build } from "esbuild";
import { createCoordinator, memoryStore } from "../coordinator.ts";
import { freePort, type Proc, pollUntil, ROOT, startNode } from "../support/processes.ts";

const { values } = parseArgs({
  options: {
    n: { type: "string", default: "10" },
    "idle-s": { type: "string", default: "60" },
    imports: { type: "boolean", default: false },
    runs: { type: "string", default: "5" },
  },
});
const N = Number(values.n);
const IDLE_S = Number(values["idle-s"]);
/** Clock ticks per second in /proc/<pid>/stat (USER_HZ). */
const TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

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

/** Runs N agents with `node <argv>` (plus their flags), measures them, stops them. */
async function run(name: string, argv: string[], coordinator: string, manifest: string) {
  const dir = mkdtempSync(path.join(tmpdir(), `rollcall-bench-agent-${name}-`));
  const agents: Proc[] = [];
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
      const a = startNode(`${name}-${i}`, [...argv, ...args]);
      agents.push(a);
      if (i === 0) {
        const line = await a.waitForLine(/Mesh listening on/, 30_000);
        bootstrap = /Mesh listening on (\S+)/.exec(line)?.[1] ?? "";
      }
    }
    const ups = (a: Proc) => (a.output().match(/Member up: /g) ?? []).length;
    await pollUntil(
      "every agent to see every other",
      async () => (agents.every((a) => ups(a) >= N - 1) ? true : undefined),
      60_000,
      100,
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
    await Promise.all(agents.map((a) => a.kill()));
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One row of --imports: what is imported first (not counted), then what is measured. */
interface ImportCase {
  label: string;
  preload: string[];
  spec: string;
}

/** RSS (MB) of a fresh Node process before and after importing `c.spec`, once its preloads are in. */
function measureImport(c: ImportCase): { before: number; after: number } {
  const script = [
    ...c.preload.map((p) => `await import(${JSON.stringify(p)});`),
    "const before = process.memoryUsage().rss;",
    `await import(${JSON.stringify(c.spec)});`,
    "const after = process.memoryUsage().rss;",
    "console.log(JSON.stringify({ before: before / 1048576, after: after / 1048576 }));",
  ].join("\n");
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: ROOT });
  return JSON.parse(out.toString());
}

/** --imports: the RSS each import adds to a fresh Node process, median of `runs` processes. */
async function imports(runs: number): Promise<void> {
  // Bundled like `npm run build:agent`: the project's code inside, packages from node_modules
  // (so the bundles must sit inside the project for those imports to resolve).
  const out = path.join(ROOT, "dist/bench-imports");
  mkdirSync(out, { recursive: true });
  const empty = path.join(out, "empty.mjs");
  writeFileSync(empty, "export {};\n");
  const bundle = async (entry: string, file: string) => {
    const outfile = path.join(out, file);
    await build({
      entryPoints: [path.join(ROOT, entry)],
      bundle: true,
      packages: "external",
      platform: "node",
      format: "esm",
      target: "node20",
      logLevel: "warning",
      outfile,
    });
    return pathToFileURL(outfile).href;
  };
  const coordinator = await bundle("coordinator.ts", "coordinator.mjs");
  const mesh = await bundle("mesh/index.ts", "mesh.mjs");
  const cases: ImportCase[] = [
    {
      label: "an empty module (the loader's own cost)",
      preload: [],
      spec: pathToFileURL(empty).href,
    },
    { label: "zod", preload: [], spec: "zod" },
    { label: "hono", preload: [], spec: "hono" },
    { label: "libp2p", preload: [], spec: "libp2p" },
    { label: "coordinator.ts bundle (with hono, zod)", preload: [], spec: coordinator },
    { label: "mesh/ bundle (the whole libp2p stack)", preload: [], spec: mesh },
    { label: "zod, mesh already loaded", preload: [mesh], spec: "zod" },
    { label: "coordinator.ts bundle, zod already loaded", preload: ["zod"], spec: coordinator },
    {
      label: "coordinator.ts bundle, mesh and zod already loaded",
      preload: [mesh, "zod"],
      spec: coordinator,
    },
  ];
  console.log(`Node ${process.version}; median of ${runs} fresh processes per row\n`);
  console.log("| import | RSS before MB | after MB | added MB |");
  console.log("| --- | ---: | ---: | ---: |");
  for (const c of cases) {
    const samples = Array.from({ length: runs }, () => measureImport(c));
    const before = median(samples.map((x) => x.before));
    const after = median(samples.map((x) => x.after));
    const added = median(samples.map((x) => x.after - x.before));
    console.log(
      `| ${c.label} | ${before.toFixed(1)} | ${after.toFixed(1)} | ${added.toFixed(1)} |`,
    );
  }
  rmSync(out, { recursive: true, force: true });
}

async function main(): Promise<void> {
  if (values.imports) {
    await imports(Number(values.runs));
    process.exit(0);
  }
  execFileSync("npm", ["run", "--silent", "build:agent"], { cwd: ROOT, stdio: "inherit" });
  // One sample service every agent detects, and a coordinator the leader reports to.
  const service = http.createServer((_req, res) => res.end("ok"));
  await new Promise<void>((r) => service.listen(0, "127.0.0.1", r));
  const servicePort = (service.address() as AddressInfo).port;
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
    results.push(await run("built", ["dist/agent/rollcall-agent.mjs"], url, manifest));
    results.push(await run("tsx", ["--import", "tsx", "agent/cli.ts"], url, manifest));
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
