/**
 * The coordinator's bounds (docs/SECURITY.md, items 8 and 9): id-less legacy registrations
 * deduplicated and rate-limited per address, the leader's reserve of the write budget, a
 * bounded pending set, pruned per-isolate state and store entries, and documents that store
 * only what differs from the defaults, under a size cap. Each test failed on the old code.
 */
import { describe, expect, it } from "vitest";
import { type FileSystemLike, fileStore } from "../coordinator.ts";
import {
  agentPost,
  LEADER,
  testClock,
  member,
  registration,
  report,
  testCoordinator,
} from "./helpers/coord-fixtures.ts";

const MIN = 60_000;
const legacy = { clusterToken: "cluster-secret", adminToken: "a", allowLegacyWorkers: true };

/** An old worker's registration: no id, no token, from `address`. */
function oldWorker(tunnel: string, extra: Record<string, unknown> = {}) {
  return {
    capabilities: { worker_type: "cpu", cpu_cores: 4 },
    tunnel_url: tunnel,
    services: ["upload"],
    ...extra,
  };
}

describe("item 8: id-less (legacy) registrations", () => {
  it("are admitted only in legacy mode, and the same worker gets its id back (one record, one write)", async () => {
    const { call, store } = testCoordinator(legacy);
    const token = { authorization: "Bearer cluster-secret" };
    const refused = await call(
      "POST",
      "/api/worker/register",
      oldWorker("http://10.0.0.5:80"),
      token,
    );
    expect(refused.status).toBe(400);
    expect(refused.body.error).toBe("worker_id is required");
    const first = await call("POST", "/api/worker/register", oldWorker("http://10.0.0.5:80"));
    const again = await call("POST", "/api/worker/register", oldWorker("http://10.0.0.5:80/"));
    expect(first.status).toBe(200);
    expect(again.body.worker_id).toBe(first.body.worker_id);
    expect(store.writes).toBe(1);
    const other = await call("POST", "/api/worker/register", oldWorker("http://10.0.0.6:80"));
    expect(other.body.worker_id).not.toBe(first.body.worker_id);
  });

  it("are limited per client address: a flood from one address cannot mint ids", async () => {
    const { coordinator, store } = testCoordinator({ ...legacy, legacyRegisterLimit: 3 });
    const from = (address: string, i: number) =>
      coordinator.app.request(
        "/api/worker/register",
        {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(oldWorker(`http://10.9.0.${i}:80`)),
        },
        { incoming: { socket: { remoteAddress: address } } },
      );
    for (let i = 0; i < 3; i++) expect((await from("198.51.100.7", i)).status).toBe(200);
    const flood = await from("198.51.100.7", 99);
    expect(flood.status).toBe(429);
    expect(Number(flood.headers.get("retry-after"))).toBeGreaterThan(0);
    // A known worker from that address still re-registers; another address is not affected.
    expect((await from("198.51.100.7", 1)).status).toBe(200);
    expect((await from("198.51.100.8", 50)).status).toBe(200);
    expect(store.writes).toBe(4);
  });
});

