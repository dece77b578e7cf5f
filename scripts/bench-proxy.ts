/**
 * Proxy benchmark: the same bounded wrk load (50 connections, loopback) against one upstream,
 * directly, through an nginx reverse proxy (keepalive to the upstream), and through the
 * coordinator on Node, Bun and Deno with all of its routing logic on. Prints requests/s,
 * p50/p99 latency and each target's ratio to nginx, as a markdown table.
 *
 *   npm run bench:proxy -- [--rounds 3] [--duration 10] [--connections 50]
 *         [--targets direct,nginx,nginx-auto,node,bun,deno,node-builtin,node-undici,
 *                    hono-node,hono-node-http,hono-node-undici,hono-bun,hono-deno,hono-deno-http]
 *         [--before <checkout>] [--profile node,bun,deno] [--heap node,hono-node-undici]
 *         [--heap-kept node,hono-node-undici]
 *
 * The upstream is nginx returning a static 29-byte JSON answer (one worker process), so the
 * upstream costs every target the same. Ratios are per round (median and range over rounds). The "nginx" proxy runs one worker process, as the
 * coordinator runs one JavaScript thread (the ratios are to it); "nginx-auto" runs one per core,
 * as Debian's default configuration does. "hono-<runtime>" is the reference point: a bare hono
 * app that only fetches the upstream (scripts/bench-proxy-bare.ts), no routing logic, with the
 * runtime's fetch; "hono-node-http", "hono-deno-http" and "hono-node-undici" the same app with
 * the Node starter's node:http client or the undici one. "node" is the Node coordinator with its
 * default client (undici), "node-node-http" with the node:http one. A target with "@before" (e.g. "node@before") runs the coordinator of
 * the checkout given by `--before` (with node_modules), interleaved with this tree's. A target
 * with "~" passes runtime flags to that target only ("node~--max-semi-space-size=32",
 * "hono-node-undici~--max-semi-space-size=64"); a Node coordinator otherwise gets the flags its
 * starter runs with (NODE_FLAGS: `npm run coordinator` passes them), "node~" none.
 * CPU µs per request is the proxy process's own CPU
 * time (all its threads, workers for nginx) over the requests served: robust to a busy machine.
 * `--profile node,bun,deno` runs those coordinators once more under a CPU profiler (`--cpu-prof`;
 * Deno: V8's `--prof`, read by `node --prof-process`) and prints where their CPU time goes.
 * `--heap node,...` (Node and Deno targets) runs those once more under V8's sampling heap
 * profiler (through the inspector, objects a scavenge or a full GC collected included) during the
 * measured load and prints the bytes allocated per request, by function and by area.
 * `--heap-kept node,...` does the same with the objects a scavenge collected left out: what
 * survives the young generation (promoted, pretenured, or still held when the load ends).
 * Needs `apt-get install nginx wrk`.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from "node:fs";
import net from "node:net";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { WebSocket } from "undici";
import { signerFromKey } from "../agent/signer.ts";
import { signRequest } from "../coordinator.ts";
import { NODE_FLAGS } from "./starter.ts";

const ROOT = path.resolve(import.meta.dirname, "..");
const BIN = (name: string) => path.join(ROOT, "node_modules/.bin", name);
const CLUSTER = "bench-cluster-token";
const ADMIN = "bench-admin-token";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    duration: { type: "string", default: "10" },
    connections: { type: "string", default: "50" },
    threads: { type: "string", default: "1" },
    targets: { type: "string", default: "direct,nginx,nginx-auto,node,bun,deno" },
    profile: { type: "string", default: "" },
    heap: { type: "string", default: "" },
    "heap-kept": { type: "string", default: "" },
    before: { type: "string" },
  },
});
const rounds = Number(values.rounds);
const duration = Number(values.duration);
const connections = Number(values.connections);
const targets = (values.targets as string).split(",").map((t) => t.trim());
const work = mkdtempSync(path.join(tmpdir(), "rollcall-bench-proxy-"));

/** A free port on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Waits until something accepts connections on the port (or fails after the deadline). */
async function waitForPort(port: number, deadlineMs = 30_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`Nothing listened on port ${port} in time`);
}

