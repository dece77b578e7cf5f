/**
 * Mesh benchmark: N rollcall mesh agents (one process each, scripts/mesh-node.ts, default
 * timings) and N HashiCorp Serf agents (Debian package `serf`, LAN profile), all on loopback.
 * Measures convergence, failover after kill -9 and after SIGSTOP of the leader, Serf's time to
 * mark a killed member failed, and per-agent RSS, idle CPU and bytes/s (tcpdump on lo, filtered
 * to the agents' ports). Bounded: every phase has a deadline; every process is killed at the end.
 *
 *   npm run bench:mesh -- [--n 5,10,20] [--trials 5] [--idle-s 60] [--only mesh|serf]
 *     [--runtime tsx|node|bun|deno] [--node-flags=--max-semi-space-size=1] [--json out.json]
 *     [--stock] [--per-process 1] [--port-base 27000] [--watchers 3|all] [--stagger]
 *     [--converge-s 60] [--logs dir] [--stats-ms 1000]
 *
 * --per-process K runs up to K mesh nodes in one process (scripts/mesh-node.ts --nodes), so
 * that N = 50 fits in 2 cores. Agent 0 always runs alone: it gets the lowest ID, so it leads and
 * is the victim of every crash and silent trial, and kill -9 or SIGSTOP hits only it. CPU per
 * node is then its process's CPU divided by the nodes in it, and so is RSS per node (the
 * process's own RSS is reported too). --port-base P: mesh agents listen on P.., Serf on
 * P+300.. and its RPC on P+600.. (default: 27000, 28000 and 29000).
 *
 * --stagger starts the mesh processes one at a time, each once every agent started before it sees
 * all the others; convergence is then the last process's agents joining the rest. Started all at
 * once, N = 50 on 2 cores starves every event loop for seconds while 1,225 connections set up, and
 * the dials time out faster than they finish (docs/BENCHMARKS.md). Keep --port-base below the
 * ephemeral ports (32768 on Linux): a listen port there may already be a connection's source port.
 *
 * --logs DIR keeps every mesh process's stdout (JSON lines, with a stats line a second unless
 * --stats-ms says otherwise); while waiting for convergence, members seen and connections per
 * agent are printed every 5 s. --converge-s: how long the agents may take to see every member.
 *
 * --stock runs the mesh agents on the stock TCP/yamux stack (no mesh/lean.ts): with and without
 * it, the bytes and packets per agent show what lean saves.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  createWriteStream,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { dirname, join } from "node:path";
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
    "per-process": { type: "string", default: "1" },
    "port-base": { type: "string" },
    // The watch ring (mesh/ring.ts, issue 15): heartbeats to this many watchers (default: the
    // mesh's, 3); all: every heartbeat flooded to every peer.
    watchers: { type: "string" },
    // Every mesh process's stdout (JSON lines: events, logs, stats) kept in this directory.
    logs: { type: "string" },
    // Each node prints a stats line this often (connections, subscribers, members).
    "stats-ms": { type: "string" },
    // How long the agents may take to see every member.
    "converge-s": { type: "string", default: "60" },
    // Start the mesh processes one at a time (see benchMesh).
    stagger: { type: "boolean", default: false },
  },
});
const SIZES = values.n.split(",").map(Number);
const TRIALS = Number(values.trials);
const IDLE_S = Number(values["idle-s"]);
const PER_PROCESS = Math.max(1, Number(values["per-process"]));
const PORT_BASE = values["port-base"] === undefined ? undefined : Number(values["port-base"]);
const MESH_PORT = PORT_BASE ?? 27000;
const SERF_PORT = PORT_BASE === undefined ? 28000 : PORT_BASE + 300;
const SERF_RPC = PORT_BASE === undefined ? 29000 : PORT_BASE + 600;
const CONVERGE_MS = Number(values["converge-s"]) * 1000;
// --logs without --stats-ms: a stats line a second, so the logs show connections over time.
const STATS_MS = Number(values["stats-ms"] ?? (values.logs ? 1000 : 0));
let spawned = 0;
const LOGS = values.logs;
if (LOGS) mkdirSync(LOGS, { recursive: true });
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

/**
 * Per-agent RSS, CPU and loopback bytes over an idle window of IDLE_S seconds. Each process runs
 * `nodes` agents: its CPU and RSS are divided among them (one figure per agent).
 */
