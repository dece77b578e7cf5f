/**
 * The Node starter's upstream clients (scripts/node-fetch.ts on node:http, scripts/undici-fetch.ts
 * on undici) against real HTTP servers: both keep the same contract.
 */
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isConnectFailure } from "../coordinator.ts";
import { nodeRawHeaders } from "../scripts/client-address.ts";
import { createNodeFetch, type NodeFetch, type NodeFetchInit } from "../scripts/node-fetch.ts";
import { createUndiciFetch } from "../scripts/undici-fetch.ts";
import { routingCoordinator } from "./helpers/route-fixtures.ts";
import { freePort } from "../support/processes.ts";
import { until } from "./helpers/upstream.ts";

let server: http.Server;
let base = "";
let hung = 0;
let dribblesClosed = 0;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      if (req.url === "/big") {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("x".repeat(200_000));
      } else if (req.url === "/gzip") {
        res.writeHead(200, { "content-encoding": "gzip", "content-type": "text/plain" });
        res.end(gzipSync("unzipped text"));
      } else if (req.url === "/empty") {
        res.writeHead(204);
        res.end();
      } else if (req.url === "/hang" || req.url === "/svc/hang") {
        hung++;
      } else if (req.url === "/break") {
        // Headers and 10 bytes of a promised 100,000, then the connection drops.
        res.writeHead(200, { "content-length": "100000" });
        res.write("0123456789");
        setTimeout(() => res.socket?.destroy(), 20);
      } else if (req.url === "/bad-gzip") {
        res.writeHead(200, { "content-encoding": "gzip" });
        res.end("this is not gzip at all");
      } else if (req.url === "/svc/raw") {
        const text = JSON.stringify({ raw: req.rawHeaders });
        res.writeHead(200, {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(text),
        });
        res.end(text);
      } else if (req.url === "/dribble") {
        // 10 bytes of a promised 200,000, then nothing until the reader leaves.
        res.writeHead(200, { "content-length": "200000" });
        res.write("0123456789");
        res.on("close", () => dribblesClosed++);
      } else {
        res.writeHead(201, {
          "content-type": "application/json",
          connection: "keep-alive, x-hop",
          "x-hop": "hop",
          "x-upstream": "node",
        });
        res.end(
          JSON.stringify({ method: req.method, url: req.url, len: body.length, h: req.headers }),
        );
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

const CLIENTS: [string, (init: NodeFetchInit) => NodeFetch][] = [
  ["node:http", createNodeFetch],
  ["undici", createUndiciFetch],
];

describe.each(CLIENTS)("%s upstream client", (_name, create) => {
  const client = create({ bufferBytes: 1024 });
  afterAll(() => client.close());

  it("answers small bodies whole with mutable headers, streams large ones, decodes gzip", async () => {
    const res = await client.fetch(`${base}/a?b=1`, { headers: new Headers({ "x-in": "1" }) });
    expect(res.status).toBe(201);
    res.headers.set("x-added", "yes"); // mutable, unlike fetch's own responses
    expect(await res.json()).toMatchObject({ method: "GET", url: "/a?b=1", h: { "x-in": "1" } });
    expect((await (await client.fetch(`${base}/big`)).text()).length).toBe(200_000);
    const gz = await client.fetch(`${base}/gzip`);
    expect(await gz.text()).toBe("unzipped text");
    expect(gz.headers.get("content-encoding")).toBe("gzip"); // as fetch leaves it
    const empty = await client.fetch(`${base}/empty`);
    expect(empty.status).toBe(204);
    expect(empty.body).toBeNull();
    const head = await client.fetch(`${base}/a`, { method: "HEAD" });
    expect(head.body).toBeNull();
  });

  it("sends a streamed request body whole", async () => {
    const data = new Uint8Array(300_000).fill(65);
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < data.length; i += 50_000) controller.enqueue(data.slice(i, i + 50_000));
        controller.close();
      },
    });
    const res = await client.fetch(`${base}/up`, {
      method: "PUT",
      body: stream,
      duplex: "half",
    } as RequestInit);
    expect(await res.json()).toMatchObject({ method: "PUT", len: 300_000 });
  });

  it("fails like fetch: a refused connection is recognised, an abort rejects", async () => {
    const refused = await client
      .fetch(`http://127.0.0.1:${await freePort()}/`)
      .catch((e: unknown) => e);
    expect(isConnectFailure(refused)).toBe(true);
    const controller = new AbortController();
    const pending = client.fetch(`${base}/hang`, { signal: controller.signal });
    await until("the request to reach /hang", () => hung > 0, 10_000);
    controller.abort();
    await expect(pending).rejects.toMatchObject({ name: "AbortError" });
  });

  it("takes the coordinator's abort handle instead of a signal: an abort through it rejects", async () => {
    const handle: { abort: ((reason: Error) => void) | null } = { abort: null };
    const before = hung;
    const pending = client.fetch(`${base}/hang`, { abortable: handle } as RequestInit);
    await until("the request to reach /hang", () => hung > before, 10_000);
    expect(handle.abort).not.toBeNull();
    handle.abort?.(new DOMException("The operation was aborted", "AbortError"));
    await expect(pending).rejects.toMatchObject({ name: "AbortError" });
  });

  it("ends a hung attempt at the coordinator's proxy timeout (504) through its abort handle", async () => {
    expect((client.fetch as { abortHandle?: boolean }).abortHandle).toBe(true);
    const inits: RequestInit[] = [];
    const fetch = Object.assign(
      (input: string, init: RequestInit) => {
        inits.push(init);
        return client.fetch(input, init);
      },
      { abortHandle: true },
    ) as unknown as typeof globalThis.fetch;
    const t = await routingCoordinator(
      [{ id: "n1", url: base }],
      { proxyTimeoutMs: 300, maxAttempts: 1 },
      { fetch },
    );
    const before = hung;
    const res = await t.get("/api/service/svc/hang");
    expect(res.status).toBe(504);
    expect(hung).toBe(before + 1);
    // The handle, not a signal: no AbortController per attempt.
    expect(inits).toHaveLength(1);
    expect(inits[0]?.signal).toBeUndefined();
    expect((inits[0] as { abortable?: { abort: unknown } }).abortable?.abort).toBeTypeOf(
      "function",
    );
  });

  it("reports a body that breaks after its headers to onBodyBreak, never a whole one or one its reader cancels", async () => {
    let breaks = 0;
    const init = { onBodyBreak: () => breaks++ } as RequestInit;
    expect((client.fetch as { reportsBodyBreaks?: boolean }).reportsBodyBreaks).toBe(true);
    const broken = await client.fetch(`${base}/break`, init);
    expect(broken.status).toBe(200);
    await expect(broken.text()).rejects.toThrow();
    expect(breaks).toBe(1);
    const corrupt = await client.fetch(`${base}/bad-gzip`, init);
    await expect(corrupt.text()).rejects.toThrow();
    expect(breaks).toBe(2);
    expect((await (await client.fetch(`${base}/big`, init)).text()).length).toBe(200_000);
    const dribble = await client.fetch(`${base}/dribble`, init);
    const reader = (dribble.body as ReadableStream<Uint8Array>).getReader();
    expect((await reader.read()).done).toBe(false);
    // As @hono/node-server cancels when its client's socket fails.
    const gone = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
    const closed = dribblesClosed;
    await reader.cancel(gone);
    await until("the upstream to see the reader leave", () => dribblesClosed > closed, 10_000);
    expect(breaks).toBe(2);
  });

  it("serves the coordinator: its answer goes out as is, hop-by-hop headers stripped", async () => {
    const t = await routingCoordinator([{ id: "n1", url: base }], {}, { fetch: client.fetch });
    const res = await t.get("/api/service/svc/x");
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({ url: "/svc/x" });
    expect(res.headers.get("x-rollcall-worker")).toBe("n1");
    expect(res.headers.get("x-upstream")).toBe("node");
    expect(res.headers.get("x-hop")).toBeNull();
    expect(res.headers.get("access-control-allow-origin")).toBe("*");
  });
});

