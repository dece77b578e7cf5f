/** In-process route tests of the coordinator: every endpoint, every error path, contract shapes. */
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  createCoordinator,
  memoryStore,
  type Store,
  CLUSTER_PACE_MS,
  tokensEqual,
  UnsafePathError,
  upstreamUrl,
} from "../coordinator.ts";
import {
  agentPost,
  countingStore,
  kvLikeStore,
  LEADER,
  ManualClock,
  member,
  registration,
  report,
  TEST_INIT,
  testCoordinator,
} from "./helpers/coord-fixtures.ts";
import { peer } from "./helpers/signing.ts";

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

describe("direct mode: register", () => {
  it("answers the contract shape with tier and services", async () => {
    const { call } = testCoordinator();
    const res = await call("POST", "/api/worker/register", {
      worker_id: "gpu-1",
      capabilities: { has_gpu: true, gpu_memory: 24, gpu_type: "A10", cpu_cores: 8 },
      tunnel_url: "http://127.0.0.1:7000",
      services: ["ocr", { name: "rag", service_url: "http://127.0.0.1:7001" }],
      containers: [{ name: "notes", port: 7002, health_endpoint: "/health", version: "1.2" }],
      wants_heartbeat_leadership: true,
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      worker_id: "gpu-1",
      tier: 1,
      heartbeat_interval: 30,
      is_heartbeat_leader: true,
      services_registered: ["ocr", "rag", "notes"],
    });
  });

  it("derives tiers: GPU 1, storage 3, CPU and default 2; generates an ID when none is sent", async () => {
    const { call } = testCoordinator();
    const tiers = [];
    for (const capabilities of [
      { worker_type: "gpu" },
      { has_storage: true, storage_type: "ssd" },
      { worker_type: "storage" },
      { worker_type: "cpu", has_storage: true },
      {},
    ]) {
      const res = await call("POST", "/api/worker/register", { capabilities, services: ["x"] });
      expect(res.status).toBe(200);
      expect(res.body.worker_id).toMatch(/^worker-[0-9a-f]{12}$/);
      tiers.push(res.body.tier);
    }
    expect(tiers).toEqual([1, 3, 3, 2, 2]);
  });

  it('reads "" as "none" for an optional worker ID or URL, as old workers send it', async () => {
    // Regression: a worker without a tunnel sending `"tunnel_url": ""` (or no ID yet as "")
    // was refused with 400 and could not register at all.
    const { call } = testCoordinator();
    const res = await call("POST", "/api/worker/register", {
      worker_id: "",
      tunnel_url: "",
      ip_address: "127.0.0.1",
      containers: [{ name: "ocr", port: 7002, service_url: "", url: "" }],
    });
    expect(res.status).toBe(200);
    expect(res.body.worker_id).toMatch(/^worker-[0-9a-f]{12}$/);
    expect(res.body.services_registered).toEqual(["ocr"]);
    const [w] = (await call("GET", "/api/admin/workers")).body;
    expect(w).toMatchObject({ tunnel_url: null, service_urls: { ocr: "http://127.0.0.1:7002" } });
    // A URL that is there must still be a real one.
    expect((await call("POST", "/api/worker/register", { tunnel_url: " " })).status).toBe(400);
  });

  it("gives heartbeat leadership to one worker at a time", async () => {
    const { call } = testCoordinator();
    const a = await call(
      "POST",
      "/api/worker/register",
      registration("a", { wants_heartbeat_leadership: true }),
    );
    const b = await call(
      "POST",
      "/api/worker/register",
      registration("b", { wants_heartbeat_leadership: true }),
    );
    expect([a.body.is_heartbeat_leader, b.body.is_heartbeat_leader]).toEqual([true, false]);
  });

  it("gives heartbeat leadership to one worker even when several register at once", async () => {
    // Regression: each registration judged "is a leader taken" before the others had written,
    // so workers registering together all became heartbeat leaders.
    const { call } = testCoordinator();
    const answers = await Promise.all(
      ["a", "b", "c", "d"].map((id) =>
        call(
          "POST",
          "/api/worker/register",
          registration(id, { wants_heartbeat_leadership: true }),
        ),
      ),
    );
    const leaders = answers.filter((r) => r.body.is_heartbeat_leader);
    expect(leaders).toHaveLength(1);
    const workers = (await call("GET", "/api/admin/workers")).body;
    expect(workers.filter((w: { is_heartbeat_leader: boolean }) => w.is_heartbeat_leader)).toEqual([
      expect.objectContaining({ worker_id: leaders[0]?.body.worker_id }),
    ]);
  });

  it("does not write again for an identical registration within the write interval", async () => {
    const { call, store, clock } = testCoordinator();
    await call("POST", "/api/worker/register", registration("w"));
    await call("POST", "/api/worker/register", registration("w"));
    expect(store.writes).toBe(1);
    await call("POST", "/api/worker/register", registration("w", { services: ["upload", "rag"] }));
    expect(store.writes).toBe(2);
    clock.advance(6 * MIN);
    await call("POST", "/api/worker/register", registration("w", { services: ["upload", "rag"] }));
    expect(store.writes).toBe(3);
  });

  it("keeps every worker when many register at once (one record per worker)", async () => {
    const { call } = testCoordinator();
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        call("POST", "/api/worker/register", registration(`w${i}`)),
      ),
    );
    const workers = await call("GET", "/api/admin/workers");
    expect(workers.body).toHaveLength(40);
  });
});

