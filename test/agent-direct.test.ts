/** Direct mode against the real coordinator code, in-process, on a fake clock. */
import { describe, expect, it } from "vitest";
import { CoordinatorClient } from "../agent/client.ts";
import { DirectReporter, type Registration } from "../agent/direct.ts";
import { createCoordinator, memoryStore } from "../coordinator.ts";
import { FakeClock } from "../mesh/clock.ts";

function setup() {
  const clock = new FakeClock(Date.UTC(2026, 0, 1));
  const store = memoryStore({}, { clock });
  const coordinator = createCoordinator({ clusterToken: "t" }, { store, clock });
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
    const res = await coordinator.app.request("/api/admin/workers");
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
