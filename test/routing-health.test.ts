/** The pure routing-health pieces, with time passed in: window, breaker, budget, picker, signals. */
import { describe, expect, it } from "vitest";
import {
  CircuitBreaker,
  Endpoint,
  latencyBucket,
  type Provider,
  prometheusText,
  RetryBudget,
  resolveSettings,
  ServiceRoute,
  type ServiceMetrics,
  SlidingCount,
  scalingSignal,
  TrafficWindow,
  type WindowSnapshot,
} from "../coordinator.ts";
import { prng } from "../support/random.ts";

const T0 = 1_000_000;

describe("TrafficWindow", () => {
  it("estimates percentiles within the bucket width and forgets what left the window", () => {
    const w = new TrafficWindow(60_000, T0);
    for (let i = 1; i <= 1000; i++) w.record(T0 + i, i / 10, i > 990); // 0.1 .. 100 ms
    const s = w.snapshot(T0 + 1000);
    expect(s).toMatchObject({ requests: 1000, errors: 10, window_s: 60 });
    expect(s.p50_ms).toBeGreaterThan(50 * 0.85);
    expect(s.p50_ms).toBeLessThan(50 * 1.15);
    expect(s.p99_ms).toBeGreaterThan(99 * 0.85);
    expect(s.p99_ms).toBeLessThan(99 * 1.2);
    expect(s.throughput_rps).toBe(1000); // 1,000 requests in the first second
    w.inFlight(T0 + 10, 7);
    w.inFlight(T0 + 20, 3);
    expect(w.snapshot(T0 + 1000).peak_in_flight).toBe(7);
    const later = w.snapshot(T0 + 70_000);
    expect(later).toMatchObject({ requests: 0, p50_ms: null, peak_in_flight: 0 });
  });

  it("puts latencies into increasing buckets", () => {
    let last = -1;
    for (const ms of [0, 0.05, 0.1, 1, 1.1, 10, 100, 1000, 30_000, 1e9]) {
      const b = latencyBucket(ms);
      expect(b).toBeGreaterThanOrEqual(last);
      last = b;
    }
    expect(latencyBucket(1e9)).toBe(83);
  });
});

describe("SlidingCount", () => {
  it("weighs the previous window by its overlap and forgets it after two windows", () => {
    const c = new SlidingCount(1000);
    c.add(T0, 10); // T0 is a multiple of the window: a window starts there
    expect(c.estimate(T0 + 999)).toBe(10);
    expect(c.estimate(T0 + 1000)).toBe(10); // rolled: all of the previous window overlaps
    c.add(T0 + 1000, 2);
    expect(c.estimate(T0 + 1250)).toBe(2 + 10 * 0.75);
    expect(c.estimate(T0 + 1999)).toBeCloseTo(2 + 10 * 0.001);
    expect(c.estimate(T0 + 2000)).toBe(2); // the window of 10 is gone, the 2 now previous
    expect(c.estimate(T0 + 2500)).toBe(1);
    c.add(T0 + 2500);
    expect(c.estimate(T0 + 4600)).toBe(0); // two windows without a roll: nothing is kept
  });

  it("starts a new window where it is reset", () => {
    const c = new SlidingCount(1000);
    c.add(T0, 5);
    c.reset(T0 + 300);
    expect(c.estimate(T0 + 300)).toBe(0);
    c.add(T0 + 300, 4);
    expect(c.estimate(T0 + 1299)).toBe(4);
    expect(c.estimate(T0 + 1800)).toBe(2); // rolled at T0 + 1300, half of it overlaps
  });
});

