/**
 * End to end with real processes: the coordinator (Node starter, file store), three agents
 * in mesh mode on loopback, and real upstream HTTP services. Every service runs on two or
 * three workers, so any one worker can die without a service going away.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadIdentity } from "../mesh/index.ts";
import { freePort, killAll, type Proc, pollUntil, startTs } from "../support/processes.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

const CLUSTER_TOKEN = "e2e-cluster-token";
const ADMIN_TOKEN = "e2e-admin-token";
/** The read-only credential of the agents' live view (never the cluster token). */
const VIEW_TOKEN = "e2e-view-token";
const PROBE_S = 1;
const DEBOUNCE_S = 0.5;

/** Which services each worker runs: any two workers share at least two services. */
const LAYOUT = [
  ["alpha", "beta", "delta"],
  ["alpha", "gamma", "delta"],
  ["beta", "gamma", "delta"],
];

interface Worker {
  index: number;
  id: string;
  gateway: string;
  proc: Proc;
  upstreams: Map<string, Upstream>;
  alive: boolean;
}

interface ServiceEntry {
  healthy_workers: number;
  status: string;
  workers: { worker_id: string; health: string }[];
}

let coordinator: Proc;
let base: string;
const workers: Worker[] = [];
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

async function getJson<T>(path: string): Promise<T> {
  const res = await fetch(base + path, { headers: admin });
  if (!res.ok) throw new Error(`${path} answered ${res.status}`);
  return (await res.json()) as T;
}

const services = () =>
  getJson<{ services: Record<string, ServiceEntry> }>("/api/admin/services").then(
    (b) => b.services,
  );
const leaderId = () =>
  getJson<{ leader: { leader_id: string } | null }>("/api/admin/stats").then(
    (s) => s.leader?.leader_id,
  );
const byId = (id: string | undefined) => workers.find((w) => w.id === id);

/** A service the victim runs that another live worker also runs. */
function sharedWith(victim: Worker): string {
  const name = [...victim.upstreams.keys()].find((n) =>
    workers.some((w) => w !== victim && w.alive && w.upstreams.has(n)),
  );
  if (!name) throw new Error(`no service of worker ${victim.index + 1} runs elsewhere`);
  return name;
}

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "rollcall-e2e-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  coordinator = startTs(
    "coordinator",
    "scripts/start-node.ts",
    ["--port", String(port), "--data", join(dir, "coordinator.json")],
    {
      ROLLCALL_CLUSTER_TOKEN: CLUSTER_TOKEN,
      ROLLCALL_ADMIN_TOKEN: ADMIN_TOKEN,
      ROLLCALL_AGENT_TOKEN: VIEW_TOKEN,
      ROLLCALL_UPSTREAM_ALLOW: "loopback",
    },
  );
  const plans = await Promise.all(
    LAYOUT.map(async (names, index) => {
      const dataDir = join(dir, `agent${index + 1}`);
      const identity = await loadIdentity(dataDir);
      const upstreams = new Map<string, Upstream>();
      for (const name of names) upstreams.set(name, await startUpstream(`${name}@${index + 1}`));
      const manifest = join(dataDir, "services.json");
      const entries = [...upstreams].map(([name, u]) => ({ name, port: u.port }));
      writeFileSync(manifest, JSON.stringify({ services: entries }));
      const meshPort = await freePort();
      const gatewayPort = await freePort();
      return {
        index,
        dataDir,
        manifest,
        upstreams,
        gatewayPort,
        meshPort,
        id: identity.peerId.toString(),
        addr: `/ip4/127.0.0.1/tcp/${meshPort}/p2p/${identity.peerId.toString()}`,
      };
    }),
  );
  await coordinator.waitForLine(/listening on/);
  for (const p of plans) {
    const bootstrap = plans.filter((o) => o !== p).map((o) => o.addr);
    const proc = startTs(`agent${p.index + 1}`, "agent/cli.ts", [
      "--coordinator",
      base,
      "--token",
      CLUSTER_TOKEN,
      "--agent-token",
      VIEW_TOKEN,
      "--data-dir",
      p.dataDir,
      "--listen",
      `127.0.0.1:${p.gatewayPort}`,
      "--mesh-listen",
      `/ip4/127.0.0.1/tcp/${p.meshPort}`,
      "--bootstrap",
      bootstrap.join(","),
      "--services",
      p.manifest,
      "--probe-interval",
      String(PROBE_S),
      "--debounce",
      String(DEBOUNCE_S),
    ]);
    workers.push({
      index: p.index,
      id: p.id,
      gateway: `http://127.0.0.1:${p.gatewayPort}`,
      proc,
      upstreams: p.upstreams,
      alive: true,
    });
  }
}, 60_000);

afterAll(async () => {
  await killAll();
  for (const w of workers) for (const u of w.upstreams.values()) await u.close();
});

