/**
 * The agent reads the coordinator's answers with the coordinator's own schemas: a real HTTP
 * server answering garbage (a proxy's page, another server, a hostile coordinator) gives the
 * agent a clear error, never a crash or a silently wrong value; the figures it schedules by are
 * bounded.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { authFailureHint, CoordinatorClient } from "../agent/client.ts";
import { DirectReporter } from "../agent/direct.ts";
import { LeaderReporter } from "../agent/reporter.ts";
import { FakeClock } from "../mesh/clock.ts";

/** What the server answers next: status, body text, content type. */
let next: { status: number; body: string; type?: string } = { status: 200, body: "{}" };
const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    res.writeHead(next.status, { "content-type": next.type ?? "application/json" });
    res.end(next.body);
  });
});
let client: CoordinatorClient;

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  client = new CoordinatorClient({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 5000 });
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

const registered = {
  worker_id: "w1",
  tier: 2,
  heartbeat_interval: 30,
  is_heartbeat_leader: false,
  services_registered: ["upload"],
};
const reported = {
  status: "ok",
  written: true,
  reason: "changed",
  writes_today: 1,
  write_budget: 1000,
  next_keepalive_at: "2026-12-02T01:00:00.000Z",
  next_keepalive_in_s: 2880,
  digest: "abc",
};
const json = (v: unknown) => ({ status: 200, body: JSON.stringify(v) });

