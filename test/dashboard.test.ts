/**
 * The dashboard's server side, in-process with real upstreams: the page and its headers, the
 * snapshot (and that reading it costs no store access), the recent events the coordinator
 * derives from what it already knows, and the operator's actions with their audit lines. The
 * page itself runs in a real browser in dashboard-browser.test.ts.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  CoordinatorConfigError,
  createCoordinator,
  memoryStore,
  resolveSettings,
  type Store,
  TrafficWindow,
} from "../coordinator.ts";
import { Gateway } from "../agent/gateway.ts";
import {
  agentPost,
  testClock,
  report,
  member as reportMember,
  TEST_INIT,
} from "./helpers/coord-fixtures.ts";
import { freePort } from "../support/processes.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";
import { peer } from "./helpers/signing.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

const ADMIN = "dash-admin-token";
/** Once the admin token is set the agent endpoints need their own (issue 9: fail closed). */
const CLUSTER = "dash-cluster-token";
const VIEW = "dash-view-token";
/** Secured as in production: every guard with its own token, the live view with its own. */
const SECURED = { adminToken: ADMIN, clusterToken: CLUSTER, agentToken: VIEW };
const started: Upstream[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  await Promise.all(started.splice(0).map((u) => u.close()));
});
async function upstreams(...names: string[]): Promise<Upstream[]> {
  const list = await Promise.all(names.map((n) => startUpstream(n)));
  started.push(...list);
  return list;
}
const members = (...list: Upstream[]) => list.map((u) => ({ id: u.name, url: u.url }));

/** A store that counts every access. */
function countedStore(inner: Store) {
  const counts = { get: 0, list: 0, set: 0, delete: 0 };
  const count = (op: keyof typeof counts) => {
    counts[op]++;
  };
  const store: Store = {
    ...inner,
    get: (k) => {
      count("get");
      return inner.get(k);
    },
    list: (p) => {
      count("list");
      return inner.list(p);
    },
    set: (k, v, o) => {
      count("set");
      return inner.set(k, v, o);
    },
    delete: (k) => {
      count("delete");
      return inner.delete(k);
    },
  };
  return { store, counts };
}

describe("the page", () => {
  it("is served openly with a strict CSP, no inline script or style, and no data in it", async () => {
    const { coordinator } = await routingCoordinator([], {
      adminToken: ADMIN,
      clusterToken: CLUSTER,
    });
    const res = await coordinator.fetch(new Request("http://c.test/admin"));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/html; charset=utf-8");
    const csp = res.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).toContain("default-src 'none'");
    expect(csp).not.toContain("unsafe");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(res.headers.get("referrer-policy")).toBe("no-referrer");
    const html = await res.text();
    expect(html).not.toMatch(/<script(?![^>]*\ssrc=)/); // every script is a file
    expect(html).not.toMatch(/\sstyle=|<style/);
    expect(html).not.toMatch(/\son[a-z]+=/); // no inline handlers
    // The token field has no name: a form submitted without the script sends nothing.
    expect(html).toMatch(/<input id="token" type="password"(?![^>]*\sname=)/);
    for (const [path, type] of [
      ["/admin/dashboard.js", "text/javascript; charset=utf-8"],
      ["/admin/dashboard.css", "text/css; charset=utf-8"],
    ]) {
      const file = await coordinator.fetch(new Request(`http://c.test${path}`));
      expect(file.status).toBe(200);
      expect(file.headers.get("content-type")).toBe(type);
      expect(file.headers.get("x-content-type-options")).toBe("nosniff");
    }
    // The script renders values as text only.
    const js = await (
      await coordinator.fetch(new Request("http://c.test/admin/dashboard.js"))
    ).text();
    expect(js).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(/);
  });

  it("cannot be shadowed by an alias", async () => {
    expect(() => resolveSettings({ aliases: { "/admin": "upload" } })).toThrow(
      CoordinatorConfigError,
    );
    expect(() => resolveSettings({ aliases: { "/admin/x": "upload" } })).toThrow(
      CoordinatorConfigError,
    );
    const [a] = (await upstreams("A")) as [Upstream];
    const t = await routingCoordinator(members(a), { aliases: { "/": "svc" } });
    expect((await t.call("/admin")).headers.get("content-security-policy")).toContain("'self'");
    expect((await t.call("/elsewhere")).body.upstream).toBe("A"); // the alias still works
  });
});

