/**
 * The whole local cluster on one machine: `npm run dev` (Node) or `deno task dev` (Deno).
 *
 * Starts the coordinator with its embedded persistent store (a file under Node, Deno KV
 * under Deno), three agents in mesh mode on loopback, and small sample services behind
 * them; prints the coordinator URL and commands to try. Ctrl-C stops everything.
 * Once the cluster is up, an agent or a sample service that dies (try `kill -9`) is only
 * logged: the rest keeps running, so failover can be watched. The coordinator's exit, or
 * any exit before the cluster is up, stops everything.
 *
 * Flags: --base-port N (default 8700: coordinator N+87, gateways N+1..3, mesh N+11..13,
 * services N+100+10*i+k), --data DIR (default .data/dev), --fresh (wipe DIR first),
 * --probe-interval S (agents' probe interval, default 10), --help, --version.
 * Environment: ROLLCALL_CLUSTER_TOKEN and ROLLCALL_ADMIN_TOKEN (both, or neither) run the
 * cluster secured, as in production; neither runs it open. The banner says which mode. Secured,
 * ROLLCALL_AGENT_TOKEN (a third, different token) also lets the coordinator read the leader's
 * live view. The coordinator is given ROLLCALL_UPSTREAM_ALLOW=loopback (unless set): every
 * worker of this cluster is on 127.0.0.1, which the proxy refuses by default.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { COORDINATOR_VERSION, ServicesAnswerSchema } from "../coordinator.ts";
import { loadIdentity } from "../mesh/index.ts";

const HELP = `Usage: npm run dev -- [options]   (or: deno task dev [options])

Starts a whole rollcall cluster on loopback: the coordinator, three agents in mesh mode and
sample services behind them. Ctrl-C stops everything.

Options:
  --base-port N       coordinator on N+87, gateways N+1..3, mesh N+11..13 (default 8700)
  --data DIR          where the cluster keeps its state (default .data/dev)
  --fresh             wipe DIR first
  --probe-interval S  the agents' service probe interval in seconds (default 10)
  --help              this text
  --version           print the version and exit
`;

let values: {
  "base-port": string;
  data: string;
  fresh: boolean;
  "probe-interval": string;
  help?: boolean;
  version?: boolean;
};
try {
  ({ values } = parseArgs({
    options: {
      "base-port": { type: "string", default: "8700" },
      data: { type: "string", default: ".data/dev" },
      fresh: { type: "boolean", default: false },
      "probe-interval": { type: "string", default: "10" },
      help: { type: "boolean" },
      version: { type: "boolean" },
    },
  }));
} catch (err) {
  console.error(`rollcall dev: ${(err as Error).message}\nRun with --help for the options.`);
  process.exit(2);
}
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
if (values.version) {
  console.log(`rollcall ${COORDINATOR_VERSION}`);
  process.exit(0);
}

const isDeno = "Deno" in globalThis;
const base = Number(values["base-port"]);
if (!Number.isInteger(base) || base < 1024 || base > 65000) {
  console.error("Invalid --base-port: use a number from 1024 to 65000");
  process.exit(2);
}
const dataDir = resolve(values.data);
// Secured mode: the coordinator and the agents read these from the environment they inherit;
// this script sends the admin token on its own readiness checks. Never printed.
const clusterToken = process.env.ROLLCALL_CLUSTER_TOKEN;
const adminToken = process.env.ROLLCALL_ADMIN_TOKEN;
if (
  (clusterToken === undefined) !== (adminToken === undefined) ||
  clusterToken === "" ||
  adminToken === ""
) {
  console.error(
    "Set both ROLLCALL_CLUSTER_TOKEN and ROLLCALL_ADMIN_TOKEN (non-empty) for a secured cluster, or neither for open local dev",
  );
  process.exit(2);
}
const secured = adminToken !== undefined;
const adminHeaders: Record<string, string> = secured
  ? { authorization: `Bearer ${adminToken}` }
  : {};
const mode = secured
  ? "secured: cluster and admin tokens from ROLLCALL_CLUSTER_TOKEN and ROLLCALL_ADMIN_TOKEN"
  : "open local dev: no tokens, anyone on this machine may register and administer";
const host = "127.0.0.1";
const coordinatorPort = base + 87;
const coordinatorUrl = `http://${host}:${coordinatorPort}`;

/** Which sample services each worker runs; `upload` and `rag` run on two workers each. */
const WORKERS = [
  { services: ["notes", "upload"] },
  { services: ["upload", "rag"] },
  { services: ["rag", "ocr"] },
];

