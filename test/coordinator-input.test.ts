/** In-process route tests of the coordinator's guards: tokens, and bad input (clear 4xx, never 500). */
import { describe, expect, it } from "vitest";
import { createCoordinator, tokensEqual } from "../coordinator.ts";
import { member, registration, report, testCoordinator } from "./helpers/coord-fixtures.ts";
import { prng } from "../support/random.ts";

describe("security", () => {
  const secured = () =>
    testCoordinator({ clusterToken: "cluster-secret", adminToken: "admin-secret" });
  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

  it("needs the cluster token on agent endpoints and the admin token on admin endpoints", async () => {
    const { call, store } = secured();
    const none = await call("POST", "/api/cluster/heartbeat", report());
    expect(none.status).toBe(401);
    expect(none.body.error).toBe("Missing token");
    const wrong = await call("POST", "/api/cluster/heartbeat", report(), bearer("nope"));
    expect(wrong.status).toBe(401);
    expect(wrong.body.error).toBe("Invalid token");
    expect((await call("POST", "/api/worker/register", registration("w"))).status).toBe(401);
    expect(store.writes).toBe(0);
    expect(
      (await call("POST", "/api/cluster/heartbeat", report(), bearer("cluster-secret"))).status,
    ).toBe(200);
    expect((await call("GET", "/api/admin/workers")).status).toBe(401);
    expect(
      (await call("GET", "/api/admin/workers", undefined, bearer("cluster-secret"))).status,
    ).toBe(401);
    expect((await call("GET", "/api/admin/stats", undefined, bearer("admin-secret"))).status).toBe(
      200,
    );
  });

  it("admits token-less direct workers only with the legacy setting, never a wrong token", async () => {
    const { call } = testCoordinator({
      clusterToken: "c",
      adminToken: "a",
      allowLegacyWorkers: true,
    });
    expect((await call("POST", "/api/worker/register", registration("old"))).status).toBe(200);
    expect(
      (await call("POST", "/api/worker/heartbeat", { worker_id: "old", status: "online" })).status,
    ).toBe(200);
    expect(
      (await call("POST", "/api/worker/register", registration("x"), bearer("bad"))).status,
    ).toBe(401);
    expect((await call("POST", "/api/cluster/heartbeat", report())).status).toBe(401);
    expect((await call("DELETE", "/api/worker/unregister/old")).status).toBe(200);
  });

  it.each([
    ["abc", "abc", true],
    ["abc", "abd", false],
    ["", "abc", false],
    ["abcd", "abc", false],
  ])("compares tokens correctly: %j and %j are equal: %s", async (a, b, equal) => {
    expect(await tokensEqual(a, b)).toBe(equal);
  });
});