describe("the snapshot", () => {
  it("needs the admin token, and reading it costs no store access once the table is cached", async () => {
    const clock = testClock();
    const { store, counts } = countedStore(memoryStore({}, { clock }));
    const coordinator = createCoordinator(
      { ...TEST_INIT, adminToken: ADMIN, clusterToken: CLUSTER },
      { store, clock },
    );
    const get = (headers: Record<string, string> = {}) =>
      coordinator.fetch(new Request("http://c.test/api/admin/dashboard", { headers }));
    // The leader, a member too, signs its report (a real key's PeerId).
    const A = peer("dashboard leader A");
    const reported = await agentPost(
      coordinator.app,
      "/api/cluster/heartbeat",
      report({ leader_id: A, members: [reportMember(A), reportMember("B")] }),
      clock.now(),
      { authorization: `Bearer ${CLUSTER}` },
    );
    expect(reported.status).toBe(200);
    expect((await get()).status).toBe(401);
    expect((await get({ authorization: "Bearer wrong" })).status).toBe(401);
    const auth = { authorization: `Bearer ${ADMIN}` };
    expect((await get(auth)).status).toBe(200); // warms the per-isolate table
    const before = { ...counts };
    let snap: Record<string, unknown> = {};
    for (let i = 0; i < 5; i++) snap = (await (await get(auth)).json()) as Record<string, unknown>;
    expect(counts).toEqual(before); // no get, list, set or delete
    expect(snap).toMatchObject({
      mode: "secured",
      refresh_ms: 1000,
      clusters: [{ cluster: "default", leader_id: A, term: 1, source: "stored", warnings: [] }],
      store: { kind: "memory", persistent: false, used_today: 1, cap: 1000, pending_writes: 0 },
    });
    const workers = snap.workers as { worker_id: string; status: string; leader: boolean }[];
    expect(workers.map((w) => [w.worker_id, w.status, w.leader])).toEqual([
      [A, "online", true],
      ["B", "online", false],
    ]);
    const events = snap.events as { text: string }[];
    expect(events.map((e) => e.text)).toEqual([
      `Watching cluster default: leader …${A.slice(-8)} (term 1)`,
    ]);
  });

  it("keeps a worker and a provider that left the view as down and gone, for a while", async () => {
    const clock = testClock();
    // The members' URLs are on loopback: allowed (TEST_INIT), so their health is what counts.
    const coordinator = createCoordinator(TEST_INIT, { store: memoryStore({}, { clock }), clock });
    // Signed by the report's leader, as its agent sends it.
    const send = (body: unknown) =>
      agentPost(coordinator.app, "/api/cluster/heartbeat", body, clock.now());
    // biome-ignore lint/suspicious/noExplicitAny: the snapshot is read as the page reads it
    type Snapshot = any;
    const snapshot = async (): Promise<Snapshot> =>
      (await coordinator.fetch(new Request("http://c.test/api/admin/dashboard"))).json();
    await send(report({ members: [reportMember("A"), reportMember("B")] }));
    await snapshot();
    clock.advance(1000);
    await send(
      report({
        sequence: 2,
        members: [reportMember("A"), reportMember("B", { status: "degraded" })],
      }),
    );
    await snapshot();
    clock.advance(1000);
    await send(report({ sequence: 3, members: [reportMember("A")] }));
    const snap = await snapshot();
    expect(
      snap.workers.map((w: { worker_id: string; status: string }) => [w.worker_id, w.status]),
    ).toEqual([
      ["A", "online"],
      ["B", "down"],
    ]);
    const upload = snap.services.find((s: { name: string }) => s.name === "upload");
    expect(
      upload.workers.map((p: { worker_id: string; gone_at: string | null }) => [
        p.worker_id,
        p.gone_at !== null,
      ]),
    ).toEqual([
      ["A", false],
      ["B", true],
    ]);
    expect(snap.events.map((e: { text: string }) => e.text).slice(0, 3)).toEqual([
      "Member down: B left the view (was degraded)",
      "upload on B: healthy → degraded",
      "Member B: online → degraded",
    ]);
    clock.advance(11 * 60_000); // beyond GONE_KEPT_MS
    const later = await snapshot();
    expect(later.workers.map((w: { worker_id: string }) => w.worker_id)).toEqual(["A"]);
  });

  it("has each service's traffic slice by slice for the sparklines", () => {
    const w = new TrafficWindow(60_000, 0);
    for (let i = 0; i < 20; i++) w.record(5_000 + i, 10, false); // slice 0: 20 requests
    for (let i = 0; i < 10; i++) w.record(25_000 + i, 100, i === 0); // slice 2: 10, one failed
    const series = w.series(59_999);
    expect(series.map((s) => s.requests)).toEqual([20, 0, 10, 0, 0, 0]);
    expect(series.map((s) => s.throughput_rps)).toEqual([2, 0, 1, 0, 0, 0]);
    expect(series[2]).toMatchObject({ errors: 1, at: 20_000 });
    expect(series[0]?.p95_ms).toBeCloseTo(10, -1);
    expect(series[1]?.p50_ms).toBeNull();
    // A minute later the old slices are gone.
    expect(w.series(125_000).every((s) => s.requests === 0)).toBe(true);
  });
});

