/** The coordinator's proxy in-process, with real HTTP upstreams on 127.0.0.1. */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CoordinatorConfigError, createCoordinator, resolveSettings } from "../coordinator.ts";
import {
  kvLikeStore,
  testClock,
  member,
  registration,
  report,
  TEST_INIT,
  testCoordinator,
} from "./helpers/coord-fixtures.ts";
import { type Answer, readAnswer } from "./helpers/answer.ts";
import { freePort } from "../support/processes.ts";
import { startUpstream, type Upstream, until } from "./helpers/upstream.ts";

let a: Upstream;
let b: Upstream;
let dead: string;

beforeAll(async () => {
  [a, b] = await Promise.all([startUpstream("a"), startUpstream("b")]);
  dead = `http://127.0.0.1:${await freePort()}`;
});
afterAll(async () => {
  await Promise.all([a.close(), b.close()]);
});

/** A coordinator whose cluster has the given members (all providing `upload`). */
async function withMembers(members: ReturnType<typeof member>[], init = {}) {
  const t = testCoordinator(init);
  const res = await t.call("POST", "/api/cluster/heartbeat", report({ members }));
  expect(res.status).toBe(200);
  return t;
}

async function send(
  t: ReturnType<typeof testCoordinator>,
  path: string,
  init: RequestInit = {},
): Promise<Answer> {
  return readAnswer(await t.coordinator.app.request(path, init));
}

