/**
 * Review 2 (attacker's pass over issues 9 and 10): request smuggling on pooled keep-alive
 * sockets, coordinator -> upstream (scripts/node-fetch.ts) and gateway -> service
 * (agent/gateway.ts). Each `it.fails` names a finding and flips when it is fixed.
 *
 * node:http sends a request body WITHOUT any framing when the method is one it does not
 * chunk by default (GET, HEAD, DELETE, OPTIONS) and no Content-Length is set: the body bytes
 * land on the socket after the request head, and the upstream parses them as the next request.
 */
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { Gateway } from "../agent/gateway.ts";
import { createNodeFetch } from "../scripts/node-fetch.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

/** A real upstream that records every request head it parses (method, path, body). */
async function recordingUpstream() {
  const seen: { method: string; url: string; body: string }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      seen.push({
        method: req.method ?? "",
        url: req.url ?? "",
        body: Buffer.concat(chunks).toString(),
      });
      res.end(`answer to ${req.method} ${req.url}`);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return { port, url: `http://127.0.0.1:${port}`, seen };
}

const SMUGGLED = "GET /SMUGGLED HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";

/** A body stream of unknown length (as a chunked client upload arrives). */
const streamOf = (text: string) =>
  new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(text));
      controller.close();
    },
  });

/** Sends raw bytes to a port and collects the answer until the server closes or `ms` pass. */
function rawExchange(port: number, data: string, ms = 1000): Promise<string> {
  return new Promise((resolve) => {
    let out = "";
    const s = net.connect(port, "127.0.0.1", () => s.write(data));
    s.on("data", (c: Buffer) => {
      out += c.toString();
    });
    const done = () => resolve(out);
    s.on("close", done);
    s.on("error", done);
    setTimeout(() => s.destroy(), ms);
  });
}

describe("finding 1: coordinator -> upstream desync (node-fetch, DELETE/OPTIONS with a stream body)", () => {
  for (const method of ["DELETE", "OPTIONS"]) {
    // FINDING review2-1 (critical): scripts/node-fetch.ts `frame()` sets no framing for a
    // stream body without a Content-Length, and node:http does not chunk DELETE/OPTIONS by
    // default: the body goes out unframed and the upstream reads it as a second request.
    it(`frames a ${method} body of unknown length, so it never becomes a second request`, async () => {
      const up = await recordingUpstream();
      const client = createNodeFetch({ maxSockets: 1 });
      cleanups.push(() => client.close());
      const res = await client.fetch(`${up.url}/outer`, {
        method,
        body: streamOf(SMUGGLED),
        duplex: "half",
      } as RequestInit);
      await res.text();
      const next = await client.fetch(`${up.url}/victim`);
      await next.text();
      expect(up.seen.map((r) => r.url)).toEqual(["/outer", "/victim"]);
      expect(up.seen[0]?.body).toBe(SMUGGLED);
    });
  }

  // The same through the coordinator: a public client's chunked DELETE smuggles a request to
  // the worker past the proxy (no hop header, no X-Forwarded-For, any path and headers), and
  // the next user on that pooled socket can be answered with the smuggled request's answer.
  it("a chunked DELETE through the proxy reaches the worker as one request, not two", async () => {
    const up = await recordingUpstream();
    const client = createNodeFetch({ maxSockets: 1 });
    cleanups.push(() => client.close());
    const t = await routingCoordinator(
      [{ id: "A", url: up.url }],
      { proxyTimeoutMs: 2000 },
      { fetch: client.fetch },
    );
    const first = await t.call("/api/service/svc/outer", {
      method: "DELETE",
      body: streamOf(SMUGGLED),
      duplex: "half",
    } as RequestInit);
    expect(first.status).toBe(200);
    expect((await t.call("/api/service/svc/victim")).status).toBe(200);
    expect(up.seen.some((r) => r.url === "/SMUGGLED")).toBe(false);
  });
});

describe("finding 2: gateway -> service desync (agent/gateway.ts #proxy)", () => {
  async function gatewayFor(port: number) {
    const svc = {
      name: "svc",
      url: `http://127.0.0.1:${port}`,
      host: "127.0.0.1",
      port,
      basePath: "",
      status: "healthy" as const,
      latency_ms: 1,
    };
    const gw = new Gateway(
      { host: "127.0.0.1", port: 0 },
      {
        service: (n) => (n === "svc" ? svc : undefined),
        services: () => [svc],
        health: () => ({}),
        clusterView: () => ({}),
      },
    );
    const gport = await gw.start();
    cleanups.push(() => gw.stop());
    return gport;
  }

  const chunked = (method: string) =>
    `${method} /service/svc/outer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
    `${SMUGGLED.length.toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`;

  for (const method of ["GET", "DELETE", "OPTIONS"]) {
    // FINDING review2-2 (critical): the gateway strips Transfer-Encoding (hop-by-hop) and
    // writes the body to node:http, which frames nothing for GET/DELETE/OPTIONS without a
    // Content-Length: the local service reads the body as a second request.
    it(`a chunked ${method} body reaches the service as one request, not two`, async () => {
      const up = await recordingUpstream();
      const gport = await gatewayFor(up.port);
      await rawExchange(gport, chunked(method));
      const res = await fetch(`http://127.0.0.1:${gport}/service/svc/victim`);
      expect(await res.text()).toBe("answer to GET /victim");
      expect(up.seen.some((r) => r.url === "/SMUGGLED")).toBe(false);
    });
  }

  // FINDING review2-2b: `Connection: content-length` makes stripHopByHop drop the client's
  // Content-Length, so the same happens with a plain Content-Length body.
  it("a client cannot strip Content-Length by naming it in Connection", async () => {
    const up = await recordingUpstream();
    const gport = await gatewayFor(up.port);
    await rawExchange(
      gport,
      `GET /service/svc/outer HTTP/1.1\r\nHost: a\r\nConnection: close, content-length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`,
    );
    await (await fetch(`http://127.0.0.1:${gport}/service/svc/victim`)).text();
    expect(up.seen.some((r) => r.url === "/SMUGGLED")).toBe(false);
  });
});
