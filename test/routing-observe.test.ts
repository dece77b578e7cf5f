/**
 * What the router shows and learns, in-process with real upstreams: metrics JSON and the
 * Prometheus text, scaling signals and their webhook (a real HTTP receiver), and the live view
 * read from a real agent gateway (agent/gateway.ts) with its token.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { Gateway } from "../agent/gateway.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";
import { peer } from "./helpers/signing.ts";
import { startUpstream, type Upstream, until } from "./helpers/upstream.ts";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((f) => f()));
});
async function upstreams(...names: string[]): Promise<Upstream[]> {
  const list = await Promise.all(names.map((n) => startUpstream(n)));
  for (const u of list) cleanups.push(() => u.close());
  return list;
}
const members = (...list: Upstream[]) => list.map((u) => ({ id: u.name, url: u.url }));

/** A real HTTP server that records POSTed JSON (the scaling webhook's receiver). */
async function receiver() {
  const got: Record<string, unknown>[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      got.push(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      res.end("ok");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => new Promise((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, got };
}

describe("metrics", () => {
  it("counts requests, errors, latency percentiles and throughput per service and worker, as JSON and Prometheus text", async () => {
    const [a, b] = (await upstreams("A", "B")) as [Upstream, Upstream];
    const t = await routingCoordinator(members(a, b), { adminToken: "adm", clusterToken: "cl" });
    const auth = { headers: { authorization: "Bearer adm" } };
    for (let i = 0; i < 10; i++) expect((await t.get()).status).toBe(200);
    t.clock.advance(1000);
    expect((await t.call("/api/admin/metrics")).status).toBe(401);
    const metrics = (await t.call("/api/admin/metrics", auth)).body;
    expect(metrics.source).toBe("stored");
    const svc = metrics.services.svc;
    expect(svc).toMatchObject({
      requests_total: 10,
      errors_total: 0,
      retries_total: 0,
      in_flight: 0,
      queue_length: 0,
      providers: 2,
      serving: 2,
    });
    expect(svc.window).toMatchObject({ requests: 10, errors: 0, throughput_rps: 10 });
    for (const q of ["p50_ms", "p95_ms", "p99_ms"]) expect(svc.window[q]).toBeGreaterThan(0);
    expect(svc.window.p50_ms).toBeLessThanOrEqual(svc.window.p99_ms);
    expect(svc.workers.A.requests_total + svc.workers.B.requests_total).toBe(10);
    expect(svc.workers.A.requests_total).toBeGreaterThan(0); // both share the load
    expect(svc.workers.A.breaker.state).toBe("closed");

    expect((await t.call("/metrics")).status).toBe(401);
    const prom = await t.call("/metrics", auth);
    expect(prom.status).toBe(200);
    expect(prom.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = prom.body as string;
    for (const line of text.trim().split("\n")) {
      expect(line).toMatch(
        /^(# (HELP|TYPE) rollcall_\w+ .+|rollcall_\w+\{[^}]*\} (-?[\d.e+-]+|NaN))$/,
      );
    }
    expect(text).toContain('rollcall_requests_total{service="svc"} 10\n');
    expect(text).toContain(
      'rollcall_worker_breaker_state{service="svc",worker="A",state="closed"} 1\n',
    );
    expect(text).toContain('rollcall_request_duration_seconds_count{service="svc"} 10\n');
    /** The value of one sample line of the text. */
    const sample = (row: string): number => {
      const line = text.split("\n").find((l) => l.startsWith(`${row} `));
      expect(line, row).toBeDefined();
      return Number(line?.slice(row.length + 1));
    };
    const duration = "rollcall_worker_request_duration_seconds";
    const counts = ["A", "B"].map((id) =>
      sample(`${duration}_count{service="svc",worker="${id}"}`),
    );
    expect(counts).toEqual([svc.workers.A.latency_count, svc.workers.B.latency_count]);
    expect(counts.reduce((x, y) => x + y)).toBe(10);
    expect(sample(`${duration}_sum{service="svc",worker="A"}`)).toBeCloseTo(
      svc.workers.A.latency_sum_ms / 1000,
    );
    const types = text.split("\n").filter((l) => l.startsWith("# TYPE"));
    expect(new Set(types).size).toBe(types.length);
  });
});

describe("scaling signals", () => {
  it("asks to scale up while requests queue, and calls the webhook on each change", async () => {
    const [a, b] = (await upstreams("A", "B")) as [Upstream, Upstream];
    const hook = await receiver();
    const t = await routingCoordinator(members(a, b), {
      maxConcurrent: 1,
      queueTimeoutMs: 20_000,
      scalingWebhook: hook.url,
      metricsWindowMs: 60_000,
    });
    await a.setMode("hang");
    await b.setMode("hang");
    let answered = 0;
    const calls = [t.get(), t.get(), t.get()].map((call) =>
      call.finally(() => {
        answered++;
      }),
    );
    await until("two in flight and one queued", () => a.hanging + b.hanging === 2);
    await until("the queued one", async () => {
      const s = (await t.admin("/api/admin/services")).services.svc;
      return s.queue_length === 1;
    });
    const services = await t.admin("/api/admin/services");
    expect(services.source).toBe("stored");
    expect(services.services.svc.scaling).toMatchObject({
      signal: "scale_up",
      reason: expect.stringMatching(/^queueing: 1 waiting now/),
    });
    await until("the webhook call", () => hook.got.length === 1);
    expect(hook.got[0]).toMatchObject({
      service: "svc",
      signal: "scale_up",
      previous: "steady",
      reason: expect.stringMatching(/queueing/),
    });
    // Each release answers what is held now; the queued one is held only after the first go.
    await until("all three answered", () => {
      a.release();
      b.release();
      return answered === 3;
    });
    expect((await Promise.all(calls)).map((r) => r.status)).toEqual([200, 200, 200]);

    // A whole window later with no traffic: one provider fewer would do.
    t.clock.advance(61_000);
    t.coordinator.tick();
    await until("the scale-down webhook", () => hook.got.length === 2);
    expect(hook.got[1]).toMatchObject({ signal: "scale_down", previous: "scale_up" });
    const idle = (await t.admin("/api/admin/services")).services.svc.scaling;
    expect(idle).toMatchObject({
      signal: "scale_down",
      reason: expect.stringMatching(/^idle providers/),
    });
    // The receiver has the call before the coordinator has its answer (and counts it sent).
    await until(
      "the second webhook call to be counted",
      async () => (await t.admin("/api/admin/metrics")).scaling_webhook.sent === 2,
    );
    expect((await t.admin("/api/admin/metrics")).scaling_webhook).toMatchObject({
      sent: 2,
      failed: 0,
    });
  });

  it("asks to scale up on p95 latency over the threshold; a dead webhook never fails a request", async () => {
    const [a] = (await upstreams("A")) as [Upstream];
    await a.setMode("slow");
    a.slowMs = 150;
    const t = await routingCoordinator(members(a), {
      scaleUpLatencyMs: 100,
      scalingWebhook: "http://127.0.0.1:9/unreachable",
    });
    const answers = await Promise.all(Array.from({ length: 20 }, () => t.get()));
    expect(answers.every((r) => r.status === 200)).toBe(true);
    const svc = (await t.admin("/api/admin/services")).services.svc;
    expect(svc.scaling).toMatchObject({
      signal: "scale_up",
      reason: expect.stringMatching(/^latency: p95/),
    });
    await until("the failed webhook call to be counted", async () => {
      const m = await t.admin("/api/admin/metrics");
      return m.scaling_webhook.failed >= 1;
    });
  });
});

describe("live view", () => {
  /** The leader: a real key's PeerId (its reports are signed), whose agent serves the view. */
  const L = peer("live view leader");
  /** A real agent gateway whose /_agent/cluster serves `view.members`. */
  async function agent(token: string | undefined, view: { members: unknown[] }) {
    const gateway = new Gateway(
      { host: "127.0.0.1", port: 0, agentToken: token },
      {
        service: () => undefined,
        services: () => [],
        health: () => ({ status: "healthy" }),
        selfId: () => L, // the coordinator's credential is made out to the leader's PeerId
        clusterView: () => ({
          self: "L",
          cluster: "default",
          mode: "mesh",
          leader: { id: "L", term: 1 },
          ...view,
        }),
      },
    );
    const port = await gateway.start();
    let stopped = false;
    const stop = async () => {
      if (!stopped) await gateway.stop();
      stopped = true;
    };
    cleanups.push(stop);
    return { url: `http://127.0.0.1:${port}`, stop };
  }
  const liveMember = (id: string, url: string) => ({
    worker_id: id,
    status: "online",
    url,
    services: [{ name: "svc", url: `${url}/svc`, status: "healthy" }],
  });

  it("routes on the leader agent's live view while it answers, on the stored table when it does not", async () => {
    const [a, b] = (await upstreams("A", "B")) as [Upstream, Upstream];
    const view = { members: [] as unknown[] };
    const leader = await agent("view-secret", view);
    view.members = [
      { worker_id: L, status: "online", url: leader.url, services: [] },
      liveMember("A", a.url),
    ];
    // The stored table lists A and B; the mesh knows B is gone (the live view leaves it out).
    const t = await routingCoordinator(
      [{ id: L, url: leader.url, services: [] }, ...members(a, b)],
      {
        clusterToken: "cluster-secret",
        adminToken: "admin-secret",
        agentToken: "view-secret",
        liveView: true,
        liveViewTtlMs: 2000,
      },
    );
    // An admin read waits for the live view's due refresh: the very first one shows it.
    expect((await t.admin("/api/admin/services")).source).toBe("live");
    const services = await t.admin("/api/admin/services");
    expect(services.services.svc.workers.map((w: { worker_id: string }) => w.worker_id)).toEqual([
      "A",
    ]);
    const before = b.received.length;
    for (let i = 0; i < 6; i++) expect((await t.get()).body.upstream).toBe("A");
    expect(b.received.length).toBe(before);

    await leader.stop();
    t.clock.advance(2000); // the next request starts a refresh, which fails
    await t.get();
    await until(
      "the stored table again",
      async () => (await t.admin("/api/admin/services")).source === "stored",
    );
    const back = b.received.length;
    await until(
      "B to get traffic again",
      async () => (await t.get()).body.upstream === "B" || b.received.length > back,
    );
    const live = (await t.admin("/api/admin/metrics")).live_views.default;
    expect(live).toMatchObject({ source: "stored", last_error: expect.any(String) });
    expect(live.failures).toBeGreaterThanOrEqual(1);
  });

  it("needs the agent token, and never makes a request wait for a slow agent", async () => {
    const [a] = (await upstreams("A")) as [Upstream];
    const leader = await agent("the-agent-token", { members: [liveMember("A", a.url)] });
    const wrong = await routingCoordinator(
      [{ id: L, url: leader.url, services: [] }, ...members(a)],
      {
        liveView: true,
        agentToken: "not-the-token",
      },
    );
    await wrong.get();
    await until(
      "the refused fetch",
      async () => (await wrong.admin("/api/admin/metrics")).live_views.default.failures >= 1,
    );
    const shown = (await wrong.admin("/api/admin/metrics")).live_views.default;
    expect(shown).toMatchObject({ source: "stored", last_error: "The agent answered 401" });
    expect(JSON.stringify(shown)).not.toContain("not-the-token");

    // An agent that never answers: requests are served from the stored table meanwhile.
    let asked = 0;
    const silent = http.createServer(() => {
      asked++;
    });
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    cleanups.push(async () => {
      silent.closeAllConnections();
      await new Promise<void>((r) => silent.close(() => r()));
    });
    const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    const t = await routingCoordinator([{ id: L, url, services: [] }, ...members(a)], {
      liveView: true,
      liveViewTimeoutMs: 60_000,
    });
    const first = await t.get();
    await until("the agent to be asked", () => asked === 1);
    expect(first.status).toBe(200);
    for (let i = 0; i < 5; i++) expect((await t.get()).status).toBe(200); // while it hangs
    expect(asked).toBe(1); // one refresh at a time
  });
});