const children = new Set<ChildProcess>();

function start(
  command: string,
  args: string[],
  env: Record<string, string> = {},
  cwd = ROOT,
): ChildProcess {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr?.on("data", (c: Buffer) => {
    err = (err + c.toString()).slice(-2000);
  });
  child.once("exit", (code, signal) => {
    children.delete(child);
    if (code && code !== 0) console.error(`${command} exited with ${code ?? signal}: ${err}`);
  });
  children.add(child);
  return child;
}

async function stop(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

function nginxConf(name: string, port: number, body: string, workers = "1"): string {
  const dir = path.join(work, name);
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, "nginx.conf");
  writeFileSync(
    file,
    `worker_processes ${workers};
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 10000000;
  ${body.replaceAll("PORT", String(port))}
}
`,
  );
  return file;
}

/** Latency text from wrk ("812.00us", "1.20ms", "1.01s") in ms. */
function ms(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text.trim());
  if (!m) return Number.NaN;
  const n = Number(m[1]);
  return m[2] === "us" ? n / 1000 : m[2] === "ms" ? n : m[2] === "s" ? n * 1000 : n * 60_000;
}

interface Result {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  requests: number;
  cpuUsPerRequest: number;
}

const TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

/** CPU seconds (user + system, all threads) used by a process and its children so far. */
function cpuSeconds(pid: number): number {
  let total = 0;
  const visit = (p: number) => {
    const stat = `/proc/${p}/stat`;
    if (!existsSync(stat)) return;
    const fields = readFileSync(stat, "utf8").split(") ")[1]?.split(" ") ?? [];
    total += (Number(fields[11]) + Number(fields[12])) / TICKS; // utime, stime
    const children = `/proc/${p}/task/${p}/children`;
    if (existsSync(children)) {
      for (const c of readFileSync(children, "utf8").trim().split(/\s+/).filter(Boolean)) {
        visit(Number(c));
      }
    }
  };
  visit(pid);
  return total;
}

async function wrk(url: string, seconds: number, pid?: number): Promise<Result> {
  const args = [`-t${values.threads}`, `-c${connections}`, `-d${seconds}s`, "--latency", url];
  const cpuBefore = pid ? cpuSeconds(pid) : 0;
  const out = await new Promise<string>((resolve, reject) => {
    execFile("wrk", args, { timeout: (seconds + 30) * 1000 }, (err, stdout) =>
      err ? reject(err) : resolve(stdout),
    );
  });
  const cpu = pid ? cpuSeconds(pid) - cpuBefore : Number.NaN;
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? Number.NaN);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? Number.NaN);
  const p50 = ms(/^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? "");
  const p99 = ms(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? "");
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const errors = non2xx + (sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0);
  return { rps, p50, p99, errors, requests, cpuUsPerRequest: (cpu * 1e6) / requests };
}

interface Coordinator {
  child: ChildProcess;
  base: string;
}

const COORDINATOR_ENV = {
  ROLLCALL_CLUSTER_TOKEN: CLUSTER,
  ROLLCALL_ADMIN_TOKEN: ADMIN,
  // The upstream is on loopback, which the proxy refuses by default.
  ROLLCALL_UPSTREAM_ALLOW: "loopback",
};

/** Deno reads its packages as `deno task` does (deno.json), so a run never rewrites deno.lock. */
const DENO_ENV = { DENO_NO_PACKAGE_JSON: "1" };

