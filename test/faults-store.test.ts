/**
 * Store failures under a real coordinator routing to a real upstream: writes refused (Workers
 * KV's 429, a spent daily quota), reads failing, a store that hangs. The coordinator keeps
 * routing from what it has, answers the leader with a retryable error, and the next write that
 * succeeds holds the latest state. Then Workers KV's eventual consistency: reads that return
 * the value of up to 60 s ago, two isolates, two leaders: no member is lost.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CLUSTER_PACE_MS,
  type ClusterReportInput,
  createCoordinator,
  memoryStore,
  type Store,
} from "../coordinator.ts";
import { agentPost, testClock, member, report, TEST_INIT } from "./helpers/coord-fixtures.ts";
import { peer } from "./helpers/signing.ts";
import { faultyStore, type StoreFault } from "./helpers/faulty-store.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

let up: Upstream;
beforeAll(async () => {
  up = await startUpstream("upload");
});
afterAll(() => up.close());

const svc = (name = "upload") => [{ name, status: "healthy" as const }];
const m = (id: string, incarnation = 1) =>
  member(id, { url: up.url, incarnation, services: svc(), last_seen: 1000 * incarnation });

function start(store: Store, clock = testClock()) {
  const coordinator = createCoordinator({ ...TEST_INIT, storeTimeoutMs: 300 }, { store, clock });
  /** Sends a report as its leader's agent does: JSON, signed by the leader's key. */
  const send = async (r: ClusterReportInput) => {
    const app = {
      request: (path: string, init: RequestInit) =>
        coordinator.fetch(new Request(`http://c.test${path}`, init)),
    };
    const res = await agentPost(app, "/api/cluster/heartbeat", r, clock.now());
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const route = async () =>
    (await coordinator.fetch(new Request("http://c.test/api/service/upload/ping"))).status;
  /** The members the stored document holds (read through a fresh coordinator on the store). */
  const storedMembers = async (s: Store = store) => {
    const raw = await s.get("reg/cluster/default");
    const doc = raw ? (JSON.parse(raw) as { members: Record<string, unknown> }) : null;
    return Object.keys(doc?.members ?? {}).sort();
  };
  return { coordinator, clock, send, route, storedMembers };
}

describe.each<[string, StoreFault]>([
  ["writes refused with 429", "refuse-429"],
  ["the daily write quota spent", "quota"],
])("%s", (_name, fault) => {
  it("routing goes on, the leader gets a retryable error, the next write holds the latest state", async () => {
    const store = faultyStore(memoryStore());
    const c = start(store);
    expect((await c.send(report({ members: [m("A")] }))).status).toBe(200);
    store.fault = fault;
    c.clock.advance(CLUSTER_PACE_MS);
    const refused = await c.send(report({ sequence: 2, members: [m("A"), m("B")] }));
    expect(refused.status).toBeGreaterThanOrEqual(500); // the agent's client retries 5xx
    expect(refused.body.error).toEqual(expect.any(String));
    expect(await c.route()).toBe(200);
    c.clock.advance(CLUSTER_PACE_MS);
    expect(
      (await c.send(report({ sequence: 3, members: [m("A"), m("B"), m("C")] }))).status,
    ).toBeGreaterThanOrEqual(500);
    expect(await c.route()).toBe(200);
    store.fault = "none";
    c.clock.advance(CLUSTER_PACE_MS);
    const ok = await c.send(report({ sequence: 4, members: [m("A"), m("B"), m("C")] }));
    expect(ok.status).toBe(200);
    expect(await c.storedMembers()).toEqual(["A", "B", "C"]);
  });
});

describe("reads failing", () => {
  it("routing goes on from the last table, the leader gets a retryable error, and recovery writes the latest", async () => {
    const store = faultyStore(memoryStore());
    const c = start(store);
    expect((await c.send(report({ members: [m("A")] }))).status).toBe(200);
    expect(await c.route()).toBe(200);
    store.fault = "reads-fail";
    c.clock.advance(10 * 60_000); // every cache has lapsed: the next table needs the store
    expect(await c.route()).toBe(200);
    const during = await c.send(report({ sequence: 2, members: [m("A"), m("B")] }));
    expect(during.status).toBeGreaterThanOrEqual(500);
    expect(await c.route()).toBe(200);
    store.fault = "none";
    c.clock.advance(5000);
    expect((await c.send(report({ sequence: 3, members: [m("A"), m("B")] }))).status).toBe(200);
    expect(await c.storedMembers()).toEqual(["A", "B"]);
  });
});

describe("a store that hangs", () => {
  it("holds no request for long: routing goes on, the leader gets a retryable error, recovery writes the latest", async () => {
    const store = faultyStore(memoryStore());
    const c = start(store);
    expect((await c.send(report({ members: [m("A")] }))).status).toBe(200);
    store.fault = "hang";
    c.clock.advance(10 * 60_000);
    expect(await c.route()).toBe(200);
    const during = await c.send(report({ sequence: 2, members: [m("A"), m("B")] }));
    expect(during.status).toBeGreaterThanOrEqual(500);
    expect(store.hanging).toBeGreaterThan(0);
    store.release();
    c.clock.advance(5000);
    const after = await c.send(report({ sequence: 3, members: [m("A"), m("B")] }));
    expect(after.status, JSON.stringify(after.body)).toBe(200);
    expect(await c.storedMembers()).toEqual(["A", "B"]);
  });
});

describe("Workers KV eventual consistency (reads up to 60 s old)", () => {
  it("two isolates, two leaders after a split: no member is lost", async () => {
    const clock = testClock();
    const kv = faultyStore(memoryStore({}, { clock }), { ms: 60_000, now: () => clock.now() });
    const x = start(kv, clock);
    const y = start(kv, clock);
    // Whole cluster first, through isolate x. The leaders A and C are real keys (reports are
    // signed), and both are members the first report lists (the cluster's roster).
    const [A, C] = [peer("split leader A"), peer("split leader C")];
    const all = [A, "B", C, "D"].sort();
    expect((await x.send(report({ leader_id: A, members: all.map((id) => m(id)) }))).status).toBe(
      200,
    );
    clock.advance(70_000);
    // Split: A leads {A, B} at isolate x; C leads {C, D} (term 2) at isolate y, which reads the
    // document as it was 60 s ago.
    expect(
      (await x.send(report({ leader_id: A, term: 1, sequence: 2, members: [m(A), m("B")] })))
        .status,
    ).toBe(200);
    clock.advance(2000);
    expect(
      (await y.send(report({ leader_id: C, term: 2, sequence: 1, members: [m(C), m("D")] })))
        .status,
    ).toBe(200);
    clock.advance(2000);
    expect(
      (await x.send(report({ leader_id: A, term: 1, sequence: 3, members: [m(A), m("B", 2)] })))
        .status,
    ).toBe(200);
    // After the lag has passed, a third isolate sees every member.
    clock.advance(61_000);
    const z = start(kv, clock);
    const table = await z.coordinator.table();
    expect(table.workers.map((w) => w.worker_id).sort()).toEqual(all);
    expect(await z.storedMembers()).toEqual(all);
  });
});
