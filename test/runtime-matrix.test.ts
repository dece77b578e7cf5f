/**
 * One black-box HTTP suite against the coordinator served by Node (file store), Bun (file
 * store), Deno (Deno KV) and workerd (the `build:worker` bundle in Miniflare with a KV
 * namespace), with real upstream HTTP servers on 127.0.0.1 behind the proxy. It includes the
 * trust boundaries of docs/SECURITY.md on each runtime: guards, Ed25519 signatures (Web
 * Crypto), JSON-only writes, request framing, methods, loops, link-local upstreams, client
 * identity headers and error answers.
 */
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { viewAuthorized } from "../agent/view-auth.ts";
import { freePort, pollUntil } from "../support/processes.ts";
import { signedHeaders, testKey } from "./helpers/signing.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import {
  BIN,
  COORDINATOR_RUNTIMES,
  type RunningCoordinator,
  spawnUntil,
} from "./helpers/coord-runtimes.ts";

const CLUSTER = "matrix-cluster-token";
const ADMIN = "matrix-admin-token";
const VIEW = "matrix-view-token";
const SETTINGS: Record<string, string> = {
  ROLLCALL_CLUSTER_TOKEN: CLUSTER,
  ROLLCALL_ADMIN_TOKEN: ADMIN,
  ROLLCALL_AGENT_TOKEN: VIEW,
  ROLLCALL_ALLOW_LEGACY_WORKERS: "true",
  ROLLCALL_PROXY_TIMEOUT_MS: "1500",
  ROLLCALL_ALIASES: JSON.stringify({ "/clients": "upload" }),
  // The test upstreams are on loopback, which the proxy refuses by default.
  ROLLCALL_UPSTREAM_ALLOW: "loopback",
};
/** The leader of the matrix cluster (member "m-up"): a real key, its reports signed. */
const LEAD = testKey("matrix leader m-up");
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
  /** A JSON POST; a cluster report is signed by LEAD, as its agent would sign it. */
  const post = async (p: string, body: unknown, token: string | null = CLUSTER) => {
    const text = JSON.stringify(body);
    const leader = (body as { leader_id?: unknown }).leader_id;
    const signature =
      leader === LEAD.id
        ? await signedHeaders(LEAD, { method: "POST", path: p, body: text, now: Date.now() })
        : {};
    return raw(base, "POST", p, {
      body: text,
      headers: asJson({ ...(token ? bearer(token) : {}), ...signature }),
    });
  };
  const admin = async (p: string) => {
    const res = await raw(base, "GET", p, { headers: bearer(ADMIN) });
    expect(res.status).toBe(200);
    return res.json();
  };
  const members = () => [
    {
      worker_id: LEAD.id,
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
    {
      worker_id: "m-gone",
      incarnation: 1,
      status: "online",
      url: dead,
      last_seen: 1,
      services: [{ name: "gone" }],
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
          { leader_id: LEAD.id, term: 1, sequence: 1, members: members() },
          null,
        )
      ).status,
    ).toBe(401);
    const first = await post("/api/cluster/heartbeat", {
      leader_id: LEAD.id,
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
      leader_id: LEAD.id,
      term: 1,
      sequence: 2,
      members: members(),
    });
    expect(second.json()).toMatchObject({ written: false, reason: "unchanged", writes_today: 1 });
    expect((await raw(base, "GET", "/api/admin/workers")).status).toBe(401);
    const services = await admin("/api/admin/services");
    expect(services.total_services).toBe(6);
    expect(services.services.flaky).toMatchObject({
      total_workers: 2,
      healthy_workers: 2,
      status: "available",
    });
    const stats = await admin("/api/admin/stats");
    expect(stats).toMatchObject({
      total_workers: 5,
      healthy_workers: 5,
      leader: { leader_id: LEAD.id },
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
    expect(res.headers["x-rollcall-worker"]).toBe(LEAD.id);
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

  it("asks the leader's agent for its live view with the view credential, routes on the stored table when that fails, and shows metrics", async () => {
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
    // An HMAC of the time keyed with the agent-view token: no token crosses the network.
    const auth = String(asked.headers.authorization);
    expect(auth).toMatch(/^Rollcall-View ts=\d+, sig=[0-9a-f]{64}$/);
    expect(viewAuthorized(auth, VIEW, Date.now(), LEAD.id)).toBe(true);
    expect(auth).not.toContain(CLUSTER);
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

  it("fails closed: each guard its own token, reports signed by their leader, writes JSON only, no CORS on the API", async () => {
    expect((await raw(base, "GET", "/api/admin/budget", { headers: bearer(CLUSTER) })).status).toBe(
      401,
    );
    expect((await raw(base, "GET", "/metrics", { headers: bearer(VIEW) })).status).toBe(401);
    const report = { leader_id: LEAD.id, term: 1, sequence: 9, members: members() };
    const unsigned = await raw(base, "POST", "/api/cluster/heartbeat", {
      body: JSON.stringify(report),
      headers: asJson(bearer(CLUSTER)),
    });
    expect(unsigned.status).toBe(401);
    const plain = await raw(base, "POST", "/api/worker/register", {
      body: JSON.stringify({ worker_id: "csrf", services: ["x"] }),
      headers: { "content-type": "text/plain" },
    });
    expect(plain.status).toBe(415);
    const preflight = await raw(base, "OPTIONS", "/api/admin/workers", {
      headers: { origin: "https://evil.example", "access-control-request-method": "GET" },
    });
    expect(preflight.headers["access-control-allow-origin"]).toBeUndefined();
    const health = (await raw(base, "GET", "/health")).json();
    expect(health.auth).toMatchObject({ agent_endpoints: "token", admin_endpoints: "token" });
  });

  it("verifies Ed25519 signatures with Web Crypto: a PeerId worker is its key's alone", async () => {
    const owner = testKey(`matrix owner on ${runtime.name}`);
    const path = "/api/worker/register";
    const body = JSON.stringify({ worker_id: owner.id, tunnel_url: up.url, services: ["owned"] });
    const signed = await signedHeaders(owner, { method: "POST", path, body, now: Date.now() });
    const ok = await raw(base, "POST", path, {
      body,
      headers: asJson({ ...bearer(CLUSTER), ...signed }),
    });
    expect(ok.status, ok.text).toBe(200);
    expect(ok.json().worker_id).toBe(owner.id);
    const replay = await raw(base, "POST", path, {
      body,
      headers: asJson({ ...bearer(CLUSTER), ...signed }),
    });
    expect(replay.status).toBe(401);
    const other = testKey(`matrix thief on ${runtime.name}`);
    const forged = await signedHeaders(other, { method: "POST", path, body, now: Date.now() });
    const theft = await raw(base, "POST", path, {
      body,
      headers: asJson({ ...bearer(CLUSTER), ...forged }),
    });
    expect(theft.status).toBe(401);
    const unsigned = await raw(base, "DELETE", `/api/worker/unregister/${owner.id}`, {
      headers: bearer(CLUSTER),
    });
    expect(unsigned.status).toBe(401);
  });

  it("frames requests itself: a GET's Content-Length never goes upstream without its body", async () => {
    const before = up.received.length;
    const lying = await raw(base, "GET", "/api/service/upload/framed", {
      body: "hello",
      headers: { "content-length": "5" },
    });
    expect(lying.status).toBe(200);
    const next = await raw(base, "GET", "/api/service/upload/after");
    expect(next.status).toBe(200);
    const got = up.received.slice(before).filter((r) => r.url.includes("/service/upload/"));
    expect(got.map((r) => r.url)).toEqual(["/service/upload/framed", "/service/upload/after"]);
    for (const r of got) expect(r.headers["content-length"]).toBeUndefined();
  });

  it("answers TRACE and unknown methods 405, and never blames a worker for them", async () => {
    const before = up.received.length;
    for (const method of ["TRACE", "PROPFIND"]) {
      const res = await raw(base, method, "/api/service/upload/x");
      expect(res.status, method).toBe(405);
    }
    expect(up.received.length).toBe(before);
  });

  it("never calls a link-local upstream, and answers a loop through itself 508", async () => {
    const at = (url: string, name: string) =>
      post("/api/worker/register", { worker_id: `w-${name}`, tunnel_url: url, services: [name] });
    expect((await at("http://169.254.169.254", "metadata")).status).toBe(200);
    const meta = await raw(base, "GET", "/api/service/metadata/latest/meta-data");
    expect(meta.status).toBe(503);
    expect((await at(`${base}/api/service/loop`, "loop")).status).toBe(200);
    const loop = await raw(base, "GET", "/api/service/loop/x");
    expect(loop.status).toBe(508);
    expect(loop.json().error).toBe("Loop detected");
  });

  it("takes the client's address from the runtime, never from client headers (CF-Connecting-IP only on Workers)", async () => {
    const before = up.received.length;
    const res = await raw(base, "GET", "/api/service/upload/whoami", {
      headers: {
        "cf-connecting-ip": "6.6.6.6",
        "x-real-ip": "6.6.6.6",
        forwarded: "for=6.6.6.6",
      },
    });
    expect(res.status).toBe(200);
    const got = up.received.slice(before).find((r) => r.url.endsWith("/whoami"));
    expect(got?.headers["x-real-ip"]).toBeUndefined();
    expect(got?.headers.forwarded).toBeUndefined();
    if (runtime.name !== "workerd") {
      expect(got?.headers["x-forwarded-for"]).toBe("127.0.0.1");
      expect(got?.headers["cf-connecting-ip"]).toBeUndefined();
    }
  });

  it("answers a worker that cannot be reached without its address, with a request id", async () => {
    const res = await raw(base, "GET", "/api/service/gone/x");
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({
      error: "Service proxy failed",
      message: "Worker could not be reached",
      request_id: expect.stringMatching(/^[0-9a-f]{16}$/),
    });
    expect(res.text).not.toMatch(/127\.0\.0\.1|ECONN|refused/i);
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