describe("forwarding", () => {
  it("keeps method, path, query, body and safe headers; strips hop-by-hop; sets X-Forwarded-*", async () => {
    const t = await withMembers([member("A", { url: a.url })]);
    const res = await send(t, "/api/service/upload/files/x%20y.txt?a=1&b=two", {
      method: "PUT",
      body: "hello body",
      headers: {
        "content-type": "text/plain",
        authorization: "Bearer user-token",
        "x-custom": "kept",
        connection: "keep-alive, x-drop-me",
        "x-drop-me": "gone",
        "keep-alive": "timeout=5",
        te: "trailers",
        "proxy-authorization": "Basic secret",
        "x-forwarded-for": "10.0.0.1",
        host: "coordinator.example",
      },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-rollcall-worker")).toBe("A");
    expect(res.headers.get("x-upstream")).toBe("a");
    expect(res.headers.get("x-secret-hop")).toBeNull();
    const got = res.body;
    expect(got.method).toBe("PUT");
    expect(got.url).toBe("/service/upload/files/x%20y.txt?a=1&b=two");
    expect(got.body).toBe("hello body");
    expect(got.headers).toMatchObject({
      "content-type": "text/plain",
      authorization: "Bearer user-token",
      "x-custom": "kept",
      "x-forwarded-for": "10.0.0.1",
      "x-forwarded-proto": "http",
      "x-forwarded-host": "coordinator.example",
    });
    for (const h of ["x-drop-me", "keep-alive", "te", "proxy-authorization"]) {
      expect(got.headers[h]).toBeUndefined();
    }
  });

  it("routes a direct-mode worker by its service_url or its tunnel_url", async () => {
    const t = testCoordinator();
    await t.call("POST", "/api/worker/register", {
      worker_id: "old",
      tunnel_url: b.url,
      services: ["notes", { name: "rag", service_url: `${a.url}/rag-root` }],
    });
    expect((await send(t, "/api/service/notes/n/1")).body).toMatchObject({
      upstream: "b",
      url: "/n/1",
    });
    expect((await send(t, "/api/service/rag/q?k=3")).body).toMatchObject({
      upstream: "a",
      url: "/rag-root/q?k=3",
    });
    expect((await send(t, "/api/service/rag")).body).toMatchObject({
      upstream: "a",
      url: "/rag-root",
    });
  });

  it("routes configured path aliases to their service, with the whole path", async () => {
    const t = await withMembers([member("A", { url: a.url })], {
      aliases: { "/clients": "upload", "/uploads/": "upload" },
    });
    expect((await send(t, "/clients/42?x=1")).body).toMatchObject({
      upstream: "a",
      url: "/service/upload/clients/42?x=1",
    });
    expect((await send(t, "/uploads/f.png")).body).toMatchObject({
      url: "/service/upload/uploads/f.png",
    });
    expect((await send(t, "/clientsX")).status).toBe(404);
  });

  it("never lets an alias take the coordinator's own paths", async () => {
    for (const prefix of ["/health", "/metrics", "/api/x", "relative"]) {
      expect(() => resolveSettings({ aliases: { [prefix]: "upload" } })).toThrow(
        CoordinatorConfigError,
      );
    }
    const t = await withMembers([member("A", { url: a.url })], { aliases: { "/": "upload" } });
    expect((await t.coordinator.fetch(new Request("http://c/elsewhere"))).status).toBe(200);
    expect(await (await t.coordinator.fetch(new Request("http://c/health"))).json()).toMatchObject({
      status: "healthy",
    });
    expect((await t.coordinator.fetch(new Request("http://c/api/admin/budget"))).status).toBe(200);
    expect((await t.coordinator.fetch(new Request("http://c/api/nothing"))).status).toBe(404);
  });

  it("answers an alias exactly as its service path: the upstream response itself, CORS set once", async () => {
    // Regression: alias traffic went through hono's cors(), which copied the answer and added
    // a second `Vary: Origin`; a refused path on an alias had no CORS headers at all.
    const origin = "https://app.example";
    let last: Response | null = null;
    // A fetch that reports its answers' body breaks itself, as the Node client does: the proxy
    // hands its answer on as it is (one that does not is read whole or watched: a new Response).
    const fetcher = Object.assign(
      async () => {
        last = new Response('{"ok":true}', {
          headers: { "content-type": "application/json", vary: "Accept" },
        });
        return last; // a Response built here has mutable headers, like Bun's and the Node client's
      },
      { reportsBodyBreaks: true },
    ) as unknown as typeof fetch;
    const t = testCoordinator({ corsOrigin: origin, aliases: { "/clients": "upload" } }, fetcher);
    await t.call("POST", "/api/cluster/heartbeat", report({ members: [member("A")] }));
    for (const serve of [
      (r: Request) => t.coordinator.fetch(r),
      (r: Request) => t.coordinator.app.fetch(r),
    ]) {
      for (const path of ["/api/service/upload/x", "/clients/x"]) {
        const res = await serve(new Request(`http://coordinator${path}`, { headers: { origin } }));
        expect(res).toBe(last);
        expect(res.headers.get("vary")).toBe("Accept, Origin");
        expect(res.headers.get("access-control-allow-origin")).toBe(origin);
        expect(res.headers.get("x-rollcall-worker")).toBe("A");
      }
      const refused = await serve(
        new Request("http://coordinator/clients/a%2fb", {
          method: "OPTIONS",
          headers: { origin },
        }),
      );
      expect(refused.status).toBe(400);
      expect(refused.headers.get("access-control-allow-origin")).toBe(origin);
      expect(refused.headers.get("vary")).toBe("Origin");
    }
  });

  it("forwards an OPTIONS that is no CORS preflight, and answers a preflight itself", async () => {
    // Regression: every OPTIONS got the CORS middleware's 204, so a service never saw one.
    const t = await withMembers([member("A", { url: a.url })], {
      aliases: { "/clients": "upload" },
    });
    const options = () => a.received.filter((r) => r.method === "OPTIONS").length;
    const before = options();
    for (const [path, url] of [
      ["/api/service/upload/dav/x", "/service/upload/dav/x"],
      ["/clients/7", "/service/upload/clients/7"],
    ] as const) {
      const plain = await t.coordinator.fetch(
        new Request(`http://coordinator${path}`, { method: "OPTIONS" }),
      );
      expect(plain.status).toBe(200);
      expect(await plain.json()).toMatchObject({ upstream: "a", method: "OPTIONS", url });
      const pre = await t.coordinator.fetch(
        new Request(`http://coordinator${path}`, {
          method: "OPTIONS",
          headers: { origin: "https://app.example", "access-control-request-method": "PUT" },
        }),
      );
      expect(pre.status).toBe(204);
      expect(pre.headers.get("access-control-allow-methods")).toContain("PUT");
    }
    expect(options() - before).toBe(2); // the preflights never reached it
  });

  it("prefers the lower tier, then balances within it", async () => {
    const t = await withMembers([
      member("G", { url: a.url, tier: 1 }),
      member("C1", { url: b.url, tier: 2 }),
    ]);
    for (let i = 0; i < 4; i++)
      expect((await send(t, "/api/service/upload/x")).body.upstream).toBe("a");
    const t2 = await withMembers([member("C1", { url: a.url }), member("C2", { url: b.url })]);
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) seen.add((await send(t2, "/api/service/upload/x")).body.upstream);
    expect(seen).toEqual(new Set(["a", "b"]));
  });

  it("streams a response without waiting for its end, and a large request body intact", async () => {
    let finish: () => void = () => {};
    const slow = http.createServer((req, res) => {
      if (req.method === "POST") {
        let n = 0;
        req.on("data", (c: Buffer) => {
          n += c.length;
        });
        req.on("end", () => res.end(String(n)));
        return;
      }
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("first;");
      finish = () => res.end("last");
    });
    await new Promise<void>((r) => slow.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(slow.address() as AddressInfo).port}`;
    try {
      const t = await withMembers([member("S", { url })], { replayBufferBytes: 64 * 1024 });
      const res = await t.coordinator.app.request("/api/service/upload/stream");
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const first = await reader.read();
      expect(new TextDecoder().decode(first.value)).toBe("first;");
      finish();
      let rest = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        rest += new TextDecoder().decode(value);
      }
      expect(rest).toBe("last");
      const big = new Uint8Array(3 * 1024 * 1024).fill(7);
      const up = await t.coordinator.app.request("/api/service/upload/big", {
        method: "POST",
        body: big,
      });
      expect(await up.text()).toBe(String(big.length));
    } finally {
      slow.closeAllConnections();
      await new Promise<void>((r) => slow.close(() => r()));
    }
  });
});

describe("failover", () => {
  it("fails over when a connection is refused, for any method, replaying the body", async () => {
    const t = await withMembers([member("D", { url: dead }), member("E", { url: a.url })]);
    for (let i = 0; i < 2; i++) {
      // round-robin starts at each provider once: one of the two requests hits the dead one first
      const res = await send(t, "/api/service/upload/p", { method: "POST", body: `payload-${i}` });
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ upstream: "a", method: "POST", body: `payload-${i}` });
    }
  });

  it("fails over an idempotent request on timeout, but never resends a POST that reached a worker", async () => {
    const hang = await startUpstream("hang");
    await hang.setMode("hang");
    try {
      // Fresh coordinators know nothing about latency yet, so they take turns: of two requests
      // sent together, one goes first to the hanging worker. (Later ones would avoid it.)
      const fresh = () =>
        withMembers([member("H", { url: hang.url }), member("E", { url: b.url })], {
          proxyTimeoutMs: 300,
        });
      const before = b.received.length;
      const forGets = await fresh();
      const gets = await Promise.all([
        send(forGets, "/api/service/upload/g"),
        send(forGets, "/api/service/upload/g"),
      ]);
      expect(gets.map((r) => r.status)).toEqual([200, 200]);
      expect(hang.received.filter((r) => r.method === "GET").length).toBeGreaterThanOrEqual(1);
      // Two POSTs: one goes first to the hanging worker (504, not retried), one to b.
      const t = await fresh();
      const posts = await Promise.all([
        send(t, "/api/service/upload/p", { method: "POST", body: "once" }),
        send(t, "/api/service/upload/p", { method: "POST", body: "once" }),
      ]);
      const statuses = posts.map((r) => r.status).sort();
      expect(statuses).toEqual([200, 504]);
      const timedOut = posts.find((r) => r.status === 504);
      expect(timedOut?.body).toMatchObject({
        error: "Service proxy failed",
        service: "upload",
        worker: "H",
      });
      expect(timedOut?.body.message).toMatch(/did not answer within 300 ms/);
      const postsAtB = b.received.slice(before).filter((r) => r.method === "POST");
      expect(postsAtB).toHaveLength(1);
    } finally {
      await hang.close();
    }
  });

  it("answers 502 with the contract body when every provider fails", async () => {
    const t = await withMembers([member("D1", { url: dead }), member("D2", { url: dead })]);
    const res = await send(t, "/api/service/upload/x");
    expect(res.status).toBe(502);
    expect(res.body).toEqual({
      error: "Service proxy failed",
      // Which address refused is logged, never told to a public client.
      message: "Worker could not be reached",
      service: "upload",
      worker: expect.stringMatching(/^D[12]$/),
      request_id: expect.stringMatching(/^[0-9a-f]{16}$/),
    });
  });

  it("never lets a path leave the service prefix at a real upstream", async () => {
    const t = await withMembers([
      member("A", { url: a.url }),
      member("X", { url: b.url, services: [{ name: "admin" }] }),
    ]);
    const before = a.received.length;
    for (const path of [
      "/api/service/upload/../admin/secret",
      "/api/service/upload/%2e%2e/admin",
      "/api/service/upload/.%2e/admin",
      "/api/service/upload/..%2fadmin",
      "/api/service/upload/%2e%2e%2fadmin",
      "/api/service/upload/a/%2e%2e/%2e%2e/x",
      "/api/service/upload/ok/../still-upload",
    ]) {
      const res = await send(t, path);
      if (res.status === 200 && res.body.upstream === "b") {
        // The URL parser resolved `..` before routing: the client asked for service admin,
        // which it may do directly; the upstream path is still under admin's prefix.
        expect(res.body.url.startsWith("/service/admin")).toBe(true);
      } else if (res.status === 200) {
        expect(res.body.url.startsWith("/service/upload/")).toBe(true);
      } else {
        expect([400, 404, 503]).toContain(res.status);
      }
    }
    for (const got of a.received.slice(before))
      expect(got.url.startsWith("/service/upload/")).toBe(true);
  });
});

describe("writes that waited", () => {
  it("go out beside a proxied request, never in front of it", async () => {
    const clock = testClock();
    const { store, hold } = kvLikeStore(clock);
    const upstream = async () => new Response("ok");
    const { app } = createCoordinator(TEST_INIT, {
      store,
      clock,
      fetch: upstream as typeof fetch,
    });
    const post = (path: string, body: unknown) =>
      app.request(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    await post("/api/worker/register", registration("w"));
    const hb = await post("/api/worker/heartbeat", { worker_id: "w", status: "busy" });
    expect(((await hb.json()) as { written: boolean }).written).toBe(false); // within 1 s: waits
    clock.advance(1500);
    const release = hold();
    let answered = false;
    const call = Promise.resolve(app.request("/api/service/upload/x")).then((r) => {
      answered = true; // the flush it starts is held
      return r;
    });
    await until("the proxied answer while the write is held", () => answered, 5000);
    const res = await call;
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("ok");
    expect(store.writes).toBe(1);
    release();
    await until("the waiting write", () => store.writes === 2);
  });
});
