/**
 * Review of fb7bc34 (a break of an answer's body after its headers is blamed on the worker):
 * a client that stops reading a large answer is not a worker fault. Real parts: a service that
 * sends 16 MiB at once, the agent's gateway in front of it (its upstream timeout short, 1 s,
 * instead of 30 s), the coordinator in process with the Node starter's client and with the
 * runtime's fetch. The client reads the headers, then nothing for longer than the gateway's
 * upstream timeout, then the rest. The gateway must not cut the answer because the client is
 * slow (the service sent everything it had), and the worker must not be blamed.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import type { DetectedService } from "../agent/detect.ts";
import { Gateway } from "../agent/gateway.ts";
import { createNodeFetch } from "../scripts/node-fetch.ts";
import { pollUntil } from "../support/processes.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";

const closers: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
});

const SIZE = 16 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 0x61);

/** A service that answers 16 MiB as fast as it is taken; counts the sockets closed early. */
async function bigService() {
  let cut = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { "content-length": String(SIZE) });
    let sent = 0;
    const more = () => {
      while (sent < SIZE) {
        sent += CHUNK.length;
        if (!res.write(CHUNK)) return void res.once("drain", more);
      }
      res.end();
    };
    res.on("close", () => {
      if (!res.writableFinished) cut++;
    });
    more();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as AddressInfo).port, cut: () => cut };
}

async function gatewayFor(port: number): Promise<string> {
  const svc: DetectedService = {
    name: "svc",
    url: `http://127.0.0.1:${port}`,
    host: "127.0.0.1",
    port,
    basePath: "",
    status: "healthy",
    latency_ms: 1,
  };
  const g = new Gateway(
    { host: "127.0.0.1", port: 0, upstreamTimeoutMs: 1000 },
    {
      service: (n) => (n === "svc" ? svc : undefined),
      services: () => [svc],
      health: () => ({}),
      clusterView: () => ({}),
    },
  );
  const gwPort = await g.start();
  closers.push(() => g.stop());
  return `http://127.0.0.1:${gwPort}/service`;
}

const CLIENTS: [string, (() => typeof fetch) | null][] = [
  [
    "the Node starter's client",
    () => {
      const c = createNodeFetch();
      closers.push(() => c.close());
      return c.fetch;
    },
  ],
  ["the runtime's fetch", null],
];

describe("review3: a client that pauses reading a large answer", () => {
  it.each(CLIENTS)("is no worker fault, and gets the whole answer (%s)", async (...client) => {
    const service = await bigService();
    const url = await gatewayFor(service.port);
    const fetch = client[1]?.();
    const t = await routingCoordinator([{ id: "A", url }], {}, fetch ? { fetch } : {});
    const res = await t.coordinator.fetch(
      new Request("http://coordinator.test/api/service/svc/big"),
    );
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let got = (await reader.read()).value?.byteLength ?? 0;
    // Nothing read for three of the gateway's upstream timeouts (buffers full meanwhile).
    await new Promise((r) => setTimeout(r, 2500));
    let failed = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        got += value.byteLength;
      }
    } catch {
      failed = true;
    }
    await new Promise((r) => setImmediate(r));
    expect({ cut: service.cut(), failed, got }).toEqual({ cut: 0, failed: false, got: SIZE });
    const row = await pollUntil("the breaker row", async () => t.breaker("A"));
    expect(row.consecutive_failures).toBe(0);
    const metrics = (await t.admin("/api/admin/metrics")).services.svc;
    expect(metrics.workers.A.errors_total).toBe(0);
  });
});

describe("review3: the gateway still times a service that stalls mid-answer", () => {
  it("cuts an answer whose service falls silent while the client reads", async () => {
    const server = http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { "content-length": "100" });
      res.write("0123456789"); // and nothing more
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    closers.push(async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    });
    const url = await gatewayFor((server.address() as AddressInfo).port);
    const res = await globalThis.fetch(`${url}/svc/stall`);
    expect(res.status).toBe(200);
    await expect(res.text()).rejects.toThrow();
  });
});
