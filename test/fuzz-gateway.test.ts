/**
 * Hostile input at the agent's gateway (fast-check), over real HTTP: generated methods, raw
 * paths (encoded slashes, dot segments, unicode, NUL), headers and bodies. Every answer is
 * below 500 (the service behind it is healthy), every refusal is a JSON error, the service
 * never receives a path the gateway should have refused, the token-protected view stays
 * protected, and the gateway keeps serving with bounded memory.
 * Runs: ROLLCALL_FUZZ_RUNS (10,000 in `npm run fuzz`), a short count in `npm test`.
 */
import http from "node:http";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DetectedService } from "../agent/detect.ts";
import { Gateway } from "../agent/gateway.ts";
import { fuzzRuns } from "./helpers/fuzz.ts";
import { bodies, extraHeader, methods, pathUnder } from "./helpers/hostile.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

let up: Upstream;
let gw: Gateway;
let port = 0;
// A connection per request: a request Node's own parser refuses (an unknown method) closes its
// connection, and a pooled one would race that close (keep-alive reuse: keepalive-early-answer).
const agent = new http.Agent({ keepAlive: false });

beforeAll(async () => {
  up = await startUpstream("upload");
  const svc: DetectedService = {
    name: "upload",
    url: `http://127.0.0.1:${up.port}/base`,
    host: "127.0.0.1",
    port: up.port,
    basePath: "/base",
    status: "healthy",
    latency_ms: 1,
  };
  gw = new Gateway(
    { host: "127.0.0.1", port: 0, agentToken: "gw-secret" },
    {
      service: (n) => (n === "upload" ? svc : undefined),
      services: () => [svc],
      health: () => ({ status: "healthy" }),
      clusterView: () => ({ secret: "view" }),
    },
  );
  port = await gw.start();
});

afterAll(async () => {
  agent.destroy();
  await gw.stop();
  await up.close();
});

function send(g: {
  method: string;
  path: string;
  headers: [string, string][];
  body: string | undefined;
}): Promise<{ status: number; text: string } | null> {
  return new Promise((resolve, reject) => {
    let req: http.ClientRequest;
    try {
      req = http.request({
        host: "127.0.0.1",
        port,
        method: g.method,
        path: g.path,
        headers: Object.fromEntries(g.headers),
        agent,
      });
    } catch {
      return resolve(null); // a path or header no client can send
    }
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        text += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on("error", reject);
    req.end(g.body);
  });
}

const paths = fc.oneof(
  { arbitrary: pathUnder("/service/upload/"), weight: 4 },
  pathUnder("/service/"),
  pathUnder("/_agent/"),
  fc.constantFrom("/_agent/health", "/_agent/cluster", "/service/upload", "/service/upload/"),
  pathUnder("/"),
);

const requests = fc.record({
  method: methods,
  path: paths,
  headers: fc.array(extraHeader, { maxLength: 3 }),
  auth: fc.constantFrom(undefined, "Bearer gw-secret", "Bearer nope", "Bearer "),
  body: bodies([{ a: 1 }]),
});

/** A path the gateway must never hand to a service: dot segments, encoded slashes, backslashes. */
const UNSAFE = /(^|\/)\.\.?(\/|$)|%2f|%5c|\\|%00|%2e/i;

describe("the agent's gateway under hostile input", () => {
  it("answers below 500, refuses as JSON, never forwards an unsafe path, keeps the view protected", async () => {
    let sent = 0;
    const statuses = new Map<number, number>();
    const heapBefore = process.memoryUsage().heapUsed;
    await fc.assert(
      fc.asyncProperty(requests, async (g) => {
        const headers = g.headers.filter(
          ([k]) =>
            ![
              "host",
              "content-length",
              "transfer-encoding",
              "connection",
              "expect",
              "upgrade",
            ].includes(k),
        );
        if (g.auth) headers.push(["authorization", g.auth]);
        const before = up.received.length;
        const res = await send({
          ...g,
          headers,
          body: g.method === "GET" || g.method === "HEAD" ? undefined : g.body,
        });
        fc.pre(res !== null);
        const { status, text } = res as { status: number; text: string };
        sent++;
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        const context = `${g.method} ${g.path.slice(0, 120)} -> ${status} ${text.slice(0, 160)}`;
        expect(status, context).toBeLessThan(500);
        const forwarded = up.received.slice(before);
        for (const r of forwarded) {
          expect(r.url.slice("/base".length).split("?")[0], context).not.toMatch(UNSAFE);
        }
        // Node's own parser refuses unknown methods with a bare 400 before the gateway runs.
        if (status >= 400 && forwarded.length === 0 && g.method !== "HEAD" && text !== "") {
          expect(JSON.parse(text).error, context).toEqual(expect.any(String));
        }
        if (g.path.split("?")[0] === "/_agent/cluster" && g.auth !== "Bearer gw-secret") {
          expect(text, context).not.toContain("view");
        }
        up.received.splice(0); // the upstream helper keeps what it read: not the gateway's memory
      }),
      { numRuns: fuzzRuns(300), endOnFailure: true },
    );
    const grown = process.memoryUsage().heapUsed - heapBefore;
    console.log(
      `gateway fuzz: ${sent} requests, statuses ${JSON.stringify(Object.fromEntries([...statuses].sort()))}, heap +${Math.round(grown / 1e6)} MB`,
    );
    expect(grown).toBeLessThan(100 * 1024 * 1024);
    const health = await send({
      method: "GET",
      path: "/_agent/health",
      headers: [],
      body: undefined,
    });
    expect(health?.status).toBe(200);
  }, 600_000);
});