/** The bare hono proxy (the reference point) on a runtime. */
async function startBare(
  kind: string,
  upstream: string,
  runtimeArgs: string[] = [],
): Promise<Coordinator> {
  const port = await freePort();
  // "node-undici~--max-semi-space-size=64": runtime flags for this bare proxy only.
  const [spec, ...flagList] = kind.split("~") as [string, ...string[]];
  runtimeArgs = [...flagList.filter(Boolean), ...runtimeArgs];
  const [runtime, client] = spec.split("-") as [string, string | undefined];
  const env = {
    UPSTREAM: upstream,
    PORT: String(port),
    ...(client ? { CLIENT: client === "http" ? "node-http" : client } : {}),
  };
  const file = "scripts/bench-proxy-bare.ts";
  const child =
    runtime === "node"
      ? start(process.execPath, [...runtimeArgs, "--import", "tsx", file], env)
      : runtime === "bun"
        ? start(BIN("bun"), [...runtimeArgs, file], env)
        : start(BIN("deno"), ["run", "-A", ...runtimeArgs, file], { ...env, ...DENO_ENV });
  await waitForPort(port);
  return { child, base: `http://127.0.0.1:${port}` };
}

async function startCoordinator(target: string, runtimeArgs: string[] = []): Promise<Coordinator> {
  const port = await freePort();
  const [spec, tree] = target.split("@") as [string, string | undefined];
  // "node~--max-semi-space-size=32": that runtime flag for this target only, instead of the
  // starter's own (NODE_FLAGS, as `npm run coordinator` passes them); "node~": V8's defaults.
  // A `--before` tree gets the same flags (its starter has had them since run 9).
  const [kind, ...flagList] = spec.split("~") as [string, ...string[]];
  const own = kind.startsWith("node") ? NODE_FLAGS : [];
  runtimeArgs = [...(spec.includes("~") ? flagList.filter(Boolean) : own), ...runtimeArgs];
  const cwd = tree === "before" ? path.resolve(values.before as string) : ROOT;
  const dir = mkdtempSync(path.join(work, `${kind}-`));
  const flags = ["--port", String(port)];
  let child: ChildProcess;
  if (kind.startsWith("node")) {
    const client = kind.slice(5); // "" (the default: undici), "builtin", "undici", "node-http"
    child = start(
      process.execPath,
      [
        ...runtimeArgs,
        "--import",
        "tsx",
        "scripts/start-node.ts",
        ...flags,
        "--data",
        `${dir}/c.json`,
      ],
      { ...COORDINATOR_ENV, ...(client ? { ROLLCALL_NODE_FETCH: client } : {}) },
      cwd,
    );
  } else if (kind === "bun") {
    child = start(
      BIN("bun"),
      [...runtimeArgs, "scripts/start-bun.ts", ...flags, "--data", `${dir}/c.json`],
      COORDINATOR_ENV,
      cwd,
    );
  } else {
    child = start(
      BIN("deno"),
      [
        "run",
        "-A",
        "--unstable-kv",
        ...runtimeArgs,
        "scripts/start-deno.ts",
        ...flags,
        "--kv",
        `${dir}/kv`,
      ],
      { ...COORDINATOR_ENV, ...DENO_ENV },
      cwd,
    );
  }
  await waitForPort(port);
  return { child, base: `http://127.0.0.1:${port}` };
}

/** A coordinator (registered with one provider at `upstream`) or a bare hono proxy. */
async function startTarget(
  target: string,
  upstream: string,
  runtimeArgs: string[] = [],
): Promise<Coordinator> {
  if (target.startsWith("hono-")) return startBare(target.slice(5), upstream, runtimeArgs);
  const coordinator = await startCoordinator(target, runtimeArgs);
  await register(coordinator.base, upstream);
  return coordinator;
}

