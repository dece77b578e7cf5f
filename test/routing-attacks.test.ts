/**
 * The proxy against an attacker, in-process with real HTTP upstreams (docs/SECURITY.md, items
 * 1-5): request framing on pooled keep-alive sockets, client faults that must not blame a
 * worker, loops through the coordinator itself, client-sent identity headers, cookies across
 * services, and error answers that leak nothing. Each test failed on the code before the fix.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  type CoordinatorInit,
  HOP_HEADER,
  scopeCookies,
  workersClientAddress,
} from "../coordinator.ts";
import { createNodeFetch } from "../scripts/node-fetch.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

/** A real upstream whose answer depends on the path: /bad 503, /boom 500, /cookie sets cookies. */
async function pathUpstream(name: string) {
  const seen: { method: string; url: string; headers: http.IncomingHttpHeaders }[] = [];
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers });
      const url = req.url ?? "";
      if (url.includes("/bad")) res.writeHead(503, { "content-type": "text/plain" });
      else if (url.includes("/boom")) res.writeHead(500, { "content-type": "text/plain" });
      else if (url.includes("/cookie")) {
        res.setHeader("set-cookie", [
          "sid=abc; Path=/; Domain=coordinator.test; HttpOnly",
          "theme=dark; Max-Age=60",
        ]);
      }
      res.end(JSON.stringify({ upstream: name, url }));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return { name, url, seen, close };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

let a: Upstream;
let b: Upstream;
beforeAll(async () => {
  [a, b] = await Promise.all([startUpstream("A"), startUpstream("B")]);
});
afterAll(async () => {
  await Promise.all([a.close(), b.close()]);
});

const svc = (...list: { name: string; url: string }[]) =>
  list.map((u) => ({ id: u.name, url: u.url }));

describe("item 1: framing (request desync)", () => {
  it("never forwards a Content-Length or Expect without its body, so a pooled socket stays in step", async () => {
    // One keep-alive socket to the upstream: a request that claims 5 body bytes it does not
    // send would make the upstream read the next request as its body (or hang until timeout).
    const client = createNodeFetch({ maxSockets: 1 });
    cleanups.push(() => client.close());
    const t = await routingCoordinator(svc(a), { proxyTimeoutMs: 2000 }, { fetch: client.fetch });
    const before = a.received.length;
    const lying = t.call("/api/service/svc/first", {
      headers: { "content-length": "5", expect: "100-continue" },
    });
    const next = t.call("/api/service/svc/second");
    const [first, second] = await Promise.all([lying, next]);
    expect(first.status).toBe(200);
    expect(second.status).toBe(200);
    const got = a.received.slice(before);
    expect(got.map((r) => r.url).sort()).toEqual(["/svc/first", "/svc/second"]);
    for (const r of got) {
      expect(r.headers["content-length"]).toBeUndefined();
      expect(r.headers.expect).toBeUndefined();
    }
  });

  it("frames a body that does go along from the body itself (the node:http client)", async () => {
    const client = createNodeFetch();
    cleanups.push(() => client.close());
    const before = a.received.length;
    // A stray framing header with a string body: the client's own length wins, no chunking.
    const res = await client.fetch(`${a.url}/x`, {
      method: "POST",
      headers: { "content-length": "999", "transfer-encoding": "chunked", expect: "100-continue" },
      body: "héllo",
    });
    expect(res.status).toBe(200);
    const got = a.received[before];
    expect(got?.headers["content-length"]).toBe("6");
    expect(got?.headers["transfer-encoding"]).toBeUndefined();
    expect(got?.body).toBe("héllo");
  });
});

