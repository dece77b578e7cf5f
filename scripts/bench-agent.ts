/**
 * Per-agent memory and idle CPU of the whole agent (mesh, gateway, service detection, leader
 * reporting), N agents in mesh mode on loopback reporting to a coordinator, run several ways in
 * the same script (`--ways`, in this order):
 *
 * - `rollcall`: `node dist/rollcall.mjs agent` (`npm run build:agent`: the command a worker runs);
 * - `built`: `node dist/agent/rollcall-agent.mjs` (the agent-only bundle of the same build);
 * - `external`: our code bundled by esbuild unminified, the libraries from node_modules, so a CPU
 *   profile names functions and packages (`--cpu-prof` defaults to this way);
 * - `tsx`: `node --import tsx agent/cli.ts` (as `npm run dev` runs agents);
 * - a path ending in `.mjs`: `node <path> agent`, another build of dist/rollcall.mjs (a copy of
 *   main's, for before and after in one run).
 *
 * Every agent runs with a small preload (`--import`): on SIGUSR2 it writes its
 * `process.memoryUsage()` and V8 heap spaces to a file, and with `--cpu-prof` it starts the
 * in-process profiler at the idle window's start and writes the profile at its end, so the
 * profile holds the idle window only (not the start). Per agent the table names its role (the
 * leader, agent 0 = everyone's bootstrap target) with its RSS, heap, external and array
 * buffers. `--repeat R` runs each (way, N) R times. Bounded: one idle window per run, every
 * process stopped at the end.
 *
 * `--imports` measures instead what single imports cost: RSS of a fresh Node process after
 * `import()` of zod, hono, libp2p, the coordinator and the mesh (each bundled as the built
 * agent bundles them), minus before; a few seconds.
 *
 *   npm run bench:agent -- [--n 10,20] [--idle-s 60] [--ways rollcall,tsx] [--repeat 1]
 *     [--node-flags=--max-semi-space-size=1] [--cpu-prof [--top 25] [--prof-dir dir]] [--json out.json]
 *     [--watchers 3]
 *   npm run bench:agent -- --imports [--runs 5]
 */
import { execFileSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
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
import { type CpuProfile, report } from "./cpu-profile.ts";

const { values } = parseArgs({
  options: {
    n: { type: "string", default: "10" },
    "idle-s": { type: "string", default: "60" },
    ways: { type: "string" },
    repeat: { type: "string", default: "1" },
    "node-flags": { type: "string", default: "" },
    "cpu-prof": { type: "boolean", default: false },
    top: { type: "string", default: "25" },
    "prof-dir": { type: "string" },
    json: { type: "string" },
    imports: { type: "boolean", default: false },
    // The watch ring (--mesh-watchers of the agent): heartbeats to this many watchers.
    watchers: { type: "string" },
    // Print the last lines of every agent's output after each run (to see what a busy one does).
    logs: { type: "boolean", default: false },
    runs: { type: "string", default: "5" },
  },
});
const SIZES = values.n.split(",").map(Number);
const IDLE_S = Number(values["idle-s"]);
const WAYS = (values.ways ?? (values["cpu-prof"] ? "external" : "rollcall,tsx")).split(",");
const NODE_FLAGS = values["node-flags"].split(" ").filter(Boolean);
/** Clock ticks per second in /proc/<pid>/stat (USER_HZ). */
const TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const rssMb = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
/** CPU ticks per thread: "main" (JavaScript), the others by name (Node 20 names most "node"). */
const threadTicks = (pid: number) => {
  const by = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const comm = st.slice(st.indexOf("(") + 1, st.lastIndexOf(")"));
      const name = tid === String(pid) ? "main" : comm;
      const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
      by.set(name, (by.get(name) ?? 0) + Number(f[11]) + Number(f[12]));
    } catch {} // the thread ended
  }
  return by;
};
const cpuTicks = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return Number(fields[11]) + Number(fields[12]); // utime + stime
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The preload every agent gets: SIGUSR2 writes memory figures to `$ROLLCALL_BENCH_PROBE.mem.json`;
 * with `$ROLLCALL_BENCH_PROFILE` set, the first SIGUSR2 also starts the profiler, the second
 * writes the profile to `$ROLLCALL_BENCH_PROBE.cpuprofile`.
 */