describe("direct mode: heartbeat and staleness", () => {
  it("answers 404 with the contract body for an unknown worker, and writes nothing", async () => {
    const { call, store } = testCoordinator();
    const res = await call("POST", "/api/worker/heartbeat", {
      worker_id: "ghost",
      status: "online",
    });
    expect(res.status).toBe(404);
    expect(res.body).toEqual({ error: "Worker not found" });
    expect(store.writes).toBe(0);
  });

  it("writes only on a status change or when the record is older than 5 minutes", async () => {
    const { call, store, clock } = testCoordinator();
    await call("POST", "/api/worker/register", registration("w"));
    const hb = (status = "online") =>
      call("POST", "/api/worker/heartbeat", {
        worker_id: "w",
        status,
        current_load: 0.5,
        available_memory: 1024,
      });
    expect((await hb()).body).toMatchObject({ status: "ok" });
    clock.advance(30_000);
    await hb();
    expect(store.writes).toBe(1);
    await hb("busy");
    expect(store.writes).toBe(2);
    clock.advance(5 * MIN);
    await hb("busy");
    expect(store.writes).toBe(3);
  });

  it("never shows a heartbeating worker offline between writes, and about 12 writes an hour", async () => {
    const { call, store, clock } = testCoordinator();
    await call("POST", "/api/worker/register", registration("w"));
    for (let i = 0; i < 120; i++) {
      clock.advance(30_000);
      await call("POST", "/api/worker/heartbeat", { worker_id: "w", status: "online" });
      const [w] = (await call("GET", "/api/admin/workers")).body;
      expect(w.status).toBe("online");
    }
    expect(store.writes).toBeGreaterThanOrEqual(11);
    expect(store.writes).toBeLessThanOrEqual(14);
  });

  it("shows a heartbeat's status change at once, even when it lands while the table is being read", async () => {
    // Regression: a table built from reads that began before the write was cached for a whole
    // table TTL (60 s), hiding the change (and routing to a draining worker) meanwhile.
    const clock = new ManualClock();
    const inner = memoryStore({}, { clock });
    // A gate on the next get: it reads the value, says it has, then holds it until released.
    let gate: { enter: () => void; released: Promise<void> } | null = null;
    const slow: Store = {
      ...inner,
      get: async (key) => {
        const value = await inner.get(key);
        const held = gate;
        gate = null;
        if (held) {
          held.enter();
          await held.released;
        }
        return value;
      },
    };
    const { app } = createCoordinator(TEST_INIT, { store: slow, clock });
    const post = (path: string, body: unknown) => agentPost(app, path, body, clock.now());
    const statuses = async () =>
      ((await (await app.request("/api/admin/workers")).json()) as { status: string }[]).map(
        (w) => w.status,
      );
    await post("/api/worker/register", registration("w"));
    clock.advance(MIN + 1000); // the cached record is due for a re-read
    let release = () => {};
    const entered = new Promise<void>((enter) => {
      gate = { enter, released: new Promise<void>((r) => (release = r)) };
    });
    const reading = app.request("/api/admin/workers"); // reads the record before the heartbeat
    await entered;
    const hb = await post("/api/worker/heartbeat", { worker_id: "w", status: "draining" });
    expect(await hb.json()).toEqual({ status: "ok", written: true });
    release();
    // That table was built from the read before the heartbeat: it may say online, once.
    const before = (await (await reading).json()) as { status: string }[];
    expect(before.map((w) => w.status)).toEqual(["online"]);
    expect(await statuses()).toEqual(["draining"]);
  });

  it("shows a silent worker offline once its record is older than the write interval plus grace", async () => {
    const { call, clock } = testCoordinator();
    await call("POST", "/api/worker/register", registration("w"));
    clock.advance(6 * MIN);
    expect((await call("GET", "/api/admin/workers")).body[0].status).toBe("online");
    clock.advance(2 * MIN);
    const [w] = (await call("GET", "/api/admin/workers")).body;
    expect(w.status).toBe("offline");
    const stats = (await call("GET", "/api/admin/stats")).body;
    expect(stats).toMatchObject({ total_workers: 1, healthy_workers: 0, offline_workers: 1 });
  });
});