describe("item 2: client faults are not worker faults", () => {
  it("answers methods the proxy does not forward with 405 before picking a worker", async () => {
    const t = await routingCoordinator(svc(a, b), { breakerMinRequests: 2 });
    const before = a.received.length + b.received.length;
    for (let i = 0; i < 12; i++) {
      const res = await t.call("/api/service/svc/x", { method: "FOO" });
      expect(res.status).toBe(405);
      expect(res.headers.get("allow")).toContain("GET");
    }
    expect(a.received.length + b.received.length).toBe(before);
    for (const id of ["A", "B"]) expect((await t.breaker(id)).state).toBe("closed");
    expect((await t.get()).status).toBe(200);
  });

  it("answers a stalled upload 408, counts it against no worker, and lets a slow but steady one finish", async () => {
    const t = await routingCoordinator(svc(a, b), { proxyTimeoutMs: 150 });
    const stalled = () =>
      new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode("the first bytes, then nothing"));
        },
      });
    // ~20 of these opened every breaker of a healthy two-worker service.
    for (let i = 0; i < 20; i++) {
      const res = await t.call("/api/service/svc/upload", {
        method: "POST",
        body: stalled(),
        duplex: "half",
      } as RequestInit);
      expect(res.status).toBe(408);
      expect(res.body.error).toBe("Request body not received in time");
    }
    const rows = await t.admin("/api/admin/breakers");
    for (const row of rows.breakers) expect(row).toMatchObject({ state: "closed", ejected: false });
    const metrics = (await t.admin("/api/admin/metrics")).services.svc.workers;
    expect(metrics.A.errors_total + metrics.B.errors_total).toBe(0);
    expect((await t.get()).status).toBe(200);

    // A slow upload (a chunk every 60 ms, 360 ms in all) is no timeout: the worker's time
    // counts from the client's last chunk.
    let sent = 0;
    const steady = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === 6) return controller.close();
        await new Promise((r) => setTimeout(r, 60));
        controller.enqueue(new TextEncoder().encode(`chunk${sent++};`));
      },
    });
    const slow = await t.call("/api/service/svc/upload", {
      method: "POST",
      body: steady,
      duplex: "half",
    } as RequestInit);
    expect(slow.status).toBe(200);
    expect(slow.body.body).toBe("chunk0;chunk1;chunk2;chunk3;chunk4;chunk5;");
  });

  it("never takes a worker out for 5xx answers on one path that every worker gives", async () => {
    const [p, q] = await Promise.all([pathUpstream("P"), pathUpstream("Q")]);
    cleanups.push(p.close, q.close);
    const t = await routingCoordinator(svc(p, q), { breakerMinRequests: 4, ejectAfterFailures: 3 });
    for (let i = 0; i < 40; i++) {
      expect((await t.call("/api/service/svc/bad")).status).toBe(503);
      expect((await t.call("/api/service/svc/boom")).status).toBe(500);
    }
    // A 500 is the application's answer: passed on, never sent to another worker.
    const booms = [...p.seen, ...q.seen].filter((r) => r.url === "/svc/boom");
    expect(booms.length).toBe(40);
    const rows = await t.admin("/api/admin/breakers");
    for (const row of rows.breakers) expect(row).toMatchObject({ state: "closed", ejected: false });
    for (let i = 0; i < 4; i++) expect((await t.get()).status).toBe(200);
  });
});

describe("item 3: loops and SSRF", () => {
  it("never calls a link-local upstream (cloud metadata), whatever the allow list says", async () => {
    const called: string[] = [];
    const spy = (async (url: string) => {
      called.push(String(url));
      return new Response("secret credentials");
    }) as typeof fetch;
    for (const url of [
      "http://169.254.169.254/latest",
      "http://2852039166/latest", // 169.254.169.254 as one number
      "http://[fe80::1]:80/x",
      "http://[::ffff:169.254.169.254]/x",
      "http://0.0.0.0:8080/x",
      "http://metadata.google.internal/computeMetadata",
    ]) {
      const t = await routingCoordinator(
        [{ id: "M", url }],
        { upstreamAllow: "any" },
        { fetch: spy },
      );
      const res = await t.get();
      expect(res.status, url).toBe(503);
      const worker = (await t.admin("/api/admin/services")).services.svc.workers[0];
      expect(worker.refused, url).toMatch(/never allowed/);
    }
    expect(called).toEqual([]);
  });

  it("calls loopback and private upstreams only where the allow list says so", async () => {
    const strict: CoordinatorInit = { upstreamAllow: "public" };
    const t = await routingCoordinator(svc(a), strict);
    expect((await t.get()).status).toBe(503);
    expect((await t.admin("/api/admin/services")).services.svc.workers[0].refused).toBe(
      "loopback addresses are not allowed",
    );
    const ok = await routingCoordinator(svc(a), { upstreamAllow: "127.0.0.0/8" });
    expect((await ok.get()).status).toBe(200);
  });

  it("answers a request that already went through a coordinator 508, and never calls itself twice", async () => {
    let calls = 0;
    let self: Awaited<ReturnType<typeof routingCoordinator>> | null = null;
    // The member's URL is the coordinator itself: every upstream call comes back to it.
    const loop = (async (url: string, init: RequestInit) => {
      calls++;
      return (self as NonNullable<typeof self>).coordinator.fetch(new Request(url, init));
    }) as typeof fetch;
    self = await routingCoordinator(
      [{ id: "S", url: "http://coordinator.test/api/service/svc/x" }],
      { upstreamAllow: "any" },
      { fetch: loop },
    );
    const first = await self.get();
    expect(first.status).toBe(508);
    expect(calls).toBe(1);
    const again = await self.get();
    expect(again.status).toBe(503); // that URL is known to be the coordinator: not routed to
    expect(calls).toBe(1);
    const hop = await self.call("/api/service/svc/x", { headers: { [HOP_HEADER]: "elsewhere" } });
    expect(hop.status).toBe(508);
  });

  it("refuses to connect where a name resolves to an address the allow list refuses (node:http client)", async () => {
    const client = createNodeFetch({ allowAddress: (_host, address) => address !== "127.0.0.1" });
    cleanups.push(() => client.close());
    const before = a.received.length;
    const err = await client.fetch(a.url.replace("127.0.0.1", "localhost")).catch((e) => e);
    expect(String(err?.message ?? err)).toMatch(/not allowed|EUPSTREAMREFUSED/);
    expect(a.received.length).toBe(before);
  });
});

