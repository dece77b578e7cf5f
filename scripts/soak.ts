/**
 * Soak: a local cluster on loopback under churn and steady load: `npm run soak` (10 min).
 *
 * The coordinator (Node, file store), two core agents that stay up and three that join, leave
 * (SIGTERM) and crash (SIGKILL) in turn, one event every --every seconds, and a steady GET load
 * on the services `alpha` and `beta` through the coordinator. Every service always keeps a live
 * provider (the core agents run both), so the goal is 0 failed requests. After the warm-up
 * (the first fifth) it samples the memory and open file descriptors of the long-lived processes
 * (coordinator, core agents): at the end each must be within +10 % (+20 % in runs under 5 min,
 * where GC noise is that big) and a few descriptors of its warm-up figure. For the coordinator
 * the memory is its live heap after a full GC and its RSS without the young generation
 * (soak-probe.ts says why); for the agents their RSS. Writes must stay within what the events
 * explain. Prints one JSON line of
 * figures and exits 1 if a goal was missed. Bounded in time; every process it starts is killed.
 *
 * Flags: --duration S (600), --every S (20), --rate N (GET/s, 40), --base-port N (random).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { BudgetAnswerSchema, ServicesAnswerSchema } from "../coordinator.ts";
import { loadIdentity } from "../mesh/index.ts";
import { NODE_FLAGS } from "./starter.ts";

const { values } = parseArgs({
  options: {
    duration: { type: "string", default: "600" },
    every: { type: "string", default: "20" },
    rate: { type: "string", default: "40" },
    "base-port": { type: "string" },
  },
});
const durationMs = Number(values.duration) * 1000;
const everyMs = Number(values.every) * 1000;
const rate = Number(values.rate);
const base = Number(values["base-port"] ?? 20_000 + Math.floor(Math.random() * 10_000));
const host = "127.0.0.1";
const coordPort = base;
const coordUrl = `http://${host}:${coordPort}`;
/** Agent i: gateway base+10+i, mesh base+20+i; services on base+30+2i (alpha), base+31+2i (beta). */
const AGENTS = [
  { core: true, services: ["alpha", "beta"] },
  { core: true, services: ["alpha", "beta"] },
  { core: false, services: ["alpha"] },
  { core: false, services: ["beta"] },
  { core: false, services: ["alpha", "beta"] },
];
const servicePort = (i: number, name: string) => base + 30 + 2 * i + (name === "alpha" ? 0 : 1);

const children = new Set<ChildProcess>();
/** Starts `node <runtimeArgs> <args>`; its output is dropped (the figures say what matters). */
function start(
  args: string[],
  runtimeArgs = ["--import", "tsx"],
  extraEnv: Record<string, string> = {},
): ChildProcess {
  const child = spawn(process.execPath, [...runtimeArgs, ...args], {
    stdio: "ignore",
    // Open (no token; an empty one is a configuration error), its workers on loopback.
    env: {
      ...process.env,
      ...extraEnv,
      ROLLCALL_CLUSTER_TOKEN: undefined,
      ROLLCALL_ADMIN_TOKEN: undefined,
      ROLLCALL_AGENT_TOKEN: undefined,
      ROLLCALL_UPSTREAM_ALLOW: "loopback",
    },
  });
  child.once("exit", () => children.delete(child));
  children.add(child);
  return child;
}

/** One memory sample (kB) and the open descriptors; heap only where a probe gives it. */
interface Sample {
  rss: number;
  heap?: number | undefined;
  fds: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rssKb = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

async function until(what: string, check: () => Promise<boolean>, ms: number) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check().catch(() => false)) return;
    await sleep(250);
  }
  throw new Error(`Timed out waiting for ${what}`);
}