const servicePort = (worker: number, k: number) => base + 100 + 10 * (worker + 1) + k;

const children: { name: string; proc: ChildProcess }[] = [];
let stopping = false;
/** Set once the banner is out: from then on only the coordinator's exit stops the cluster. */
let up = false;

/** Runs a TypeScript file with the same runtime as this script. */
function run(
  name: string,
  file: string,
  args: string[],
  opts: { quiet?: boolean; env?: Record<string, string>; essential?: boolean } = {},
) {
  // Under Deno, packages come from Deno's own cache (deno.json `imports`), as `deno task dev`.
  const runtimeArgs = isDeno
    ? ["run", "--node-modules-dir=none", "-A", "--unstable-kv", file, ...args]
    : ["--import", "tsx", file, ...args];
  const proc = spawn(process.execPath, runtimeArgs, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...opts.env },
  });
  const prefix = `[${name}]`.padEnd(10);
  const print = (chunk: Buffer, err: boolean) => {
    for (const line of chunk.toString("utf8").split("\n")) {
      if (!line.trim()) continue;
      if (opts.quiet && !err) continue;
      (err ? process.stderr : process.stdout).write(`${prefix} ${line}\n`);
    }
  };
  proc.stdout?.on("data", (c: Buffer) => print(c, false));
  proc.stderr?.on("data", (c: Buffer) => print(c, true));
  proc.on("exit", (code, signal) => {
    if (stopping) return;
    if (opts.essential || !up) {
      console.error(`${prefix} exited (${signal ?? code}); stopping the cluster`);
      void shutdown(1);
    } else {
      console.error(`${prefix} exited (${signal ?? code}); the rest of the cluster keeps running`);
    }
  });
  children.push({ name, proc });
  return proc;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((done) => {
    const s = createServer();
    s.once("error", () => done(false));
    s.listen(port, host, () => s.close(() => done(true)));
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (stopping) return;
    try {
      if (await check()) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`Timed out after ${timeoutMs / 1000} s waiting for ${what}`);
}

async function shutdown(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log("\nStopping the local cluster...");
  const exits = children.map(
    ({ proc }) =>
      new Promise<void>((done) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return done();
        proc.once("exit", () => done());
        proc.kill("SIGTERM");
      }),
  );
  const force = setTimeout(() => {
    for (const { proc } of children)
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  }, 5000);
  await Promise.all(exits);
  clearTimeout(force);
  console.log("Everything stopped.");
  process.exit(code);
}

process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));

