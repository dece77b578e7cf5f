/**
 * What operators expect of the agent and the coordinator, each with real parts: worker names,
 * the endpoint indexes, leveled logs in text or JSON, the access log, config files with the keys
 * --help prints, the probe report at start (why each entry is missing), a refused token that
 * says what to check, and an agent without a manifest that says how to write one.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { serve } from "@hono/node-server";
import { afterAll, describe, expect, it } from "vitest";
import { Agent, NO_MANIFEST } from "../agent/agent.ts";
import { ConfigError, defaultName, helpText, loadConfig, nearestSetting } from "../agent/config.ts";
import { loadManifest, parseManifest, ServiceDetector } from "../agent/detect.ts";
import { Gateway } from "../agent/gateway.ts";
import { createLogger, formatLine } from "../agent/log.ts";
import { createCoordinator, memoryStore } from "../coordinator.ts";
import { withAccessLog } from "../scripts/access-log.ts";
import { freePort, pollUntil } from "../support/processes.ts";
import { agentPost, TEST_INIT } from "./helpers/coord-fixtures.ts";
import { peer } from "./helpers/signing.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

const opened: Upstream[] = [];
const closers: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await Promise.all(opened.map((u) => u.close()));
});
async function upstream(name: string) {
  const u = await startUpstream(name);
  opened.push(u);
  return u;
}
const post = (body: unknown, headers: Record<string, string> = {}) => ({
  method: "POST",
  body: JSON.stringify(body),
  headers: { "content-type": "application/json", ...headers },
});
const tmp = () => mkdtempSync(path.join(tmpdir(), "rollcall-op-"));

describe("worker names", () => {
  it("come from --name, or an old agent's capabilities.hostname; shown in the admin API and beside the id on a routed answer", async () => {
    const up = await upstream("named");
    const c = createCoordinator(TEST_INIT, { store: memoryStore() });
    const reg = (body: unknown) => c.app.request("/api/worker/register", post(body));
    expect(
      (await reg({ worker_id: "w1", name: "gpu-box.lab_1", tunnel_url: up.url, services: ["ocr"] }))
        .status,
    ).toBe(200);
    expect(
      (await reg({ worker_id: "w2", capabilities: { hostname: "old-box" }, tunnel_url: up.url }))
        .status,
    ).toBe(200);
    const bad = await reg({ worker_id: "w3", name: "not a name\n", tunnel_url: up.url });
    expect(bad.status).toBe(400);
    // A leader's report is signed by its key; its PeerId is the member's worker id.
    const m1 = peer("operator mesh-box");
    const mesh = await agentPost(
      c.app,
      "/api/cluster/heartbeat",
      {
        leader_id: m1,
        term: 1,
        sequence: 1,
        members: [{ worker_id: m1, name: "mesh-box", status: "online", url: up.url, services: [] }],
      },
      Date.now(),
    );
    expect(mesh.status).toBe(200);
    const workers = (await (await c.app.request("/api/admin/workers")).json()) as {
      worker_id: string;
      name: string | null;
    }[];
    expect(Object.fromEntries(workers.map((w) => [w.worker_id, w.name]))).toEqual({
      w1: "gpu-box.lab_1",
      w2: "old-box",
      [m1]: "mesh-box",
    });
    const routed = await c.fetch(new Request("http://coordinator/api/service/ocr/x"));
    expect(routed.status).toBe(200);
    expect(routed.headers.get("x-rollcall-worker")).toBe("w1");
    expect(routed.headers.get("x-rollcall-worker-name")).toBe("gpu-box.lab_1");
    expect(routed.headers.get("access-control-expose-headers")).toContain("X-Rollcall-Worker-Name");
  });

  it("default to the hostname, made a valid name; a bad --name stops the agent naming it", () => {
    expect(loadConfig([], {}).config.name).toBe(defaultName());
    expect(defaultName("my host!.lan")).toBe("my-host-.lan");
    expect(defaultName("---")).toBe("worker");
    expect(defaultName("x".repeat(100))).toHaveLength(64);
    expect(loadConfig([], { ROLLCALL_NAME: "box-7" }).config.name).toBe("box-7");
    expect(() => loadConfig(["--name", "a b"], {})).toThrow(/Invalid --name: "a b"/);
  });
});

describe("GET / on the coordinator and the agent", () => {
  it("the coordinator lists its endpoints, the admin ones among them", async () => {
    const c = createCoordinator({}, { store: memoryStore() });
    const index = (await (await c.app.request("/")).json()) as {
      endpoints: Record<string, string>;
    };
    for (const e of ["workers", "services", "stats", "leader", "budget", "breakers", "metrics"]) {
      expect(Object.keys(index.endpoints)).toContain(`GET /api/admin/${e}`);
    }
  });

  it("the agent lists its endpoints; its 404 names /_agent/health, /_agent/cluster and /_agent/drain", async () => {
    const g = new Gateway(
      { host: "127.0.0.1", port: 0 },
      { service: () => undefined, services: () => [], health: () => ({}), clusterView: () => ({}) },
    );
    const port = await g.start();
    closers.push(() => g.stop());
    const index = (await (await fetch(`http://127.0.0.1:${port}/`)).json()) as {
      endpoints: Record<string, string>;
    };
    expect(Object.keys(index.endpoints)).toEqual([
      "GET /_agent/health",
      "GET /_agent/cluster",
      "GET|POST|DELETE /_agent/drain",
      "ANY /service/<name>/<path>",
    ]);
    const missing = await fetch(`http://127.0.0.1:${port}/nope`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { message: string }).message).toMatch(
      /\/_agent\/health.*\/_agent\/cluster.*\/_agent\/drain/,
    );
  });
});

describe("logs", () => {
  it("carry a time and a level, as text or as one JSON object per line", () => {
    const at = Date.parse("2026-11-26T12:00:00.000Z");
    expect(formatLine("text", at, "warn", "Member down", { id: "12D3", name: "box 1" })).toBe(
      '2026-11-26T12:00:00.000Z WARN  Member down id=12D3 name="box 1"',
    );
    const lines: string[] = [];
    const log = createLogger(
      { format: "json", base: { worker: "b1" } },
      { write: (l) => lines.push(l), now: () => at },
    );
    log.error("refused", { status: 401 });
    expect(JSON.parse(lines[0] as string)).toEqual({
      time: "2026-11-26T12:00:00.000Z",
      level: "error",
      msg: "refused",
      worker: "b1",
      status: 401,
    });
    expect(loadConfig(["--log-format", "json"], {}).config.logFormat).toBe("json");
    expect(() => loadConfig([], { ROLLCALL_LOG_FORMAT: "xml" })).toThrow(
      /ROLLCALL_LOG_FORMAT.*text or json/,
    );
  });

  it("the access log says method, path without the query, service (aliases too), worker, status and ms", async () => {
    const lines: string[] = [];
    const log = createLogger({ format: "json" }, { write: (l) => lines.push(l) });
    const handler = withAccessLog(
      async (_request: Request) =>
        new Response("x", {
          status: 200,
          headers: { "x-rollcall-worker": "w1", "x-rollcall-worker-name": "b1" },
        }),
      log,
      { "/clients": "upload" },
    );
    await handler(new Request("http://c/api/service/ocr/scan?token=secret"));
    await handler(new Request("http://c/clients/7"));
    await handler(new Request("http://c/api/service/..%2f/x"));
    const [ocr, alias, bad] = lines.map((l) => JSON.parse(l));
    expect(ocr).toMatchObject({
      msg: "access",
      method: "GET",
      path: "/api/service/ocr/scan",
      service: "ocr",
      worker: "w1",
      worker_name: "b1",
      status: 200,
    });
    expect(typeof ocr.ms).toBe("number");
    expect(lines[0]).not.toContain("secret");
    expect(alias).toMatchObject({ path: "/clients/7", service: "upload" });
    expect(bad).toMatchObject({ service: null });
  });

  it("is off by default on Workers and on when ROLLCALL_ACCESS_LOG is set", async () => {
    const { default: worker } = await import("../scripts/start-workers.ts");
    const seen: string[] = [];
    const original = console.log;
    console.log = (line: string) => void seen.push(line);
    try {
      await worker.fetch(new Request("http://localhost/health"), {});
      expect(seen).toEqual([]);
      await worker.fetch(new Request("http://localhost/health"), { ROLLCALL_ACCESS_LOG: "true" });
      expect(seen).toHaveLength(1);
      expect(seen[0]).toMatch(
        /INFO {2}access method=GET path=\/health service=null worker=null .*status=200/,
      );
    } finally {
      console.log = original;
    }
  });
});

describe("config files", () => {
  it("take the keys --help prints (kebab-case), camelCase too; an unknown key suggests the nearest", () => {
    const dir = tmp();
    const file = path.join(dir, "agent.json");
    writeFileSync(
      file,
      JSON.stringify({ "probe-interval": 5, "log-format": "json", name: "from-file" }),
    );
    expect(loadConfig(["--config", file], {}).config).toMatchObject({
      probeIntervalMs: 5000,
      logFormat: "json",
      name: "from-file",
    });
    writeFileSync(file, JSON.stringify({ probeInterval: 3 }));
    expect(loadConfig(["--config", file], {}).config.probeIntervalMs).toBe(3000);
    writeFileSync(file, JSON.stringify({ "probe-intervall": 3 }));
    expect(() => loadConfig(["--config", file], {})).toThrow(
      /probe-intervall: unknown setting; did you mean "probe-interval"\?/,
    );
    expect(nearestSetting("coordinater")).toBe("coordinator");
    expect(nearestSetting("dataDir")).toBe("data-dir");
    expect(nearestSetting("zzzzzz")).toBeUndefined();
    // Every key --help prints is one a file accepts (whatever it then says of the value).
    const keys = [...helpText().matchAll(/^ {2}--([a-z-]+)/gm)].map((m) => m[1] as string);
    expect(keys).toContain("probe-interval");
    for (const key of keys.filter((k) => !["config", "help", "version"].includes(k))) {
      writeFileSync(file, JSON.stringify({ [key]: "?" }));
      try {
        loadConfig(["--config", file], {});
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as Error).message, key).not.toContain("unknown setting");
      }
    }
  });
});

describe("the probe report at start", () => {
  it("says why each missing entry is missing: refused, timeout, 5xx, a wrong health path's 404", async () => {
    const ok = await upstream("ok");
    const sick = await upstream("sick");
    await sick.setMode("error500");
    const hang = await upstream("hang");
    await hang.setMode("hang");
    const wrongPath = (await import("node:http")).createServer((req, res) => {
      res.writeHead(req.url === "/healthz" ? 200 : 404).end();
    });
    await new Promise<void>((r) => wrongPath.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise<void>((r) => wrongPath.close(() => r())));
    const wp = `http://127.0.0.1:${(wrongPath.address() as { port: number }).port}`;
    const candidates = parseManifest(
      {
        services: [
          { name: "ok", url: ok.url },
          { name: "refused", port: await freePort() },
          { name: "slow", url: hang.url },
          { name: "broken", url: sick.url },
          { name: "wrongpath", url: wp },
          { name: "teapot", url: wp, healthy_status: [404] },
        ],
      },
      "m.json",
    );
    const d = new ServiceDetector({ candidates, timeoutMs: 300 });
    await d.probeOnce();
    hang.release();
    expect(Object.fromEntries(d.report().map((r) => [r.name, `${r.state}: ${r.detail}`]))).toEqual({
      ok: expect.stringMatching(/^healthy: 200 in \d+ ms$/),
      refused: "missing: connection refused",
      slow: "missing: timed out after 300 ms",
      broken: "unhealthy: answered 500",
      wrongpath:
        "unhealthy: answered 404 (not a healthy status: check the health path /health, or list 404 in healthy_status)",
      teapot: expect.stringMatching(/^healthy: 404 in \d+ ms$/),
    });
    expect(d.get("wrongpath")?.status).toBe("unhealthy"); // gets no traffic
    expect(() =>
      parseManifest({ services: [{ name: "x", port: 1, healthy_status: ["2xy"] }] }, "m.json"),
    ).toThrow(ConfigError);
  });
});

describe("the agent against a coordinator that refuses its token", () => {
  it("lists its manifest entries, says once to check --token / ROLLCALL_CLUSTER_TOKEN, and keeps retrying", async () => {
    const c = createCoordinator(
      { clusterToken: "right", adminToken: "admin" },
      { store: memoryStore() },
    );
    const server = serve({ fetch: c.fetch, port: 0, hostname: "127.0.0.1" });
    await new Promise((r) => server.once("listening", r));
    closers.push(() => new Promise<void>((r) => server.close(() => r())));
    const coordinator = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const svc = await upstream("svc");
    const dir = tmp();
    const manifest = path.join(dir, "services.json");
    writeFileSync(
      manifest,
      JSON.stringify({
        services: [
          { name: "svc", url: svc.url },
          { name: "gone", port: await freePort() },
        ],
      }),
    );
    const { config } = loadConfig(
      [
        "--mode",
        "direct",
        "--coordinator",
        coordinator,
        "--token",
        "wrong",
        "--services",
        manifest,
        "--data-dir",
        dir,
        "--listen",
        `127.0.0.1:${await freePort()}`,
      ],
      {},
    );
    const lines: string[] = [];
    const agent = new Agent(config, loadManifest(manifest), { log: (l) => lines.push(l) });
    closers.push(() => agent.stop());
    await agent.start();
    expect(lines).toContain(`Probed 2 manifest entries of ${manifest}:`);
    expect(lines.find((l) => l.includes(" svc: "))).toMatch(/✓ svc: healthy, 200 in \d+ ms/);
    expect(lines.find((l) => l.includes(" gone: "))).toMatch(
      /✗ gone: missing, connection refused \(http:\/\/127\.0\.0\.1:\d+\/health\)/,
    );
    const retries = () => lines.filter((l) => / answered 401.*; retrying in \d+\.\d s$/.test(l));
    await pollUntil(
      "two refused registrations",
      async () => (retries().length >= 2 ? true : undefined),
      15_000,
      50,
    );
    const hints = lines.filter((l) => l.includes("check --token / ROLLCALL_CLUSTER_TOKEN"));
    expect(hints).toHaveLength(1);
    expect(
      lines.filter((l) => / answered 401.*retrying in \d+\.\d s/.test(l)).length,
    ).toBeGreaterThanOrEqual(2);
  });

  it("in mesh mode too: a refused token is said once, the agent never leads, and the check is retried with backoff", async () => {
    const c = createCoordinator({ clusterToken: "right" }, { store: memoryStore() });
    let checks = 0;
    const server = serve({
      fetch: (req: Request) => {
        if (new URL(req.url).pathname === "/api/cluster/auth") checks++;
        return c.fetch(req);
      },
      port: 0,
      hostname: "127.0.0.1",
    });
    await new Promise((r) => server.once("listening", r));
    closers.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as { port: number }).port;
    const dir = tmp();
    const { config } = loadConfig(
      [
        "--coordinator",
        `http://127.0.0.1:${port}`,
        "--token",
        "wrong",
        "--data-dir",
        dir,
        "--listen",
        `127.0.0.1:${await freePort()}`,
        "--mesh-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--debounce",
        "0",
      ],
      {},
    );
    const lines: string[] = [];
    const agent = new Agent(config, [], { log: (l) => lines.push(l) });
    closers.push(() => agent.stop());
    await agent.start();
    // The check is retried with the backoff (1 s, then doubling): a second one comes.
    await pollUntil("two token checks", async () => (checks >= 2 ? true : undefined), 30_000, 50);
    expect(lines.filter((l) => l.includes("check --token / ROLLCALL_CLUSTER_TOKEN"))).toHaveLength(
      1,
    );
    // An agent whose token is refused never leads, so no report is ever sent.
    expect(lines.some((l) => /^report failed/.test(l))).toBe(false);
  }, 45_000);

  it("with no manifest, says so and how to write one", async () => {
    const dir = tmp();
    const { config } = loadConfig(
      [
        "--data-dir",
        dir,
        "--listen",
        `127.0.0.1:${await freePort()}`,
        "--mesh-listen",
        "/ip4/127.0.0.1/tcp/0",
      ],
      {},
    );
    const lines: string[] = [];
    const agent = new Agent(config, [], { log: (l) => lines.push(l) });
    closers.push(() => agent.stop());
    await agent.start();
    expect(lines).toContain(NO_MANIFEST);
    expect(NO_MANIFEST).toMatch(/--services FILE/);
  });
});