async function main(): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), "rollcall-soak-"));
  // One plain Node process serves every sample service port (cheap, never churned).
  const ports = AGENTS.flatMap((a, i) => a.services.map((s) => servicePort(i, s)));
  start(
    [
      "-e",
      `const http=require("node:http");for(const p of ${JSON.stringify(ports)})http.createServer((q,s)=>{s.setHeader("content-type","application/json");s.end(JSON.stringify({port:p,path:q.url}))}).listen(p,"${host}")`,
    ],
    [],
  );
  // Run as `npm run coordinator` runs it (NODE_FLAGS), with the memory probe (soak-probe.ts).
  const probe = join(dir, "coordinator-memory.json");
  const coord = start(
    ["scripts/start-node.ts", "--port", String(coordPort), "--data", join(dir, "coordinator.json")],
    [...NODE_FLAGS, "--expose-gc", "--import", "tsx", "--import", "./scripts/soak-probe.ts"],
    { ROLLCALL_SOAK_PROBE: probe },
  );
  await until("the coordinator", async () => (await fetch(`${coordUrl}/health`)).ok, 60_000);
  const agents = await Promise.all(
    AGENTS.map(async (a, i) => {
      const data = join(dir, `agent${i + 1}`);
      mkdirSync(data, { recursive: true });
      const id = (await loadIdentity(data)).peerId.toString();
      const manifest = join(data, "services.json");
      const services = a.services.map((name) => ({ name, port: servicePort(i, name) }));
      writeFileSync(manifest, JSON.stringify({ services }));
      return { ...a, i, data, id, manifest, addr: `/ip4/${host}/tcp/${base + 20 + i}/p2p/${id}` };
    }),
  );
  const procs: (ChildProcess | null)[] = agents.map(() => null);
  const startAgent = (i: number) => {
    const a = agents[i] as (typeof agents)[number];
    procs[i] = start([
      "agent/cli.ts",
      `--coordinator=${coordUrl}`,
      `--data-dir=${a.data}`,
      `--listen=${host}:${base + 10 + i}`,
      `--mesh-listen=/ip4/${host}/tcp/${base + 20 + i}`,
      `--bootstrap=${agents
        .filter((o) => o !== a)
        .map((o) => o.addr)
        .join(",")}`,
      `--services=${a.manifest}`,
      "--probe-interval=1",
    ]);
  };
  for (const a of agents) startAgent(a.i);
  const healthy = async (name: string) => {
    const res = await fetch(`${coordUrl}/api/admin/services`);
    const body = ServicesAnswerSchema.parse(await res.json());
    return (body.services[name]?.healthy_workers ?? 0) >= 2;
  };
  await until(
    "both services",
    async () => (await healthy("alpha")) && (await healthy("beta")),
    90_000,
  );

  // Steady load: `rate` GETs a second, alternating the two services.
  let requests = 0;
  const failures: string[] = [];
  let loading = true;
  const load = (async () => {
    const gap = 1000 / rate;
    let next = Date.now();
    while (loading) {
      const service = requests % 2 === 0 ? "alpha" : "beta";
      requests++;
      try {
        const res = await fetch(`${coordUrl}/api/service/${service}/soak`, {
          signal: AbortSignal.timeout(10_000),
        });
        const text = await res.text();
        if (res.status !== 200) failures.push(`${service}: ${res.status} ${text.slice(0, 160)}`);
      } catch (err) {
        failures.push(`${service}: ${(err as Error).message}`);
      }
      next += gap;
      await sleep(Math.max(0, next - Date.now()));
    }
  })();

  // Churn: join, leave, crash among the non-core agents, one event every `everyMs`.
  const started = Date.now();
  const warmUpEnd = started + Math.max(durationMs / 5, 20_000);
  // What is checked: for the coordinator, its probe's figures after a full GC (the live heap,
  // and the RSS without the young generation, whose size is V8's sizing, not a leak); for the
  // agents, their RSS (they keep their young generation small themselves: agent/heap.ts).
  const readProbe = (): Sample => {
    const p = JSON.parse(readFileSync(probe, "utf8")) as Record<string, number>;
    return {
      rss: (p.rss_kb ?? 0) - (p.young_kb ?? 0),
      heap: p.heap_kb,
      fds: fds(coord.pid as number),
    };
  };
  const watched: { name: string; sample: () => Sample }[] = [
    { name: "coordinator", sample: readProbe },
    ...agents
      .filter((a) => a.core)
      .map((a) => {
        const pid = procs[a.i]?.pid as number;
        return { name: `agent${a.i + 1}`, sample: () => ({ rss: rssKb(pid), fds: fds(pid) }) };
      }),
  ];
  const warm = new Map<string, Sample>();
  const last = new Map<string, Sample>();
  const events: string[] = [];
  const churn = agents.filter((a) => !a.core).map((a) => a.i);
  let turn = 0;
  let writesAtStart = 0;
  const budget = async () =>
    BudgetAnswerSchema.parse(await (await fetch(`${coordUrl}/api/admin/budget`)).json()).used_today;
  let nextEvent = started + everyMs;
  writesAtStart = await budget();
  while (Date.now() - started < durationMs) {
    await sleep(2000);
    const now = Date.now();
    for (const w of watched) {
      const sample = w.sample();
      if (now <= warmUpEnd) {
        const prev = warm.get(w.name);
        warm.set(w.name, {
          rss: Math.max(prev?.rss ?? 0, sample.rss),
          heap: sample.heap === undefined ? undefined : Math.max(prev?.heap ?? 0, sample.heap),
          fds: Math.max(prev?.fds ?? 0, sample.fds),
        });
      } else last.set(w.name, sample);
    }
    if (now < nextEvent || now - started >= durationMs) continue;
    nextEvent += everyMs;
    const i = churn[turn % churn.length] as number;
    const kind = ["crash", "leave", "join"][Math.floor(turn / churn.length) % 3];
    turn++;
    const proc = procs[i];
    if (proc && proc.exitCode === null && proc.signalCode === null && kind !== "join") {
      proc.kill(kind === "crash" ? "SIGKILL" : "SIGTERM");
      events.push(`${kind} agent${i + 1}`);
    } else if (!proc || proc.exitCode !== null || proc.signalCode !== null) {
      startAgent(i);
      events.push(`join agent${i + 1}`);
    }
  }
  loading = false;
  await load;
  const writes = (await budget()) - writesAtStart;
  for (const child of children) child.kill("SIGKILL");

  const problems: string[] = [];
  // The goal is +10 % (runs of 5 min and more, `npm run soak`). In a short run one GC cycle
  // of an agent, and the upstream pools of agents that joined after the warm-up, are that big:
  // the 60 s form only catches gross growth (+20 %).
  const rssSlack = durationMs >= 300_000 ? 1.1 : 1.2;
  if (failures.length > 0)
    problems.push(`${failures.length} failed request(s): ${failures.slice(0, 5).join("; ")}`);
  const memory: Record<string, unknown> = {};
  for (const w of watched) {
    const a = warm.get(w.name);
    const b = last.get(w.name);
    memory[w.name] = {
      warm_rss_kb: a?.rss,
      end_rss_kb: b?.rss,
      ...(a?.heap === undefined ? {} : { warm_heap_kb: a.heap, end_heap_kb: b?.heap }),
      warm_fds: a?.fds,
      end_fds: b?.fds,
    };
    const what = w.name === "coordinator" ? "RSS without its young generation" : "RSS";
    if (a && b && b.rss > a.rss * rssSlack)
      problems.push(`${w.name} ${what} grew from ${a.rss} to ${b.rss} kB`);
    if (a?.heap !== undefined && b?.heap !== undefined && b.heap > a.heap * rssSlack)
      problems.push(`${w.name} live heap (after a full GC) grew from ${a.heap} to ${b.heap} kB`);
    if (a && b && b.fds > a.fds + 10)
      problems.push(`${w.name} open descriptors grew from ${a.fds} to ${b.fds}`);
  }
  // Each event changes the cluster once or twice (down, then removal or up); plus keepalives.
  const writeBudget = 3 * events.length + 5;
  if (writes > writeBudget)
    problems.push(`${writes} writes for ${events.length} events (budget ${writeBudget})`);
  console.log(
    JSON.stringify({
      duration_s: durationMs / 1000,
      requests,
      failed: failures.length,
      events: events.length,
      writes,
      write_budget: writeBudget,
      memory,
      problems,
    }),
  );
  return problems.length === 0 ? 0 : 1;
}

const stopAll = () => {
  for (const child of children) child.kill("SIGKILL");
};
process.on("SIGINT", () => {
  stopAll();
  process.exit(130);
});
main()
  .then((code) => process.exit(code))
  .catch((err) => {
    console.error(`Soak failed: ${(err as Error).message}`);
    stopAll();
    process.exit(1);
  });
