/**
 * One wire contract: every JSON answer the coordinator gives in its normal flows (direct mode,
 * leader mode, the admin API, the proxy's and the guards' errors) parses with its schema from
 * coordinator.ts _Wire schemas_, the schemas the agent, the commands and the scripts read
 * answers with.
 */
import { describe, expect, it } from "vitest";
import type { z } from "zod";
import {
  BreakersAnswerSchema,
  BudgetAnswerSchema,
  ClusterHeartbeatAnswerSchema,
  ErrorAnswerSchema,
  FindAnswerSchema,
  HealthAnswerSchema,
  LeaderAnswerSchema,
  OkAnswerSchema,
  RegisterAnswerSchema,
  ServicesAnswerSchema,
  StatsAnswerSchema,
  UnregisterAnswerSchema,
  WorkersAnswerSchema,
} from "../coordinator.ts";
import type { Answer } from "./helpers/answer.ts";
import { member, registration, report, testCoordinator } from "./helpers/coord-fixtures.ts";

/** Expects an answer of `status` whose body parses with `schema`; says which field did not. */
function expectAnswer(answer: Answer, status: number, schema: z.ZodType): void {
  expect(answer.status, JSON.stringify(answer.body)).toBe(status);
  expect(answer.headers.get("content-type")).toMatch(/^application\/json/);
  const parsed = schema.safeParse(answer.body);
  expect(parsed.success ? [] : parsed.error.issues).toEqual([]);
}

/** An upstream that answers every proxied call (the proxy's breakers then have rows). */
const upstream: typeof fetch = async () => new Response("ok", { status: 200 });

describe("the coordinator's answers parse with their wire schemas", () => {
  it("direct mode: register, heartbeat, find, unregister", async () => {
    const { call } = testCoordinator({}, upstream);
    const plain = await call("POST", "/api/worker/register", registration("w1"));
    expectAnswer(plain, 200, RegisterAnswerSchema);
    const leader = await call(
      "POST",
      "/api/worker/register",
      registration("w2", {
        name: "box-2",
        wants_heartbeat_leadership: true,
        containers: [{ name: "rag", service_url: "http://127.0.0.1:9998/rag", port: 9998 }],
        capabilities: { has_gpu: true, gpu_memory: "24GB", hostname: "box-2" },
      }),
    );
    expectAnswer(leader, 200, RegisterAnswerSchema);
    expect(leader.body.tier).toBe(1);
    const beat = { worker_id: "w1", status: "online", current_load: 0.5, available_memory: "3GB" };
    expectAnswer(await call("POST", "/api/worker/heartbeat", beat), 200, OkAnswerSchema);
    expectAnswer(await call("GET", "/api/worker/find/upload"), 200, FindAnswerSchema);
    expectAnswer(await call("DELETE", "/api/worker/unregister/w1"), 200, UnregisterAnswerSchema);
  });

  it("leader mode: reports (changed, unchanged) and the token check", async () => {
    const { call } = testCoordinator();
    const first = await call("POST", "/api/cluster/heartbeat", report());
    expectAnswer(first, 200, ClusterHeartbeatAnswerSchema);
    expect(first.body.reason).toBe("changed");
    const again = await call("POST", "/api/cluster/heartbeat", report({ sequence: 2 }));
    expectAnswer(again, 200, ClusterHeartbeatAnswerSchema);
    expect(again.body.reason).toBe("unchanged");
    expectAnswer(await call("GET", "/api/cluster/auth"), 200, OkAnswerSchema);
  });

  it("/health and the admin API over both modes, after routed traffic", async () => {
    const { call } = testCoordinator({}, upstream);
    await call("POST", "/api/worker/register", registration("w1", { name: "box-1" }));
    const members = [
      member("A", { name: "a-1", tier: 1, capabilities: { cpu_cores: 8 } }),
      member("B", { status: "degraded" }),
    ];
    await call("POST", "/api/cluster/heartbeat", report({ members }));
    expect((await call("GET", "/api/service/upload/x")).status).toBe(200);
    expectAnswer(await call("GET", "/health"), 200, HealthAnswerSchema);
    const schemas = {
      workers: WorkersAnswerSchema,
      services: ServicesAnswerSchema,
      breakers: BreakersAnswerSchema,
      stats: StatsAnswerSchema,
      leader: LeaderAnswerSchema,
      budget: BudgetAnswerSchema,
    };
    for (const [path, schema] of Object.entries(schemas)) {
      expectAnswer(await call("GET", `/api/admin/${path}`), 200, schema);
    }
    const breakers = await call("GET", "/api/admin/breakers");
    expect(breakers.body.breakers.length).toBeGreaterThan(0);
  });

  it("errors: bad input, unknown worker or path, no provider, refused token, wrong type", async () => {
    const open = testCoordinator();
    const errors: [Promise<Answer>, number][] = [
      [open.call("POST", "/api/worker/register", { worker_id: "bad id!" }), 400],
      [open.call("POST", "/api/worker/register", "{not json"), 400],
      [open.call("POST", "/api/worker/heartbeat", { worker_id: "nobody" }), 404],
      [open.call("DELETE", "/api/worker/unregister/nobody"), 404],
      [open.call("GET", "/api/worker/find/nothing"), 404],
      [open.call("GET", "/no/such/path"), 404],
      [open.call("GET", "/api/service/nothing/x"), 503],
      [open.call("POST", "/api/worker/heartbeat", "{}", { "content-type": "text/plain" }), 415],
    ];
    const secured = testCoordinator({ clusterToken: "cluster-secret", adminToken: "admin-secret" });
    const wrong = { authorization: "Bearer nope" };
    errors.push(
      [secured.call("POST", "/api/cluster/heartbeat", report(), wrong), 401],
      [secured.call("GET", "/api/admin/workers", undefined, wrong), 401],
    );
    for (const [answer, status] of errors) expectAnswer(await answer, status, ErrorAnswerSchema);
  });
});
