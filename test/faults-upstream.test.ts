/**
 * A worker's service that resets its connection in the middle of a response (headers and part
 * of the body sent, then the socket dropped): the one case the routing tests did not cover
 * (hang, refuse, reset before answering, 5xx, slow and the queue are in routing-failures.test.ts
 * and coordinator-proxy.test.ts). The client must see the break (never a clean, truncated
 * body), the worker takes the blame (counted, then ejected), and GETs that come after go to
 * the healthy provider; the coordinator on Node stays up and keeps serving.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { spawnUntil, tempDir } from "./helpers/coord-runtimes.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { signedHeaders, testKey } from "./helpers/signing.ts";

const closers: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
});

/** A service that sends 200, a Content-Length of 100,000 and 10 bytes, then drops the socket. */
async function breaksMidResponse(chunked = false): Promise<{ url: string; hits: () => number }> {
  let hits = 0;
  const server = http.createServer((req, res) => {
    hits++;
    req.resume();
    req.on("end", () => {
      res.writeHead(200, chunked ? {} : { "content-length": "100000" });
      res.write("0123456789");
      setTimeout(() => res.socket?.destroy(), 20);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits: () => hits };
}

async function healthy(): Promise<Upstream> {
  const up = await startUpstream("B");
  closers.push(() => up.close());
  return up;
}

describe("a service that resets mid-response", () => {
  async function run(chunked: boolean) {
    const broken = await breaksMidResponse(chunked);
    const b = await healthy();
    const t = await routingCoordinator(
      [
        { id: "A", url: broken.url },
        { id: "B", url: b.url },
      ],
      { ejectAfterFailures: 2, breakerMinRequests: 1000, latencyDecayMs: 1 },
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
      const { broke, hits } = await run(chunked);
      expect(broke).toBe(hits);
      expect(broke).toBeGreaterThanOrEqual(1);
    },
  );

  // Known failure (docs/RELIABILITY.md, reported to the lead; the proxy is being reworked): a
  // break after the headers is not counted against the worker, so it is never ejected and
  // keeps getting its share of GETs (6 of 12 here).
  it.fails("the worker is blamed: ejected after ejectAfterFailures breaks, later GETs go elsewhere", async () => {
    const { broke, row } = await run(false);
    expect(broke).toBeLessThanOrEqual(2);
    expect(row.ejected).toBe(true);
  });

  it("over real HTTP (the Node starter): the client's read fails, and the coordinator keeps serving", async () => {
    const broken = await breaksMidResponse();
    const p = await spawnUntil(
      process.execPath,
      ["--import", "tsx", "scripts/start-node.ts", "--port", "0"],
      {
        ready: /listening on (http:\/\/[0-9.:]+)/,
        env: {
          ROLLCALL_DATA: path.join(tempDir("midreset"), "c.json"),
          // The broken service is on loopback, which the proxy refuses by default.
          ROLLCALL_UPSTREAM_ALLOW: "loopback",
        },
      },
    );
    closers.push(p.stop);
    const url = p.match[1] as string;
    const leader = testKey("mid-reset leader");
    const body = JSON.stringify({
      leader_id: leader.id,
      term: 1,
      sequence: 1,
      members: [
        {
          worker_id: "A",
          status: "online",
          url: broken.url,
          services: [{ name: "svc", url: `${broken.url}/svc` }],
        },
      ],
    });
    const hb = "/api/cluster/heartbeat";
    const reported = await fetch(`${url}${hb}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(await signedHeaders(leader, { method: "POST", path: hb, body, now: Date.now() })),
      },
      body,
    });
    expect(reported.status).toBe(200);
    const res = await fetch(`${url}/api/service/svc/x`);
    expect(res.status).toBe(200);
    await expect(res.text()).rejects.toThrow();
    expect((await fetch(`${url}/health`)).status).toBe(200);
  });
});