describe("direct mode: unregister", () => {
  it("removes a worker, answers ok, then 404", async () => {
    const { call } = testCoordinator();
    await call("POST", "/api/worker/register", registration("w"));
    const res = await call("DELETE", "/api/worker/unregister/w");
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: "ok" });
    expect((await call("GET", "/api/admin/workers")).body).toEqual([]);
    expect((await call("DELETE", "/api/worker/unregister/w")).status).toBe(404);
  });

  it("rejects a malformed ID with 400", async () => {
    const { call } = testCoordinator();
    const res = await call("DELETE", `/api/worker/unregister/${encodeURIComponent("../x")}`);
    expect(res.status).toBe(400);
    expect(res.body.error).toBe("Invalid worker id");
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
    const clock = new ManualClock();
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

describe("write budget: the hard cap is never passed", () => {
  it("defers what would pass the cap and writes it when the next day allows", async () => {
    const { call, store, clock } = testCoordinator({ writeCap: 3 });
    await call("POST", "/api/worker/register", registration("w1"));
    await call("POST", "/api/worker/register", registration("w2"));
    expect((await call("POST", "/api/cluster/heartbeat", report())).body.reason).toBe("changed");
    const over = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ sequence: 2, members: [member("A")] }),
    );
    expect(over.body).toMatchObject({
      written: false,
      reason: "deferred",
      writes_today: 3,
      write_budget: 3,
    });
    expect(over.body.next_keepalive_at).toBe("2026-11-27T00:00:00.000Z");
    const reg = await call("POST", "/api/worker/register", registration("w3"));
    expect(reg.status).toBe(200);
    expect(reg.body.written).toBe(false);
    expect(store.writes).toBe(3);
    // The deferred state already routes and shows in this isolate.
    expect(
      (await call("GET", "/api/admin/workers")).body
        .map((w: { worker_id: string }) => w.worker_id)
        .sort(),
    ).toEqual(["A", "w1", "w2", "w3"]);
    expect((await call("GET", "/api/admin/budget")).body).toMatchObject({
      used_today: 3,
      remaining: 0,
      pending_writes: 2,
    });
    clock.advance(12 * 60 * MIN); // past midnight UTC
    await call("GET", "/health"); // any request flushes what waited
    expect(store.writes).toBe(5);
    expect((await call("GET", "/api/admin/budget")).body).toMatchObject({
      used_today: 2,
      pending_writes: 0,
    });
    const stored = JSON.parse((await store.get("reg/cluster/default")) as string);
    expect(Object.keys(stored.members)).toEqual(["A"]);
  });
  it("merges a deferred cluster write with what another isolate wrote meanwhile", async () => {
    const clock = new ManualClock();
    const store = countingStore(memoryStore({}, { clock }));
    const isolate = () => createCoordinator({ ...TEST_INIT, writeCap: 2 }, { store, clock });
    const a = isolate();
    const b = isolate();
    const send = async (c: ReturnType<typeof isolate>, body: unknown) => {
      const res = await agentPost(c.app, "/api/cluster/heartbeat", body, clock.now());
      return ((await res.json()) as { reason: string }).reason;
    };
    const X = peer("X");
    const abcx = [member("A"), member("B"), member("C"), member(X)];
    clock.advance(11.5 * 60 * MIN); // 23:30 UTC
    expect(await send(a, report())).toBe("changed");
    clock.advance(CLUSTER_PACE_MS);
    expect(await send(a, report({ sequence: 2, members: abcx }))).toBe("changed");
    expect(await send(a, report({ sequence: 3, members: [...abcx, member("D")] }))).toBe(
      "deferred",
    );
    clock.advance(31 * MIN); // past midnight UTC: a new budget day, A's view still leased
    // Another isolate hears the other side of a partition first and writes it.
    const other = { leader_id: X, term: 2, sequence: 1, members: [member(X), member("Y")] };
    expect(await send(b, other)).toBe("changed");
    await a.app.request("/health"); // any request flushes what waited
    const stored = JSON.parse((await store.get("reg/cluster/default")) as string);
    expect(Object.keys(stored.members).sort()).toEqual(["A", "B", "C", "D", X, "Y"].sort());
    expect(Object.keys(stored.leaders).sort()).toEqual([LEADER, X].sort());
    expect(stored.budget.used).toBe(2); // the flush saw the other isolate's write
    expect(store.writes).toBe(4);
  });
});

