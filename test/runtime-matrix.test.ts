/**
 * One black-box HTTP suite against the coordinator served by Node (file store), Bun (file
 * store), Deno (Deno KV) and workerd (the `build:worker` bundle in Miniflare with a KV
 * namespace), with real upstream HTTP servers on 127.0.0.1 behind the proxy.
 */
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, pollUntil } from "./helpers/processes.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import {
  BIN,
  COORDINATOR_RUNTIMES,
  type RunningCoordinator,
  spawnUntil,
} from "./helpers/coord-runtimes.ts";

const CLUSTER = "matrix-cluster-token";
const ADMIN = "matrix-admin-token";
const SETTINGS: Record<string, string> = {
  ROLLCALL_CLUSTER_TOKEN: CLUSTER,
  ROLLCALL_ADMIN_TOKEN: ADMIN,
  ROLLCALL_ALLOW_LEGACY_WORKERS: "true",
  ROLLCALL_PROXY_TIMEOUT_MS: "1500",
  ROLLCALL_ALIASES: JSON.stringify({ "/clients": "upload" }),
};
const runtimes = COORDINATOR_RUNTIMES.map((r) => ({ ...r, start: () => r.start(SETTINGS) }));

let up: Upstream;
let up2: Upstream;
let hang: Upstream;
let dead: string;

beforeAll(async () => {
  [up, up2, hang] = await Promise.all([
    startUpstream("up"),
    startUpstream("up2"),
    startUpstream("hang"),
  ]);
  await hang.setMode("hang");
  dead = `http://127.0.0.1:${await freePort()}`;
});
afterAll(async () => {
  await Promise.all([up.close(), up2.close(), hang.close()]);
});

/** A raw HTTP request (the path goes out exactly as written). */
function raw(
  base: string,
  method: string,
  rawPath: string,
  options: { body?: string | Buffer; headers?: Record<string, string> } = {},
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers
): Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string; json: () => any }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: u.hostname,
        port: u.port,
        method,
        path: rawPath,
        headers: options.headers,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text,
            json: () => JSON.parse(text),
          });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(options.body);
  });
}

const asJson = (headers: Record<string, string> = {}) => ({
  "content-type": "application/json",
  ...headers,
});
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

