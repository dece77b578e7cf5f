/**
 * A worker's service that resets its connection in the middle of a response (headers and part
 * of the body sent, then the socket dropped): the one case the routing tests did not cover
 * (hang, refuse, reset before answering, 5xx, slow and the queue are in routing-failures.test.ts
 * and coordinator-proxy.test.ts). The client must see the break (never a clean, truncated
 * body), the worker takes the blame (counted, then ejected), and GETs that come after go to
 * the healthy provider; a small answer that breaks is retried elsewhere (the client sees no
 * break); a client that goes away mid-body blames nobody. In-process with each upstream client
 * (the runtime's fetch, which the proxy watches, and the Node starter's two, which report
 * breaks themselves), and over real HTTP on every runtime.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { createNodeFetch } from "../scripts/node-fetch.ts";
import { createUndiciFetch } from "../scripts/undici-fetch.ts";
import { pollUntil } from "../support/processes.ts";
import { COORDINATOR_RUNTIMES } from "./helpers/coord-runtimes.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";
import { signedHeaders, testKey } from "./helpers/signing.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

const closers: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
});

/**
 * A service that sends 200, a Content-Length of `length` (none when `chunked`) and 10 bytes,
 * then drops the socket 20 ms later; or, with `stall`, keeps it open. `closed` counts the
 * sockets that closed.
 */
async function breaksMidResponse(
  options: { chunked?: boolean; length?: number; stall?: boolean } = {},
): Promise<{ url: string; hits: () => number; closed: () => number }> {
  let hits = 0;
  let closed = 0;
  const server = http.createServer((req, res) => {
    hits++;
    req.resume();
    req.on("end", () => {
      const length = String(options.length ?? 100_000);
      res.writeHead(200, options.chunked ? {} : { "content-length": length });
      res.write("0123456789");
      if (!options.stall) setTimeout(() => res.socket?.destroy(), 20);
    });
  });
  server.on("connection", (socket) => socket.on("close", () => closed++));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits: () => hits,
    closed: () => closed,
  };
}

async function healthy(): Promise<Upstream> {
  const up = await startUpstream("B");
  closers.push(() => up.close());
  return up;
}

/** The upstream clients: the runtime's fetch (watched by the proxy) and the Node starter's two. */
const CLIENTS: [string, (() => typeof fetch) | null][] = [
  ["the runtime's fetch (watched)", null],
  [
    "the node:http client (reports)",
    () => {
      const c = createNodeFetch();
      closers.push(() => c.close());
      return c.fetch;
    },
  ],
  [
    "the undici client (reports)",
    () => {
      const c = createUndiciFetch();
      closers.push(() => c.close());
      return c.fetch;
    },
  ],
];