describe("CircuitBreaker", () => {
  const init = { failureRatio: 0.5, minRequests: 4, windowMs: 10_000, openMs: 5000 };

  it("opens at the failure ratio once enough requests were seen, and refuses while open", () => {
    const b = new CircuitBreaker(init);
    b.failure(T0, false);
    b.failure(T0, false);
    b.failure(T0, false);
    expect(b.state).toBe("closed"); // 3 < minRequests
    b.success(T0, false);
    expect(b.state).toBe("closed"); // a success never opens it
    b.failure(T0, false);
    expect(b.state).toBe("open"); // 4 of 5 failed
    expect(b.allows(T0 + 4999)).toBe(false);
    expect(b.allows(T0 + 5000)).toBe(true);
    expect(b.state).toBe("half_open");
  });

  it("lets one probe through half-open: its success closes, its failure opens again", () => {
    const b = new CircuitBreaker(init);
    for (let i = 0; i < 4; i++) b.failure(T0, false);
    expect(b.allows(T0 + 5000)).toBe(true);
    expect(b.dispatch()).toBe(true);
    expect(b.allows(T0 + 5000)).toBe(false); // the probe is out
    b.success(T0 + 5001, false); // a late answer of an older request: not the probe
    expect(b.state).toBe("half_open");
    b.failure(T0 + 5002, true);
    expect(b).toMatchObject({ state: "open", trips: 2, openUntil: T0 + 10_002 });
    expect(b.allows(T0 + 10_002)).toBe(true);
    b.abandon(b.dispatch()); // the client went away: the slot is free again
    expect(b.allows(T0 + 10_002)).toBe(true);
    b.dispatch();
    b.success(T0 + 10_003, true);
    expect(b.state).toBe("closed");
    expect(b.counts(T0 + 10_003)).toEqual({ requests: 0, failures: 0 });
  });

  it("tells its state at any time without changing it: half-open once the open time is up", () => {
    const b = new CircuitBreaker(init);
    for (let i = 0; i < 4; i++) b.failure(T0, false);
    expect(b.stateAt(T0 + 4999)).toBe("open");
    expect(b.stateAt(T0 + 5000)).toBe("half_open"); // allows() was never called
    expect(b.stateAt(T0 + 4999)).toBe("open"); // asking changed nothing
    expect(b.state).toBe("open");
    expect(b.allows(T0 + 5000)).toBe(true);
    expect(b.stateAt(T0 + 5000)).toBe("half_open");
  });

  it("forgets failures older than its window", () => {
    const b = new CircuitBreaker(init);
    for (let i = 0; i < 3; i++) b.failure(T0, false);
    b.success(T0 + 25_000, false);
    b.failure(T0 + 25_000, false);
    expect(b.state).toBe("closed");
    expect(b.counts(T0 + 25_000)).toEqual({ requests: 2, failures: 1 });
  });
});

describe("RetryBudget", () => {
  it("allows the floor plus the ratio of requests per window, never more", () => {
    const budget = new RetryBudget({ ratio: 0.2, min: 3, windowMs: 10_000 });
    let granted = 0;
    for (let i = 0; i < 100; i++) {
      budget.request(T0);
      if (budget.tryRetry(T0)) granted++;
    }
    while (budget.tryRetry(T0)) granted++;
    expect(granted).toBe(3 + 20);
    // Two windows later the old counts are gone: the floor again.
    expect(Math.floor(budget.available(T0 + 20_000))).toBe(3);
  });
});

const settings = resolveSettings({ maxConcurrent: 2, ejectAfterFailures: 2 });

function route(list: Partial<Provider>[]): ServiceRoute {
  const r = new ServiceRoute("svc", settings, T0);
  r.setEndpoints(
    list.map((p, i) => {
      const e = new Endpoint(p.worker_id ?? `w${i}`, settings, T0);
      e.update({
        worker_id: e.worker_id,
        service: "svc",
        url: "http://127.0.0.1:1/svc",
        tier: p.tier ?? 2,
        health: p.health ?? "healthy",
        refused: null,
      });
      return e;
    }),
    list.length,
  );
  return r;
}

/** Sends one attempt to the picked endpoint and settles it with `latencyMs`. */
function serve(r: ServiceRoute, now: number, latencyMs: number, failed = false): string {
  const e = r.picker.pick({ now, random: prng(now) }) as Endpoint;
  const probe = r.dispatch(e, now);
  r.settle(e, { now, latencyMs, failed, probe });
  return e.worker_id;
}