describe.each(runtimes)("coordinator on $name", (runtime) => {
  let server: RunningCoordinator;
  let base = "";
  const post = (p: string, body: unknown, token: string | null = CLUSTER) =>
    raw(base, "POST", p, {
      body: JSON.stringify(body),
      headers: asJson(token ? bearer(token) : {}),
    });
  const admin = async (p: string) => {
    const res = await raw(base, "GET", p, { headers: bearer(ADMIN) });
    expect(res.status).toBe(200);
    return res.json();
  };
  const members = () => [
    {
      worker_id: "m-up",
      incarnation: 1,
      status: "online",
      url: up.url,
      last_seen: 1,
      services: [{ name: "upload" }, { name: "admin" }],
    },
    {
      worker_id: "m-dead",
      incarnation: 1,
      status: "online",
      url: dead,
      last_seen: 1,
      services: [{ name: "flaky" }, { name: "postflaky" }],
    },
    {
      worker_id: "m-up2",
      incarnation: 1,
      status: "online",
      url: up2.url,
      last_seen: 1,
      services: [{ name: "flaky" }, { name: "slow" }, { name: "postflaky" }],
    },
    {
      worker_id: "m-hang",
      incarnation: 1,
      status: "online",
      url: hang.url,
      last_seen: 1,
      services: [{ name: "slow" }],
    },
  ];

  beforeAll(async () => {
    server = await runtime.start();
    base = server.url;
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("serves /health with its store, secured", async () => {
    const res = await raw(base, "GET", "/health");
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({
      status: "healthy",
      mode: "secured",
      store: { kind: runtime.store, persistent: true },
    });
  });

  it("takes a leader report with the cluster token only; writes once, then not again", async () => {
    expect(
      (
        await post(
          "/api/cluster/heartbeat",
          { leader_id: "m-up", term: 1, sequence: 1, members: members() },
          null,
        )
      ).status,
    ).toBe(401);
    const first = await post("/api/cluster/heartbeat", {
      leader_id: "m-up",
      term: 1,
      sequence: 1,
      members: members(),
    });
    expect(first.status).toBe(200);
    expect(first.json()).toMatchObject({
      status: "ok",
      written: true,
      reason: "changed",
      writes_today: 1,
      write_budget: 1000,
    });
    const second = await post("/api/cluster/heartbeat", {
      leader_id: "m-up",
      term: 1,
      sequence: 2,
      members: members(),
    });
    expect(second.json()).toMatchObject({ written: false, reason: "unchanged", writes_today: 1 });
    expect((await raw(base, "GET", "/api/admin/workers")).status).toBe(401);
    const services = await admin("/api/admin/services");
    expect(services.total_services).toBe(5);
    expect(services.services.flaky).toMatchObject({
      total_workers: 2,
      healthy_workers: 2,
      status: "available",
    });
    const stats = await admin("/api/admin/stats");
    expect(stats).toMatchObject({
      total_workers: 4,
      healthy_workers: 4,
      leader: { leader_id: "m-up" },
    });
  });

  it("answers bad input with a clear 4xx JSON error", async () => {
    for (const body of ["{", "[]", JSON.stringify({ leader_id: "x", term: "one" })]) {
      const res = await raw(base, "POST", "/api/cluster/heartbeat", {
        body,
        headers: asJson(bearer(CLUSTER)),
      });
      expect(res.status).toBe(400);
      expect(typeof res.json().error).toBe("string");
    }
  });

  it("admits a token-less worker of the old kind in direct mode", async () => {
    const reg = await post(
      "/api/worker/register",
      {
        worker_id: "legacy-1",
        capabilities: { worker_type: "storage" },
        tunnel_url: up2.url,
        services: ["files"],
      },
      null,
    );
    expect(reg.status).toBe(200);
    expect(reg.json()).toMatchObject({
      worker_id: "legacy-1",
      tier: 3,
      heartbeat_interval: 30,
      services_registered: ["files"],
    });
    const hb = await post(
      "/api/worker/heartbeat",
      { worker_id: "legacy-1", status: "online", current_load: 0.1 },
      null,
    );
    expect(hb.json()).toMatchObject({ status: "ok" });
    expect(
      (await post("/api/worker/heartbeat", { worker_id: "nobody", status: "online" }, null)).status,
    ).toBe(404);
    const routed = await raw(base, "GET", "/api/service/files/a.txt");
    expect(routed.json()).toMatchObject({ upstream: "up2", url: "/a.txt" });
  });

  it("proxies method, query, headers and a streamed 2 MiB body; strips hop-by-hop; sets X-Forwarded-*", async () => {
    const body = Buffer.alloc(2 * 1024 * 1024, "r");
    const res = await raw(base, "PUT", "/api/service/upload/dir/f.bin?v=1&w=%20x", {
      body,
      headers: {
        "content-type": "application/octet-stream",
        "x-keep": "yes",
        connection: "x-hop",
        "x-hop": "no",
        "proxy-authorization": "secret",
      },
    });
    expect(res.status).toBe(200);
    expect(res.headers["x-rollcall-worker"]).toBe("m-up");
    expect(res.headers["x-secret-hop"]).toBeUndefined();
    const got = res.json();
    expect(got).toMatchObject({ method: "PUT", url: "/service/upload/dir/f.bin?v=1&w=%20x" });
    expect(got.body.length).toBe(body.length);
    expect(got.headers["x-keep"]).toBe("yes");
    expect(got.headers["x-hop"]).toBeUndefined();
    expect(got.headers["proxy-authorization"]).toBeUndefined();
    expect(got.headers["x-forwarded-proto"]).toBe("http");
    expect(got.headers["x-forwarded-host"]).toBe(new URL(base).host);
    if (runtime.name !== "workerd") expect(got.headers["x-forwarded-for"]).toMatch(/127\.0\.0\.1/);
    const alias = await raw(base, "GET", "/clients/7");
    expect(alias.json()).toMatchObject({ upstream: "up", url: "/service/upload/clients/7" });
  });

  it("fails over from a refused connection (GET always, POST where the runtime can tell) and from a hanging worker", async () => {
    const before = up2.received.length;
    for (let i = 0; i < 2; i++) {
      const res = await raw(base, "GET", "/api/service/flaky/g");
      expect(res.status, res.text).toBe(200);
      expect(res.json().upstream).toBe("up2");
    }
    // postflaky has seen no traffic: its first request goes to the first provider by ID,
    // m-dead; the second goes where the first one learned to go, up2.
    const posts = [];
    for (let i = 0; i < 2; i++) {
      posts.push(
        await raw(base, "POST", "/api/service/postflaky/p", {
          body: `b${i}`,
          headers: { "content-type": "text/plain" },
        }),
      );
    }
    if (runtime.name === "workerd") {
      // workerd cannot tell a refused connection from a dropped one: the POST that met the
      // dead worker first is not resent (502), the other goes to up2.
      expect(posts.map((r) => r.status)).toEqual([502, 200]);
      expect(posts[0]?.json()).toMatchObject({
        error: "Service proxy failed",
        worker: "m-dead",
      });
    } else {
      for (const [i, res] of posts.entries()) {
        expect(res.status, res.text).toBe(200);
        expect(res.json()).toMatchObject({ upstream: "up2", method: "POST", body: `b${i}` });
      }
    }
    expect(up2.received.slice(before).filter((r) => r.method === "POST").length).toBe(
      posts.filter((r) => r.status === 200).length,
    );
    for (let i = 0; i < 2; i++) {
      const res = await raw(base, "GET", "/api/service/slow/g");
      expect(res.status).toBe(200);
      expect(res.json().upstream).toBe("up2");
    }
  });

  it("never lets a raw path escape the service prefix at the upstream", async () => {
    const before = up.received.length;
    const paths = [
      "/api/service/upload/../admin/x",
      "/api/service/upload/%2e%2e/admin/x",
      "/api/service/upload/..%2fadmin",
      "/api/service/upload/%2e%2e%2fadmin",
      "/api/service/upload/a%2f..%2f..%2fadmin",
      "/api/service/upload/a\\..\\admin",
      "/api/service/upload/%252e%252e/admin",
    ];
    for (const p of paths) {
      const res = await raw(base, "GET", p);
      expect(res.status, p).toBeLessThan(500);
    }
    // The leader m-up's URL also gets the coordinator's own live-view fetches (/_agent/cluster).
    for (const got of up.received.slice(before).filter((r) => r.url !== "/_agent/cluster")) {
      expect(/^\/service\/(upload\/|admin(\/|$))/.test(got.url), got.url).toBe(true);
      if (got.url.startsWith("/service/upload/"))
        expect(got.url).not.toMatch(/\.\.|%2e%2e|%2f|%5c/i);
    }
  });

  it("asks the leader's agent for its live view with the token, routes on the stored table when that fails, and shows metrics", async () => {
    // Every proxied request may start a background refresh; the leader m-up is an echo server,
    // not an agent, so its answer is no live view and the stored table stays the source.
    const asked = await pollUntil(
      "the coordinator to ask m-up for its live view",
      async () => {
        const got = up.received.find((r) => r.url === "/_agent/cluster");
        if (!got) await raw(base, "GET", "/api/service/upload/poke");
        return got;
      },
      20_000,
      100,
    );
    expect(asked.headers.authorization).toBe(`Bearer ${CLUSTER}`);
    expect((await admin("/api/admin/services")).source).toBe("stored");
    const metrics = await admin("/api/admin/metrics");
    expect(metrics.services.flaky.workers["m-dead"].errors_total).toBeGreaterThan(0);
    expect(metrics.services.upload.requests_total).toBeGreaterThan(0);
    const prom = await raw(base, "GET", "/metrics", { headers: bearer(ADMIN) });
    expect(prom.status).toBe(200);
    expect(prom.text).toMatch(/^rollcall_requests_total\{service="upload"\} [1-9]/m);
    expect((await raw(base, "GET", "/metrics")).status).toBe(401);
  });

  it("serves the dashboard page under its CSP, and its snapshot only with the admin token", async () => {
    const page = await raw(base, "GET", "/admin");
    expect(page.status).toBe(200);
    expect(page.headers["content-security-policy"]).toContain("frame-ancestors 'none'");
    expect(page.text).toContain('<script src="/admin/dashboard.js" defer></script>');
    expect((await raw(base, "GET", "/admin/dashboard.js")).text).toContain("textContent");
    expect((await raw(base, "GET", "/api/admin/dashboard")).status).toBe(401);
    const snap = await admin("/api/admin/dashboard");
    expect(snap).toMatchObject({ mode: "secured", store: { kind: runtime.store } });
    expect(snap.services.map((s: { name: string }) => s.name)).toContain("upload");
  });

  it("answers the contract's 503 bodies", async () => {
    const none = await raw(base, "GET", "/api/service/nosuch/x");
    expect(none.status).toBe(503);
    expect(none.json()).toMatchObject({ error: "Service 'nosuch' not available" });
    expect(none.json().available_services).toContain("upload");
  });
});

describe("bun coordinator.ts (the default export, no starter)", () => {
  it("serves with the in-memory store and says it is not persistent", async () => {
    const port = await freePort();
    const p = await spawnUntil(BIN("bun"), ["coordinator.ts"], {
      ready: /Started .*server: (http:\/\/\S+)/,
      env: { PORT: String(port) },
    });
    try {
      const res = await raw(`http://127.0.0.1:${port}`, "GET", "/health");
      expect(res.json()).toMatchObject({
        status: "healthy",
        store: { kind: "memory", persistent: false },
      });
    } finally {
      await p.stop();
    }
  });
});