async function measureIdle(
  procs: Array<{ pid: number; nodes: number }>,
  filter: string,
  n: number,
) {
  const cap = capture(filter);
  const cpu0 = procs.map((p) => cpuSeconds(p.pid));
  const w0 = Date.now();
  await sleep(IDLE_S * 1000);
  const secs = (Date.now() - w0) / 1000;
  const perProc = procs.map((p, k) => ((cpuSeconds(p.pid) - (cpu0[k] as number)) / secs) * 100);
  const bytes = await cap.stop();
  const rssProc = procs.map((p) => rssMb(p.pid));
  const each = <T>(xs: T[]) => procs.flatMap((p, k) => Array<T>(p.nodes).fill(xs[k] as T));
  const cpu = each(perProc.map((c, k) => c / (procs[k] as { nodes: number }).nodes));
  const rss = each(rssProc.map((r, k) => r / (procs[k] as { nodes: number }).nodes));
  const grouped = procs.some((p) => p.nodes > 1);
  return {
    idleS: IDLE_S,
    rssMbMedian: round(median(rss), 1),
    rssMbMax: round(Math.max(...rss), 1),
    ...(grouped && {
      processes: procs.length,
      nodesPerProcess: procs.map((p) => p.nodes),
      rssMbPerProcess: rssProc.map((r) => round(r, 1)),
      cpuPctPerProcess: perProc.map((c) => round(c)),
    }),
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
  /** The process this agent runs in, with the others in it (agent 0 always alone). */
  group: Group;
  proc?: ChildProcess;
  /** (time, leader id) of every leader event, and member-down events seen. */
  leaders: Array<{ t: number; id: string | null }>;
  downs: Array<{ t: number; id: string; state: string }>;
  alive: Set<string>;
  /** Its latest "stats" line (with --stats-ms or --logs): connections and gossip subscribers. */
  stats?: { connections: number; subscribers: number };
}

/** One mesh-node process: its data dir (node k of several in <dir>/<k>) and its agents, in order. */
interface Group {
  dir: string;
  agents: Agent[];
}

/** Starts a group's process; resolves when all its agents have started. */
function spawnGroup(g: Group, bootstrap: string[]): Promise<void> {
  const first = g.agents[0] as Agent;
  const args = [
    ...AGENT_COMMAND.slice(1),
    ...["--data-dir", g.agents.length === 1 ? first.dir : g.dir],
    ...["--nodes", String(g.agents.length), "--port-base", String(MESH_PORT + first.i)],
  ];
  for (const b of bootstrap) args.push("--bootstrap", b);
  if (values.gossip) args.push("--gossip", values.gossip);
  if (values.stock) args.push("--stock");
  if (values.watchers) args.push("--watchers", values.watchers);
  if (STATS_MS > 0) args.push("--stats-ms", String(STATS_MS));
  const proc = track(
    spawn(AGENT_COMMAND[0] as string, args, { stdio: ["ignore", "pipe", "inherit"] }),
  );
  const file = LOGS
    ? createWriteStream(join(LOGS, `${++spawned}-agents-${first.i}-${g.agents.at(-1)?.i}.jsonl`))
    : undefined;
  if (file) proc.once("exit", () => file.end());
  for (const a of g.agents) {
    a.alive = new Set();
    a.proc = proc;
  }
  let started = 0;
  return new Promise((resolve, reject) => {
    proc.once("exit", () => reject(new Error(`agents ${g.agents.map((a) => a.i)} exited`)));
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      file?.write(`${line}\n`);
      let l: Record<string, unknown>;
      try {
        l = JSON.parse(line);
      } catch {
        return;
      }
      const a = g.agents[typeof l.node === "number" ? l.node : 0];
      if (!a) return;
      const t = l.t as number;
      if (l.event === "started" && ++started === g.agents.length) resolve();
      if (l.event === "leader")
        a.leaders.push({ t, id: (l.leader as { id: string } | null)?.id ?? null });
      if (l.event === "member-up") a.alive.add(l.id as string);
      if (l.event === "stats")
        a.stats = { connections: Number(l.connections), subscribers: Number(l.subscribers) };
      if (l.event === "member-down") {
        a.alive.delete(l.id as string);
        a.downs.push({ t, id: l.id as string, state: l.state as string });
      }
    });
  });
}