/** Reports a one-member cluster whose leader is a fresh key (reports are signed by their leader). */
async function register(base: string, upstream: string): Promise<void> {
  const signer = signerFromKey(await generateKeyPair("Ed25519"));
  const path = "/api/cluster/heartbeat";
  const body = JSON.stringify({
    leader_id: signer.id,
    term: 1,
    sequence: 1,
    members: [
      {
        worker_id: signer.id,
        status: "online",
        url: upstream,
        services: [{ name: "echo", url: `${upstream}/service/echo` }],
      },
    ],
  });
  const signature = await signRequest({
    method: "POST",
    path,
    body,
    signer: signer.id,
    sign: (d) => signer.sign(d),
    now: Date.now(),
  });
  const res = await fetch(`${base}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      authorization: `Bearer ${CLUSTER}`,
      ...signature,
    },
    body,
  });
  if (res.status !== 200) throw new Error(`${path} answered ${res.status}: ${await res.text()}`);
}

/**
 * Sums a Node CPU profile's self time by function and by area; given the requests served while
 * it was taken, also as µs per request (comparable between targets, whatever their speed).
 */
function summarizeProfile(file: string, requests?: number): string {
  const profile = JSON.parse(readFileSync(file, "utf8")) as {
    nodes: {
      id: number;
      callFrame: { functionName: string; url: string; lineNumber: number };
      hitCount?: number;
    }[];
    samples: number[];
    timeDeltas: number[];
  };
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  profile.samples.forEach((id, i) => {
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fns = new Map<string, number>();
  const areas = new Map<string, number>();
  const area = (url: string, name: string): string => {
    if (name === "(idle)") return "idle";
    if (name === "(garbage collector)") return "garbage collector";
    if (name === "(program)") return "native (program)";
    // Deno's inspector reports node:http traffic to an attached debugger: the profiler's cost.
    if (name === "op_inspector_emit_protocol_event" || url.includes("inspector_network_bridge")) {
      return "profiler (Deno inspector events)";
    }
    if (url.includes("/coordinator.ts")) return "coordinator.ts";
    if (url.includes("node-fetch.ts")) return "scripts/node-fetch.ts (upstream client)";
    if (url.includes("@hono/node-server")) return "@hono/node-server";
    if (url.includes("/hono/")) return "hono";
    if (url.includes("undici")) return "undici (web streams, Headers, fetch)";
    if (url.startsWith("node:internal/webstreams")) return "node web streams";
    if (url.startsWith("node:")) return "node internals (http, net, streams, timers)";
    if (url.startsWith("ext:")) return "deno runtime JS (ext:, its node:http layer too)";
    if (url === "") return "native / runtime";
    return "other";
  };
  for (const [id, t] of self) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const key = `${functionName || "(anonymous)"} ${url.replace(/^.*\/(?=[^/]+\/[^/]+$)/, "")}:${lineNumber + 1}`;
    fns.set(key, (fns.get(key) ?? 0) + t);
    const a = area(url, functionName);
    areas.set(a, (areas.get(a) ?? 0) + t);
  }
  // Self time per request (timeDeltas are µs), when the profile covers exactly the measured load.
  const per = (t: number) => (requests ? `  ${(t / requests).toFixed(2).padStart(7)} µs/req` : "");
  const pct = (t: number) => `${((100 * t) / total).toFixed(1)} %${per(t)}`;
  const busy =
    total - (areas.get("idle") ?? 0) - (areas.get("profiler (Deno inspector events)") ?? 0);
  const lines = [
    `Self time by area (share of all samples; busy = not idle${requests ? `; ${requests} requests` : ""}):`,
    "",
  ];
  for (const [a, t] of [...areas].sort((x, y) => y[1] - x[1])) {
    lines.push(`  ${pct(t).padStart(7)}  ${a}`);
  }
  lines.push(
    "",
    `Busy (not idle, not the profiler): ${pct(busy)}. Top functions by self time:`,
    "",
  );
  for (const [f, t] of [...fns].sort((x, y) => y[1] - x[1]).slice(0, 25)) {
    lines.push(`  ${pct(t).padStart(7)}  ${f}`);
  }
  lines.push("", "coordinator.ts by self time, share of busy time:", "");
  const own = [...fns].filter(([f]) => f.includes("coordinator.ts:")).sort((x, y) => y[1] - x[1]);
  for (const [f, t] of own.slice(0, 15)) {
    lines.push(`  ${((100 * t) / busy).toFixed(1).padStart(5)} %${per(t)}  ${f}`);
  }
  return lines.join("\n");
}

/**
 * Sums a sampling heap profile (V8's, collected objects included) by allocating function and by
 * area: bytes allocated per request over the `requests` served while it was taken.
 */
function summarizeHeap(file: string, requests: number): string {
  interface HeapNode {
    callFrame: { functionName: string; url: string; lineNumber: number };
    selfSize: number;
    children: HeapNode[];
  }
  const { head } = JSON.parse(readFileSync(file, "utf8")) as { head: HeapNode };
  const fns = new Map<string, number>();
  const files = new Map<string, number>();
  let total = 0;
  const visit = (n: HeapNode) => {
    const { functionName, url, lineNumber } = n.callFrame;
    if (n.selfSize > 0) {
      const where = url.replace(/^.*\/(?=[^/]+\/[^/]+$)/, "");
      const key = `${functionName || "(anonymous)"} ${where}:${lineNumber + 1}`;
      fns.set(key, (fns.get(key) ?? 0) + n.selfSize);
      const area = url === "" ? "(native / runtime)" : where.replace(/:\d+$/, "");
      files.set(area, (files.get(area) ?? 0) + n.selfSize);
      total += n.selfSize;
    }
    for (const c of n.children) visit(c);
  };
  visit(head);
  const per = (bytes: number) => `${(bytes / requests).toFixed(0).padStart(6)} B/req`;
  const lines = [
    `Allocated ${per(total)} (${requests} requests). By file:`,
    "",
    ...[...files]
      .sort((x, y) => y[1] - x[1])
      .slice(0, 15)
      .map(([f, b]) => `  ${per(b)}  ${f}`),
    "",
    "Top functions by bytes allocated:",
    "",
    ...[...fns]
      .sort((x, y) => y[1] - x[1])
      .slice(0, 30)
      .map(([f, b]) => `  ${per(b)}  ${f}`),
  ];
  return lines.join("\n");
}

/**
 * The bare hono proxies a target compares with: on its runtime's fetch, and on the same
 * upstream client (the node:http one for the Node and Deno coordinators, undici for node-undici).
 */
function bareOf(target: string): { fetch: string; client: string } | null {
  const kind = (target.split("@")[0] as string).split("~")[0] as string;
  if (kind.startsWith("hono-") || !/^(node|bun|deno)/.test(kind)) return null;
  if (kind === "bun") return { fetch: "hono-bun", client: "hono-bun" };
  if (kind === "deno") return { fetch: "hono-deno", client: "hono-deno-http" };
  if (kind === "node-builtin") return { fetch: "hono-node", client: "hono-node" };
  if (kind === "node-node-http") return { fetch: "hono-node", client: "hono-node-http" };
  return { fetch: "hono-node", client: "hono-node-undici" }; // node, node-undici
}

/**
 * Runs a target once more under a CPU profiler with the same load; returns the profile's path
 * and, when the profile covers only the measured load, the requests served in it. Bun writes
 * one with `--cpu-prof` (start to exit); Node and Deno (2.9 has no such flag) are profiled
 * through their inspector, with the DevTools protocol's sampling profiler (the same profile
 * format), started after the warm-up and stopped when the load ends.
 */
async function profileTarget(
  target: string,
  upstream: string,
  heap: false | "all" | "kept" = false,
): Promise<{ file: string; requests?: number } | null> {
  const dir = path.join(
    work,
    `${heap ? `heap-${heap}` : "profile"}-${target.replace(/[^\w-]/g, "_")}`,
  );
  mkdirSync(dir);
  const url = (c: Coordinator) => `${c.base}/api/service/echo/hello`;
  if (target.replace(/^hono-/, "").startsWith("bun")) {
    if (heap) return null; // Bun has no V8 inspector
    const c = await startTarget(target, upstream, ["--cpu-prof", `--cpu-prof-dir=${dir}`]);
    await wrk(url(c), Math.min(3, duration));
    await wrk(url(c), duration);
    await stop(c.child, "SIGINT");
    await new Promise((r) => setTimeout(r, 500));
    const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"));
    return file ? { file: path.join(dir, file) } : null;
  }
  const inspectPort = await freePort();
  const c = await startTarget(target, upstream, [`--inspect=127.0.0.1:${inspectPort}`]);
  try {
    await wrk(url(c), Math.min(3, duration));
    const list = (await (await fetch(`http://127.0.0.1:${inspectPort}/json/list`)).json()) as {
      webSocketDebuggerUrl: string;
    }[];
    const session = await inspector(list[0]?.webSocketDebuggerUrl as string);
    let requests: number;
    let profile: unknown;
    if (heap) {
      await session.call("HeapProfiler.enable");
      await session.call("HeapProfiler.startSampling", {
        samplingInterval: 1024,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: heap === "all",
      });
      ({ requests } = await wrk(url(c), duration));
      ({ profile } = (await session.call("HeapProfiler.stopSampling")) as { profile: unknown });
    } else {
      await session.call("Profiler.enable");
      await session.call("Profiler.setSamplingInterval", { interval: 1000 });
      await session.call("Profiler.start");
      ({ requests } = await wrk(url(c), duration));
      ({ profile } = (await session.call("Profiler.stop")) as { profile: unknown });
    }
    session.close();
    const file = path.join(
      dir,
      `${target.replace(/[^\w-]/g, "_")}.${heap ? "heapprofile" : "cpuprofile"}`,
    );
    writeFileSync(file, JSON.stringify(profile));
    return { file, requests };
  } finally {
    await stop(c.child);
  }
}

