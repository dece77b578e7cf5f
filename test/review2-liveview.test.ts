/**
 * Review 2 (attacker's pass over issue 9 item 11): the coordinator asks the leader of every
 * cluster for its live view, at the URL that cluster's own report gives. Any cluster token
 * holder may start a cluster of its own ("A stranger can create a cluster of its own",
 * SECURITY.md) and so chooses a URL the coordinator calls every couple of seconds.
 */
import { afterEach, describe, expect, it } from "vitest";
import { Gateway } from "../agent/gateway.ts";
import { member, report, testCoordinator } from "./helpers/coord-fixtures.ts";
import { peer } from "./helpers/signing.ts";

const secured = {
  clusterToken: "cluster-secret",
  adminToken: "admin-secret",
  agentToken: "agent-view-secret",
  liveView: true,
  upstreamAllow: "public,private,loopback",
};
const token = { authorization: "Bearer cluster-secret" };
const admin = { authorization: "Bearer admin-secret" };
const mallory = peer("mallory");
const SQUAT_URL = "http://203.0.113.7:8700"; // the token holder's own "leader" (never dialled)

/** A stranger's cluster whose leader URL is the stranger's server. */
const squat = () =>
  report({
    cluster: "squat",
    leader_id: mallory,
    members: [member(mallory, { url: SQUAT_URL })],
  } as never);

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

describe("finding 8: the live view's credential is a bearer token for a minute, for any agent", () => {
  // FINDING review2-8 (medium): `viewAuthText(ts)` signs only the time. The coordinator sends
  // it to the leader URL of any cluster, including one a token holder made up, which can then
  // replay it (for up to a minute, as often as it likes) to every agent of every cluster that
  // shares ROLLCALL_AGENT_TOKEN and read their live views. Suggested: sign the target too
  // (the leader's PeerId, which the agent checks against its own id, or its URL's host) and
  // keep a short replay cache on the agent (agent/view-auth.ts `viewAuthorized`).
  it("a credential sent to a stranger's leader URL does not open another agent's view", async () => {
    let captured: string | undefined;
    const fetcher = (async (input: RequestInfo | URL, init?: RequestInit) => {
      if (String(input).startsWith(SQUAT_URL)) {
        captured = new Headers(init?.headers).get("authorization") ?? undefined;
      }
      return new Response("not found", { status: 404 });
    }) as typeof fetch;
    const { call } = testCoordinator(secured, fetcher);
    expect((await call("POST", "/api/cluster/heartbeat", squat(), token)).status).toBe(200);
    await call("GET", "/api/admin/workers", undefined, admin);
    expect(captured).toMatch(/^Rollcall-View /);

    // A real agent of another cluster, with the same agent token.
    const gw = new Gateway(
      { host: "127.0.0.1", port: 0, agentToken: "agent-view-secret" },
      {
        service: () => undefined,
        services: () => [],
        health: () => ({}),
        clusterView: () => ({ cluster: "prod", members: ["secret topology"] }),
      },
    );
    const port = await gw.start();
    cleanups.push(() => gw.stop());
    const res = await fetch(`http://127.0.0.1:${port}/_agent/cluster`, {
      headers: { authorization: captured as string },
    });
    expect(res.status).toBe(401);
  });
});

describe("finding 9: the live view is read whole, whatever its size", () => {
  // FINDING review2-9 (medium): `LiveViews.#refresh` does `await res.json()` with no cap: the
  // stranger's "leader" answers with as many bytes as the timeout lets through, every couple
  // of seconds, into the coordinator's memory (on Workers, 128 MB ends the isolate). Suggested:
  // read at most a cap (a view of 1,000 members under ROLLCALL_MAX_DOC_BYTES-like bounds,
  // say 1 MiB, or Content-Length checked first) and cancel the body beyond it.
  it("stops reading a live view past a size cap", async () => {
    let pulled = 0;
    const chunk = new Uint8Array(1 << 20).fill(0x20); // 1 MiB of JSON whitespace
    const fetcher = (async (input: RequestInfo | URL) => {
      if (!String(input).startsWith(SQUAT_URL)) return new Response("", { status: 404 });
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (sent++ < 16) {
            pulled += chunk.length;
            controller.enqueue(chunk);
          } else {
            controller.enqueue(new TextEncoder().encode('{"members":[]}'));
            controller.close();
          }
        },
      });
      return new Response(body, { headers: { "content-type": "application/json" } });
    }) as typeof fetch;
    const { call } = testCoordinator(secured, fetcher);
    expect((await call("POST", "/api/cluster/heartbeat", squat(), token)).status).toBe(200);
    await call("GET", "/api/admin/workers", undefined, admin);
    expect(pulled).toBeGreaterThan(0);
    expect(pulled).toBeLessThanOrEqual(4 << 20);
  });
});

describe("finding 9 (fixed): a live view announced larger than the cap", () => {
  it("is refused on its Content-Length, before a byte of it is read", async () => {
    let pulled = 0;
    const fetcher = (async (input: RequestInfo | URL) => {
      if (!String(input).startsWith(SQUAT_URL)) return new Response("", { status: 404 });
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          pulled++;
          controller.enqueue(new TextEncoder().encode('{"members":[]}'));
          controller.close();
        },
      });
      return new Response(body, {
        headers: { "content-type": "application/json", "content-length": String(64 << 20) },
      });
    }) as typeof fetch;
    const { call } = testCoordinator(secured, fetcher);
    expect((await call("POST", "/api/cluster/heartbeat", squat(), token)).status).toBe(200);
    await call("GET", "/api/admin/workers", undefined, admin); // waits for the live view
    const metrics = await call("GET", "/api/admin/metrics", undefined, admin);
    expect(metrics.body.live_views.squat.last_error).toMatch(/larger than/);
    expect(pulled).toBeLessThanOrEqual(1); // a stream may be asked for its first chunk at once
  });
});
