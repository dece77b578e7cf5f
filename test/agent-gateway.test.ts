import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DetectedService } from "../agent/detect.ts";
import { Gateway, parseServicePath } from "../agent/gateway.ts";
import type { AddressInfo } from "node:net";
import { freePort, pollUntil } from "../support/processes.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

let up: Upstream;
let gw: Gateway;
let base: string;

/** A healthy service on 127.0.0.1, as the detector reports it. */
const local = (name: string, port: number, basePath = ""): DetectedService => ({
  name,
  url: `http://127.0.0.1:${port}${basePath}`,
  host: "127.0.0.1",
  port,
  basePath,
  status: "healthy",
  latency_ms: 1,
});

/** Runs `fn` against a gateway (no token) in front of `svc` alone, then stops it. */
async function withGateway(svc: DetectedService, fn: (base: string) => Promise<void>) {
  const g = new Gateway(
    { host: "127.0.0.1", port: 0 },
    {
      service: (n) => (n === svc.name ? svc : undefined),
      services: () => [svc],
      health: () => ({}),
      clusterView: () => ({}),
    },
  );
  const port = await g.start();
  try {
    await fn(`http://127.0.0.1:${port}`);
  } finally {
    await g.stop();
  }
}

beforeAll(async () => {
  up = await startUpstream("upload");
  const svc = local("upload", up.port);
  gw = new Gateway(
    { host: "127.0.0.1", port: 0, agentToken: "s3cret" },
    {
      service: (n) => (n === "upload" ? svc : undefined),
      services: () => [svc],
      health: () => ({ status: "healthy" }),
      clusterView: () => ({ leader: "me" }),
    },
  );
  base = `http://127.0.0.1:${await gw.start()}`;
});

afterAll(async () => {
  await gw.stop();
  await up.close();
});

/** One request with node:http, which sends headers and paths exactly as given. */
function raw(
  path: string,
  init: { method?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port: new URL(base).port,
        path,
        method: init.method ?? "GET",
        headers: init.headers,
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => {
          text += c.toString("utf8");
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on("error", reject);
    req.end(init.body);
  });
}

describe("parseServicePath", () => {
  it.each([
    ["/service/upload/a/b?x=1", { name: "upload", rest: "/a/b", query: "?x=1" }],
    ["/service/upload", { name: "upload", rest: "/", query: "" }],
    ["/service/Up.load_2/x", { name: "Up.load_2", rest: "/x", query: "" }],
    ["/service/upload/../rag/x", { error: "Path contains a dot segment" }],
    ["/service/upload/%2e%2e/x", { error: "Path contains a dot segment" }],
    ["/service/upload/%252e%252e/admin", { error: "Path contains a dot segment" }],
    ["/service/upload/a%2Fb", { error: "Path contains an encoded slash, backslash or NUL" }],
    ["/service/upload/a%5Cb", { error: "Path contains an encoded slash, backslash or NUL" }],
    ["/service/upload/a%00b", { error: "Path contains an encoded slash, backslash or NUL" }],
    ["/service/upload/a%2500b", { error: "Path contains an encoded slash, backslash or NUL" }],
    ["/service/upload/%zz", { error: "Path contains an invalid percent-encoding" }],
    ["/service/..%2frag/x", { error: expect.stringMatching(/^Service name must be/) }],
    ["/service/UP load/x", { error: expect.stringMatching(/^Service name must be/) }],
    ["/service//x", { error: expect.stringMatching(/^Service name must be/) }],
  ])("%s", (path, expected) => {
    expect(parseServicePath(path)).toEqual(expected);
  });
});