const current = (a: Agent) => a.leaders.at(-1)?.id ?? null;

/** Min / median / max of members seen (and of connections, with stats lines), for progress. */
function spread(agents: Agent[], since: number): string {
  const mmm = (xs: number[]) => `${Math.min(...xs)}/${median(xs)}/${Math.max(...xs)}`;
  const stats = agents.flatMap((a) => (a.stats ? [a.stats] : []));
  const conns = stats.length ? `, connections ${mmm(stats.map((s) => s.connections))}` : "";
  const subs = stats.length ? `, subscribers ${mmm(stats.map((s) => s.subscribers))}` : "";
  const secs = round((Date.now() - since) / 1000, 1);
  return `${secs} s: members seen min/median/max ${mmm(agents.map((a) => a.alive.size))}${conns}${subs}`;
}

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

/**
 * N agents in groups: agent 0 alone, then up to PER_PROCESS per process. Keys are made first and
 * handed out in ID order, so agent 0 has the lowest ID: the leader, and so every trial's victim.
 */
function layout(dir: string, n: number): Array<{ group: number; dir: string }> {
  const slots: Array<{ group: number; dir: string }> = [{ group: 0, dir: join(dir, "g0") }];
  for (let i = 1; i < n; i++) {
    const group = 1 + Math.floor((i - 1) / PER_PROCESS);
    const size = Math.min(PER_PROCESS, n - 1 - (group - 1) * PER_PROCESS);
    const g = join(dir, `g${group}`);
    slots.push({ group, dir: size === 1 ? g : join(g, String((i - 1) % PER_PROCESS)) });
  }
  return slots;
}