const PROBE = `
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { getHeapSpaceStatistics, getHeapStatistics } from "node:v8";
const out = process.env.ROLLCALL_BENCH_PROBE;
let session;
let profiling = false;
process.on("SIGUSR2", () => {
  const spaces = Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, s.space_size]));
  const h = getHeapStatistics();
  const v8 = { physical: h.total_physical_size, malloced: h.malloced_memory, peakMalloced: h.peak_malloced_memory };
  writeFileSync(out + ".mem.json", JSON.stringify({ ...process.memoryUsage(), spaces, v8 }));
  if (!process.env.ROLLCALL_BENCH_PROFILE) return;
  if (!profiling) {
    profiling = true;
    session = new Session();
    session.connect();
    session.post("Profiler.enable", () =>
      session.post("Profiler.setSamplingInterval", { interval: 4000 }, () =>
        session.post("Profiler.start"),
      ),
    );
  } else {
    session.post("Profiler.stop", (err, r) => {
      writeFileSync(out + ".cpuprofile", err ? "{}" : JSON.stringify(r.profile));
      session.disconnect();
    });
  }
});
`;

/** What the probe writes. */
interface Memory {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  spaces: Record<string, number>;
  v8: { physical: number; malloced: number; peakMalloced: number };
}

/**
 * Where a process's resident memory is, from /proc/<pid>/smaps (MB): file-backed (code of node
 * and its libraries), the brk heap (glibc's main malloc arena), glibc's other malloc arenas
 * (anonymous mappings aligned to their 64 MB reservation), thread stacks and every other
 * anonymous mapping (V8's heap pages and code space, mostly).
 */
function residentBy(pid: number) {
  const by = { file: 0, brk: 0, arenas: 0, arenaCount: 0, stack: 0, anonOther: 0 };
  let kind: keyof typeof by | undefined;
  for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const [, start, , , name] = head as unknown as string[];
      const aligned = BigInt(`0x${start}`) % BigInt(64 * MB) === 0n;
      if (name === "[heap]") kind = "brk";
      else if (name?.startsWith("[stack")) kind = "stack";
      else if (name && !name.startsWith("[")) kind = "file";
      else if (!name && aligned) kind = "arenas";
      else kind = "anonOther";
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss && kind) {
      const kb = Number(rss[1]);
      by[kind] += kb / 1024;
      if (kind === "arenas" && kb > 0) by.arenaCount++;
    }
  }
  return by;
}

/**
 * Sends SIGUSR2 to each agent and reads the memory figures its probe wrote (the same signal
 * starts or ends a profile, with --cpu-prof).
 */
async function probe(agents: Proc[], files: string[]): Promise<Memory[]> {
  for (const f of files)
    for (const what of ["mem.json", "cpuprofile"])
      if (existsSync(`${f}.${what}`)) unlinkSync(`${f}.${what}`);
  for (const a of agents) a.proc.kill("SIGUSR2");
  return collect(files, "mem.json");
}

/** Reads what each agent's probe wrote, once every file is there. */
async function collect(files: string[], what: "mem.json" | "cpuprofile") {
  await pollUntil(
    `every agent's ${what}`,
    async () => (files.every((f) => existsSync(`${f}.${what}`)) ? true : undefined),
    30_000,
    50,
  );
  await sleep(200); // the write that created the file may still be going on
  return files.map((f) => JSON.parse(readFileSync(`${f}.${what}`, "utf8")));
}

const MB = 2 ** 20;
/** Runs so far in this process (each gets its own cluster name). */
let runs = 0;