describe("Gateway", () => {
  it("proxies method, path, query, body and headers, stripping hop-by-hop ones", async () => {
    // fetch refuses to send hop-by-hop headers, so speak raw HTTP/1.1 with node:http.
    const { status, text } = await raw("/service/upload/files/1?x=y", {
      method: "POST",
      body: "hello",
      headers: {
        "x-custom": "kept",
        "keep-alive": "timeout=5",
        connection: "x-drop",
        "x-drop": "1",
      },
    });
    expect(status).toBe(200);
    const echo = JSON.parse(text) as {
      method: string;
      url: string;
      body: string;
      headers: Record<string, string>;
    };
    expect(echo.method).toBe("POST");
    expect(echo.url).toBe("/files/1?x=y");
    expect(echo.body).toBe("hello");
    expect(echo.headers["x-custom"]).toBe("kept");
    expect(echo.headers["x-drop"]).toBeUndefined();
    expect(echo.headers["keep-alive"]).toBeUndefined();
    expect(echo.headers["x-forwarded-for"]).toContain("127.0.0.1");
  });

  it("sets X-Forwarded-Host and -Proto from what it saw, never the client's", async () => {
    const { text } = await raw("/service/upload/x", {
      headers: { "x-forwarded-host": "evil.example", "x-forwarded-proto": "https" },
    });
    const echo = JSON.parse(text) as { headers: Record<string, string> };
    expect(echo.headers["x-forwarded-host"]).toBe(new URL(base).host);
    expect(echo.headers["x-forwarded-proto"]).toBe("http");
  });

  it("proxies below a service's base path, with the Host the service expects", async () => {
    await withGateway(local("upload", up.port, "/api/v2"), async (gateway) => {
      const res = await fetch(`${gateway}/service/upload/files?x=1`);
      const echo = (await res.json()) as { url: string; headers: Record<string, string> };
      expect(echo.url).toBe("/api/v2/files?x=1");
      expect(echo.headers.host).toBe(`127.0.0.1:${up.port}`);
    });
  });

  it("streams a large body through without loss", async () => {
    const big = "x".repeat(5 * 1024 * 1024);
    const res = await fetch(`${base}/service/upload/big`, { method: "PUT", body: big });
    const echo = (await res.json()) as { body: string };
    expect(echo.body.length).toBe(big.length);
  });

  it("answers 404 with the local services for an unknown one, 400 for an escape", async () => {
    const res = await fetch(`${base}/service/rag/x`);
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ available_services: ["upload"] });
    // fetch normalises "..", so send the raw path with node:http.
    expect((await raw("/service/upload/%2e%2e/admin")).status).toBe(400);
    const doubly = await raw("/service/upload/%252e%252e/admin");
    expect(doubly.status).toBe(400);
    expect(JSON.parse(doubly.text)).toEqual({
      error: "Bad service path",
      message: "Path contains a dot segment",
    });
  });

  it("protects /_agent/cluster with the agent token", async () => {
    expect((await fetch(`${base}/_agent/cluster`)).status).toBe(401);
    const wrong = await fetch(`${base}/_agent/cluster`, {
      headers: { authorization: "Bearer nope" },
    });
    expect(wrong.status).toBe(401);
    const ok = await fetch(`${base}/_agent/cluster`, {
      headers: { authorization: "Bearer s3cret" },
    });
    expect(await ok.json()).toEqual({ leader: "me" });
    expect((await fetch(`${base}/_agent/health`)).status).toBe(200);
  });

  it("answers 502 when the upstream is gone", async () => {
    await withGateway(local("x", await freePort()), async (gateway) => {
      const res = await fetch(`${gateway}/service/x/y`);
      expect(res.status).toBe(502);
      expect(await res.json()).toMatchObject({ error: "Upstream failed", service: "x" });
    });
  });

  it.each([
    ["mid-response", "/stream"],
    ["before the response", "/hang"],
  ])("cancels the upstream call when the client leaves %s", async (_when, path) => {
    // An upstream that streams forever on /stream and never answers /hang.
    const arrived: string[] = [];
    const closed: string[] = [];
    const server = http.createServer((req, res) => {
      arrived.push(req.url ?? "");
      res.on("close", () => closed.push(req.url ?? ""));
      if (req.url !== "/stream") return;
      res.writeHead(200, { "content-type": "text/plain" });
      const tick = setInterval(() => res.write("tick\n"), 10);
      res.on("close", () => clearInterval(tick));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    try {
      await withGateway(local("s", port), async (gateway) => {
        const client = http.get(`${gateway}/service/s${path}`, (r) =>
          r.once("data", () => client.destroy()),
        );
        client.on("error", () => {}); // we hang up ourselves
        if (path === "/hang") {
          await pollUntil("the upstream to hold the request", async () =>
            arrived.length > 0 ? true : undefined,
          );
          client.destroy();
        }
        await pollUntil(
          "the upstream response to close",
          async () => (closed.length > 0 ? true : undefined),
          10_000,
          20,
        );
        expect(closed).toEqual([path]);
      });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
