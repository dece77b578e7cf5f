/** In-process route tests of the coordinator: routing errors (no upstream needed), and its timers. */
import { afterEach, describe, expect, it, vi } from "vitest";
import { UnsafePathError, upstreamUrl } from "../coordinator.ts";
import { member, report, testCoordinator } from "./helpers/coord-fixtures.ts";

const MIN = 60_000;

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

  it.each([
    "/api/service/upload/..%2fadmin",
    "/api/service/upload/%2e%2e%2fadmin",
    "/api/service/upload/a%2Fb",
    "/api/service/upload/a%5cb",
    "/api/service/upload/%252e%252e/x",
    "/api/service/upload/x/%00",
    "/api/service/up%2fload/x",
    "/api/service/upload/%zz",
  ])("400 for names and paths that try to escape: %s", async (path) => {
    const { call } = testCoordinator();
    await call("POST", "/api/cluster/heartbeat", report());
    const res = await call("GET", path);
    expect(res.status, path).toBe(400);
    expect(res.body.error).toBe("Invalid service path");
    // Regression: through the hono app (not the starters' fetch) this 400 had no CORS header.
    expect(res.headers.get("access-control-allow-origin"), path).toBe("*");
  });

  it("404 for a dot segment the URL parser resolves before routing", async () => {
    const { call } = testCoordinator();
    await call("POST", "/api/cluster/heartbeat", report());
    // The URL parser resolves a dot segment before routing: this is /api/x, an unknown path.
    expect((await call("GET", "/api/service/%2e%2e/x")).status).toBe(404);
  });

  it("builds upstream URLs that stay under the service URL (the path was checked before)", () => {
    expect(upstreamUrl("http://w:1/service/up/", "a/b%20c", "?q=1")).toBe(
      "http://w:1/service/up/a/b%20c?q=1",
    );
    expect(upstreamUrl("http://w:1/service/up", null, "")).toBe("http://w:1/service/up");
  });

  it.each(["../admin", "%2e%2e/admin", "a/../../admin"])(
    "refuses to build an upstream URL that leaves the service URL: %s",
    (rest) => {
      expect(() => upstreamUrl("http://w:1/service/up", rest, ""), rest).toThrow(UnsafePathError);
    },
  );
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