describe("write budget: what waits is never written over newer state", () => {
  it("drops a deferred document once a later report matches what is stored", async () => {
    const { call, store, clock, coordinator } = testCoordinator({ writeCap: 1 });
    clock.advance(11.5 * 60 * MIN); // 23:30 UTC
    expect((await call("POST", "/api/cluster/heartbeat", report())).body.reason).toBe("changed");
    const down = report({
      sequence: 2,
      members: [member("A"), member("B", { status: "offline" })],
    });
    expect((await call("POST", "/api/cluster/heartbeat", down)).body.reason).toBe("deferred");
    const back = await call("POST", "/api/cluster/heartbeat", report({ sequence: 3 }));
    expect(back.body.reason).toBe("unchanged");
    clock.advance(31 * MIN); // past midnight UTC: budget again
    await coordinator.flush();
    const stored = JSON.parse((await store.get("reg/cluster/default")) as string);
    expect(stored.digest).toBe(back.body.digest);
    expect(stored.members.B.status).toBe("online");
    const workers = (await call("GET", "/api/admin/workers")).body as {
      worker_id: string;
      status: string;
    }[];
    expect(workers.find((w) => w.worker_id === "B")?.status).toBe("online");
  });

  it("defers a second write to a key within the store's minimum interval, then writes it", async () => {
    const clock = new ManualClock();
    const { store } = kvLikeStore(clock);
    const { app } = createCoordinator(TEST_INIT, { store, clock });
    // A worker's record (a cluster's second change within CLUSTER_PACE_MS would wait anyway).
    const register = (services: string[]) =>
      agentPost(app, "/api/worker/register", registration("w", { services }), clock.now());
    expect((await register(["upload"])).status).toBe(200);
    expect(store.writes).toBe(1);
    clock.advance(500);
    expect((await register(["upload", "rag"])).status).toBe(200);
    expect(store.writes).toBe(1);
    clock.advance(600);
    await app.request("/health"); // any request flushes what waited
    expect(store.writes).toBe(2);
  });
});

