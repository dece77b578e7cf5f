/**
 * Hostile input at every coordinator endpoint (fast-check): generated methods, paths, headers
 * and bodies, with and without the right tokens, against a coordinator that already holds
 * workers and a cluster. Every answer is below 500 (a service path may answer its documented
 * 503 when no provider is reachable), every 4xx is a JSON error and writes nothing, nothing
 * reaches Object.prototype, and memory stays bounded. Upstream calls go to a stub: a generated
 * registration may name any URL, and no test sends traffic off this machine.
 * Runs: ROLLCALL_FUZZ_RUNS (10,000 in `npm run fuzz`), a short count in `npm test`.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createCoordinator, ErrorAnswerSchema, memoryStore } from "../coordinator.ts";
import { agentPost, testClock, member, registration, report } from "./helpers/coord-fixtures.ts";
import { countingStore } from "../support/counting-store.ts";
import { fuzzRuns } from "./helpers/fuzz.ts";
import { bodies, extraHeader, methods, pathUnder } from "./helpers/hostile.ts";

const CLUSTER = "fz-cluster-token";
const ADMIN = "fz-admin-token";

function setup() {
  const clock = testClock();
  const store = countingStore(memoryStore({}, { clock }));
  const upstreamCalls: string[] = [];
  const coordinator = createCoordinator(
    {
      clusterToken: CLUSTER,
      adminToken: ADMIN,
      liveView: false,
      aliases: { "/clients": "upload", "/uploads/": "upload" },
    },
    {
      store,
      clock,
      fetch: async (input) => {
        upstreamCalls.push(String(input instanceof Request ? input.url : input));
        return Response.json({ ok: true });
      },
    },
  );
  return { clock, store, coordinator, upstreamCalls };
}

const VALID_BODIES = [
  registration("w1"),
  { worker_id: "w1", status: "online", current_load: 0.5, available_memory: 1024 },
  report({
    members: [member("A"), member("B", { services: [{ name: "rag", status: "healthy" }] })],
  }),
];

const PATHS = fc.oneof(
  {
    arbitrary: fc.constantFrom(
      "/api/worker/register",
      "/api/worker/heartbeat",
      "/api/cluster/heartbeat",
    ),
    weight: 6,
  },
  fc.constantFrom(
    "/health",
    "/metrics",
    "/api/worker/register",
    "/api/worker/heartbeat",
    "/api/cluster/heartbeat",
    "/api/admin/workers",
    "/api/admin/services",
    "/api/admin/breakers",
    "/api/admin/metrics",
    "/api/admin/stats",
    "/api/admin/leader",
    "/api/admin/budget",
    "/clients",
    "/uploads/x",
  ),
  pathUnder("/api/worker/unregister/"),
  pathUnder("/api/service/"),
  pathUnder("/api/admin/"),
  pathUnder("/"),
  pathUnder("/uploads/"),
);

const AUTH = fc.constantFrom(
  `Bearer ${CLUSTER}`,
  `Bearer ${CLUSTER}`,
  `Bearer ${ADMIN}`,
  undefined,
  `Bearer ${CLUSTER}`,
  `Bearer ${ADMIN}`,
  "Bearer ",
  "Bearer wrong",
  `bearer ${ADMIN}`,
  `Basic ${btoa("admin:admin")}`,
  `Bearer ${ADMIN} extra`,
);

const CONTENT_TYPE = fc.constantFrom(
  undefined,
  "application/json",
  "application/json; charset=utf-16",
  "text/plain",
  "multipart/form-data; boundary=x",
  "application/x-www-form-urlencoded",
);

const requests = fc.record({
  method: fc.oneof({ arbitrary: fc.constant("POST"), weight: 3 }, methods),
  path: PATHS,
  auth: AUTH,
  contentType: CONTENT_TYPE,
  extra: fc.array(extraHeader, { maxLength: 3 }),
  body: bodies(VALID_BODIES),
});

type Generated = typeof requests extends fc.Arbitrary<infer T> ? T : never;

function toRequest(g: Generated): Request | null {
  const headers = new Headers();
  try {
    for (const [k, v] of g.extra) headers.set(k, v);
  } catch {
    return null;
  }
  if (g.auth) headers.set("authorization", g.auth);
  if (g.contentType) headers.set("content-type", g.contentType);
  const hasBody = g.body !== undefined && g.method !== "GET" && g.method !== "HEAD";
  try {
    return new Request(`http://coordinator.test${g.path}`, {
      method: g.method,
      headers,
      ...(hasBody ? { body: g.body } : {}),
    });
  } catch {
    return null; // a method or URL that no client can send (Request refuses it)
  }
}

const proxied = (path: string) =>
  path.startsWith("/api/service/") || path.startsWith("/clients") || path.startsWith("/uploads/");

describe("every coordinator endpoint under hostile input", () => {
  it("answers below 500, 4xx as a JSON error that writes nothing; no prototype pollution; memory bounded", async () => {
    const { clock, store, coordinator } = setup();
    const seed = async (path: string, body: unknown) => {
      const res = await agentPost(
        {
          request: (p, init) => coordinator.fetch(new Request(`http://coordinator.test${p}`, init)),
        },
        path,
        body,
        clock.now(),
        { authorization: `Bearer ${CLUSTER}` },
      );
      expect(res.status).toBe(200);
    };
    await seed("/api/worker/register", registration("seeded", { services: ["upload", "rag"] }));
    await seed("/api/cluster/heartbeat", report());
    const heapBefore = process.memoryUsage().heapUsed;
    let answered = 0;
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(requests, async (g) => {
        const request = toRequest(g);
        fc.pre(request !== null);
        const pending = coordinator.budget().pending_writes;
        const writes = store.writes;
        const res = await coordinator.fetch(request as Request);
        answered++;
        clock.advance(1000);
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        const text = g.method === "HEAD" ? "" : await res.text();
        const context = `${g.method} ${g.path.slice(0, 120)} -> ${res.status} ${text.slice(0, 200)}`;
        if (res.status === 503 && proxied(g.path)) {
          if (g.method !== "HEAD")
            expect(text, context).toMatch(/not available|No healthy workers|busy|Retry/i);
        } else {
          expect(res.status, context).toBeLessThan(500);
        }
        if (res.status >= 400 && res.status < 500) {
          if (g.method !== "HEAD") {
            // Every refusal is the contract's error answer (docs/PROTOCOL.md, ErrorAnswerSchema).
            const parsed = ErrorAnswerSchema.safeParse(JSON.parse(text));
            expect(parsed.success ? [] : parsed.error.issues, context).toEqual([]);
          }
          if (pending === 0) expect(store.writes - writes, context).toBe(0);
        }
        expect(({} as Record<string, unknown>).polluted, context).toBeUndefined();
      }),
      { numRuns: fuzzRuns(400), endOnFailure: true },
    );
    const grown = process.memoryUsage().heapUsed - heapBefore;
    console.log(
      `coordinator fuzz: ${answered} requests, statuses ${JSON.stringify(Object.fromEntries([...statuses].sort()))}, heap +${Math.round(grown / 1e6)} MB, ${store.writes} writes`,
    );
    // Bounded: every per-isolate collection is capped; 10,000 requests must not hold 100 MB.
    expect(grown).toBeLessThan(100 * 1024 * 1024);
    // Still serving.
    const health = await coordinator.fetch(new Request("http://coordinator.test/health"));
    expect(health.status).toBe(200);
  }, 600_000);
});