describe("CoordinatorClient with an answer that is not the contract's", () => {
  const register = () => client.register({ worker_id: "w1" });
  const report = () => client.report({});
  it.each([
    [
      "an HTML page",
      register,
      { status: 200, body: "<html>hi</html>", type: "text/html" },
      /200 with something that is not JSON/,
    ],
    ["an empty body", register, { status: 200, body: "" }, /not JSON/],
    ["null", register, json(null), /unexpected body \(the body: /],
    ["{}", register, json({}), /unexpected body \(worker_id: /],
    [
      "a string interval",
      register,
      json({ ...registered, heartbeat_interval: "30" }),
      /heartbeat_interval/,
    ],
    [
      "a zero interval",
      register,
      json({ ...registered, heartbeat_interval: 0 }),
      /heartbeat_interval/,
    ],
    ["a path as worker id", register, json({ ...registered, worker_id: "../admin" }), /worker_id/],
    [
      "a terminal escape as service",
      register,
      json({ ...registered, services_registered: ["\u001b[31mx"] }),
      /services_registered\.0/,
    ],
    ["tier 7", register, json({ ...registered, tier: 7 }), /tier/],
    ["an unknown reason", report, json({ ...reported, reason: "whatever" }), /reason/],
    [
      "a negative keepalive",
      report,
      json({ ...reported, next_keepalive_in_s: -1 }),
      /next_keepalive_in_s/,
    ],
    ["writes as a string", report, json({ ...reported, writes_today: "1" }), /writes_today/],
    [
      "a heartbeat's other status",
      () => client.heartbeat({ worker_id: "w1" }),
      json({ status: "fine" }),
      /status/,
    ],
    ["a token check's array", () => client.checkToken(), json([]), /unexpected body/],
  ])("%s: a clear, retryable error", async (_name, call, answer, error) => {
    next = answer;
    const r = await call();
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toMatch(error);
    expect(r.error.length).toBeLessThan(400);
    expect(r.retryable).toBe(true);
  });

  it.each([
    [
      "not JSON",
      { status: 502, body: "Bad gateway", type: "text/plain" },
      /answered 502: Bad Gateway$/,
    ],
    [
      "an object as error",
      { status: 500, body: JSON.stringify({ error: { x: 1 } }) },
      /answered 500: Internal Server Error$/,
    ],
    [
      "an error too long to log",
      { status: 503, body: JSON.stringify({ error: "x".repeat(5000) }) },
      /answered 503: Service Unavailable$/,
    ],
    [
      "the contract's error",
      { status: 404, body: JSON.stringify({ error: "Worker not found" }) },
      /answered 404: Worker not found$/,
    ],
  ])("an error answer with %s is told by its status", async (_name, answer, error) => {
    next = answer;
    const r = await client.register({ worker_id: "w1" });
    expect(r.ok ? "ok" : r.error).toMatch(error);
  });

  it("the contract's answers parse (extra fields dropped)", async () => {
    next = json({ ...registered, status: "registered", written: true, surprise: 1 });
    const r = await client.register({ worker_id: "w1" });
    expect(r).toEqual({
      ok: true,
      status: 200,
      data: { ...registered, status: "registered", written: true },
    });
  });

  it("a DirectReporter on a garbage answer logs the error and backs off; it never throws", async () => {
    next = json({ ...registered, heartbeat_interval: null });
    const logs: string[] = [];
    const clock = new FakeClock(0);
    const reporter = new DirectReporter(
      { worker_id: "w1" },
      {
        client,
        clock,
        random: () => 1,
        load: () => ({ status: "online", current_load: 0, available_memory: 0 }),
        log: (line) => logs.push(line),
      },
    );
    await reporter.start();
    expect(reporter.registered).toBeUndefined();
    expect(reporter.stats.failures).toBe(1);
    expect(logs).toEqual([
      "POST /api/worker/register answered 200 with an unexpected body (heartbeat_interval: Invalid input: expected number, received null); retrying in 1.0 s",
    ]);
    await reporter.stop();
    expect(clock.pending).toBe(0);
  });
});

describe("figures an agent schedules by are bounded", () => {
  it("a heartbeat interval of a million years is taken as one day", async () => {
    next = json({ ...registered, heartbeat_interval: 3.2e13 });
    const clock = new FakeClock(0);
    const beats: number[] = [];
    const reporter = new DirectReporter(
      { worker_id: "w1" },
      {
        client: {
          register: (body) => client.register(body),
          heartbeat: async () => {
            beats.push(clock.now());
            return { ok: true, status: 200, data: { status: "ok" } };
          },
          unregister: async () => ({ ok: true, status: 200, data: { status: "ok" } }),
        },
        clock,
        load: () => ({ status: "online", current_load: 0, available_memory: 0 }),
      },
    );
    await reporter.start();
    expect(reporter.registered?.heartbeat_interval).toBe(3.2e13);
    clock.advance(86_400_000 - 1);
    expect(beats).toEqual([]);
    clock.advance(1);
    expect(beats).toEqual([86_400_000]);
    await reporter.stop();
  });

  it("a keepalive a million years away is sent after one day", async () => {
    const clock = new FakeClock(0);
    const sent: number[] = [];
    const reporter = new LeaderReporter(
      {},
      {
        clock,
        send: async () => {
          sent.push(clock.now());
          next = json({ ...reported, next_keepalive_in_s: 3.2e13 });
          return client.report({});
        },
      },
    );
    reporter.update({ members: [], digest: "d" });
    reporter.setLeader(true, 1);
    clock.advance(0);
    await expect.poll(() => reporter.stats.lastAnswer).toBeDefined();
    clock.advance(86_400_000 - 1);
    expect(sent).toEqual([0]);
    clock.advance(1);
    expect(sent).toEqual([0, 86_400_000]);
    reporter.stop();
  });
});

describe("a refusal says what to check", () => {
  it("a membership 403 from a real answer names the roster and the forget action, not the token", async () => {
    next = {
      status: 403,
      body: JSON.stringify({
        error: "Leader is not a member of this cluster",
        message: "Cluster 'default' may be reported only by a member one of its leaders listed",
      }),
    };
    const result = await client.checkToken();
    expect(result.ok).toBe(false);
    if (result.ok) return;
    const hint = authFailureHint(result.status, result.error) ?? "";
    expect(hint).toContain("/api/admin/clusters/forget");
    expect(hint).not.toContain("ROLLCALL_CLUSTER_TOKEN");
  });

  it("a 401 or another 403 points at the cluster token; other statuses give no hint", () => {
    expect(
      authFailureHint(401, "POST /api/cluster/heartbeat answered 401: Unauthorized"),
    ).toContain("ROLLCALL_CLUSTER_TOKEN");
    expect(authFailureHint(403, "answered 403: Agent endpoints are disabled")).toContain(
      "ROLLCALL_CLUSTER_TOKEN",
    );
    expect(authFailureHint(503, "answered 503")).toBeNull();
  });
});