describe("store failures", () => {
  it("answers 503 with a request id, and logs what failed in the store under that id", async () => {
    const clock = new ManualClock();
    const broken: Store = {
      ...memoryStore({}, { clock }),
      get: async () => {
        throw new Error("disk on fire at /var/lib/rollcall/store.json");
      },
    };
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    const { app } = createCoordinator(TEST_INIT, { store: broken, clock, log });
    const res = await agentPost(app, "/api/cluster/heartbeat", report(), clock.now());
    expect(res.status).toBe(503);
    const body = (await res.json()) as { error: string; request_id: string };
    expect(body).toMatchObject({ error: "Store unavailable", request_id: expect.any(String) });
    // The client learns nothing of the backend; the log has it, under the same id.
    expect(JSON.stringify(body)).not.toMatch(/disk|var\/lib|memory/);
    expect(lines).toEqual([
      `${body.request_id} StoreError: Store get failed (memory): disk on fire at /var/lib/rollcall/store.json`,
    ]);
  });
});

describe("security", () => {
  const secured = () =>
    testCoordinator({ clusterToken: "cluster-secret", adminToken: "admin-secret" });
  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

  it("needs the cluster token on agent endpoints and the admin token on admin endpoints", async () => {
    const { call, store } = secured();
    const none = await call("POST", "/api/cluster/heartbeat", report());
    expect(none.status).toBe(401);
    expect(none.body.error).toBe("Missing token");
    const wrong = await call("POST", "/api/cluster/heartbeat", report(), bearer("nope"));
    expect(wrong.status).toBe(401);
    expect(wrong.body.error).toBe("Invalid token");
    expect((await call("POST", "/api/worker/register", registration("w"))).status).toBe(401);
    expect(store.writes).toBe(0);
    expect(
      (await call("POST", "/api/cluster/heartbeat", report(), bearer("cluster-secret"))).status,
    ).toBe(200);
    expect((await call("GET", "/api/admin/workers")).status).toBe(401);
    expect(
      (await call("GET", "/api/admin/workers", undefined, bearer("cluster-secret"))).status,
    ).toBe(401);
    expect((await call("GET", "/api/admin/stats", undefined, bearer("admin-secret"))).status).toBe(
      200,
    );
  });

  it("admits token-less direct workers only with the legacy setting, never a wrong token", async () => {
    const { call } = testCoordinator({
      clusterToken: "c",
      adminToken: "a",
      allowLegacyWorkers: true,
    });
    expect((await call("POST", "/api/worker/register", registration("old"))).status).toBe(200);
    expect(
      (await call("POST", "/api/worker/heartbeat", { worker_id: "old", status: "online" })).status,
    ).toBe(200);
    expect(
      (await call("POST", "/api/worker/register", registration("x"), bearer("bad"))).status,
    ).toBe(401);
    expect((await call("POST", "/api/cluster/heartbeat", report())).status).toBe(401);
    expect((await call("DELETE", "/api/worker/unregister/old")).status).toBe(200);
  });

  it("compares tokens correctly", async () => {
    expect(await tokensEqual("abc", "abc")).toBe(true);
    expect(await tokensEqual("abc", "abd")).toBe(false);
    expect(await tokensEqual("", "abc")).toBe(false);
    expect(await tokensEqual("abcd", "abc")).toBe(false);
  });
});

