/**
 * A server that answers before it read the whole request body (413 for an oversized body, 401
 * before authentication, a service that refuses an upload) must drain the rest or close the
 * connection: otherwise the client's next request on the same keep-alive connection fails (a
 * user saw Node's fetch fail with UND_ERR_SOCKET after a 413). Checked on raw sockets, so the
 * second request really travels on the first one's connection: the coordinator served by Node,
 * Bun and Deno, and the agent's gateway in front of services that answer early.
 */
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { DetectedService } from "../agent/detect.ts";
import { Gateway } from "../agent/gateway.ts";
import { BIN, type Spawned, spawnUntil, tempDir } from "./helpers/coord-runtimes.ts";

const READY = /listening on (http:\/\/[0-9.:]+)/;
const BIG = 300 * 1024; // over the coordinator's 256 KiB default
const stops: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const stop of stops.reverse()) await stop();
});

/** One HTTP/1.1 answer read off a socket: status and body (Content-Length framed or chunked). */
interface Answer {
  status: number;
  headers: string;
}

/**
 * Sends `first` (head and a body of `bodyBytes`), waits for its answer, then sends a GET
 * /`second` on the same socket and waits for that answer: resolves with both, or with the
 * first and an error saying the connection closed or hung.
 */
function twoOnOneConnection(
  port: number,
  first: { path: string; headers?: Record<string, string>; bodyBytes: number },
  second: string,
): Promise<{ answers: Answer[]; error?: string }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    const answers: Answer[] = [];
    const finish = (error?: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(error ? { answers, error } : { answers });
    };
    const timer = setTimeout(() => finish("no answer within 5 s"), 5000);
    const parse = () => {
      for (;;) {
        const end = buf.indexOf("\r\n\r\n");
        if (end === -1) return;
        const head = buf.subarray(0, end).toString("latin1");
        const status = Number(head.split(" ")[1]);
        const len = /content-length:\s*(\d+)/i.exec(head);
        let total: number;
        if (len) total = end + 4 + Number(len[1]);
        else if (/transfer-encoding:\s*chunked/i.test(head)) {
          const last = buf.indexOf("\r\n0\r\n\r\n", end);
          if (last === -1) return;
          total = last + 7;
        } else total = end + 4;
        if (buf.length < total) return;
        buf = buf.subarray(total);
        answers.push({ status, headers: head });
        if (answers.length === 1) {
          if (/connection:\s*close/i.test(head)) return finish(); // closing is allowed, said so
          socket.write(`GET ${second} HTTP/1.1\r\nHost: test\r\n\r\n`);
        } else return finish();
      }
    };
    socket.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      parse();
    });
    socket.on("error", (err) => finish(`socket error: ${err.message}`));
    socket.on("close", () => finish("connection closed after the first answer"));
    const headers = Object.entries({
      "content-type": "application/json",
      ...first.headers,
      "content-length": String(first.bodyBytes),
    })
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join("");
    socket.write(`POST ${first.path} HTTP/1.1\r\nHost: test\r\n${headers}\r\n`);
    socket.write(Buffer.alloc(first.bodyBytes, 0x78));
  });
}

/** The second answer arrived on the same connection, or the first said `Connection: close`. */
function expectUsable(result: { answers: Answer[]; error?: string }, firstStatus: number) {
  expect(result.answers[0]?.status).toBe(firstStatus);
  if (/connection:\s*close/i.test(result.answers[0]?.headers ?? "")) return;
  expect(result.error).toBeUndefined();
  expect(result.answers[1]?.status).toBe(200);
}

