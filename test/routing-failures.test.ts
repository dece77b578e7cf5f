/**
 * Routing under failure, in-process with real upstream servers that fail on command: outlier
 * ejection (growing, never more than half), breaker transitions, the retry budget, the bounded
 * queue and its timeout, and what may (not) be retried.
 */
import { afterEach, describe, expect, it } from "vitest";
import { routingCoordinator } from "./helpers/route-fixtures.ts";
import { startUpstream, type Upstream, until } from "./helpers/upstream.ts";

const started: Upstream[] = [];
async function upstreams(...names: string[]): Promise<Upstream[]> {
  const list = await Promise.all(names.map((n) => startUpstream(n)));
  started.push(...list);
  return list;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((u) => u.close()));
});
const members = (...list: Upstream[]) => list.map((u) => ({ id: u.name, url: u.url }));
const posts = (u: Upstream) => u.received.filter((s) => s.method === "POST").length;

describe("outlier ejection", () => {
  it("ejects a failing worker for a growing time while every GET still succeeds", async () => {
    const [a, b] = (await upstreams("A", "B")) as [Upstream, Upstream];
    const t = await routingCoordinator(members(a, b), {
      ejectAfterFailures: 3,
      ejectBaseMs: 10_000,
      breakerMinRequests: 1000,
      latencyDecayMs: 1, // the picker forgets latencies at once: A keeps being tried
    });
    for (let i = 0; i < 2; i++) expect((await t.get()).status).toBe(200); // both answer well
    const base = a.received.length;
    // A answers 503 to everything while B serves: A's own fault (B answers the same requests).
    await a.setMode("error503");
    const step = async () => {
      t.clock.advance(10);
      const res = await t.get();
      expect(res.status).toBe(200);
      expect(res.body.upstream).toBe("B");
    };
    for (let i = 0; i < 3; i++) await step();
    expect(a.received).toHaveLength(base + 3);
    const first = await t.breaker("A");
    expect(first).toMatchObject({ ejected: true, ejections: 1 });
    expect(Date.parse(first.ejected_until as string) - t.clock.now()).toBe(10_000);
    for (let i = 0; i < 10; i++) await step();
    expect(a.received).toHaveLength(base + 3); // no traffic while ejected
    t.clock.advance(10_000);
    for (let i = 0; i < 3; i++) await step();
    expect(a.received).toHaveLength(base + 6);
    const second = await t.breaker("A");
    expect(second).toMatchObject({ ejected: true, ejections: 2 });
    expect(Date.parse(second.ejected_until as string) - t.clock.now()).toBe(20_000);
    expect((await t.breaker("B")).ejected).toBe(false);
  });

  it("never ejects more than half of a service's providers", async () => {
    const list = await upstreams("A", "B", "C", "D");
    const t = await routingCoordinator(members(...list), {
      ejectAfterFailures: 1,
      breakerMinRequests: 1000,
      retryMin: 1000,
      latencyDecayMs: 1,
    });
    for (let i = 0; i < 4; i++) expect((await t.get()).status).toBe(200); // all answer well
    for (const u of list.slice(0, 3)) await u.setMode("error503");
    for (let i = 0; i < 30; i++) {
      t.clock.advance(10);
      const res = await t.get();
      expect(res.status).toBe(200);
      expect(res.body.upstream).toBe("D");
      const rows = (await t.admin("/api/admin/breakers")).breakers as { ejected: boolean }[];
      expect(rows.filter((r) => r.ejected).length).toBeLessThanOrEqual(2);
    }
    const rows = (await t.admin("/api/admin/breakers")).breakers as { ejected: boolean }[];
    expect(rows.filter((r) => r.ejected)).toHaveLength(2);
  });
});

describe("circuit breaker", () => {
  it("opens on failures, fails fast, lets one probe through half-open, and closes on its success", async () => {
    const [a] = (await upstreams("A")) as [Upstream];
    const t = await routingCoordinator(members(a), {
      breakerMinRequests: 4,
      breakerFailureRatio: 0.5,
      breakerOpenMs: 5000,
      ejectAfterFailures: 100,
    });
    // Dropped connections: the worker's fault whatever the request (a 5xx answer of the only
    // provider never is: see "client faults" in routing-attacks.test.ts).
    await a.setMode("reset");
    for (let i = 0; i < 4; i++) {
      const res = await t.get();
      expect(res.status).toBe(502);
      expect(res.body.worker).toBe("A");
    }
    expect((await t.breaker("A")).state).toBe("open");
    const fast = await t.get();
    expect(fast.status).toBe(503);
    expect(fast.headers.get("retry-after")).toBe("5");
    expect(fast.body.error).toBe("No healthy workers available for 'svc'");
    expect(fast.body.suggestion).toMatch(/circuit breakers/);
    expect(a.received).toHaveLength(4);

    t.clock.advance(5000);
    expect((await t.breaker("A")).state).toBe("half_open");
    await a.setMode("hang");
    const probe = t.get();
    await until("the probe to reach A", () => a.hanging === 1);
    const during = await t.get();
    expect(during.status).toBe(503); // one probe at a time
    expect(a.received).toHaveLength(5);
    a.release();
    expect((await probe).status).toBe(200);
    expect((await t.breaker("A")).state).toBe("closed");

    await a.setMode("reset");
    for (let i = 0; i < 4; i++) await t.get();
    expect((await t.breaker("A")).state).toBe("open");
    t.clock.advance(5000);
    const failedProbe = await t.get();
    expect(failedProbe.status).toBe(502);
    const row = await t.breaker("A");
    expect(row.state).toBe("open");
    expect(row.trips).toBe(3);
    const metrics = await t.admin("/api/admin/metrics");
    expect(metrics.services.svc.workers.A.breaker.state).toBe("open");
  });
});

