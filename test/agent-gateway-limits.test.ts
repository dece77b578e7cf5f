/**
 * What slow or greedy clients can do to the gateway, with real sockets on loopback: slowloris
 * headers, slow bodies, a service whose slots are all taken, one address opening connection
 * after connection. In each case an honest client keeps being served (or told 503/429 at
 * once, never left hanging). Attackers connect from 127.0.0.2, honest clients from 127.0.0.1.
 */
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DetectedService } from "../agent/detect.ts";
import { Gateway, type GatewayInit } from "../agent/gateway.ts";
import { type Upstream, startUpstream, until } from "./helpers/upstream.ts";

const ATTACKER = "127.0.0.2";
let up: Upstream;
const sockets = new Set<net.Socket>();

beforeAll(async () => {
  up = await startUpstream("upload");
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await up.close();
});

/** A gateway in front of the one upstream, with the limits given; stopped after `fn`. */
async function withGateway(
  limits: Partial<GatewayInit>,
  fn: (port: number) => Promise<void>,
): Promise<void> {
  const svc: DetectedService = {
    name: "upload",
    url: up.url,
    host: "127.0.0.1",
    port: up.port,
    basePath: "",
    status: "healthy",
    latency_ms: 1,
  };
  const gw = new Gateway(
    { host: "127.0.0.1", port: 0, ...limits },
    {
      service: (n) => (n === "upload" ? svc : undefined),
      services: () => [svc],
      health: () => ({ status: "healthy" }),
      clusterView: () => ({}),
    },
  );
  const port = await gw.start();
  try {
    await fn(port);
  } finally {
    for (const s of sockets) s.destroy();
    sockets.clear();
    await gw.stop();
  }
}

/** A raw TCP client from `from`, already connected. */
async function connect(port: number, from = ATTACKER): Promise<net.Socket> {
  const s = net.connect({ host: "127.0.0.1", port, localAddress: from });
  sockets.add(s);
  s.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("error", reject);
  });
  return s;
}

/** What a raw socket received until it closed, and that it closed. */
function drained(s: net.Socket): Promise<string> {
  let text = "";
  s.on("data", (c: Buffer) => {
    text += c.toString("latin1");
  });
  return new Promise((resolve) => s.once("close", () => resolve(text)));
}

/** An honest request on a fresh connection from 127.0.0.1: status and body. */
function honest(
  port: number,
  path = "/service/upload/ok",
): Promise<{ status: number; body: string; retryAfter: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, path, localAddress: "127.0.0.1", agent: false },
      (res) => {
        let body = "";
        res.on("data", (c: Buffer) => {
          body += c.toString("utf8");
        });
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, body, retryAfter: res.headers["retry-after"] }),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
}

describe("gateway limits against real slow clients", () => {
  it("cuts off slowloris clients that never finish their headers, and serves honest ones meanwhile", async () => {
    await withGateway({ headersTimeoutMs: 500 }, async (port) => {
      const slow = await Promise.all(Array.from({ length: 40 }, () => connect(port)));
      const closed = slow.map((s) => drained(s));
      for (const s of slow) s.write("GET /service/upload/x HTTP/1.1\r\nHost: a\r\nX-Slow: ");
      expect((await honest(port)).status).toBe(200);
      // Each is closed by the gateway (408), never by us; without the limit Node waits 60 s.
      const answers = await Promise.all(closed);
      for (const a of answers) expect(a).toMatch(/^HTTP\/1\.1 408 /);
    });
  }, 20_000);

  it("slow bodies from one address hold connections, not the service: honest clients still get through", async () => {
    // More slow bodies than the upstream pool has sockets (256 by default), all from one
    // address with no per-client cap (as behind a tunnel, where every client is 127.0.0.1).
    const n = 300;
    await withGateway({ maxConnectionsPerClient: 0, bodyIdleTimeoutMs: 60_000 }, async (port) => {
      const slow = [];
      for (let i = 0; i < n; i++) slow.push(await connect(port));
      const before = up.received.length;
      for (const s of slow) {
        s.write(
          "POST /service/upload/in HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nfirst bytes",
        );
      }
      const answer = await honest(port);
      expect(answer.status).toBe(200);
      expect(JSON.parse(answer.body)).toMatchObject({ upstream: "upload", url: "/ok" });
      // None of the slow ones reached the service: their bodies never arrived.
      expect(up.received.length - before).toBe(1);
    });
  }, 30_000);

  it("a stalled body is answered 408 once it pauses for longer than the body timeout", async () => {
    await withGateway({ bodyIdleTimeoutMs: 300 }, async (port) => {
      const s = await connect(port);
      const answer = drained(s);
      s.write("POST /service/upload/in HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
      expect(await answer).toMatch(/^HTTP\/1\.1 408 [\s\S]*paused/);
    });
  });

  it("a service with every slot taken answers 503 with Retry-After after the queue timeout, not never", async () => {
    await up.setMode("hang");
    try {
      await withGateway(
        { maxInflightPerService: 2, maxQueuePerService: 1, queueTimeoutMs: 300 },
        async (port) => {
          const held = [honest(port, "/service/upload/1"), honest(port, "/service/upload/2")];
          await until("the upstream to hold two requests", () => up.hanging === 2);
          const queued = honest(port, "/service/upload/3"); // waits in the queue
          const full = await honest(port, "/service/upload/4"); // the queue is full
          expect(full.status).toBe(503);
          expect(full.retryAfter).toBe("1");
          expect(JSON.parse(full.body)).toMatchObject({ error: "Service busy", service: "upload" });
          const timedOut = await queued;
          expect(timedOut.status).toBe(503);
          expect(timedOut.body).toMatch(/within 300 ms/);
          up.release();
          for (const h of await Promise.all(held)) expect(h.status).toBe(200);
        },
      );
    } finally {
      await up.setMode("ok");
    }
    // Once the slots are free, a request waiting in the queue gets one.
    await withGateway({ maxInflightPerService: 1, queueTimeoutMs: 10_000 }, async (port) => {
      const answers = await Promise.all([1, 2, 3].map((i) => honest(port, `/service/upload/${i}`)));
      expect(answers.map((a) => a.status)).toEqual([200, 200, 200]);
    });
  });

  it("caps the connections one client address may hold (429), and serves other addresses", async () => {
    await withGateway({ maxConnectionsPerClient: 3 }, async (port) => {
      await Promise.all([1, 2, 3].map(() => connect(port)));
      const fourth = await connect(port);
      const refused = await drained(fourth);
      expect(refused).toMatch(/^HTTP\/1\.1 429 /);
      expect(refused).toMatch(/"error":"Too many connections"/);
      expect((await honest(port)).status).toBe(200);
    });
  });
});
