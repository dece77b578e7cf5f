/**
 * Mesh benchmark: N rollcall mesh agents (one process each, scripts/mesh-node.ts, default
 * timings) and N HashiCorp Serf agents (Debian package `serf`, LAN profile), all on loopback.
 * Measures convergence, failover after kill -9 and after SIGSTOP of the leader, Serf's time to
 * mark a killed member failed, and per-agent RSS, idle CPU and bytes/s (tcpdump on lo, filtered
 * to the agents' ports). Bounded: every phase has a deadline; every process is killed at the end.
 *
 *   npm run bench:mesh -- [--n 5,10,20] [--trials 5] [--idle-s 60] [--only mesh|serf]
 *     [--runtime tsx|node|bun|deno] [--node-flags=--max-semi-space-size=1] [--json out.json]
 *     [--stock]
 *
 * --stock runs the mesh agents on the stock TCP/yamux stack (no mesh/lean.ts): with and without
 * it, the bytes and packets per agent show what lean saves.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { loadIdentity } from "../mesh/index.ts";

const { values } = parseArgs({
  options: {
    n: { type: "string", default: "5,10,20" },
    trials: { type: "string", default: "5" },
    "idle-s": { type: "string", default: "60" },
    only: { type: "string" },
    gossip: { type: "string" },
    runtime: { type: "string", default: "tsx" },
    "node-flags": { type: "string", default: "" },
    json: { type: "string" },
    stock: { type: "boolean", default: false },
  },
});
const SIZES = values.n.split(",").map(Number);
const TRIALS = Number(values.trials);
const IDLE_S = Number(values["idle-s"]);
const MESH_PORT = 27000;
const SERF_PORT = 28000;
const SERF_RPC = 29000;
const ROOT = mkdtempSync(join(tmpdir(), "rollcall-bench-"));
const children = new Set<ChildProcess>();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length === 0
    ? Number.NaN
    : s.length % 2
      ? (s[mid] as number)
      : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

async function until<T>(what: string, ms: number, f: () => T | undefined | false): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

function killAll(): void {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
}
process.on("exit", () => {
  killAll();
  rmSync(ROOT, { recursive: true, force: true });
});
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => process.exit(130));

// --- /proc and tcpdump ---------------------------------------------------------------------

/** CPU seconds (user + system) used so far by a process. */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(f[11]) + Number(f[12])) / 100;
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

/** Captures loopback traffic on a port range; stop() returns frame bytes and TCP/UDP payload bytes. */
function capture(filter: string): {
  stop: () => Promise<{ frames: number; payload: number; packets: number }>;
} {
  const file = join(ROOT, `cap-${Date.now()}.pcap`);
  const td = track(
    spawn("tcpdump", ["-i", "lo", "-n", "-s", "128", "-U", "-w", file, filter], {
      stdio: "ignore",
    }),
  );
  return {
    stop: async () => {
      td.kill("SIGINT");
      await new Promise((r) => td.once("exit", r));
      return parsePcap(readFileSync(file));
    },
  };
}

function parsePcap(buf: Buffer): { frames: number; payload: number; packets: number } {
  let off = 24;
  let packets = 0;
  let frames = 0;
  let payload = 0;
  while (off + 16 <= buf.length) {
    const incl = buf.readUInt32LE(off + 8);
    const orig = buf.readUInt32LE(off + 12);
    const pkt = buf.subarray(off + 16, off + 16 + incl);
    frames += orig;
    packets++;
    const ip = 14; // DLT_EN10MB on lo
    const ihl = ((pkt[ip] ?? 0) & 0x0f) * 4;
    const total = pkt.readUInt16BE(ip + 2);
    const proto = pkt[ip + 9];
    const l4 = proto === 6 ? ((pkt[ip + ihl + 12] ?? 0) >> 4) * 4 : 8;
    payload += Math.max(0, total - ihl - l4);
    off += 16 + incl;
  }
  return { frames, payload, packets };
}

