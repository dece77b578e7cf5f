/**
 * A whole local cluster as real processes, like `npm run dev` but with tokens: the coordinator
 * (Node starter, file store, loopback upstreams allowed), agents in mesh mode on loopback, and
 * each agent's sample services (`scripts/sample-service.ts`) as their own processes, so a test
 * can SIGKILL an agent or stop one service. The coordinator and the agents share an agent-view
 * token, so the coordinator reads the leader's live view (the admin views' fast truth).
 * Everything it starts is killed by `stop()` (or `killAll()` of processes.ts).
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadIdentity } from "../../mesh/index.ts";
import { freePort, type Proc, pollUntil, startTs } from "../../support/processes.ts";

/** One agent of a local cluster. */
export interface LocalWorker {
  index: number;
  /** Its PeerId. */
  id: string;
  /** Its gateway URL (the worker's URL at the coordinator). */
  gateway: string;
  proc: Proc;
  /** Its sample services by name. */
  services: Map<string, Proc>;
  alive: boolean;
}

/** A running local cluster. */
export interface LocalCluster {
  url: string;
  coordinator: Proc;
  workers: LocalWorker[];
  adminToken: string;
  clusterToken: string;
  /** The agents' live-view credential (`--agent-token`), also the coordinator's. */
  agentToken: string;
  /** GET an admin endpoint with the admin token; throws unless 200. */
  admin<T>(path: string): Promise<T>;
  /** The worker the coordinator shows as leader. */
  leader(): Promise<LocalWorker | undefined>;
  stop(): Promise<void>;
}

/** Settings of a local cluster; `layout` lists each agent's services. */
export interface LocalClusterInit {
  layout: string[][];
  adminToken?: string;
  clusterToken?: string;
  agentToken?: string;
  /** Seconds between the agents' service probes (default 1). */
  probeS?: number;
  /** Extra environment of the coordinator. */
  env?: Record<string, string>;
}

/**
 * How long a test's hook should allow `startLocalCluster`: its own waits (coordinator 30 s,
 * services 30 s, every service healthy 60 s, the lowest ID's report stored 60 s) and room to
 * spawn. The waits are on conditions, so this only bounds a hang: idle a cluster is up in
 * ~15 s, at a load average of 24 on 2 cores it took 52 s (17 s of it the coordinator's start).
 */
export const LOCAL_CLUSTER_START_MS = 240_000;

/** Starts a local cluster; resolves once every service is healthy and the lowest ID leads. */
export async function startLocalCluster(init: LocalClusterInit): Promise<LocalCluster> {
  const adminToken = init.adminToken ?? "local-admin-token";
  const clusterToken = init.clusterToken ?? "local-cluster-token";
  const agentToken = init.agentToken ?? "local-agent-token";
  const dir = mkdtempSync(join(tmpdir(), "rollcall-local-"));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const coordinator = startTs(
    "coordinator",
    "scripts/start-node.ts",
    ["--port", String(port), "--data", join(dir, "coordinator.json")],
    {
      ROLLCALL_CLUSTER_TOKEN: clusterToken,
      ROLLCALL_ADMIN_TOKEN: adminToken,
      ROLLCALL_AGENT_TOKEN: agentToken,
      // Every worker of this cluster is on 127.0.0.1, which the proxy refuses by default.
      ROLLCALL_UPSTREAM_ALLOW: "loopback",
      ...init.env,
    },
  );
  const plans = await Promise.all(
    init.layout.map(async (names, index) => {
      const dataDir = join(dir, `agent${index + 1}`);
      const identity = await loadIdentity(dataDir);
      const services = new Map<string, Proc>();
      const entries: { name: string; port: number }[] = [];
      for (const name of names) {
        const servicePort = await freePort();
        entries.push({ name, port: servicePort });
        const args = ["--name", name, "--port", String(servicePort), "--worker", `w${index + 1}`];
        services.set(name, startTs(`${name}@${index + 1}`, "scripts/sample-service.ts", args));
      }
      const manifest = join(dataDir, "services.json");
      writeFileSync(manifest, JSON.stringify({ services: entries }));
      const meshPort = await freePort();
      return {
        index,
        dataDir,
        manifest,
        services,
        meshPort,
        gatewayPort: await freePort(),
        id: identity.peerId.toString(),
        addr: `/ip4/127.0.0.1/tcp/${meshPort}/p2p/${identity.peerId.toString()}`,
      };
    }),
  );
  await coordinator.waitForLine(/listening on/);
  for (const p of plans) for (const s of p.services.values()) await s.waitForLine(/listening on/);
  const workers: LocalWorker[] = plans.map((p) => ({
    index: p.index,
    id: p.id,
    gateway: `http://127.0.0.1:${p.gatewayPort}`,
    services: p.services,
    alive: true,
    proc: startTs(`agent${p.index + 1}`, "agent/cli.ts", [
      "--coordinator",
      url,
      "--token",
      clusterToken,
      "--agent-token",
      agentToken,
      "--data-dir",
      p.dataDir,
      "--listen",
      `127.0.0.1:${p.gatewayPort}`,
      "--mesh-listen",
      `/ip4/127.0.0.1/tcp/${p.meshPort}`,
      "--bootstrap",
      plans
        .filter((o) => o !== p)
        .map((o) => o.addr)
        .join(","),
      "--services",
      p.manifest,
      "--probe-interval",
      String(init.probeS ?? 1),
      "--debounce",
      "0.5",
    ]),
  }));
  const admin = async <T>(path: string): Promise<T> => {
    const res = await fetch(url + path, { headers: { authorization: `Bearer ${adminToken}` } });
    if (res.status !== 200) throw new Error(`${path} answered ${res.status}`);
    return (await res.json()) as T;
  };
  const wanted = new Map<string, number>();
  for (const names of init.layout) for (const n of names) wanted.set(n, (wanted.get(n) ?? 0) + 1);
  await pollUntil(
    "every service with all its workers healthy at the coordinator",
    async () => {
      const body = await admin<{ services: Record<string, { healthy_workers: number }> }>(
        "/api/admin/services",
      );
      const all = [...wanted].every(([n, k]) => body.services[n]?.healthy_workers === k);
      return all ? true : undefined;
    },
    60_000,
  );
  const leader = async () => {
    const list =
      await admin<{ worker_id: string; is_heartbeat_leader: boolean }[]>("/api/admin/workers");
    const id = list.find((w) => w.is_heartbeat_leader)?.worker_id;
    return workers.find((w) => w.id === id);
  };
  // Settled: the lowest ID leads (the election's end state once every member settled) and its
  // report of every member is stored, so no leadership change or report, and no write for one,
  // is still to come.
  const lowest = workers.map((w) => w.id).sort()[0];
  await pollUntil(
    "the lowest ID to lead and its report of every member to be stored",
    async () => {
      if ((await leader())?.id !== lowest) return undefined;
      const { clusters } = await admin<{
        clusters: { members: number; pending_write: boolean }[];
      }>("/api/admin/leader");
      const stored = clusters[0]?.members === workers.length && !clusters[0]?.pending_write;
      return stored ? true : undefined;
    },
    60_000,
  );
  const stop = async () => {
    await Promise.all(workers.map((w) => w.proc.kill("SIGKILL")));
    await Promise.all(workers.flatMap((w) => [...w.services.values()].map((s) => s.kill())));
    await coordinator.kill();
  };
  return { url, coordinator, workers, adminToken, clusterToken, agentToken, admin, leader, stop };
}