describe("an operator's actions", () => {
  it("resets an open breaker and ends an ejection, logged as audit lines, without a store write", async () => {
    const [a, b] = (await upstreams("A", "B")) as [Upstream, Upstream];
    const t = await routingCoordinator(members(a, b), {
      adminToken: ADMIN,
      clusterToken: CLUSTER,
      breakerMinRequests: 2,
      ejectAfterFailures: 2,
      ejectBaseMs: 60_000,
      latencyDecayMs: 1,
    });
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    const post = (path: string, body: unknown, token: string | null = ADMIN) =>
      t.call(path, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          ...(token ? { authorization: `Bearer ${token}` } : {}),
        },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
    // A drops every connection: its own fault (a 500 is the application's answer, never
    // held against the worker).
    await a.setMode("reset");
    for (let i = 0; i < 20 && !(await t.breaker("A")).ejected; i++) {
      t.clock.advance(10); // A's failures fade from the picker's memory: it is tried again
      await t.get();
    }
    const row = await t.breaker("A");
    expect(row.state).toBe("open");
    expect(row.ejected).toBe(true);
    const writes = (await t.admin("/api/admin/budget")).used_today;

    // Refused without the token, and on bad input; nothing changes.
    expect(
      (await post("/api/admin/breakers/reset", { service: "svc", worker_id: "A" }, null)).status,
    ).toBe(401);
    expect((await post("/api/admin/breakers/reset", "{not json")).status).toBe(400);
    expect(
      (await post("/api/admin/breakers/reset", { service: "../x", worker_id: "A" })).status,
    ).toBe(400);
    expect((await post("/api/admin/breakers/reset", "x".repeat(5000))).status).toBe(413);
    const none = await post("/api/admin/ejections/end", { service: "svc", worker_id: "Z" });
    expect(none.status).toBe(404);
    expect(await t.breaker("A")).toMatchObject({ state: "open", ejected: true });
    expect(log).not.toHaveBeenCalled();

    const reset = await post("/api/admin/breakers/reset", { service: "svc", worker_id: "A" });
    expect(reset.status).toBe(200);
    expect(reset.body).toMatchObject({ changed: true, breaker: "closed", ejected: true });
    const ended = await post("/api/admin/ejections/end", { service: "svc", worker_id: "A" });
    expect(ended.body).toMatchObject({ changed: true, breaker: "closed", ejected: false });
    expect(await t.breaker("A")).toMatchObject({ state: "closed", ejected: false });
    const again = await post("/api/admin/ejections/end", { service: "svc", worker_id: "A" });
    expect(again.body.changed).toBe(false);

    const lines = log.mock.calls.map((c) => JSON.parse(String(c[0])));
    expect(lines.map((l) => [l.audit, l.worker_id, l.changed])).toEqual([
      ["breaker_reset", "A", true],
      ["ejection_end", "A", true],
      ["ejection_end", "A", false],
    ]);
    expect(JSON.stringify(lines)).not.toContain(ADMIN);
    expect((await t.admin("/api/admin/budget")).used_today).toBe(writes);
    const texts = (await t.admin("/api/admin/dashboard")).events.map(
      (e: { text: string }) => e.text,
    );
    expect(texts).toContain("Operator reset the breaker of svc on A");
    expect(texts).toContain("Operator ended the ejection of svc on A");
    expect(texts).toContain("Breaker opened: svc on A");
    expect(texts.some((x: string) => /^Ejected for \d+ s: svc on A$/.test(x))).toBe(true);
    expect(b.received.length).toBeGreaterThan(0);
  });
});