/** Per-agent RSS, CPU and loopback bytes over an idle window of IDLE_S seconds. */
async function measureIdle(pids: number[], filter: string, n: number) {
  const cap = capture(filter);
  const cpu0 = pids.map(cpuSeconds);
  await sleep(IDLE_S * 1000);
  const cpu = pids.map((p, k) => ((cpuSeconds(p) - (cpu0[k] as number)) / IDLE_S) * 100);
  const bytes = await cap.stop();
  const rss = pids.map(rssMb);
  return {
    idleS: IDLE_S,
    rssMbMedian: round(median(rss), 1),
    rssMbMax: round(Math.max(...rss), 1),
    cpuPctMedian: round(median(cpu)),
    cpuPctMax: round(Math.max(...cpu)),
    bytesPerSecPerAgent: Math.round(bytes.frames / IDLE_S / n),
    payloadBytesPerSecPerAgent: Math.round(bytes.payload / IDLE_S / n),
    packetsPerSecPerAgent: round(bytes.packets / IDLE_S / n, 1),
  };
}

/**
 * How each mesh agent runs: "tsx" (as npm run dev runs agents), "node" (our TypeScript compiled
 * to one JS file by esbuild, libraries as installed), "bun" or "deno" (both run the TS as is).
 */
async function agentCommand(runtime: string, nodeFlags: string[]): Promise<string[]> {
  if (runtime === "tsx")
    return [process.execPath, ...nodeFlags, "--import", "tsx", "scripts/mesh-node.ts"];
  if (runtime === "bun") return ["node_modules/.bin/bun", "scripts/mesh-node.ts"];
  if (runtime === "deno") return ["node_modules/.bin/deno", "run", "-A", "scripts/mesh-node.ts"];
  if (runtime !== "node")
    throw new Error(`Unknown --runtime ${runtime}: use tsx, node, bun or deno`);
  const out = ".data/bench/mesh-node.mjs";
  const esbuild = (await import("esbuild")) as typeof import("esbuild");
  await esbuild.build({
    entryPoints: ["scripts/mesh-node.ts"],
    bundle: true,
    packages: "external",
    platform: "node",
    format: "esm",
    target: "node20",
    outfile: out,
    logLevel: "warning",
  });
  return [process.execPath, ...nodeFlags, out];
}

// --- the rollcall mesh ---------------------------------------------------------------------

interface Agent {
  i: number;
  dir: string;
  id: string;
  proc?: ChildProcess;
  /** (time, leader id) of every leader event, and member-down events seen. */
  leaders: Array<{ t: number; id: string | null }>;
  downs: Array<{ t: number; id: string; state: string }>;
  alive: Set<string>;
}

function spawnAgent(a: Agent, bootstrap: string[]): Promise<void> {
  a.alive = new Set();
  const args = [
    ...AGENT_COMMAND.slice(1),
    "--data-dir",
    a.dir,
    "--listen",
    `/ip4/127.0.0.1/tcp/${MESH_PORT + a.i}`,
  ];
  for (const b of bootstrap) args.push("--bootstrap", b);
  if (values.gossip) args.push("--gossip", values.gossip);
  if (values.stock) args.push("--stock");
  const proc = track(
    spawn(AGENT_COMMAND[0] as string, args, { stdio: ["ignore", "pipe", "inherit"] }),
  );
  a.proc = proc;
  return new Promise((resolve, reject) => {
    proc.once("exit", () => reject(new Error(`agent ${a.i} exited`)));
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      let l: Record<string, unknown>;
      try {
        l = JSON.parse(line);
      } catch {
        return;
      }
      const t = l.t as number;
      if (l.event === "started") resolve();
      if (l.event === "leader")
        a.leaders.push({ t, id: (l.leader as { id: string } | null)?.id ?? null });
      if (l.event === "member-up") a.alive.add(l.id as string);
      if (l.event === "member-down") {
        a.alive.delete(l.id as string);
        a.downs.push({ t, id: l.id as string, state: l.state as string });
      }
    });
  });
}

const current = (a: Agent) => a.leaders.at(-1)?.id ?? null;

/** When every agent in `group` names the same leader (not `not`), the time the last one switched. */
async function agreed(
  group: Agent[],
  not: string | null,
  ms: number,
): Promise<{ id: string; t: number }> {
  const id = await until("agreement on a leader", ms, () => {
    const l = current(group[0] as Agent);
    return l !== null && l !== not && group.every((a) => current(a) === l) && l;
  });
  let t = 0;
  for (const a of group) {
    let since = a.leaders.length - 1;
    while (since > 0 && a.leaders[since - 1]?.id === id) since--;
    t = Math.max(t, a.leaders[since]?.t ?? 0);
  }
  return { id, t };
}