describe("item 8: the write budget", () => {
  it("keeps a reserve for an existing cluster's report: a flood of direct writes never defers it", async () => {
    const { call, store, clock } = testCoordinator({ writeCap: 20, leaderReserve: 0.1 });
    expect((await call("POST", "/api/cluster/heartbeat", report())).body.reason).toBe("changed");
    // The reserve is for a cluster that existed before today (review2-budget): tomorrow.
    clock.advance(24 * 60 * 60_000);
    const writesBefore = store.writes;
    let deferred = 0;
    for (let i = 0; i < 40; i++) {
      const res = await call("POST", "/api/worker/register", registration(`flood-${i}`));
      if (res.body.written === false) deferred++;
    }
    expect(store.writes - writesBefore).toBe(18); // 20 minus the reserve of 2
    expect(deferred).toBe(40 - 18);
    const down = report({ sequence: 2, members: [member("A")] });
    const res = await call("POST", "/api/cluster/heartbeat", down);
    expect(res.body).toMatchObject({ written: true, reason: "changed" });
    expect(store.writes - writesBefore).toBe(19);
  });

  it("keeps the reserve from a cluster created today (a token holder's own, say)", async () => {
    const { call, store, clock } = testCoordinator({ writeCap: 20, leaderReserve: 0.1 });
    expect((await call("POST", "/api/cluster/heartbeat", report())).body.reason).toBe("changed");
    for (let i = 0; i < 40; i++) {
      await call("POST", "/api/worker/register", registration(`flood-${i}`));
    }
    expect(store.writes).toBe(18);
    clock.advance(60_000);
    const down = report({ sequence: 2, members: [member("A")] });
    const res = await call("POST", "/api/cluster/heartbeat", down);
    expect(res.body).toMatchObject({ written: false, reason: "deferred" });
    expect(store.writes).toBe(18);
  });

  it("keeps at most 1,000 writes waiting: past that a new worker is told to come back tomorrow", async () => {
    const { call, coordinator } = testCoordinator({ writeCap: 1 });
    await call("POST", "/api/worker/register", registration("first"));
    for (let i = 0; i < 1000; i++) {
      const res = await call("POST", "/api/worker/register", registration(`w${i}`));
      expect(res.status).toBe(200);
    }
    expect(coordinator.budget().pending_writes).toBe(1000);
    const over = await call("POST", "/api/worker/register", registration("one-too-many"));
    expect(over.status).toBe(503);
    expect(over.body.error).toBe("Write budget exhausted");
    expect(Number(over.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(coordinator.budget().pending_writes).toBe(1000);
  });
});

describe("item 8: per-isolate state and store entries are pruned", () => {
  it("forgets the routes of services no longer registered", async () => {
    const { call, clock, coordinator } = testCoordinator();
    for (let i = 0; i < 5; i++) {
      const id = `gone-${i}`;
      await call("POST", "/api/worker/register", registration(id, { services: [`svc-${i}`] }));
      await call("GET", `/api/service/svc-${i}/x`);
      clock.advance(2000);
      await call("DELETE", `/api/worker/unregister/${id}`);
    }
    clock.advance(2 * MIN);
    coordinator.tick();
    await call("GET", "/api/admin/metrics");
    const metrics = (await call("GET", "/api/admin/metrics")).body;
    expect(Object.keys(metrics.services)).toEqual([]);
  });

  it("drops expired entries from the file store when it next writes", async () => {
    const files = new Map<string, string>();
    const fs: FileSystemLike = {
      readFile: async (p) => {
        const text = files.get(p);
        if (text === undefined) throw Object.assign(new Error("no file"), { code: "ENOENT" });
        return text;
      },
      writeFile: async (p, data) => void files.set(p, data),
      rename: async (from, to) => {
        files.set(to, files.get(from) as string);
        files.delete(from);
      },
      mkdir: async () => undefined,
    };
    const clock = testClock();
    const store = fileStore({ path: "/data/store.json" }, { fs, clock });
    await store.set("reg/worker/old", "{}", { ttlSeconds: 60 });
    clock.advance(2 * MIN);
    await store.set("reg/worker/new", "{}", { ttlSeconds: 60 });
    const saved = JSON.parse(files.get("/data/store.json") as string);
    expect(Object.keys(saved.entries)).toEqual(["reg/worker/new"]);
  });
});

describe("item 9: documents store what differs from the defaults, under a cap", () => {
  /**
   * A report of `n` members with `k` services each (names only: every service at its default
   * URL), each member's URL `pad` characters longer than it needs to be.
   */
  const wide = (n: number, k: number, pad = 0) =>
    report({
      members: Array.from({ length: n }, (_, i) =>
        member(`m${i}`, {
          url: `http://10.1.${i >> 8}.${i & 255}:8700/${"p".repeat(pad)}`,
          services: Array.from({ length: k }, (_, j) => ({ name: `s${j}` })),
        }),
      ),
    });

  it("stores a member's service URL and health only when they are not the defaults", async () => {
    const { call, store } = testCoordinator();
    const custom = member("B", {
      url: "http://10.0.0.2:8700",
      services: [
        { name: "upload", status: "healthy" },
        { name: "ocr", url: "http://10.0.0.9:9000/ocr", status: "healthy" },
      ],
    });
    const res = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member(LEADER), custom] }),
    );
    expect(res.status).toBe(200);
    const doc = JSON.parse((await store.get("reg/cluster/default")) as string);
    expect(doc.members.B.services).toEqual([
      { name: "upload" },
      { name: "ocr", url: "http://10.0.0.9:9000/ocr" },
    ]);
    const b = ((await call("GET", "/api/admin/workers")).body as { worker_id: string }[]).find(
      (w) => w.worker_id === "B",
    );
    expect(b).toMatchObject({
      service_urls: {
        upload: "http://10.0.0.2:8700/service/upload",
        ocr: "http://10.0.0.9:9000/ocr",
      },
    });
  });

  it("keeps a near-limit report's document about the report's size (it was 40 times larger)", async () => {
    const { call, store } = testCoordinator();
    // Long member URLs and 64 services each: every service used to store the whole URL again.
    const body = wide(100, 64, 1500);
    const size = JSON.stringify(body).length;
    expect(size).toBeGreaterThan(200 * 1024);
    expect(size).toBeLessThan(256 * 1024);
    const res = await call("POST", "/api/cluster/heartbeat", body);
    expect(res.status).toBe(200);
    const stored = ((await store.get("reg/cluster/default")) as string).length;
    expect(stored).toBeLessThan(1.25 * size);
  });

  it("refuses a report whose document would pass the cap with 413, and changes nothing", async () => {
    const { call, store } = testCoordinator({ maxDocBytes: 16 * 1024 });
    expect((await call("POST", "/api/cluster/heartbeat", report())).status).toBe(200);
    const res = await call("POST", "/api/cluster/heartbeat", { ...wide(60, 10), sequence: 2 });
    expect(res.status).toBe(413);
    expect(res.body.error).toBe("The cluster document is too large");
    expect(store.writes).toBe(1);
    const ids = ((await call("GET", "/api/admin/workers")).body as { worker_id: string }[]).map(
      (w) => w.worker_id,
    );
    expect(ids.sort()).toEqual(["A", "B"]);
  });

  it("refuses a worker record over the cap with 413", async () => {
    const { store, clock, coordinator } = testCoordinator({ maxDocBytes: 4096 });
    const big = registration("big", {
      services: Array.from({ length: 64 }, (_, i) => ({
        name: `s${i}`,
        service_url: `http://10.0.0.1:80/${"p".repeat(100)}/${i}`,
      })),
    });
    const res = await agentPost(coordinator.app, "/api/worker/register", big, clock.now());
    expect(res.status).toBe(413);
    expect(store.writes).toBe(0);
  });
});