describe("ServiceRoute picker", () => {
  it("prefers healthy over degraded and the lower tier, takes turns while nothing is known", () => {
    const r = route([
      { worker_id: "deg", tier: 1, health: "degraded" },
      { worker_id: "t2", tier: 2 },
      { worker_id: "t1a", tier: 1 },
      { worker_id: "t1b", tier: 1 },
    ]);
    expect(r.endpoints.map((e) => e.worker_id)).toEqual(["t1a", "t1b", "t2", "deg"]);
    const first = r.picker.pick({ now: T0, random: Math.random }) as Endpoint;
    r.dispatch(first, T0);
    const second = r.picker.pick({ now: T0, random: Math.random }) as Endpoint;
    expect([first.worker_id, second.worker_id]).toEqual(["t1a", "t1b"]);
  });

  it("sends more to the faster of two, weighs in-flight requests, and shares equal ones", () => {
    const r = route([{ worker_id: "fast" }, { worker_id: "slow" }]);
    const [fast, slow] = r.endpoints as [Endpoint, Endpoint];
    for (let i = 0; i < 10; i++) {
      for (const [e, ms] of [
        [fast, 1],
        [slow, 10],
      ] as const) {
        const probe = r.dispatch(e, T0);
        r.settle(e, { now: T0, latencyMs: ms, failed: false, probe });
      }
    }
    const picks = new Map<string, number>();
    for (let i = 0; i < 100; i++) {
      const e = r.picker.pick({ now: T0, random: prng(i) }) as Endpoint;
      picks.set(e.worker_id, (picks.get(e.worker_id) ?? 0) + 1);
    }
    expect(picks.get("fast")).toBe(100);
    fast.inFlight = 20; // (20 + 1) x ~1 ms costs more than 1 x ~10 ms
    expect(r.picker.pick({ now: T0, random: prng(1) })?.worker_id).toBe("slow");
    fast.inFlight = 0;

    const even = route([{ worker_id: "a" }, { worker_id: "b" }]);
    const seen = new Map<string, number>();
    for (let i = 0; i < 40; i++) {
      const id = serve(even, T0, 2 + (i % 3) * 0.1);
      seen.set(id, (seen.get(id) ?? 0) + 1);
    }
    expect(seen.get("a")).toBe(20);
    expect(seen.get("b")).toBe(20);
  });

  it("tries a worker that looked slow once again after a few requests elsewhere", () => {
    const r = route([{ worker_id: "a" }, { worker_id: "b" }]);
    serve(r, T0, 1); // a
    serve(r, T0, 30); // b: one spike
    const after: string[] = [];
    for (let i = 0; i < 60; i++) after.push(serve(r, T0, 1));
    expect(after.slice(0, 10)).toEqual(Array(10).fill("a"));
    expect(after).toContain("b"); // the clock stood still: only the other requests made it fade
  });

  it("finds nothing, without throwing, once every provider of a service that had traffic turned unhealthy", () => {
    const r = route([{ worker_id: "a" }]);
    serve(r, T0, 3); // the service's latency is known now
    r.setEndpoints([], 1); // its one provider reports the service stopped
    expect(r.picker.pick({ now: T0, random: prng(1) })).toBeNull();
    expect(r.picker.blocked(T0)).toBe("none");
  });

  it("never picks a worker tried already, or one at its limit; says why nothing is left", () => {
    const r = route([{ worker_id: "a" }, { worker_id: "b" }]);
    const [a, b] = r.endpoints as [Endpoint, Endpoint];
    expect(r.picker.pick({ now: T0, random: Math.random, tried: [a] })).toBe(b);
    expect(r.picker.pick({ now: T0, random: Math.random, tried: [a, b] })).toBeNull();
    expect(r.picker.blocked(T0, [a, b])).toBe("none");
    a.inFlight = 2;
    b.inFlight = 2;
    expect(r.picker.pick({ now: T0, random: Math.random })).toBeNull();
    expect(r.picker.blocked(T0)).toBe("busy");
  });

  it("ejects after consecutive failures, at most half of the workers, each time for longer", () => {
    const r = route([{ worker_id: "a" }, { worker_id: "b" }, { worker_id: "c" }]);
    const [a, b] = r.endpoints as [Endpoint, Endpoint];
    const fail = (e: Endpoint, now: number) => {
      const probe = r.dispatch(e, now);
      r.settle(e, { now, latencyMs: 5, failed: true, probe });
    };
    fail(a, T0);
    fail(a, T0);
    expect(a.ejectedUntil).toBe(T0 + 10_000);
    fail(b, T0);
    fail(b, T0);
    expect(b.ejected(T0)).toBe(false); // 1 of 3 is the most that may be out
    expect(r.ejectedCount(T0)).toBe(1);
    // Only ejected workers usable: they are used rather than none.
    const only = route([{ worker_id: "x" }, { worker_id: "y" }]);
    const [x, y] = only.endpoints as [Endpoint, Endpoint];
    x.ejectedUntil = T0 + 1000;
    y.inFlight = 2;
    expect(only.picker.pick({ now: T0, random: Math.random })).toBe(x);
    fail(a, T0 + 10_000);
    fail(a, T0 + 10_000);
    expect(a.ejectedUntil).toBe(T0 + 10_000 + 20_000);
  });
});