describe("a service that resets mid-response", () => {
  async function run(options: { chunked?: boolean; length?: number }, client = CLIENTS[0]) {
    const broken = await breaksMidResponse(options);
    const b = await healthy();
    const fetch = client?.[1]?.();
    const t = await routingCoordinator(
      [
        { id: "A", url: broken.url },
        { id: "B", url: b.url },
      ],
      { ejectAfterFailures: 2, breakerMinRequests: 1000, latencyDecayMs: 1 },
      fetch ? { fetch } : {},
    );
    let broke = 0;
    for (let i = 0; i < 12; i++) {
      t.clock.advance(10);
      const res = await t.coordinator.fetch(
        new Request("http://coordinator.test/api/service/svc/x"),
      );
      expect(res.status).toBe(200);
      try {
        // A truncated body must never look complete: B's answers are JSON naming B.
        expect(JSON.parse(await res.text()).upstream).toBe("B");
      } catch (err) {
        if ((err as Error).name === "AssertionError") throw err;
        broke++;
      }
    }
    return { broke, hits: broken.hits(), row: await t.breaker("A") };
  }

  it.each([false, true])(
    "the client sees every break (chunked: %s), never a clean truncated body",
    async (chunked) => {
      const { broke, hits } = await run({ chunked });
      expect(broke).toBe(hits);
      expect(broke).toBeGreaterThanOrEqual(1);
    },
  );

  it.each(CLIENTS)(
    "the worker is blamed: ejected after ejectAfterFailures breaks, later GETs go elsewhere (%s)",
    async (...client) => {
      for (const chunked of [false, true]) {
        const { broke, row } = await run({ chunked }, client);
        expect(broke).toBeLessThanOrEqual(2);
        expect(broke).toBeGreaterThanOrEqual(1);
        expect(row.ejected).toBe(true);
      }
    },
  );

  it.each(CLIENTS)(
    "a small answer that breaks (up to 64 KiB) is read whole: the GET goes to another worker, the client sees no break (%s)",
    async (...client) => {
      const { broke, hits, row } = await run({ length: 5000 }, client);
      expect(broke).toBe(0);
      expect(hits).toBeGreaterThanOrEqual(1);
      expect(row.ejected).toBe(true);
    },
  );

  it.each(CLIENTS)("a client that goes away mid-body blames nobody (%s)", async (...client) => {
    const stalled = await breaksMidResponse({ stall: true });
    const fetch = client[1]?.();
    const t = await routingCoordinator([{ id: "A", url: stalled.url }], {}, fetch ? { fetch } : {});
    for (let i = 1; i <= 3; i++) {
      const res = await t.coordinator.fetch(
        new Request("http://coordinator.test/api/service/svc/x"),
      );
      expect(res.status).toBe(200);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      expect((await reader.read()).done).toBe(false);
      await reader.cancel(new Error("the client went away"));
      // The coordinator's client closes the upstream connection; whatever it noticed is settled then.
      await pollUntil("the upstream connection closed", async () =>
        stalled.closed() >= i ? true : undefined,
      );
      await new Promise((r) => setImmediate(r));
    }
    const row = await t.breaker("A");
    expect(row.consecutive_failures).toBe(0);
    expect(row.ejected).toBe(false);
    const metrics = (await t.admin("/api/admin/metrics")).services.svc;
    expect(metrics.workers.A.errors_total).toBe(0);
    expect(metrics.errors_total).toBe(0);
  });
});

describe.each(COORDINATOR_RUNTIMES)("over real HTTP, on $name", (runtime) => {
  it("the client's read of a large answer fails and the worker is blamed; a small one goes to another worker whole", async () => {
    const big = await breaksMidResponse();
    const small = await breaksMidResponse({ length: 5000 });
    const b = await healthy();
    const p = await runtime.start({
      // The broken services are on loopback, which the proxy refuses by default.
      ROLLCALL_UPSTREAM_ALLOW: "loopback",
      // Deno's own fetch, which cannot report a break (its starter's default client can).
      ...(runtime.name === "deno" ? { ROLLCALL_NODE_FETCH: "builtin" } : {}),
    });
    closers.push(p.stop);
    const leader = testKey(`mid-reset leader ${runtime.name}`);
    const body = JSON.stringify({
      leader_id: leader.id,
      term: 1,
      sequence: 1,
      members: [
        {
          worker_id: "A",
          status: "online",
          url: big.url,
          services: [
            { name: "big", url: `${big.url}/big` },
            { name: "small", url: `${small.url}/small` },
          ],
        },
        {
          worker_id: "B",
          status: "online",
          url: b.url,
          services: [{ name: "small", url: `${b.url}/small` }],
        },
      ],
    });
    const hb = "/api/cluster/heartbeat";
    const reported = await fetch(`${p.url}${hb}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(await signedHeaders(leader, { method: "POST", path: hb, body, now: Date.now() })),
      },
      body,
    });
    expect(reported.status).toBe(200);
    const metrics = async () => (await (await fetch(`${p.url}/api/admin/metrics`)).json()).services;

    const res = await fetch(`${p.url}/api/service/big/x`);
    expect(res.status).toBe(200);
    const read = await res.text().then(
      (text) => text,
      () => null,
    );
    // Miniflare's server in front of workerd ends the answer as if it were whole (an empty
    // body here, without a Content-Length: docs/RELIABILITY.md); the others break it.
    if (runtime.name !== "workerd") expect(read).toBeNull();
    const errors = await pollUntil("the break counted against A", async () => {
      const n = (await metrics()).big?.workers.A.errors_total;
      return n >= 1 ? n : undefined;
    });
    expect(errors).toBe(1);

    // With nothing known yet, the first GET goes to the first provider by ID: A.
    const whole = await fetch(`${p.url}/api/service/small/y`);
    expect(whole.status).toBe(200);
    expect((await whole.json()).upstream).toBe("B");
    expect(small.hits()).toBe(1);
    expect((await metrics()).small.workers.A.errors_total).toBe(1);
    expect((await fetch(`${p.url}/health`)).status).toBe(200);
  });
});