/** Runs N agents with `node <argv>` (plus their flags), measures them, stops them. */
async function run(
  name: string,
  argv: { node: string[]; script: string[]; env: Record<string, string> },
  n: number,
  coordinator: string,
  manifest: string,
  probeFile: string,
) {
  const dir = mkdtempSync(path.join(tmpdir(), `rollcall-bench-agent-${name}-`));
  // A cluster name of its own per run: the coordinator remembers the members a cluster's leaders
  // listed, and refuses a leader from a wholly new set of members (the previous run's cluster).
  const cluster = `bench-${++runs}`;
  const agents: Proc[] = [];
  const files: string[] = [];
  try {
    const t0 = Date.now();
    let bootstrap = "";
    for (let i = 0; i < n; i++) {
      const gateway = await freePort();
      const args = [
        ...["--coordinator", coordinator, "--data-dir", path.join(dir, String(i))],
        ...["--cluster", cluster],
        ...["--listen", `127.0.0.1:${gateway}`, "--mesh-listen", "/ip4/127.0.0.1/tcp/0"],
        ...["--services", manifest, "--public-url", `http://127.0.0.1:${gateway}`],
      ];
      if (bootstrap) args.push("--bootstrap", bootstrap);
      if (values.watchers) args.push("--mesh-watchers", values.watchers);
      files.push(path.join(dir, `probe-${i}`));
      const env: Record<string, string> = {
        ...argv.env,
        ROLLCALL_BENCH_PROBE: files[i] as string,
      };
      if (values["cpu-prof"]) env.ROLLCALL_BENCH_PROFILE = "1";
      const a = startNode(
        `${name}-${i}`,
        [...argv.node, "--import", pathToFileURL(probeFile).href, ...argv.script, ...args],
        env,
      );
      agents.push(a);
      if (i === 0) {
        const line = await a.waitForLine(/Mesh listening on/, 30_000);
        bootstrap = /Mesh listening on (\S+)/.exec(line)?.[1] ?? "";
      }
    }
    const ups = (a: Proc) => (a.output().match(/Member up: /g) ?? []).length;
    await pollUntil(
      "every agent to see every other",
      async () => (agents.every((a) => ups(a) >= n - 1) ? true : undefined),
      180_000,
      100,
    ).catch((err) => {
      console.error(`members seen per agent: ${agents.map(ups).join(" ")}`);
      const worst = agents.reduce((a, b) => (ups(b) < ups(a) ? b : a));
      console.error(`${worst.name}'s output:\n${worst.output().slice(-4000)}`);
      throw err;
    });
    const convergeS = (Date.now() - t0) / 1000;
    await sleep(5000); // let the start settle
    const pids = agents.map((a) => a.proc.pid as number);
    const memBefore = await probe(agents, files);
    const before = pids.map(cpuTicks);
    const threadsBefore = pids.map(threadTicks);
    const started = Date.now();
    await sleep(IDLE_S * 1000);
    const seconds = (Date.now() - started) / 1000;
    const cpu = pids.map(
      (pid, i) => ((cpuTicks(pid) - (before[i] as number)) / TICKS / seconds) * 100,
    );
    const rss = pids.map(rssMb);
    const resident = pids.map(residentBy);
    const threads = new Map<string, number>();
    for (const [k, pid] of pids.entries())
      for (const [name, t] of threadTicks(pid))
        threads.set(name, (threads.get(name) ?? 0) + t - (threadsBefore[k]?.get(name) ?? 0));
    const threadPct = [...threads]
      .map(([name, t]) => ({ name, pct: Math.round((t / TICKS / seconds / n) * 10000) / 100 }))
      .sort((a, b) => b.pct - a.pct);
    const mem = await probe(agents, files);
    if (values.logs)
      for (const a of agents) console.log(`--- ${a.name}\n${a.output().slice(-1500)}`);
    const profiles: CpuProfile[] = values["cpu-prof"] ? await collect(files, "cpuprofile") : [];
    const leads = (a: Proc) =>
      /: this agent$/.test(
        a
          .output()
          .match(/Leader is [^\n]*/g)
          ?.at(-1) ?? "",
      );
    const each = agents.map((a, i) => ({
      i,
      role: [leads(a) && "leader", i === 0 && "bootstrap"].filter(Boolean).join("+") || "-",
      rssMb: Math.round((rss[i] as number) * 10) / 10,
      cpuPct: Math.round((cpu[i] as number) * 100) / 100,
      heapUsedMb: Math.round(((mem[i] as Memory).heapUsed / MB) * 10) / 10,
      heapTotalMb: Math.round(((mem[i] as Memory).heapTotal / MB) * 10) / 10,
      externalMb: Math.round(((mem[i] as Memory).external / MB) * 10) / 10,
      arrayBuffersMb: Math.round(((mem[i] as Memory).arrayBuffers / MB) * 10) / 10,
      newSpaceMb: Math.round((((mem[i] as Memory).spaces.new_space ?? 0) / MB) * 10) / 10,
      rssGrowthMb:
        Math.round((((mem[i] as Memory).rss - (memBefore[i] as Memory).rss) / MB) * 10) / 10,
      resident: resident[i] as ReturnType<typeof residentBy>,
      mem: mem[i] as Memory,
    }));
    return {
      name,
      n,
      convergeS,
      rssMedian: median(rss),
      rssMax: Math.max(...rss),
      cpuMedian: median(cpu),
      cpuMax: Math.max(...cpu),
      agents: each,
      threadPct,
      profiles,
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

/** Each way's command line before the agent's flags: Node's flags, then the script and its own. */
async function wayArgv(
  spec: string,
): Promise<{ node: string[]; script: string[]; env: Record<string, string> }> {
  // `<way>:NAME=value:...`: the same way with variables in the agents' environment.
  const [way = "", ...vars] = spec.split(":");
  const env = Object.fromEntries(
    vars.map((v) => [v.slice(0, v.indexOf("=")), v.slice(v.indexOf("=") + 1)]),
  );
  return { ...(await wayCommand(way)), env };
}

/** A way's command line before the agent's flags. */
async function wayCommand(way: string): Promise<{ node: string[]; script: string[] }> {
  if (way === "rollcall") return { node: NODE_FLAGS, script: ["dist/rollcall.mjs", "agent"] };
  // Another build of the command (e.g. main's, copied aside): before/after in one run.
  if (way.endsWith(".mjs")) return { node: NODE_FLAGS, script: [path.resolve(way), "agent"] };
  if (way === "built") return { node: NODE_FLAGS, script: ["dist/agent/rollcall-agent.mjs"] };
  if (way === "tsx") return { node: [...NODE_FLAGS, "--import", "tsx"], script: ["agent/cli.ts"] };
  if (way !== "external")
    throw new Error(`Unknown way ${way}: use rollcall, built, external or tsx`);
  const outfile = path.join(ROOT, "dist/bench/rollcall-agent-external.mjs");
  await build({
    entryPoints: [path.join(ROOT, "agent/cli.ts")],
    bundle: true,
    packages: "external",
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
    outfile,
  });
  return { node: NODE_FLAGS, script: [outfile] };
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
  const probeFile = path.join(dir, "probe.mjs");
  writeFileSync(probeFile, PROBE);
  const coordinator = createCoordinator({ liveView: false }, { store: memoryStore() });
  const server = serve({ fetch: coordinator.fetch, port: 0, hostname: "127.0.0.1" });
  await new Promise<void>((r) => server.once("listening", () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  console.log(
    `N = ${SIZES.join(", ")}; ways ${WAYS.join(", ")}${values.watchers ? `; --mesh-watchers ${values.watchers}` : ""}${NODE_FLAGS.length ? ` (node ${NODE_FLAGS.join(" ")})` : ""}; ${values.repeat} run(s) each; idle ${IDLE_S} s; load before: ${readFileSync("/proc/loadavg", "utf8").trim()}`,
  );
  const results = [];
  try {
    for (const n of SIZES)
      for (const way of WAYS)
        for (let r = 0; r < Number(values.repeat); r++) {
          const argv = await wayArgv(way);
          const [file = "", ...vars] = way.split(":");
          const label = [file.endsWith(".mjs") ? path.basename(file, ".mjs") : file, ...vars].join(
            " ",
          );
          const res = await run(label, argv, n, url, manifest, probeFile);
          results.push(res);
          console.log(`\n${label}, N = ${n}, run ${r + 1}: per agent (MB, % of a core)`);
          console.log(
            "| agent | role | RSS | heap used / total | external | array buffers | new space | RSS growth in window | CPU |",
          );
          console.log("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
          for (const a of res.agents)
            console.log(
              `| ${a.i} | ${a.role} | ${a.rssMb} | ${a.heapUsedMb} / ${a.heapTotalMb} | ${a.externalMb} | ${a.arrayBuffersMb} | ${a.newSpaceMb} | ${a.rssGrowthMb} | ${a.cpuPct} |`,
            );
          console.log(
            "\nWhere each agent's RSS is (MB; /proc smaps: file-backed, brk heap, other glibc malloc arenas (count), other anonymous; V8: committed physical, malloced by V8 itself, peak; spaces: old / code / large objects / new)",
          );
          console.log(
            "| agent | RSS | file | brk | arenas (n) | anon other | V8 physical | V8 malloced / peak | old / code / LO / new |",
          );
          console.log("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
          const f1 = (x: number) => (x / MB).toFixed(1);
          for (const a of res.agents) {
            const r = a.resident;
            const sp = a.mem.spaces;
            console.log(
              `| ${a.i} | ${a.rssMb} | ${r.file.toFixed(1)} | ${r.brk.toFixed(1)} | ${r.arenas.toFixed(1)} (${r.arenaCount}) | ${r.anonOther.toFixed(1)} | ${f1(a.mem.v8.physical)} | ${f1(a.mem.v8.malloced)} / ${f1(a.mem.v8.peakMalloced)} | ${f1(sp.old_space ?? 0)} / ${f1(sp.code_space ?? 0)} / ${f1(sp.large_object_space ?? 0)} / ${f1(sp.new_space ?? 0)} |`,
            );
          }
          console.log(
            `CPU per agent by thread (% of a core): ${res.threadPct.map((t) => `${t.name} ${t.pct}`).join(", ")}`,
          );
          const profDir = values["prof-dir"];
          if (profDir) {
            mkdirSync(profDir, { recursive: true });
            for (const [i, p] of res.profiles.entries())
              writeFileSync(
                path.join(profDir, `${label}-n${n}-r${r + 1}-${i}.cpuprofile`),
                JSON.stringify(p),
              );
          }
          if (res.profiles.length > 0) {
            console.log(`\nWhere the idle CPU goes (${label}, N = ${n}, all agents):\n`);
            console.log(report(res.profiles, Number(values.top)));
          }
        }
  } finally {
    server.close();
    service.close();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`\nload after: ${readFileSync("/proc/loadavg", "utf8").trim()}`);
  console.log(
    "\n| agent | N | converge | RSS MB median / max (role of the max) | idle CPU % of a core median / max |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const r of results) {
    const top = r.agents.reduce((a, b) => (b.rssMb > a.rssMb ? b : a));
    console.log(
      `| ${r.name} | ${r.n} | ${r.convergeS.toFixed(1)} s | ${r.rssMedian.toFixed(1)} / ${r.rssMax.toFixed(1)} (${top.role}) | ${r.cpuMedian.toFixed(2)} / ${r.cpuMax.toFixed(2)} |`,
    );
  }
  if (values.json)
    writeFileSync(
      values.json,
      JSON.stringify(
        results.map(({ profiles: _, ...r }) => r),
        null,
        2,
      ),
    );
  process.exit(0);
}

await main();