describe("item 4: header trust", () => {
  const spoofed = {
    "cf-connecting-ip": "6.6.6.6",
    "x-real-ip": "6.6.6.6",
    "true-client-ip": "6.6.6.6",
    forwarded: "for=6.6.6.6;host=evil.example",
    "x-forwarded-host": "evil.example",
    "x-forwarded-proto": "https",
  };

  it("outside Workers, takes the client's address from the runtime, never from its headers", async () => {
    const t = await routingCoordinator(svc(a));
    const before = a.received.length;
    const env = { incoming: { socket: { remoteAddress: "10.1.2.3" } } };
    const res = await t.coordinator.fetch(
      new Request("http://coordinator.test/api/service/svc/who", { headers: spoofed }),
      env,
    );
    expect(res.status).toBe(200);
    const got = a.received[before]?.headers ?? {};
    expect(got["x-forwarded-for"]).toBe("10.1.2.3");
    for (const name of ["cf-connecting-ip", "x-real-ip", "true-client-ip", "forwarded"]) {
      expect(got[name], name).toBeUndefined();
    }
    expect(got["x-forwarded-host"]).toBe("coordinator.test");
    expect(got["x-forwarded-proto"]).toBe("http");
  });

  it("on Workers, trusts CF-Connecting-IP (Cloudflare sets it)", async () => {
    const t = await routingCoordinator(svc(a), {}, { clientAddress: workersClientAddress });
    const before = a.received.length;
    const exec = { waitUntil: () => {} };
    const res = await t.coordinator.fetch(
      new Request("http://coordinator.test/api/service/svc/who", { headers: spoofed }),
      {},
      exec,
    );
    expect(res.status).toBe(200);
    expect(a.received[before]?.headers["x-forwarded-for"]).toBe("6.6.6.6");
  });

  it("trusts CF-Connecting-IP only where the starter says so (the Workers one), ExecutionContext or not", async () => {
    const t = await routingCoordinator(svc(a));
    const before = a.received.length;
    const exec = { waitUntil: () => {} };
    const res = await t.coordinator.fetch(
      new Request("http://coordinator.test/api/service/svc/who", { headers: spoofed }),
      { incoming: { socket: { remoteAddress: "10.1.2.3" } } },
      exec,
    );
    expect(res.status).toBe(200);
    expect(a.received[before]?.headers["x-forwarded-for"]).toBe("10.1.2.3");
  });

  it("scopes each service's cookies to its own path, or strips them, when asked", async () => {
    const p = await pathUpstream("P");
    cleanups.push(p.close);
    const cookiesOf = async (init: CoordinatorInit) => {
      const t = await routingCoordinator(svc(p), init);
      const res = await t.call("/api/service/svc/cookie", { headers: { cookie: "other=1" } });
      return { set: res.headers.getSetCookie(), sent: p.seen.at(-1)?.headers.cookie };
    };
    expect((await cookiesOf({})).set).toEqual([
      "sid=abc; Path=/; Domain=coordinator.test; HttpOnly",
      "theme=dark; Max-Age=60",
    ]);
    expect((await cookiesOf({ cookies: "scope" })).set).toEqual([
      "sid=abc; Path=/api/service/svc; HttpOnly",
      "theme=dark; Path=/api/service/svc; Max-Age=60",
    ]);
    const stripped = await cookiesOf({ cookies: "strip" });
    expect(stripped).toEqual({ set: [], sent: undefined });
    const h = new Headers({ "set-cookie": "a=1; path=/x; DOMAIN=e.example" });
    scopeCookies(h, "scope", "/old");
    expect(h.getSetCookie()).toEqual(["a=1; Path=/old"]);
  });
});

describe("item 5: errors that reach a client leak nothing", () => {
  it("answers a refused worker 502 with a request id; the address is only in the log", async () => {
    const lines: string[] = [];
    const t = await routingCoordinator(
      [{ id: "D", url: "http://127.0.0.1:9" }],
      {},
      { log: (l) => lines.push(l) },
    );
    const res = await t.get();
    expect(res.status).toBe(502);
    expect(res.body).toEqual({
      error: "Service proxy failed",
      message: "Worker could not be reached",
      service: "svc",
      worker: "D",
      request_id: expect.stringMatching(/^[0-9a-f]{16}$/),
    });
    expect(JSON.stringify(res.body)).not.toMatch(/127\.0\.0\.1|ECONNREFUSED|:9\b/);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(res.body.request_id);
    expect(lines[0]).toMatch(/ECONNREFUSED|refused|fetch failed/i);
  });
});