const SECURED = { ROLLCALL_CLUSTER_TOKEN: "ka-cluster", ROLLCALL_ADMIN_TOKEN: "ka-admin" };
const starters: [string, () => Promise<Spawned>][] = [
  [
    "node",
    () =>
      spawnUntil(process.execPath, ["--import", "tsx", "scripts/start-node.ts", "--port", "0"], {
        ready: READY,
        env: { ...SECURED, ROLLCALL_DATA: path.join(tempDir("ka-node"), "c.json") },
      }),
  ],
  [
    "bun",
    () =>
      spawnUntil(BIN("bun"), ["scripts/start-bun.ts", "--port", "0"], {
        ready: READY,
        env: { ...SECURED, ROLLCALL_DATA: path.join(tempDir("ka-bun"), "c.json") },
      }),
  ],
  [
    "deno",
    () =>
      spawnUntil(
        path.join(path.dirname(BIN("x")), "../deno/deno"),
        [
          "run",
          "-A",
          "--unstable-kv",
          "scripts/start-deno.ts",
          "--port",
          "0",
          "--kv",
          path.join(tempDir("ka-deno"), "c.kv"),
        ],
        { ready: READY, env: SECURED },
      ),
  ],
];

describe.each(starters)(
  "the coordinator on %s keeps a keep-alive connection usable",
  (_n, start) => {
    let port = 0;
    it("after a 413 for an oversized body", async () => {
      const p = await start();
      stops.push(p.stop);
      port = Number(new URL(p.match[1] as string).port);
      const result = await twoOnOneConnection(
        port,
        {
          path: "/api/cluster/heartbeat",
          headers: { authorization: "Bearer ka-cluster" },
          bodyBytes: BIG,
        },
        "/health",
      );
      expectUsable(result, 413);
    });

    it("after a 401 that did not read a large body", async () => {
      const result = await twoOnOneConnection(
        port,
        { path: "/api/cluster/heartbeat", bodyBytes: 200 * 1024 },
        "/health",
      );
      expectUsable(result, 401);
    });

    it("after a 503 for an unknown service that did not read the upload", async () => {
      const result = await twoOnOneConnection(
        port,
        { path: "/api/service/nothing-here/upload", bodyBytes: 2 * 1024 * 1024 },
        "/health",
      );
      expectUsable(result, 503);
    });
  },
);

describe("the agent's gateway keeps a keep-alive connection usable", () => {
  /** A local service that answers every POST at once with 413, without reading the body. */
  async function refusingService(closeAfter: boolean) {
    const server = http.createServer((req, res) => {
      if (req.method === "POST") {
        res.writeHead(413, closeAfter ? { connection: "close" } : {});
        res.end("too big");
      } else res.end("ok");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const port = (server.address() as AddressInfo).port;
    const svc: DetectedService = {
      name: "upload",
      url: `http://127.0.0.1:${port}`,
      host: "127.0.0.1",
      port,
      basePath: "",
      status: "healthy",
      latency_ms: 1,
    };
    const gw = new Gateway(
      { host: "127.0.0.1", port: 0 },
      {
        service: (n) => (n === "upload" ? svc : undefined),
        services: () => [svc],
        health: () => ({}),
        clusterView: () => ({}),
      },
    );
    const gwPort = await gw.start();
    stops.push(async () => {
      await gw.stop();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    });
    return gwPort;
  }

  it.each([
    ["keeps its own connection open", false, 413],
    ["closes its connection", true, 502],
  ])("when the service answers early and %s", async (_what, closeAfter, status) => {
    const gwPort = await refusingService(closeAfter);
    for (let i = 0; i < 5; i++) {
      const result = await twoOnOneConnection(
        gwPort,
        { path: "/service/upload/put", bodyBytes: 3 * 1024 * 1024 },
        "/service/upload/get",
      );
      // A service that closes while the body still flows may lose its answer: 502 then.
      expect([413, status]).toContain(result.answers[0]?.status);
      expectUsable(result, result.answers[0]?.status as number);
    }
  });

  it("after its own 404 for an unknown service, without reading the body", async () => {
    const gwPort = await refusingService(false);
    const result = await twoOnOneConnection(
      gwPort,
      { path: "/service/nothing/put", bodyBytes: 3 * 1024 * 1024 },
      "/_agent/health",
    );
    expectUsable(result, 404);
  });
});