async function benchMesh(n: number) {
  const dir = mkdtempSync(join(ROOT, `mesh${n}-`));
  const agents: Agent[] = [];
  for (let i = 0; i < n; i++) {
    const d = join(dir, `a${i}`);
    agents.push({
      i,
      dir: d,
      id: (await loadIdentity(d)).peerId.toString(),
      leaders: [],
      downs: [],
      alive: new Set(),
    });
  }
  const seeds = agents.slice(0, 2).map((a) => `/ip4/127.0.0.1/tcp/${MESH_PORT + a.i}/p2p/${a.id}`);
  const t0 = Date.now();
  await Promise.all(agents.map((a) => spawnAgent(a, seeds)));
  const started = Date.now();
  await until("every agent to see all members", 60_000, () =>
    agents.every((a) => a.alive.size === n - 1),
  ).catch((err) => {
    log(`members seen per agent: ${agents.map((a) => a.alive.size).join(" ")}`);
    throw err;
  });
  const membersAt = Date.now();
  const first = await agreed(agents, null, 60_000);
  const res: Record<string, unknown> = {
    n,
    spawnToStartedS: round((started - t0) / 1000),
    membersConvergedS: round((membersAt - started) / 1000),
    leaderConvergedS: round((Math.max(first.t, membersAt) - started) / 1000),
  };
  log(
    `mesh n=${n}: converged (members ${res.membersConvergedS}s, leader ${res.leaderConvergedS}s after the last start)`,
  );

  // Idle window: bytes, CPU, RSS, false suspicions.
  await sleep(5000);
  const downsBefore = agents.reduce((s, a) => s + a.downs.length, 0);
  const pids = agents.map((a) => a.proc?.pid as number);
  Object.assign(res, await measureIdle(pids, `tcp portrange ${MESH_PORT}-${MESH_PORT + n - 1}`, n));
  res.falseSuspicionsIdle = agents.reduce((s, a) => s + a.downs.length, 0) - downsBefore;
  log(`mesh n=${n}: idle ${JSON.stringify(res)}`);

  // Failover trials: kill -9 the leader, then SIGSTOP it; restart it with its key each time.
  for (const [kind, signal] of [
    ["crash", "SIGKILL"],
    ["silent", "SIGSTOP"],
  ] as const) {
    const times: number[] = [];
    for (let k = 0; k < TRIALS; k++) {
      const leader = await agreed(agents, null, 60_000);
      const victim = agents.find((a) => a.id === leader.id) as Agent;
      const rest = agents.filter((a) => a !== victim);
      const killedAt = Date.now();
      victim.proc?.kill(signal);
      const next = await agreed(rest, leader.id, 30_000).catch(() => null);
      if (next) times.push(next.t - killedAt);
      log(
        `mesh n=${n} ${kind} #${k + 1}: ${next ? `${next.t - killedAt} ms` : "no agreement in 30 s"}`,
      );
      if (signal === "SIGSTOP") victim.proc?.kill("SIGKILL");
      const vp = victim.proc as ChildProcess;
      if (vp.exitCode === null && vp.signalCode === null)
        await new Promise((r) => vp.once("exit", r));
      victim.leaders.length = 0;
      const helper = rest[0] as Agent;
      const boot = [
        ...seeds.filter((s) => !s.endsWith(victim.id)),
        `/ip4/127.0.0.1/tcp/${MESH_PORT + helper.i}/p2p/${helper.id}`,
      ];
      await spawnAgent(victim, boot);
      // Wait until it is back everywhere and has taken over again (settle period included).
      await until("the restarted agent to lead again", 60_000, () =>
        agents.every((a) => current(a) === victim.id && a.alive.size === n - 1),
      );
    }
    Object.assign(res, {
      [`${kind}FailoverMsMedian`]: median(times),
      [`${kind}FailoverMsMax`]: Math.max(...times),
      [`${kind}Trials`]: times,
    });
  }
  for (const a of agents) a.proc?.kill("SIGKILL");
  await sleep(500);
  return res;
}

// --- HashiCorp Serf ------------------------------------------------------------------------

