/** In-process route tests of the coordinator: health, the admin API's shapes, leader-mode reports. */
import { describe, expect, it } from "vitest";
import { CLUSTER_PACE_MS, createCoordinator, memoryStore, type Store } from "../coordinator.ts";
import {
  agentPost,
  LEADER,
  member,
  registration,
  report,
  TEST_INIT,
  testClock,
  testCoordinator,
} from "./helpers/coord-fixtures.ts";
import { countingStore } from "../support/counting-store.ts";

const MIN = 60_000;

describe("GET /health", () => {
  it("says healthy and that it runs open for local dev without tokens", async () => {
    const { call } = testCoordinator();
    const res = await call("GET", "/health");
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      status: "healthy",
      mode: "open-local-dev",
      store: { kind: "memory", persistent: false },
    });
  });

  it("says secured when tokens are configured, and needs no token itself", async () => {
    const { call } = testCoordinator({ clusterToken: "c", adminToken: "a" });
    const res = await call("GET", "/health");
    expect(res.body.mode).toBe("secured");
    expect(res.body.auth).toMatchObject({
      cluster_token: true,
      admin_token: true,
      agent_endpoints: "token",
      admin_endpoints: "token",
      legacy_workers_admitted: false,
    });
  });
});

describe("admin API shapes", () => {
  it("lists workers, services and stats as the contract says", async () => {
    const { call } = testCoordinator();
    await call(
      "POST",
      "/api/worker/register",
      registration("cpu", { services: ["upload", "rag"] }),
    );
    await call(
      "POST",
      "/api/worker/register",
      registration("gpu", { capabilities: { has_gpu: true }, services: ["rag"] }),
    );
    const workers = (await call("GET", "/api/admin/workers")).body;
    expect(Array.isArray(workers)).toBe(true);
    for (const key of [
      "worker_id",
      "tier",
      "status",
      "last_heartbeat",
      "capabilities",
      "services",
      "tunnel_url",
      "is_heartbeat_leader",
    ]) {
      expect(workers[0]).toHaveProperty(key);
    }
    const services = (await call("GET", "/api/admin/services")).body;
    expect(services.total_services).toBe(2);
    expect(services.services.rag).toMatchObject({
      total_workers: 2,
      healthy_workers: 2,
      status: "available",
    });
    expect(services.services.rag.workers).toHaveLength(2);
    const stats = (await call("GET", "/api/admin/stats")).body;
    expect(stats).toMatchObject({
      total_workers: 2,
      healthy_workers: 2,
      offline_workers: 0,
      by_tier: { "1": 1, "2": 1, "3": 0 },
      write_budget: { used_today: 2, cap: 1000, remaining: 998 },
      leader: null,
    });
    const budget = (await call("GET", "/api/admin/budget")).body;
    expect(budget).toMatchObject({ used_today: 2, cap: 1000, pending_writes: 0 });
  });
});

describe("leader mode: POST /api/cluster/heartbeat", () => {
  it("answers the protocol shape and writes the first report", async () => {
    const { call, store } = testCoordinator();
    const res = await call("POST", "/api/cluster/heartbeat", report());
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      status: "ok",
      written: true,
      reason: "changed",
      writes_today: 1,
      write_budget: 1000,
      next_keepalive_at: "2026-11-26T12:48:00.000Z",
      next_keepalive_in_s: 2880,
      digest: expect.any(String),
    });
    expect(store.writes).toBe(1);
    const leader = (await call("GET", "/api/admin/leader")).body.clusters[0];
    expect(leader).toMatchObject({
      cluster: "default",
      leader_id: LEADER,
      term: 1,
      members: 2,
      stale: false,
    });
  });

  it("does not write for volatile changes (sequence, last_seen, latency)", async () => {
    const { call, store, clock } = testCoordinator();
    await call("POST", "/api/cluster/heartbeat", report());
    clock.advance(MIN);
    const res = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({
        sequence: 99,
        members: [
          member("A", { last_seen: 5000 }),
          member("B", {
            last_seen: 6000,
            services: [{ name: "upload", status: "healthy", latency_ms: 42 }],
          }),
        ],
      }),
    );
    expect(res.body).toMatchObject({
      written: false,
      reason: "unchanged",
      next_keepalive_in_s: 2820,
    });
    expect(store.writes).toBe(1);
  });

  it("writes on a real change and on the keepalive, ~30 writes a day when steady", async () => {
    const { call, store, clock } = testCoordinator();
    await call("POST", "/api/cluster/heartbeat", report());
    const down = report({
      sequence: 2,
      members: [member("A"), member("B", { services: [{ name: "upload", status: "unhealthy" }] })],
    });
    clock.advance(CLUSTER_PACE_MS); // a change within the pace waits (review2-budget)
    expect((await call("POST", "/api/cluster/heartbeat", down)).body.reason).toBe("changed");
    // A steady day: the agent reports every 60 s (more often than it needs to).
    const writesBefore = store.writes;
    for (let i = 0; i < 24 * 60; i++) {
      clock.advance(MIN);
      await call("POST", "/api/cluster/heartbeat", { ...down, sequence: 3 + i });
    }
    expect(store.writes - writesBefore).toBeGreaterThanOrEqual(29);
    expect(store.writes - writesBefore).toBeLessThanOrEqual(31);
  });

  it("spends no extra write when the store serves a stale value after its own write (Workers KV)", async () => {
    const clock = testClock();
    const inner = memoryStore({}, { clock });
    // Like KV's edge cache: reads keep returning the first value ever read for a minute.
    const firstRead = new Map<string, string | null>();
    const stale: Store = {
      ...inner,
      kind: "stale-kv",
      compareAndSet: undefined,
      get: async (key) => {
        if (!firstRead.has(key)) firstRead.set(key, await inner.get(key));
        return firstRead.get(key) ?? null;
      },
    };
    const store = countingStore(stale);
    const { app } = createCoordinator(TEST_INIT, { store, clock });
    const send = async (body: unknown) => {
      const res = await agentPost(app, "/api/cluster/heartbeat", body, clock.now());
      return (await res.json()) as { reason: string };
    };
    expect((await send(report())).reason).toBe("changed");
    const down = report({ sequence: 2, members: [member("A")] });
    clock.advance(CLUSTER_PACE_MS);
    expect((await send(down)).reason).toBe("changed");
    clock.advance(MIN);
    expect((await send({ ...down, sequence: 3 })).reason).toBe("unchanged");
    expect(store.writes).toBe(2);
  });

  it("shows members unknown once the cluster missed its keepalive lease", async () => {
    const { call, clock } = testCoordinator();
    await call("POST", "/api/cluster/heartbeat", report());
    clock.advance(57 * MIN);
    expect((await call("GET", "/api/admin/workers")).body[0].status).toBe("online");
    clock.advance(2 * MIN);
    const workers = (await call("GET", "/api/admin/workers")).body;
    expect(workers.map((w: { status: string }) => w.status)).toEqual(["unknown", "unknown"]);
    const route = await call("GET", "/api/service/upload/x");
    expect(route.status).toBe(503);
    expect(route.body.error).toBe("No healthy workers available for 'upload'");
  });

  it("marks the leader as is_heartbeat_leader in the worker list", async () => {
    const { call } = testCoordinator();
    await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member(LEADER), member("B")] }),
    );
    const workers = (await call("GET", "/api/admin/workers")).body;
    const a = workers.find((w: { worker_id: string }) => w.worker_id === LEADER);
    expect(a).toMatchObject({
      is_heartbeat_leader: true,
      mode: "cluster",
      cluster: "default",
      tier: 2,
    });
  });
});