async function main(): Promise<void> {
  const ports = [
    coordinatorPort,
    ...WORKERS.flatMap((w, i) => [
      base + 1 + i,
      base + 11 + i,
      ...w.services.map((_, k) => servicePort(i, k)),
    ]),
  ];
  const busy: number[] = [];
  for (const p of ports) if (!(await portFree(p))) busy.push(p);
  if (busy.length) {
    console.error(
      `Ports already in use: ${busy.join(", ")}. Stop what uses them, or pass --base-port.`,
    );
    process.exit(2);
  }
  if (values.fresh) rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });

  // Identities first, so every agent can be given the others as bootstrap peers.
  const agents = await Promise.all(
    WORKERS.map(async (w, i) => {
      const dir = join(dataDir, `agent${i + 1}`);
      const identity = await loadIdentity(dir);
      const meshAddr = `/ip4/${host}/tcp/${base + 11 + i}/p2p/${identity.peerId.toString()}`;
      const manifest = join(dir, "services.json");
      const services = w.services.map((name, k) => ({ name, port: servicePort(i, k) }));
      writeFileSync(manifest, `${JSON.stringify({ services }, null, 2)}\n`);
      return {
        i,
        dir,
        meshAddr,
        manifest,
        services,
        id: identity.peerId.toString(),
        name: `worker${i + 1}`,
        gateway: `http://${host}:${base + 1 + i}`,
      };
    }),
  );

  // Every worker of the local cluster is on loopback, which the proxy refuses by default.
  const coordEnv = { ROLLCALL_UPSTREAM_ALLOW: process.env.ROLLCALL_UPSTREAM_ALLOW ?? "loopback" };
  if (isDeno) {
    run(
      "coord",
      "scripts/start-deno.ts",
      ["--port", String(coordinatorPort), "--kv", join(dataDir, "coordinator.kv")],
      { essential: true, env: coordEnv },
    );
  } else {
    run(
      "coord",
      "scripts/start-node.ts",
      ["--port", String(coordinatorPort), "--data", join(dataDir, "coordinator.json")],
      { essential: true, env: coordEnv },
    );
  }
  for (const a of agents) {
    for (const s of a.services) {
      run(
        `${s.name}@${a.i + 1}`,
        "scripts/sample-service.ts",
        ["--name", s.name, "--port", String(s.port), "--worker", `worker${a.i + 1}`],
        { quiet: true },
      );
    }
  }
  await waitFor(
    "the coordinator",
    async () => (await fetch(`${coordinatorUrl}/health`)).ok,
    60_000,
  );
  const agentProcs = agents.map((a) => {
    const others = agents.filter((o) => o !== a).map((o) => o.meshAddr);
    return run(`agent${a.i + 1}`, "agent/cli.ts", [
      "--coordinator",
      coordinatorUrl,
      "--data-dir",
      a.dir,
      "--name",
      a.name,
      "--listen",
      `${host}:${base + 1 + a.i}`,
      "--mesh-listen",
      `/ip4/${host}/tcp/${base + 11 + a.i}`,
      "--bootstrap",
      others.join(","),
      "--services",
      a.manifest,
      "--probe-interval",
      String(values["probe-interval"]),
    ]);
  });
  const expected = new Set(WORKERS.flatMap((w) => w.services));
  await waitFor(
    "the agents to report every service",
    async () => {
      const res = await fetch(`${coordinatorUrl}/api/admin/services`, { headers: adminHeaders });
      if (res.status === 401) throw new Error("the coordinator refused the admin token");
      const body = ServicesAnswerSchema.parse(await res.json());
      return [...expected].every((n) => (body.services[n]?.healthy_workers ?? 0) > 0);
    },
    90_000,
  );
  if (stopping) return;
  up = true;
  const c = coordinatorUrl;
  const auth = secured ? ' -H "Authorization: Bearer $ROLLCALL_ADMIN_TOKEN"' : "";
  console.log(`
rollcall local cluster is up (${isDeno ? "Deno, Deno KV" : "Node, file store"}).

  Mode         ${mode}
  Coordinator  ${c}
  Dashboard    ${c}/admin
  Workers      ${agents.map((a) => a.gateway).join("  ")}
  Agent pids   ${agentProcs.map((p) => p.pid).join("  ")}
  Services     ${[...expected].sort().join(", ")}

  Agents (pid, name, id, gateway):
${agents.map((a, k) => `    agent${a.i + 1}  pid ${agentProcs[k]?.pid}  ${a.name}  ${a.id}  ${a.gateway}`).join("\n")}

Try:
  curl -s${auth} ${c}/api/admin/services          # list services and their healthy workers
  curl -s ${c}/api/service/nope/hello      # a service that does not exist: 503 with the list
  curl -s ${c}/api/service/upload/hello    # a routed call: the answer names the worker
  curl -s${auth} ${c}/api/admin/workers           # list workers, their leader and services
  npx tsx scripts/test-service-discovery.ts ${c}
  npx tsx agent/cli.ts members --agent ${agents[0]?.gateway}    # the members agent 1 sees
  npx tsx agent/cli.ts services --agent ${agents[0]?.gateway}   # services, healthy/total
  npx tsx agent/cli.ts status --agent ${agents[0]?.gateway}     # agent 1: leader, last report
  npx tsx agent/cli.ts drain --agent ${agents[1]?.gateway}      # agent 2 out of rotation (--off: back)

kill -9 a worker's pid to watch the others elect a new leader; Ctrl-C stops everything.
`);
}

main().catch((err) => {
  console.error(`Could not start the local cluster: ${(err as Error).message}`);
  void shutdown(1);
});
