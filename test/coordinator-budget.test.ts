/** In-process route tests of the coordinator's write budget, and of a failing store. */
import { describe, expect, it } from "vitest";
import { CLUSTER_PACE_MS, createCoordinator, memoryStore, type Store } from "../coordinator.ts";
import {
  agentPost,
  kvLikeStore,
  LEADER,
  member,
  registration,
  report,
  TEST_INIT,
  testClock,
  testCoordinator,
} from "./helpers/coord-fixtures.ts";
import { countingStore } from "../support/counting-store.ts";
import { peer } from "./helpers/signing.ts";

const MIN = 60_000;

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
    const clock = testClock();
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
    const clock = testClock();
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
    const clock = testClock();
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
