/** Direct mode against the real coordinator code, in-process, on a fake clock; retries on a fake client. */
import { describe, expect, it } from "vitest";
import { type CallResult, CoordinatorClient } from "../agent/client.ts";
import { DirectReporter, type Registration } from "../agent/direct.ts";
import { createCoordinator, memoryStore, type RegisterAnswer } from "../coordinator.ts";
import { FakeClock } from "../mesh/clock.ts";

function setup() {
  const clock = new FakeClock(Date.UTC(2026, 0, 1));
  const store = memoryStore({}, { clock });
  const coordinator = createCoordinator({ clusterToken: "t", adminToken: "a" }, { store, clock });
  const calls: string[] = [];
  let inflight = 0;
  const fetcher = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const req = new Request(input, { ...init, signal: null });
    calls.push(`${req.method} ${new URL(req.url).pathname}`);
    inflight++;
    try {
      return await coordinator.app.request(req);
    } finally {
      inflight--;
    }
  }) as typeof fetch;
  /** Waits (real time, bounded) until no request is in flight and the reporter had turns to react. */
  const flush = async () => {
    const deadline = Date.now() + 5000;
    let quiet = 0;
    while (quiet < 5 && Date.now() < deadline) {
      await new Promise((r) => setImmediate(r));
      quiet = inflight === 0 ? quiet + 1 : 0;
    }
  };
  const client = new CoordinatorClient({ baseUrl: "http://c", token: "t" }, { fetch: fetcher });
  const registration: Registration = {
    worker_id: "w1",
    tunnel_url: "http://10.0.0.1:8700",
    capabilities: { worker_type: "gpu" },
    containers: [
      {
        name: "upload",
        service_url: "http://10.0.0.1:8700/service/upload",
        port: 8103,
        health_endpoint: "/health",
      },
    ],
  };
  const reporter = new DirectReporter(registration, {
    client,
    clock,
    load: () => ({ status: "online", current_load: 0.2, available_memory: 1e9 }),
  });
  const step = async (ms: number) => {
    clock.advance(ms);
    await flush();
  };
  return { clock, coordinator, calls, reporter, registration, step, store };
}

describe("DirectReporter with the real coordinator", () => {
  it("registers, then heartbeats at the interval the coordinator asks for", async () => {
    const { coordinator, calls, reporter, step } = setup();
    await reporter.start();
    expect(reporter.registered).toMatchObject({ worker_id: "w1", tier: 1, heartbeat_interval: 30 });
    for (let i = 0; i < 4; i++) await step(30_000);
    expect(calls.filter((c) => c.endsWith("/heartbeat"))).toHaveLength(4);
    const res = await coordinator.app.request("/api/admin/workers", {
      headers: { authorization: "Bearer a" },
    });
    const workers = (await res.json()) as {
      worker_id: string;
      status: string;
      services: string[];
    }[];
    expect(workers).toMatchObject([{ worker_id: "w1", status: "online", services: ["upload"] }]);
    await reporter.stop();
  });

  it("registers again when the coordinator forgot it (404) and when its services change", async () => {
    const { calls, reporter, registration, step, coordinator } = setup();
    await reporter.start();
    await coordinator.app.request("/api/worker/unregister/w1", {
      method: "DELETE",
      headers: { authorization: "Bearer t" },
    });
    await step(30_000);
    await step(0);
    expect(calls.slice(-2)).toEqual(["POST /api/worker/heartbeat", "POST /api/worker/register"]);
    reporter.update({ ...registration, containers: [] });
    await step(0);
    expect(calls.filter((c) => c.endsWith("/register"))).toHaveLength(3);
    await reporter.stop();
    expect(calls.at(-1)).toBe("DELETE /api/worker/unregister/w1");
  });
});

const REGISTERED: CallResult<RegisterAnswer> = {
  ok: true,
  status: 200,
  data: {
    worker_id: "w1",
    tier: 2,
    heartbeat_interval: 30,
    is_heartbeat_leader: false,
    services_registered: [],
  },
};
const notFound = (path: string): CallResult<never> => ({
  ok: false,
  status: 404,
  retryable: false,
  error: `POST ${path} answered 404: Not found`,
});