/** A DevTools protocol session over a WebSocket: `call` sends a command and awaits its result. */
async function inspector(wsUrl: string) {
  const ws = new WebSocket(wsUrl);
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("error", reject, { once: true });
  });
  let id = 0;
  const waiting = new Map<number, (result: unknown) => void>();
  ws.addEventListener("message", (event) => {
    const msg = JSON.parse(String(event.data)) as { id?: number; result?: unknown };
    if (msg.id !== undefined) waiting.get(msg.id)?.(msg.result);
  });
  return {
    call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
      const n = ++id;
      return new Promise((resolve) => {
        waiting.set(n, resolve);
        ws.send(JSON.stringify({ id: n, method, params }));
      });
    },
    close: () => ws.close(),
  };
}

async function main(): Promise<void> {
  const upPort = await freePort();
  const proxyPort = await freePort();
  const upstream = `http://127.0.0.1:${upPort}`;
  const upConf = nginxConf(
    "upstream",
    upPort,
    `server {
    listen 127.0.0.1:PORT;
    location / { default_type application/json; return 200 '{"service":"echo","ok":true}'; }
  }`,
  );
  const proxy = `upstream up { server 127.0.0.1:${upPort}; keepalive 64; }
  server {
    listen 127.0.0.1:PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }`;
  const proxyConf = nginxConf("proxy", proxyPort, proxy);
  const autoPort = await freePort();
  const autoConf = nginxConf("proxy-auto", autoPort, proxy, "auto");
  const nginxUp = start("nginx", ["-c", upConf]);
  const nginxProxy = start("nginx", ["-c", proxyConf]);
  const nginxAuto = start("nginx", ["-c", autoConf]);
  await Promise.all([waitForPort(upPort), waitForPort(proxyPort), waitForPort(autoPort)]);
  const path1 = "/service/echo/hello";
  const results = new Map<string, Result[]>();
  const loads: string[] = [];
  console.log(
    `wrk -t${values.threads} -c${connections} -d${duration}s, ${rounds} round(s); load before: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  for (let round = 1; round <= rounds; round++) {
    loads.push(
      loadavg()
        .map((l) => l.toFixed(2))
        .join(" "),
    );
    for (const target of targets) {
      let url: string;
      let pid: number | undefined;
      let coordinator: Coordinator | null = null;
      if (target === "direct") {
        url = `${upstream}${path1}`;
        pid = nginxUp.pid;
      } else if (target === "nginx" || target === "nginx-auto") {
        url = `http://127.0.0.1:${target === "nginx" ? proxyPort : autoPort}${path1}`;
        pid = (target === "nginx" ? nginxProxy : nginxAuto).pid;
      } else {
        coordinator = await startTarget(target, upstream);
        url = `${coordinator.base}/api/service/echo/hello`;
        pid = coordinator.child.pid;
      }
      await wrk(url, Math.min(3, duration)); // warm up: JIT, connection pools
      const r = await wrk(url, duration, pid);
      if (coordinator) await stop(coordinator.child);
      const list = results.get(target) ?? [];
      list.push(r);
      results.set(target, list);
      console.log(
        `round ${round} ${target.padEnd(12)} ${r.rps.toFixed(0).padStart(7)} req/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  CPU ${r.cpuUsPerRequest.toFixed(1)} µs/req  errors ${r.errors}`,
      );
    }
  }
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor((s.length - 1) / 2)] as number;
  };
  // Ratios are taken round by round (against nginx measured minutes apart, not across a run
  // whose machine load changes), then their median and range are shown.
  const ratios = (basis: string, list: Result[]) => {
    const base = results.get(basis);
    if (!base) return "-"; // that basis was not among the targets
    const r = list.map((x, i) => x.rps / (base[i]?.rps ?? Number.NaN));
    return `${median(r).toFixed(2)} (${Math.min(...r).toFixed(2)}-${Math.max(...r).toFixed(2)})`;
  };
  console.log(
    `\n| Target | req/s (median of ${rounds}) | spread | p50 ms | p99 ms | CPU µs/req | x nginx | x nginx-auto | x hono (fetch) | x hono (same client) | errors |`,
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const target of rounds > 0 ? targets : []) {
    const list = results.get(target) ?? [];
    const rps = list.map((r) => r.rps);
    const m = median(rps);
    const spread = `${Math.min(...rps).toFixed(0)}-${Math.max(...rps).toFixed(0)}`;
    const bare = bareOf(target);
    console.log(
      `| ${target} | ${m.toFixed(0)} | ${spread} | ${median(list.map((r) => r.p50)).toFixed(2)} | ${median(list.map((r) => r.p99)).toFixed(2)} | ${median(list.map((r) => r.cpuUsPerRequest)).toFixed(1)} | ${ratios("nginx", list)} | ${ratios("nginx-auto", list)} | ${bare ? ratios(bare.fetch, list) : "-"} | ${bare ? ratios(bare.client, list) : "-"} | ${list.reduce((a, r) => a + r.errors, 0)} |`,
    );
  }
  console.log(`\nLoad average (1, 5, 15 min) at the start of each round: ${loads.join("; ")}`);
  for (const target of (values.profile as string).split(",").filter(Boolean)) {
    const got = await profileTarget(target, upstream);
    console.log(
      got
        ? `\nCPU profile of ${target} under the same load (${got.file}):\n\n${summarizeProfile(got.file, got.requests)}`
        : `\nNo CPU profile was written for ${target}.`,
    );
  }
  for (const kind of ["all", "kept"] as const) {
    const list = (kind === "all" ? values.heap : values["heap-kept"]) as string;
    for (const target of list.split(",").filter(Boolean)) {
      const got = await profileTarget(target, upstream, kind);
      const what = kind === "all" ? "Heap allocation" : "Allocation surviving a scavenge";
      console.log(
        got?.requests
          ? `\n${what} of ${target} under the same load (${got.file}):\n\n${summarizeHeap(got.file, got.requests)}`
          : `\nNo heap profile was taken for ${target}.`,
      );
    }
  }
  await Promise.all([
    stop(nginxUp, "SIGQUIT"),
    stop(nginxProxy, "SIGQUIT"),
    stop(nginxAuto, "SIGQUIT"),
  ]);
}

const cleanup = () => {
  for (const child of children) child.kill("SIGKILL");
};
process.once("SIGINT", () => {
  cleanup();
  process.exit(130);
});
main().then(
  () => cleanup(),
  (err) => {
    console.error(err);
    cleanup();
    process.exit(1);
  },
);