describe("what the admin views say of members the leader's mesh does not hear", () => {
  /** The leader: a real key's PeerId, so its reports are signed and its agent is asked. */
  const L = peer("dashboard live leader");
  /** A real agent gateway serving a live view of leader L and `members` to the agent token. */
  async function leaderAgent(members: unknown[]) {
    const gateway = new Gateway(
      { host: "127.0.0.1", port: 0, agentToken: VIEW },
      {
        service: () => undefined,
        services: () => [],
        health: () => ({ status: "healthy" }),
        selfId: () => L,
        clusterView: () => ({
          self: L,
          cluster: "default",
          leader: { id: L, term: 1 },
          members,
        }),
      },
    );
    const url = `http://127.0.0.1:${await gateway.start()}`;
    return { url, gateway };
  }

  it("shows a suspect member as suspect (routed only as a last resort), then an unreachable leader as suspect", async () => {
    const [a] = (await upstreams("A")) as [Upstream];
    const view: unknown[] = [];
    const leader = await leaderAgent(view);
    view.push(
      { worker_id: L, status: "online", url: leader.url, services: [], state: "alive" },
      {
        worker_id: "A",
        status: "online",
        url: a.url,
        services: [{ name: "svc", url: `${a.url}/svc` }],
        state: "suspect",
      },
    );
    const t = await routingCoordinator([{ id: L, url: leader.url, services: [] }, ...members(a)], {
      ...SECURED,
      liveView: true,
    });
    const status = async (id: string) =>
      ((await t.admin("/api/admin/workers")) as { worker_id: string; status: string }[]).find(
        (w) => w.worker_id === id,
      )?.status;
    expect(await status("A")).toBe("suspect");
    const provider = (await t.admin("/api/admin/services")).services.svc.workers[0];
    expect(provider).toMatchObject({ worker_id: "A", status: "suspect", health: "degraded" });
    expect((await t.get()).status).toBe(200); // the only provider: still tried
    expect(await status(L)).toBe("online");
    await leader.gateway.stop();
    t.clock.advance(300); // the next admin read refreshes the view, and the fetch is refused
    expect(await status(L)).toBe("suspect");
  });

  it("does not suspect a leader whose agent never answered (it may be out of reach)", async () => {
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    const [a] = (await upstreams("A")) as [Upstream];
    const t = await routingCoordinator([{ id: L, url: nowhere, services: [] }, ...members(a)], {
      ...SECURED,
      liveView: true,
    });
    const workers = (await t.admin("/api/admin/workers")) as {
      worker_id: string;
      status: string;
    }[];
    expect(workers.find((w) => w.worker_id === L)?.status).toBe("online");
    expect((await t.admin("/api/admin/metrics")).live_views.default.failures).toBe(1);
  });

  it("says on the dashboard that the live view is off when tokens are set but no agent-view token", async () => {
    const [a] = (await upstreams("A")) as [Upstream];
    const view: unknown[] = [];
    const leader = await leaderAgent(view);
    view.push({ worker_id: L, status: "online", url: leader.url, services: [], state: "alive" });
    const t = await routingCoordinator([{ id: L, url: leader.url, services: [] }, ...members(a)], {
      adminToken: ADMIN,
      clusterToken: CLUSTER,
      liveView: true,
    });
    const [cluster] = (await t.admin("/api/admin/dashboard")).clusters;
    expect(cluster).toMatchObject({ source: "stored", live_view: null });
    expect(cluster.warnings).toEqual([expect.stringContaining("ROLLCALL_AGENT_TOKEN")]);
    // With the token the warning is gone and the view is live.
    const live = await routingCoordinator([{ id: L, url: leader.url, services: [] }], {
      ...SECURED,
      liveView: true,
    });
    const [seen] = (await live.admin("/api/admin/dashboard")).clusters;
    expect(seen).toMatchObject({ source: "live", warnings: [] });
    await leader.gateway.stop();
  });
});