async function benchMesh(n: number) {
  const dir = mkdtempSync(join(ROOT, `mesh${n}-`));
  const keys: Array<{ dir: string; id: string }> = [];
  for (let i = 0; i < n; i++) {
    const d = join(dir, `key${i}`);
    keys.push({ dir: d, id: (await loadIdentity(d)).peerId.toString() });
  }
  keys.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const groups: Group[] = [];
  const agents: Agent[] = layout(dir, n).map((slot, i) => {
    const key = keys[i] as { dir: string; id: string };
    mkdirSync(dirname(slot.dir), { recursive: true });
    renameSync(key.dir, slot.dir);
    if (!groups[slot.group]) groups[slot.group] = { dir: join(dir, `g${slot.group}`), agents: [] };
    const g = groups[slot.group] as Group;
    const a: Agent = {
      i,
      dir: slot.dir,
      id: key.id,
      group: g,
      leaders: [],
      downs: [],
      alive: new Set(),
    };
    g.agents.push(a);
    return a;
  });
  const seeds = agents.slice(0, 2).map((a) => `/ip4/127.0.0.1/tcp/${MESH_PORT + a.i}/p2p/${a.id}`);
  log(
    `mesh n=${n}: ${groups.length} processes (${groups.map((g) => g.agents.length).join(" ")} agents)`,
  );
  const t0 = Date.now();
  // --stagger: one process at a time, the next once every agent started so far sees the others.
  const steps: number[] = [];
  let lastSpawn = t0;
  if (values.stagger) {
    const up: Agent[] = [];
    for (const g of groups) {
      const at = Date.now();
      lastSpawn = at;
      await spawnGroup(g, seeds);
      up.push(...g.agents);
      const progress = setInterval(() => log(`mesh n=${n}: ${spread(up, at)}`), 5000);
      await until(`the first ${up.length} agents to see each other`, CONVERGE_MS, () =>
        up.every((a) => a.alive.size === up.length - 1),
      ).finally(() => clearInterval(progress));
      steps.push(round((Date.now() - at) / 1000));
      log(`mesh n=${n}: ${up.length} agents see each other ${steps.at(-1)} s after the step`);
    }
  } else {
    await Promise.all(groups.map((g) => spawnGroup(g, seeds)));
  }
  // Staggered, convergence counts from the last process's spawn (its agents joining the rest).
  const started = values.stagger ? lastSpawn : Date.now();
  const progress = setInterval(() => log(`mesh n=${n}: ${spread(agents, started)}`), 5000);
  await until("every agent to see all members", CONVERGE_MS, () =>
    agents.every((a) => a.alive.size === n - 1),
  )
    .catch((err) => {
      log(`members seen per agent: ${agents.map((a) => a.alive.size).join(" ")}`);
      throw err;
    })
    .finally(() => clearInterval(progress));
  const membersAt = Date.now();
  const first = await agreed(agents, null, 60_000);
  const res: Record<string, unknown> = {
    n,
    spawnToStartedS: round(((values.stagger ? t0 : started) - t0) / 1000),
    membersConvergedS: round((membersAt - started) / 1000),
    leaderConvergedS: round((Math.max(first.t, membersAt) - started) / 1000),
    ...(values.stagger && { staggeredStepsS: steps }),
  };
  log(
    `mesh n=${n}: converged (members ${res.membersConvergedS}s, leader ${res.leaderConvergedS}s after the last start)`,
  );

  // Idle window: bytes, CPU, RSS, false suspicions.
  await sleep(5000);
  const downsBefore = agents.reduce((s, a) => s + a.downs.length, 0);
  const procs = groups.map((g) => ({
    pid: g.agents[0]?.proc?.pid as number,
    nodes: g.agents.length,
  }));
  Object.assign(
    res,
    await measureIdle(procs, `tcp portrange ${MESH_PORT}-${MESH_PORT + n - 1}`, n),
  );
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
      if (victim.group.agents.length > 1)
        throw new Error(`The leader ${victim.i} shares its process: a trial would kill others`);
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
      await spawnGroup(victim.group, boot);
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
  for (const g of groups) g.agents[0]?.proc?.kill("SIGKILL");
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
    procs.map((p) => ({ pid: p.pid as number, nodes: 1 })),
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
/** Serf's version line; with --only mesh, a missing serf is no error. */
function serfVersion(): string {
  try {
    return execFileSync("serf", ["version"], { encoding: "utf8" }).split("\n")[0] ?? "";
  } catch (err) {
    if (values.only === "mesh") return "no serf";
    throw err;
  }
}
const machine = `${cpus().length} x ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GB, Node ${process.version}, ${serfVersion()}`;
log(`machine: ${machine}; sizes ${SIZES.join(",")}; ${TRIALS} trials; idle ${IDLE_S}s`);
log(
  `mesh agents run as: ${AGENT_COMMAND.join(" ")}${values.stock ? " --stock" : ""}, up to ${PER_PROCESS} per process`,
);
const results = {
  date: new Date().toISOString(),
  machine,
  loadavgAtStart: loadavg().map((x) => round(x)),
  agentCommand: AGENT_COMMAND.join(" "),
  lean: !values.stock,
  perProcess: PER_PROCESS,
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
