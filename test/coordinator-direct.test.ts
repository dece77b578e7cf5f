/** In-process route tests of the coordinator in direct mode: register, heartbeat, unregister. */
import { describe, expect, it } from "vitest";
import { createCoordinator, memoryStore, type Store } from "../coordinator.ts";
import {
  agentPost,
  registration,
  TEST_INIT,
  testClock,
  testCoordinator,
} from "./helpers/coord-fixtures.ts";

const MIN = 60_000;

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

  // Tiers: GPU 1, storage 3, CPU and default 2.
  it.each([
    { kind: "a GPU worker", capabilities: { worker_type: "gpu" }, tier: 1 },
    {
      kind: "a worker with storage",
      capabilities: { has_storage: true, storage_type: "ssd" },
      tier: 3,
    },
    { kind: "a storage worker", capabilities: { worker_type: "storage" }, tier: 3 },
    {
      kind: "a CPU worker with storage",
      capabilities: { worker_type: "cpu", has_storage: true },
      tier: 2,
    },
    { kind: "no capabilities", capabilities: {}, tier: 2 },
  ])(
    "derives tier $tier for $kind; generates an ID when none is sent",
    async ({ capabilities, tier }) => {
      const { call } = testCoordinator();
      const res = await call("POST", "/api/worker/register", { capabilities, services: ["x"] });
      expect(res.status).toBe(200);
      expect(res.body.worker_id).toMatch(/^worker-[0-9a-f]{12}$/);
      expect(res.body.tier).toBe(tier);
    },
  );

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
    const clock = testClock();
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