/** A reporter on a fake clock and a scripted client; `calls` lists [time, call] pairs. */
function scripted(answers: {
  register: () => CallResult<RegisterAnswer> | Promise<CallResult<RegisterAnswer>>;
  heartbeat?: () => CallResult<{ status: "ok" }>;
}) {
  const clock = new FakeClock(0);
  const calls: [number, string][] = [];
  const logs: string[] = [];
  const registered: Registration[] = [];
  const reporter = new DirectReporter(
    { worker_id: "w1", tunnel_url: "http://10.0.0.1:8700", capabilities: {}, containers: [] },
    {
      client: {
        register: async (body) => {
          calls.push([clock.now(), "register"]);
          registered.push(body as Registration);
          return answers.register();
        },
        heartbeat: async () => {
          calls.push([clock.now(), "heartbeat"]);
          return answers.heartbeat?.() ?? { ok: true, status: 200, data: { status: "ok" } };
        },
        unregister: async () => ({ ok: true, status: 200, data: { status: "ok" } }),
      },
      clock,
      random: () => 1, // the top of the jitter range: 1 s, 2 s, 4 s, ...
      load: () => ({ status: "online", current_load: 0, available_memory: 0 }),
      log: (line) => logs.push(line),
    },
  );
  const step = async (ms: number) => {
    clock.advance(ms);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  };
  return { clock, calls, logs, registered, reporter, step };
}

describe("DirectReporter retries", () => {
  it("backs off (and says so) when register itself answers 404, instead of retrying at once", async () => {
    const { clock, calls, logs, registered, reporter, step } = scripted({
      register: () => notFound("/api/worker/register"),
    });
    await reporter.start();
    await step(0);
    expect(calls).toEqual([[0, "register"]]);
    reporter.update({ ...registered[0], containers: [] } as Registration); // waits too
    await step(999);
    expect(calls).toHaveLength(1);
    await step(1);
    expect(calls).toEqual([
      [0, "register"],
      [1000, "register"],
    ]);
    await step(1999);
    expect(calls).toHaveLength(2);
    await step(1);
    expect(calls.at(-1)).toEqual([3000, "register"]);
    expect(logs[0]).toBe("POST /api/worker/register answered 404: Not found; retrying in 1.0 s");
    expect(reporter.stats.failures).toBe(3);
    await reporter.stop();
    expect(clock.pending).toBe(0);
  });

  it("registers at once after a heartbeat's 404, then backs off if that register fails", async () => {
    let registers = 0;
    const { calls, reporter, step } = scripted({
      register: () => (registers++ === 0 ? REGISTERED : notFound("/api/worker/register")),
      heartbeat: () => notFound("/api/worker/heartbeat"),
    });
    await reporter.start();
    await step(30_000);
    await step(0);
    expect(calls).toEqual([
      [0, "register"],
      [30_000, "heartbeat"],
      [30_000, "register"],
    ]);
    await step(999);
    expect(calls).toHaveLength(3);
    await step(1);
    expect(calls.at(-1)).toEqual([31_000, "register"]);
    await reporter.stop();
  });

  it("sends an update that arrived while a register was in flight", async () => {
    let release: (r: CallResult<RegisterAnswer>) => void = () => {};
    let first = true;
    const { registered, reporter, step } = scripted({
      register: () => {
        if (!first) return REGISTERED;
        first = false;
        return new Promise((resolve) => {
          release = resolve;
        });
      },
    });
    const started = reporter.start();
    const next = {
      worker_id: "w1",
      tunnel_url: "http://10.0.0.2:8700",
      capabilities: {},
      containers: [],
    };
    reporter.update(next);
    release(REGISTERED);
    await started;
    await step(0);
    expect(registered.map((r) => r.tunnel_url)).toEqual([
      "http://10.0.0.1:8700",
      "http://10.0.0.2:8700",
    ]);
    await reporter.stop();
  });
});
