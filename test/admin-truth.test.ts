/**
 * The admin API tells the truth fast, with real processes: a worker killed with SIGKILL shows
 * as suspect (or is gone) in `/api/admin/workers` and `/api/admin/services` within 2 s, with
 * no store write for it. The 2 s are a poll deadline, not a timing assert: the leader's mesh
 * suspects a crashed peer at once, an admin read waits for a live view at most 250 ms old, and
 * a leader whose agent cannot be reached shows as suspect until the next leader reports.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  LOCAL_CLUSTER_START_MS,
  type LocalCluster,
  type LocalWorker,
  startLocalCluster,
} from "./helpers/local-cluster.ts";
import { killAll, pollUntil } from "../support/processes.ts";

interface WorkerRow {
  worker_id: string;
  status: string;
  is_heartbeat_leader: boolean;
}
interface ServiceEntry {
  workers: { worker_id: string; health: string; status?: string }[];
}

let cluster: LocalCluster;

beforeAll(async () => {
  cluster = await startLocalCluster({
    layout: [
      ["alpha", "beta"],
      ["alpha", "gamma"],
      ["beta", "gamma"],
    ],
  });
}, LOCAL_CLUSTER_START_MS);

afterAll(async () => {
  await killAll();
});

const writesToday = async () =>
  (await cluster.admin<{ used_today: number }>("/api/admin/budget")).used_today;

/** Whether both admin views no longer show `victim` as an online, healthy provider. */
async function shownDown(victim: LocalWorker): Promise<true | undefined> {
  const workers = await cluster.admin<WorkerRow[]>("/api/admin/workers");
  const row = workers.find((w) => w.worker_id === victim.id);
  if (row && row.status === "online") return undefined;
  const { services } = await cluster.admin<{ services: Record<string, ServiceEntry> }>(
    "/api/admin/services",
  );
  for (const name of victim.services.keys()) {
    const p = services[name]?.workers.find((w) => w.worker_id === victim.id);
    if (p && (p.health === "healthy" || p.status === "online")) return undefined;
  }
  return true;
}

/** SIGKILLs a worker's agent and polls until both admin views show it down; 2 s deadline. */
async function killAndWatch(victim: LocalWorker): Promise<void> {
  await victim.proc.kill("SIGKILL");
  victim.alive = false;
  await pollUntil(
    `worker ${victim.index + 1} to show as suspect or gone`,
    () => shownDown(victim),
    2000,
    50,
  );
}

describe("the admin API after a SIGKILL (real processes)", () => {
  it("shows a killed follower as suspect within 2 s, with no store write", async () => {
    const leader = await cluster.leader();
    const victim = cluster.workers.find((w) => w !== leader) as LocalWorker;
    const before = await writesToday();
    await killAndWatch(victim);
    // A suspicion is not worth a write: the fast truth comes from the leader's live view.
    expect(await writesToday()).toBe(before);
    const row = (await cluster.admin<WorkerRow[]>("/api/admin/workers")).find(
      (w) => w.worker_id === victim.id,
    );
    expect(row?.status ?? "gone").toMatch(/^(suspect|down|gone)$/);
  });

  it("shows a killed leader as suspect within 2 s, even in a cluster of two", async () => {
    const [a, b] = cluster.workers.filter((w) => w.alive) as [LocalWorker, LocalWorker];
    expect(b).toBeDefined();
    const leader = (await cluster.leader()) ?? a;
    // Two members: the survivor takes over only once the leader is dead (6 s), so until the
    // next report only the coordinator's own failed live-view fetch tells the truth.
    await killAndWatch(leader);
    const survivor = leader === a ? b : a;
    await pollUntil(
      "the survivor to lead",
      async () => ((await cluster.leader()) === survivor ? true : undefined),
      30_000,
    );
  });
});