/** One raw HTTP/1.1 request to a local port (`head`: the lines after the request line); its answer as text. */
function rawRequest(port: number, path: string, head: string[], body?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let text = "";
    socket.on("data", (c: Buffer) => {
      text += c.toString();
    });
    socket.once("end", () => resolve(text));
    socket.once("error", reject);
    const lines = [
      `${body === undefined ? "GET" : "POST"} ${path} HTTP/1.1`,
      `Host: 127.0.0.1:${port}`,
      ...head,
      ...(body === undefined ? [] : [`Content-Length: ${Buffer.byteLength(body)}`]),
      "Connection: close",
    ];
    socket.write(`${lines.join("\r\n")}\r\n\r\n${body ?? ""}`);
  });
}

describe("the Node starter's raw request headers (rawHeaders: nodeRawHeaders)", () => {
  const client = createUndiciFetch({});
  afterAll(() => client.close());

  /**
   * What the upstream received through a coordinator served by @hono/node-server (`lenient`:
   * Node's lenient parser, `insecureHTTPParser`); `failures`: the worker's failures after it.
   */
  async function sent(
    raw: boolean,
    path: string,
    head: string[],
    body?: string,
    options: { lenient?: boolean; fetch?: typeof fetch } = {},
  ) {
    const t = await routingCoordinator(
      [{ id: "n1", url: base }],
      {},
      { fetch: options.fetch ?? client.fetch, ...(raw ? { rawHeaders: nodeRawHeaders } : {}) },
    );
    const port = await freePort();
    let server: ReturnType<typeof serve> | null = null;
    await new Promise<void>((listening) => {
      server = serve(
        {
          fetch: t.coordinator.fetch,
          port,
          hostname: "127.0.0.1",
          ...(options.lenient ? { serverOptions: { insecureHTTPParser: true } } : {}),
        },
        () => listening(),
      );
    });
    try {
      const answer = await rawRequest(port, path, head, body);
      const [status = "", text = ""] = [answer.split("\r\n")[0], answer.split("\r\n\r\n")[1]];
      if (!status.includes(" 200 ")) {
        const failures = (await t.breaker("n1")).consecutive_failures;
        return { status, headers: null, failures };
      }
      const list = (JSON.parse(text) as { raw: string[] }).raw;
      const headers: [string, string][] = [];
      for (let i = 0; i < list.length; i += 2) {
        const name = (list[i] as string).toLowerCase();
        // The hop header carries each coordinator's own id.
        // (The host names this server's port.)
        const value = (list[i + 1] as string).replace(`:${port}`, ":PORT");
        if (name !== "x-rollcall-hop") headers.push([name, value]);
      }
      return { status, headers: headers.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) };
    } finally {
      (server as ReturnType<typeof serve> | null)?.close();
    }
  }

  it("sends upstream what the request's Headers would: repeats joined, case folded, hop-by-hop and Connection-named dropped", async () => {
    const head = [
      "X-Dup: a",
      "x-DUP: b",
      "Accept: */*",
      "Cookie: a=1",
      "Connection: keep-alive, X-Secret",
      "X-Secret: s",
      "Keep-Alive: timeout=5",
      "TE: trailers",
      "X-Forwarded-For: 10.0.0.1",
      "x-forwarded-for: 10.0.0.2",
      "X-Real-IP: 10.9.9.9",
      "Accept-Encoding: gzip",
    ];
    const viaRaw = await sent(true, "/api/service/svc/raw", head);
    const viaHeaders = await sent(false, "/api/service/svc/raw", head);
    expect(viaRaw).toEqual(viaHeaders);
    const got = Object.fromEntries(viaRaw.headers ?? []);
    expect(got["x-dup"]).toBe("a, b");
    expect(got["x-forwarded-for"]).toBe("10.0.0.1, 10.0.0.2, 127.0.0.1");
    expect(got.cookie).toBe("a=1");
    for (const gone of ["x-secret", "keep-alive", "te", "x-real-ip", "accept-encoding"]) {
      expect(got[gone]).toBeUndefined();
    }
  });

  it("sends a POST's Content-Length with its body, as the Headers path does", async () => {
    const viaRaw = await sent(true, "/api/service/svc/raw", ["Content-Type: text/plain"], "hello");
    const viaHeaders = await sent(
      false,
      "/api/service/svc/raw",
      ["Content-Type: text/plain"],
      "hello",
    );
    expect(viaRaw).toEqual(viaHeaders);
    expect(Object.fromEntries(viaRaw.headers ?? [])["content-length"]).toBe("5");
  });

  it("refuses a request that carries the hop header in any case (508), as the Headers path does", async () => {
    const viaRaw = await sent(true, "/api/service/svc/raw", ["X-ROLLCALL-HOP: other"]);
    const viaHeaders = await sent(false, "/api/service/svc/raw", ["X-ROLLCALL-HOP: other"]);
    expect(viaRaw.status).toContain(" 508 ");
    expect(viaHeaders.status).toContain(" 508 ");
  });

  it("joins repeated Cookie lines with '; ' as Headers does, not ', ' (which folds the later cookies into the first one's value)", async () => {
    const head = ["Cookie: a=1", "cookie: b=2", "COOKIE: c=3"];
    const viaRaw = await sent(true, "/api/service/svc/raw", head);
    const viaHeaders = await sent(false, "/api/service/svc/raw", head);
    expect(Object.fromEntries(viaRaw.headers ?? []).cookie).toBe("a=1; b=2; c=3");
    expect(viaRaw).toEqual(viaHeaders);
  });

  it("sends the first Host as X-Forwarded-Host (the one the URL and the Host check took), never a second one", async () => {
    const viaRaw = await sent(true, "/api/service/svc/raw", ["Host: evil.example"]);
    expect(Object.fromEntries(viaRaw.headers ?? [])["x-forwarded-host"]).toBe("127.0.0.1:PORT");
  });

  it.each(CLIENTS)(
    "answers 400 for a header value the %s client refuses (a NUL let in by a lenient parser), and does not blame the worker",
    async (_name, create) => {
      const other = create({});
      try {
        for (const value of ["a\u0000b", "a\u0001b"]) {
          const got = await sent(true, "/api/service/svc/raw", [`X-Bad: ${value}`], undefined, {
            lenient: true,
            fetch: other.fetch,
          });
          expect(got.status).toContain(" 400 ");
          expect(got.failures).toBe(0);
        }
      } finally {
        other.close();
      }
    },
  );
});