describe("the whole cluster, real processes", () => {
  it("lists every service with all of its workers, and one leader", async () => {
    const want = { alpha: 2, beta: 2, gamma: 2, delta: 3 };
    const all = await pollUntil(
      "every service with all its workers healthy",
      async () => {
        const s = await services();
        return Object.entries(want).every(([n, k]) => s[n]?.healthy_workers === k) ? s : undefined;
      },
      60_000,
    );
    expect(Object.keys(all).sort()).toEqual(["alpha", "beta", "delta", "gamma"]);
    // Right after start the lead may still pass to the lowest settled ID (a new report between
    // two reads): read until the leader the stats name is the one the worker list marks.
    const { leader, list } = await pollUntil(
      "the stats and the worker list to name the same leader",
      async () => {
        const leader = await leaderId();
        const list =
          await getJson<{ worker_id: string; is_heartbeat_leader: boolean }[]>(
            "/api/admin/workers",
          );
        const marked = list.filter((w) => w.is_heartbeat_leader).map((w) => w.worker_id);
        return marked.length === 1 && marked[0] === leader ? { leader, list } : undefined;
      },
      30_000,
    );
    expect(byId(leader)).toBeDefined();
    expect(list.map((w) => w.worker_id).sort()).toEqual(workers.map((w) => w.id).sort());
  });

  it("routes a call to a worker that runs the service, balancing across both", async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 12; i++) {
      const res = await fetch(`${base}/api/service/alpha/items/7?q=1`, {
        method: "POST",
        body: "ping",
      });
      expect(res.status).toBe(200);
      const echo = (await res.json()) as { upstream: string; url: string; body: string };
      expect(echo.url).toBe("/items/7?q=1");
      expect(echo.body).toBe("ping");
      seen.add(echo.upstream);
    }
    expect([...seen].sort()).toEqual(["alpha@1", "alpha@2"]);
  });

  it("routes on the leader's live view, read with the view credential; the cluster token reads nothing", async () => {
    const source = await pollUntil(
      "the coordinator to route on the leader's live view",
      async () => {
        const got = await getJson<{ source: string }>("/api/admin/services");
        return got.source === "live" ? got.source : undefined;
      },
      30_000,
    );
    expect(source).toBe("live");
    const leader = byId(await leaderId()) as Worker;
    const view = (authorization?: string) =>
      fetch(`${leader.gateway}/_agent/cluster`, {
        headers: authorization ? { authorization } : {},
      }).then((r) => r.status);
    expect(await view()).toBe(401);
    expect(await view(`Bearer ${CLUSTER_TOKEN}`)).toBe(401);
    expect(await view(`Bearer ${VIEW_TOKEN}`)).toBe(200);
  });

  it("drops a stopped service from its worker", async () => {
    const w = workers[2] as Worker;
    const started = Date.now();
    await w.upstreams.get("beta")?.close();
    w.upstreams.delete("beta");
    const budgetMs = (2 * PROBE_S + DEBOUNCE_S) * 1000;
    const entry = await pollUntil(
      "beta to be gone from worker 3",
      async () => {
        const s = (await services()).beta;
        return s && !s.workers.some((x) => x.worker_id === w.id) ? s : undefined;
      },
      budgetMs + 10_000,
      100,
    );
    const took = Date.now() - started;
    console.log(
      `beta left worker 3 at the coordinator after ${took} ms (probe ${PROBE_S} s x 2 + debounce ${DEBOUNCE_S} s = ${budgetMs} ms, plus gossip and report)`,
    );
    expect(entry.workers.map((x) => x.worker_id)).toEqual([workers[0]?.id]);
  });

  it("survives the leader's SIGKILL: calls keep succeeding and a new leader reports", async () => {
    const old = byId(await leaderId()) as Worker;
    const shared = sharedWith(old);
    await old.proc.kill("SIGKILL");
    old.alive = false;
    const failures: number[] = [];
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${base}/api/service/${shared}/after-kill`);
      if (res.status !== 200) failures.push(res.status);
      await res.body?.cancel();
    }
    expect(failures).toEqual([]);
    const next = await pollUntil(
      "a new leader at the coordinator",
      async () => {
        const id = await leaderId();
        return id && id !== old.id ? id : undefined;
      },
      30_000,
    );
    expect(byId(next)?.alive).toBe(true);
    // The new leader saw it crash (its port refused twice): it reports it "offline" until its
    // mesh forgets it, which supersedes the crashed leader's own stored view (agent/aggregate.ts).
    const list = await pollUntil(
      "the dead leader to show as offline or down (or leave the workers list)",
      async () => {
        const l =
          await getJson<{ worker_id: string; status: string; is_heartbeat_leader: boolean }[]>(
            "/api/admin/workers",
          );
        const row = l.find((w) => w.worker_id === old.id);
        const down = row?.status === "offline" || row?.status === "down";
        return row === undefined || (down && !row.is_heartbeat_leader) ? l : undefined;
      },
      30_000,
    );
    expect(list.find((w) => w.worker_id === next)?.is_heartbeat_leader).toBe(true);
  });

  it("keeps serving a service when one of its two workers is killed", async () => {
    const alive = workers.filter((w) => w.alive);
    expect(alive).toHaveLength(2);
    const [a, b] = alive as [Worker, Worker];
    const leader = await leaderId();
    const victim = a.id === leader ? b : a;
    const shared = sharedWith(victim);
    await victim.proc.kill("SIGKILL");
    victim.alive = false;
    const answers = new Set<string>();
    const failures: string[] = [];
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${base}/api/service/${shared}/still-there`);
      const text = await res.text();
      if (res.status === 200) answers.add((JSON.parse(text) as { upstream: string }).upstream);
      else failures.push(`${res.status} ${text}`);
    }
    expect(failures).toEqual([]);
    const survivor = victim === a ? b : a;
    expect([...answers]).toEqual([`${shared}@${survivor.index + 1}`]);
  });
});