async function benchSerf(n: number) {
  const procs: ChildProcess[] = [];
  // Each agent logs "serf: EventMemberFailed: <name>" the moment its serf layer declares the
  // member failed (event handlers would add the agent's event coalescing on top).
  const failedAt = new Map<string, Map<number, number>>();
  const start = (i: number, join: number) => {
    const p = track(
      spawn(
        "serf",
        [
          "agent",
          `-node=s${i}`,
          `-bind=127.0.0.1:${SERF_PORT + i}`,
          `-rpc-addr=127.0.0.1:${SERF_RPC + i}`,
          `-retry-join=127.0.0.1:${SERF_PORT + join}`,
          "-retry-interval=1s",
          "-log-level=info",
        ],
        { stdio: ["ignore", "pipe", "ignore"] },
      ),
    );
    procs[i] = p;
    createInterface({ input: p.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      const m = /EventMemberFailed: (\S+)/.exec(line);
      if (!m?.[1]) return;
      const seen = failedAt.get(m[1]) ?? new Map<number, number>();
      if (!seen.has(i)) seen.set(i, Date.now());
      failedAt.set(m[1], seen);
    });
  };
  const aliveCount = (i: number) => {
    try {
      const out = execFileSync(
        "serf",
        ["members", `-rpc-addr=127.0.0.1:${SERF_RPC + i}`, "-status=alive"],
        { encoding: "utf8" },
      );
      return out.trim().split("\n").filter(Boolean).length;
    } catch {
      return 0;
    }
  };
  const t0 = Date.now();
  for (let i = 0; i < n; i++) start(i, 0);
  await until("every serf agent to see all members", 60_000, () => {
    for (let i = 0; i < n; i++) if (aliveCount(i) !== n) return false;
    return true;
  });
  const res: Record<string, unknown> = { n, membersConvergedS: round((Date.now() - t0) / 1000) };
  await sleep(5000);
  const idle = await measureIdle(
    procs.map((p) => p.pid as number),
    `portrange ${SERF_PORT}-${SERF_PORT + n - 1}`,
    n,
  );
  Object.assign(res, idle);
  log(`serf n=${n}: idle ${JSON.stringify(res)}`);
  const times: number[] = [];
  for (let k = 0; k < TRIALS; k++) {
    const victim = 1 + (k % (n - 1));
    const name = `s${victim}`;
    failedAt.delete(name);
    const killedAt = Date.now();
    procs[victim]?.kill("SIGKILL");
    const all = await until(`serf agents to mark ${name} failed`, 60_000, () => {
      const seen = failedAt.get(name);
      return seen !== undefined && seen.size >= n - 1 && seen;
    }).catch(() => null);
    const t = all ? Math.max(...all.values()) - killedAt : Number.NaN;
    if (all) times.push(t);
    log(`serf n=${n} kill #${k + 1}: all marked failed after ${t} ms`);
    start(victim, 0);
    await until(
      "the serf agent to rejoin",
      60_000,
      () => aliveCount(0) === n && aliveCount(victim) === n,
    );
  }
  Object.assign(res, {
    failedMsMedian: median(times),
    failedMsMax: Math.max(...times),
    trials: times,
  });
  for (const p of procs) p.kill("SIGKILL");
  await sleep(500);
  return res;
}

// --- main ------------------------------------------------------------------------------------

const AGENT_COMMAND = await agentCommand(
  values.runtime,
  values["node-flags"].split(" ").filter(Boolean),
);
const machine = `${cpus().length} x ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GB, Node ${process.version}, ${execFileSync("serf", ["version"], { encoding: "utf8" }).split("\n")[0]}`;
log(`machine: ${machine}; sizes ${SIZES.join(",")}; ${TRIALS} trials; idle ${IDLE_S}s`);
log(`mesh agents run as: ${AGENT_COMMAND.join(" ")}${values.stock ? " --stock" : ""}`);
const results = {
  date: new Date().toISOString(),
  machine,
  loadavgAtStart: loadavg().map((x) => round(x)),
  agentCommand: AGENT_COMMAND.join(" "),
  lean: !values.stock,
  mesh: [] as unknown[],
  serf: [] as unknown[],
};
try {
  for (const n of SIZES) {
    if (values.only !== "serf") results.mesh.push(await benchMesh(n));
    if (values.only !== "mesh") results.serf.push(await benchSerf(n));
  }
} finally {
  killAll();
}
const out = JSON.stringify({ ...results, loadavgAtEnd: loadavg().map((x) => round(x)) }, null, 2);
if (values.json) writeFileSync(values.json, out);
process.stdout.write(`${out}\n`);
process.exit(0);