describe("scalingSignal", () => {
  const win = (over: Partial<WindowSnapshot> = {}): WindowSnapshot => ({
    window_s: 60,
    requests: 100,
    errors: 0,
    retries: 0,
    rejected: 0,
    peak_in_flight: 10,
    throughput_rps: 1.7,
    p50_ms: 5,
    p95_ms: 20,
    p99_ms: 40,
    ...over,
  });
  const base = {
    providers: 2,
    serving: 2,
    limit: 100,
    queued: 0,
    observedMs: 120_000,
    windowMs: 60_000,
    scaleUpLatencyMs: 1000,
    scaleDownUtilization: 0.25,
  };
  it("asks to scale up on queueing, saturation, latency or no serving provider", () => {
    expect(scalingSignal({ ...base, queued: 3, window: win() }).reason).toMatch(/^queueing: 3/);
    expect(scalingSignal({ ...base, window: win({ rejected: 1 }) }).signal).toBe("scale_up");
    expect(scalingSignal({ ...base, window: win({ peak_in_flight: 160 }) }).reason).toMatch(
      /^saturation/,
    );
    expect(scalingSignal({ ...base, window: win({ p95_ms: 1200 }) }).reason).toMatch(/^latency/);
    expect(scalingSignal({ ...base, serving: 0, window: win() }).reason).toMatch(/^no healthy/);
  });
  it("asks to scale down when one provider fewer would be mostly idle, after a whole window", () => {
    expect(scalingSignal({ ...base, window: win({ peak_in_flight: 25 }) }).signal).toBe(
      "scale_down",
    );
    expect(scalingSignal({ ...base, window: win({ peak_in_flight: 26 }) }).signal).toBe("steady");
    expect(
      scalingSignal({ ...base, observedMs: 30_000, window: win({ peak_in_flight: 1 }) }).signal,
    ).toBe("steady");
    expect(scalingSignal({ ...base, serving: 1, window: win({ peak_in_flight: 0 }) }).signal).toBe(
      "steady",
    );
  });
});

describe("prometheusText", () => {
  it("escapes label values", () => {
    const r = route([{ worker_id: 'we"ird\\id' }]);
    const e = r.endpoints[0] as Endpoint;
    const probe = r.dispatch(e, T0);
    r.settle(e, { now: T0, latencyMs: 3, failed: false, probe });
    const text = prometheusText({
      svc: {
        requests_total: 1,
        errors_total: 0,
        retries_total: 0,
        rejected_total: 0,
        latency_sum_ms: 3,
        in_flight: 0,
        queue_length: 0,
        providers: 1,
        serving: 1,
        retry_budget_available: 10,
        latency_ewma_ms: 3,
        window: r.figures.window.snapshot(T0),
        scaling: { signal: "steady", reason: "" },
        workers: {
          'we"ird\\id': {
            url: "http://x",
            tier: 2,
            health: "healthy",
            requests_total: 1,
            errors_total: 0,
            latency_sum_ms: 3,
            latency_count: 1,
            in_flight: 0,
            latency_ewma_ms: 3,
            consecutive_failures: 0,
            ejected: false,
            ejected_until: null,
            ejections: 0,
            breaker: { state: "closed", open_until: null, trips: 0, window: e.breaker.counts(T0) },
            window: e.window.snapshot(T0),
          },
        },
      } as ServiceMetrics,
    });
    expect(text).toContain('rollcall_worker_in_flight{service="svc",worker="we\\"ird\\\\id"} 0');
  });
});