describe("retries", () => {
  it("never exceed the budget (20 % of requests plus the floor) and never go to the same worker twice", async () => {
    const [a, b] = (await upstreams("A", "B")) as [Upstream, Upstream];
    const t = await routingCoordinator(members(a, b), {
      retryRatio: 0.2,
      retryMin: 3,
      ejectAfterFailures: 1000,
      breakerMinRequests: 100_000,
    });
    await a.setMode("error503");
    await b.setMode("error503");
    const n = 50;
    for (let i = 0; i < n; i++) {
      const res = await t.call("/api/service/svc/r", { headers: { "x-req": String(i) } });
      expect(res.status).toBe(503);
    }
    const retries = (await t.admin("/api/admin/metrics")).services.svc.retries_total as number;
    expect(a.received.length + b.received.length).toBe(n + retries);
    expect(retries).toBeLessThanOrEqual(3 + 0.2 * n);
    expect(retries).toBeGreaterThanOrEqual(0.2 * n); // the budget was used, not left idle
    for (let i = 0; i < n; i++) {
      for (const u of [a, b]) {
        expect(u.received.filter((s) => s.headers["x-req"] === String(i)).length).toBeLessThan(2);
      }
    }
  });

  it("never resends a POST that reached a worker (500, dropped, timeout), but one that was refused", async () => {
    const cases = [
      { mode: "error500", status: 500 },
      { mode: "reset", status: 502 },
      { mode: "hang", status: 504 },
      { mode: "refuse", status: 200 },
    ] as const;
    for (const { mode, status } of cases) {
      const [a, b] = (await upstreams("A", "B")) as [Upstream, Upstream];
      // Nothing is known yet, so the first request goes to the first worker by ID: A.
      const t = await routingCoordinator(members(a, b), { proxyTimeoutMs: 300 });
      await a.setMode(mode);
      const res = await t.call("/api/service/svc/p", { method: "POST", body: `body-${mode}` });
      expect(res.status, mode).toBe(status);
      expect(posts(b), mode).toBe(mode === "refuse" ? 1 : 0);
      if (mode === "refuse") expect(res.body).toMatchObject({ upstream: "B", body: "body-refuse" });
      else expect(posts(a), mode).toBe(1);
      const get = await t.call("/api/service/svc/g");
      expect(get.status, `GET after ${mode}`).toBe(200);
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe("queue", () => {
  it("holds at most queueSize requests when every provider is at its limit, then 503 with Retry-After", async () => {
    const [a] = (await upstreams("A")) as [Upstream];
    const t = await routingCoordinator(members(a), {
      maxConcurrent: 2,
      queueSize: 2,
      queueTimeoutMs: 400,
    });
    await a.setMode("hang");
    const answers: number[] = [];
    const calls = Array.from({ length: 6 }, () =>
      t.get().then((r) => {
        answers.push(r.status);
        if (r.status === 503) {
          expect(r.headers.get("retry-after")).toBe("1");
          expect(r.body.error).toBe("All workers for 'svc' are busy");
        }
        return r;
      }),
    );
    await until("two in flight, two queued, two turned away", async () => {
      const svc = (await t.admin("/api/admin/metrics")).services.svc;
      return a.hanging === 2 && svc.queue_length === 2 && answers.length === 2;
    });
    expect(answers).toEqual([503, 503]);
    await until("the queued two to time out", () => answers.length === 4);
    expect(answers).toEqual([503, 503, 503, 503]);
    a.release();
    const all = await Promise.all(calls);
    expect(all.map((r) => r.status).sort()).toEqual([200, 200, 503, 503, 503, 503]);
    expect(a.received).toHaveLength(2);
    const svc = (await t.admin("/api/admin/metrics")).services.svc;
    expect(svc).toMatchObject({ rejected_total: 4, queue_length: 0, in_flight: 0 });
  });

  it("lets a queued request go as soon as a slot frees", async () => {
    const [a] = (await upstreams("A")) as [Upstream];
    const t = await routingCoordinator(members(a), { maxConcurrent: 1, queueTimeoutMs: 20_000 });
    await a.setMode("hang");
    const first = t.get();
    const second = t.get();
    await until("one in flight, one queued", async () => {
      const svc = (await t.admin("/api/admin/metrics")).services.svc;
      return a.hanging === 1 && svc.queue_length === 1;
    });
    a.release();
    expect((await first).status).toBe(200);
    await until("the queued request to reach A", () => a.hanging === 1);
    a.release();
    expect((await second).status).toBe(200);
  });
});