describe("bad input: clear 4xx, never 500, nothing written", () => {
  const endpoints = ["/api/worker/register", "/api/worker/heartbeat", "/api/cluster/heartbeat"];
  /**
   * Each body with what register answers it. Register keeps only the keys it knows and needs
   * none, so a body whose every bad key is foreign to register is a valid register body (200);
   * the heartbeats answer 400 to every one of them.
   */
  const garbage: Array<[body: unknown, register: 200 | 400]> = [
    ["", 400],
    ["not json", 400],
    ["{", 400],
    ["null", 400],
    ["[]", 400],
    ["42", 400],
    ['"str"', 400],
    [{ worker_id: 5 }, 400],
    [{ worker_id: "../../etc" }, 400],
    [{ worker_id: "a", status: 7 }, 200],
    [{ worker_id: "a", current_load: -1 }, 200],
    // Old agents send informational figures as strings ("3.2GB"): those are taken; an object is not.
    [{ worker_id: "a", current_load: { n: 1 } }, 200],
    [{ tunnel_url: "javascript:alert(1)" }, 400],
    [{ tunnel_url: "http://user:pw@host/" }, 400],
    [{ services: [{ name: "../admin" }] }, 400],
    [{ services: Array.from({ length: 65 }, (_, i) => `s${i}`) }, 400],
    [{ services: Array.from({ length: 10_000 }, (_, i) => `s${i}`) }, 400],
    [{ capabilities: { has_gpu: "yes" } }, 400],
    [{ capabilities: { nested: { deep: true } } }, 400],
    [{ leader_id: "A", term: -1, sequence: 0, members: [] }, 200],
    [{ leader_id: "A", term: 1.5, sequence: 0, members: [] }, 200],
    [{ leader_id: "A", term: 1, sequence: 0, members: [member("A"), member("A")] }, 200],
    [{ leader_id: "A", term: 1, sequence: 0, members: [member("A", { status: "zombie" })] }, 200],
    [{ leader_id: "A", term: 1, sequence: 0, members: [member("A", { url: "ftp://x" })] }, 200],
    [
      {
        leader_id: "A",
        term: 1,
        sequence: 0,
        members: [member("A", { services: [{ name: "x" }, { name: "x" }] })],
      },
      200,
    ],
    [{ leader_id: "A", term: 1, sequence: 0, members: "all" }, 200],
    [{ __proto__: { polluted: true }, leader_id: "A" }, 200],
  ];

  it("answers every garbage body on every agent endpoint as the table says", async () => {
    const { call, store } = testCoordinator();
    for (const path of endpoints) {
      for (const [body, register] of garbage) {
        const res = await call("POST", path, body);
        const expected = path === "/api/worker/register" ? register : 400;
        expect(res.status, `${path} ${JSON.stringify(body)}`).toBe(expected);
        if (expected === 200) expect(res.body.status).toBe("registered");
        else expect(typeof res.body.error).toBe("string");
      }
    }
    // Worker "a" once (registering it again the same writes nothing), and one worker for the 8
    // accepted bodies that name none: they send the same (no) tunnel URL and capabilities, so
    // they get the same id back (a legacy registration is deduplicated, never a new record each).
    const workers = (await call("GET", "/api/admin/workers")).body;
    expect(workers).toHaveLength(2);
    expect(store.writes).toBe(2);
    expect((await call("GET", "/api/admin/leader")).body.clusters).toEqual([]);
  });

  it("survives random bytes and random JSON (fuzz)", async () => {
    const { call, store } = testCoordinator();
    let seed = 42;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    const atoms = [null, true, 0, -1, 1e308, "", "x", "online", [], {}, "http://127.0.0.1:1"];
    const keys = [
      "worker_id",
      "leader_id",
      "term",
      "sequence",
      "members",
      "status",
      "url",
      "services",
      "name",
    ];
    const value = (depth: number): unknown => {
      if (depth > 2 || rand() < 0.4) return atoms[Math.floor(rand() * atoms.length)];
      if (rand() < 0.5)
        return Array.from({ length: Math.floor(rand() * 3) }, () => value(depth + 1));
      return Object.fromEntries(
        Array.from({ length: Math.floor(rand() * 5) }, () => [
          keys[Math.floor(rand() * keys.length)],
          value(depth + 1),
        ]),
      );
    };
    for (let i = 0; i < 300; i++) {
      const path = endpoints[i % 2 === 0 ? 2 : 1] as string;
      const body =
        i % 3 === 0
          ? String.fromCharCode(...Array.from({ length: 20 }, () => Math.floor(rand() * 256)))
          : JSON.stringify(value(0));
      const res = await call("POST", path, body);
      expect(res.status, body).toBeLessThan(500);
    }
    expect(store.writes).toBe(0);
  });

  it("refuses a last_seen no date can show, and still answers with one already stored", async () => {
    // Regression: such a report was stored, then every admin read and every routed request
    // answered 500 (Invalid Date), and it stayed the freshest entry for good.
    const { call, store, clock } = testCoordinator();
    const far = 8_700_000_000_000_000; // a safe integer, but past the last Date (8.64e15)
    const bad = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member("A", { last_seen: far })] }),
    );
    expect(bad.status).toBe(400);
    expect(bad.body.details[0].path).toBe("members.0.last_seen");
    expect(store.writes).toBe(0);
    await call("POST", "/api/cluster/heartbeat", report());
    const doc = JSON.parse((await store.get("reg/cluster/default")) as string);
    doc.members.A.last_seen = far;
    await store.set("reg/cluster/default", JSON.stringify(doc));
    const { app } = createCoordinator({ liveView: false }, { store, clock });
    const workers = await app.request("/api/admin/workers");
    expect(workers.status).toBe(200);
    const a = ((await workers.json()) as { worker_id: string; last_heartbeat: unknown }[]).find(
      (w) => w.worker_id === "A",
    );
    expect(a?.last_heartbeat).toBeNull();
    expect((await app.request("/api/admin/stats")).status).toBe(200);
    expect((await app.request("/api/service/nope/x")).status).toBe(503);
  });

  it("answers 413 for an oversized body", async () => {
    const { call, store } = testCoordinator({ maxBodyBytes: 1024 });
    const res = await call("POST", "/api/cluster/heartbeat", { pad: "x".repeat(5000) });
    expect(res.status).toBe(413);
    expect(res.body.error).toMatch(/larger than 1024 bytes/);
    expect(store.writes).toBe(0);
  });

  it("answers unknown paths with a JSON 404, and CORS preflights with 204 on service routes only", async () => {
    const { call, coordinator } = testCoordinator();
    const res = await call("GET", "/nope");
    expect(res.status).toBe(404);
    expect(res.body.error).toBe("Not found");
    const preflight = (path: string) =>
      coordinator.app.request(path, {
        method: "OPTIONS",
        headers: { origin: "https://x.example", "access-control-request-method": "POST" },
      });
    const service = await preflight("/api/service/upload/x");
    expect(service.status).toBe(204);
    expect(service.headers.get("access-control-allow-origin")).toBe("*");
    // No web page may call (or read) the agent and admin endpoints.
    for (const path of ["/api/admin/workers", "/api/worker/register", "/api/cluster/heartbeat"]) {
      const pre = await preflight(path);
      expect(pre.headers.get("access-control-allow-origin"), path).toBeNull();
    }
    const admin = await call("GET", "/api/admin/workers", undefined, {
      origin: "https://x.example",
    });
    expect(admin.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("lets a preflight for a service ask for any request header", async () => {
    // Regression: only Authorization and Content-Type were allowed, so a browser calling a
    // service with any other header (X-Requested-With, X-File-Name, ...) was refused by CORS.
    const { coordinator } = testCoordinator({ corsOrigin: "https://app.example" });
    for (const path of ["/api/service/upload/files"]) {
      const pre = await coordinator.fetch(
        new Request(`http://coordinator${path}`, {
          method: "OPTIONS",
          headers: {
            origin: "https://app.example",
            "access-control-request-method": "PUT",
            "access-control-request-headers": "X-File-Name, content-type, authorization",
          },
        }),
      );
      expect(pre.status).toBe(204);
      expect(pre.headers.get("access-control-allow-origin")).toBe("https://app.example");
      expect(pre.headers.get("access-control-allow-headers")?.toLowerCase()).toBe(
        "x-file-name,content-type,authorization",
      );
      expect(pre.headers.get("access-control-allow-methods")).toContain("PUT");
    }
  });
});

describe("routing errors (no upstream needed)", () => {
  it("503 when no worker provides the service, with the available services", async () => {
    const { call } = testCoordinator();
    await call("POST", "/api/cluster/heartbeat", report());
    const res = await call("GET", "/api/service/ocr/page");
    expect(res.status).toBe(503);
    expect(res.body).toEqual({
      error: "Service 'ocr' not available",
      available_services: ["upload"],
      suggestion: expect.any(String),
    });
  });

  it("503 with Retry-After when providers exist but none is healthy", async () => {
    const { call } = testCoordinator();
    await call(
      "POST",
      "/api/cluster/heartbeat",
      report({
        members: [
          member("A", { status: "offline" }),
          member("B", { services: [{ name: "upload", status: "unhealthy" }] }),
        ],
      }),
    );
    const res = await call("POST", "/api/service/upload/file", "data");
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("30");
    expect(res.body).toMatchObject({
      error: "No healthy workers available for 'upload'",
      available_services: [],
    });
  });

  it("400 for names and paths that try to escape", async () => {
    const { call } = testCoordinator();
    await call("POST", "/api/cluster/heartbeat", report());
    for (const path of [
      "/api/service/upload/..%2fadmin",
      "/api/service/upload/%2e%2e%2fadmin",
      "/api/service/upload/a%2Fb",
      "/api/service/upload/a%5cb",
      "/api/service/upload/%252e%252e/x",
      "/api/service/upload/x/%00",
      "/api/service/up%2fload/x",
      "/api/service/upload/%zz",
    ]) {
      const res = await call("GET", path);
      expect(res.status, path).toBe(400);
      expect(res.body.error).toBe("Invalid service path");
      // Regression: through the hono app (not the starters' fetch) this 400 had no CORS header.
      expect(res.headers.get("access-control-allow-origin"), path).toBe("*");
    }
    // The URL parser resolves a dot segment before routing: this is /api/x, an unknown path.
    expect((await call("GET", "/api/service/%2e%2e/x")).status).toBe(404);
  });

  it("builds upstream URLs that stay under the service URL (the path was checked before)", () => {
    expect(upstreamUrl("http://w:1/service/up/", "a/b%20c", "?q=1")).toBe(
      "http://w:1/service/up/a/b%20c?q=1",
    );
    expect(upstreamUrl("http://w:1/service/up", null, "")).toBe("http://w:1/service/up");
    for (const rest of ["../admin", "%2e%2e/admin", "a/../../admin"]) {
      expect(() => upstreamUrl("http://w:1/service/up", rest, ""), rest).toThrow(UnsafePathError);
    }
  });
});

describe("timers", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("start() flushes deferred writes every minute and ticks every 5 s; stop() clears both", async () => {
    vi.useFakeTimers();
    const hooks: unknown[] = [];
    const fetcher = (async (_url: RequestInfo | URL, init?: RequestInit) => {
      hooks.push(JSON.parse(String(init?.body)));
      return new Response(null, { status: 204 });
    }) as typeof fetch;
    const { coordinator, call, store, clock } = testCoordinator(
      { writeCap: 1, scalingWebhook: "http://hook.test/scale" },
      fetcher,
    );
    const sick = (id: string) =>
      member(id, { services: [{ name: "upload", status: "unhealthy" }] });
    await call("POST", "/api/cluster/heartbeat", report({ members: [sick("A")] }));
    const over = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ sequence: 2, members: [sick("A"), sick("B")] }),
    );
    expect(over.body.reason).toBe("deferred");
    expect(store.writes).toBe(1);
    expect(vi.getTimerCount()).toBe(0);

    coordinator.start();
    coordinator.start(); // a second start() sets no more timers
    expect(vi.getTimerCount()).toBe(2);
    await vi.advanceTimersByTimeAsync(5000);
    // The tick saw a service whose providers are all unhealthy, with no request made.
    expect(hooks).toMatchObject([{ service: "upload", signal: "scale_up", previous: "steady" }]);
    clock.advance(24 * 60 * MIN); // the next day's budget
    await vi.advanceTimersByTimeAsync(55_000);
    expect(store.writes).toBe(2); // the flush wrote what waited, with no request made

    coordinator.stop();
    expect(vi.getTimerCount()).toBe(0);
  });
});