describe("bad input: clear 4xx, never 500, nothing written", () => {
  const endpoints = ["/api/worker/register", "/api/worker/heartbeat", "/api/cluster/heartbeat"];
  /**
   * Each body with what register answers it. Register keeps only the keys it knows and needs
   * none, so a body whose every bad key is foreign to register is a valid register body (200);
   * the heartbeats answer 400 to every one of them.
   */
  const garbage: Array<[body: unknown, register: 200 | 400]> = [
    ["", 400],
    ["not json", 400],
    ["{", 400],
    ["null", 400],
    ["[]", 400],
    ["42", 400],
    ['"str"', 400],
    [{ worker_id: 5 }, 400],
    [{ worker_id: "../../etc" }, 400],
    [{ worker_id: "a", status: 7 }, 200],
    [{ worker_id: "a", current_load: -1 }, 200],
    // Old agents send informational figures as strings ("3.2GB"): those are taken; an object is not.
    [{ worker_id: "a", current_load: { n: 1 } }, 200],
    [{ tunnel_url: "javascript:alert(1)" }, 400],
    [{ tunnel_url: "http://user:pw@host/" }, 400],
    [{ services: [{ name: "../admin" }] }, 400],
    [{ services: Array.from({ length: 65 }, (_, i) => `s${i}`) }, 400],
    [{ services: Array.from({ length: 10_000 }, (_, i) => `s${i}`) }, 400],
    [{ capabilities: { has_gpu: "yes" } }, 400],
    [{ capabilities: { nested: { deep: true } } }, 400],
    [{ leader_id: "A", term: -1, sequence: 0, members: [] }, 200],
    [{ leader_id: "A", term: 1.5, sequence: 0, members: [] }, 200],
    [{ leader_id: "A", term: 1, sequence: 0, members: [member("A"), member("A")] }, 200],
    [{ leader_id: "A", term: 1, sequence: 0, members: [member("A", { status: "zombie" })] }, 200],
    [{ leader_id: "A", term: 1, sequence: 0, members: [member("A", { url: "ftp://x" })] }, 200],
    [
      {
        leader_id: "A",
        term: 1,
        sequence: 0,
        members: [member("A", { services: [{ name: "x" }, { name: "x" }] })],
      },
      200,
    ],
    [{ leader_id: "A", term: 1, sequence: 0, members: "all" }, 200],
    [{ __proto__: { polluted: true }, leader_id: "A" }, 200],
  ];

  /** Every (endpoint, body) pair, with its answer and a short name for the test title. */
  const cases = endpoints.flatMap((path) =>
    garbage.map(([body, register], row) => ({
      path,
      row,
      body,
      shown: (JSON.stringify(body) ?? String(body)).slice(0, 60),
      expected: path === "/api/worker/register" ? register : 400,
    })),
  );

  it.each(cases)(
    "answers $path with $expected for garbage row $row: $shown",
    async ({ path, body, expected }) => {
      const { call, store } = testCoordinator();
      const res = await call("POST", path, body);
      expect(res.status, `${path} ${JSON.stringify(body)}`).toBe(expected);
      if (expected === 200) expect(res.body.status).toBe("registered");
      else {
        expect(typeof res.body.error).toBe("string");
        expect(store.writes).toBe(0);
      }
      expect((await call("GET", "/api/admin/leader")).body.clusters).toEqual([]);
    },
  );

  it("registers the accepted garbage bodies as two workers, in two writes", async () => {
    const { call, store } = testCoordinator();
    for (const { path, body, expected } of cases) {
      expect((await call("POST", path, body)).status, `${path} ${JSON.stringify(body)}`).toBe(
        expected,
      );
    }
    // Worker "a" once (registering it again the same writes nothing), and one worker for the 8
    // accepted bodies that name none: they send the same (no) tunnel URL and capabilities, so
    // they get the same id back (a legacy registration is deduplicated, never a new record each).
    const workers = (await call("GET", "/api/admin/workers")).body;
    expect(workers).toHaveLength(2);
    expect(store.writes).toBe(2);
    expect((await call("GET", "/api/admin/leader")).body.clusters).toEqual([]);
  });

  it("survives random bytes and random JSON (fuzz)", async () => {
    const { call, store } = testCoordinator();
    const rand = prng(42);
    const atoms = [null, true, 0, -1, 1e308, "", "x", "online", [], {}, "http://127.0.0.1:1"];
    const keys = [
      "worker_id",
      "leader_id",
      "term",
      "sequence",
      "members",
      "status",
      "url",
      "services",
      "name",
    ];
    const value = (depth: number): unknown => {
      if (depth > 2 || rand() < 0.4) return atoms[Math.floor(rand() * atoms.length)];
      if (rand() < 0.5)
        return Array.from({ length: Math.floor(rand() * 3) }, () => value(depth + 1));
      return Object.fromEntries(
        Array.from({ length: Math.floor(rand() * 5) }, () => [
          keys[Math.floor(rand() * keys.length)],
          value(depth + 1),
        ]),
      );
    };
    for (let i = 0; i < 300; i++) {
      const path = endpoints[i % 2 === 0 ? 2 : 1] as string;
      const body =
        i % 3 === 0
          ? String.fromCharCode(...Array.from({ length: 20 }, () => Math.floor(rand() * 256)))
          : JSON.stringify(value(0));
      const res = await call("POST", path, body);
      expect(res.status, body).toBeLessThan(500);
    }
    expect(store.writes).toBe(0);
  });

  it("refuses a last_seen no date can show, and still answers with one already stored", async () => {
    // Regression: such a report was stored, then every admin read and every routed request
    // answered 500 (Invalid Date), and it stayed the freshest entry for good.
    const { call, store, clock } = testCoordinator();
    const far = 8_700_000_000_000_000; // a safe integer, but past the last Date (8.64e15)
    const bad = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member("A", { last_seen: far })] }),
    );
    expect(bad.status).toBe(400);
    expect(bad.body.details[0].path).toBe("members.0.last_seen");
    expect(store.writes).toBe(0);
    await call("POST", "/api/cluster/heartbeat", report());
    const doc = JSON.parse((await store.get("reg/cluster/default")) as string);
    doc.members.A.last_seen = far;
    await store.set("reg/cluster/default", JSON.stringify(doc));
    const { app } = createCoordinator({ liveView: false }, { store, clock });
    const workers = await app.request("/api/admin/workers");
    expect(workers.status).toBe(200);
    const a = ((await workers.json()) as { worker_id: string; last_heartbeat: unknown }[]).find(
      (w) => w.worker_id === "A",
    );
    expect(a?.last_heartbeat).toBeNull();
    expect((await app.request("/api/admin/stats")).status).toBe(200);
    expect((await app.request("/api/service/nope/x")).status).toBe(503);
  });

  it("answers 413 for an oversized body", async () => {
    const { call, store } = testCoordinator({ maxBodyBytes: 1024 });
    const res = await call("POST", "/api/cluster/heartbeat", { pad: "x".repeat(5000) });
    expect(res.status).toBe(413);
    expect(res.body.error).toMatch(/larger than 1024 bytes/);
    expect(store.writes).toBe(0);
  });

  it("answers unknown paths with a JSON 404, and CORS preflights with 204 on service routes only", async () => {
    const { call, coordinator } = testCoordinator();
    const res = await call("GET", "/nope");
    expect(res.status).toBe(404);
    expect(res.body.error).toBe("Not found");
    const preflight = (path: string) =>
      coordinator.app.request(path, {
        method: "OPTIONS",
        headers: { origin: "https://x.example", "access-control-request-method": "POST" },
      });
    const service = await preflight("/api/service/upload/x");
    expect(service.status).toBe(204);
    expect(service.headers.get("access-control-allow-origin")).toBe("*");
  });

  // No web page may call (or read) the agent and admin endpoints.
  it.each(["/api/admin/workers", "/api/worker/register", "/api/cluster/heartbeat"])(
    "gives no CORS grant to a preflight for %s",
    async (path) => {
      const { coordinator } = testCoordinator();
      const pre = await coordinator.app.request(path, {
        method: "OPTIONS",
        headers: { origin: "https://x.example", "access-control-request-method": "POST" },
      });
      expect(pre.headers.get("access-control-allow-origin"), path).toBeNull();
    },
  );

  it("gives no CORS grant to an admin read from a web page", async () => {
    const { call } = testCoordinator();
    const admin = await call("GET", "/api/admin/workers", undefined, {
      origin: "https://x.example",
    });
    expect(admin.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("lets a preflight for a service ask for any request header", async () => {
    // Regression: only Authorization and Content-Type were allowed, so a browser calling a
    // service with any other header (X-Requested-With, X-File-Name, ...) was refused by CORS.
    const { coordinator } = testCoordinator({ corsOrigin: "https://app.example" });
    const pre = await coordinator.fetch(
      new Request("http://coordinator/api/service/upload/files", {
        method: "OPTIONS",
        headers: {
          origin: "https://app.example",
          "access-control-request-method": "PUT",
          "access-control-request-headers": "X-File-Name, content-type, authorization",
        },
      }),
    );
    expect(pre.status).toBe(204);
    expect(pre.headers.get("access-control-allow-origin")).toBe("https://app.example");
    expect(pre.headers.get("access-control-allow-headers")?.toLowerCase()).toBe(
      "x-file-name,content-type,authorization",
    );
    expect(pre.headers.get("access-control-allow-methods")).toContain("PUT");
  });
});
