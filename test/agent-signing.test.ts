/**
 * The agent's side of the trust boundaries (docs/SECURITY.md, items 7 and 11): it signs every
 * coordinator call with its libp2p key (and gets back in step when its clock is off), and its
 * gateway serves the live view only to the agent-view credential, never to the cluster token.
 */
import { generateKeyPair } from "@libp2p/crypto/keys";
import { describe, expect, it } from "vitest";
import { CoordinatorClient } from "../agent/client.ts";
import { DirectReporter } from "../agent/direct.ts";
import { Gateway } from "../agent/gateway.ts";
import { signerFromKey } from "../agent/signer.ts";
import { ViewReplayCache, viewAuthorized } from "../agent/view-auth.ts";
import { createCoordinator, memoryStore, viewAuthorization } from "../coordinator.ts";
import { FakeClock } from "../mesh/clock.ts";

const MIN = 60_000;

describe("the agent signs its coordinator calls", () => {
  it("registers, heartbeats and unregisters as its PeerId, and no token holder can act for it", async () => {
    const clock = new FakeClock(Date.UTC(2026, 0, 1));
    const coordinator = createCoordinator(
      { clusterToken: "t", adminToken: "a", liveView: false },
      { store: memoryStore({}, { clock }), clock },
    );
    const fetcher = (async (input: RequestInfo | URL, init?: RequestInit) =>
      coordinator.app.request(new Request(input, { ...init, signal: null }))) as typeof fetch;
    const signer = signerFromKey(await generateKeyPair("Ed25519"));
    // The agent's clock is 10 minutes behind: its first call is refused as expired, and the
    // client sends it again on the coordinator's time.
    const client = new CoordinatorClient(
      { baseUrl: "http://c", token: "t", signer },
      { fetch: fetcher, now: () => clock.now() - 10 * MIN },
    );
    const reporter = new DirectReporter(
      {
        worker_id: signer.id,
        tunnel_url: "http://10.0.0.1:8700",
        capabilities: {},
        containers: [],
      },
      { client, clock, load: () => ({ status: "online", current_load: 0, available_memory: 1 }) },
    );
    await reporter.start();
    expect(reporter.registered?.worker_id).toBe(signer.id);
    const hb = await client.heartbeat({ worker_id: signer.id, status: "online" });
    expect(hb.ok).toBe(true);

    // The same token, without the key.
    const thief = new CoordinatorClient({ baseUrl: "http://c", token: "t" }, { fetch: fetcher });
    const stolen = await thief.heartbeat({ worker_id: signer.id, status: "draining" });
    expect(stolen).toMatchObject({ ok: false, status: 401 });
    expect((await thief.unregister(signer.id)).ok).toBe(false);

    await reporter.stop(); // a signed unregister
    const workers = await coordinator.app.request("/api/admin/workers", {
      headers: { authorization: "Bearer a" },
    });
    expect(await workers.json()).toEqual([]);
  });
});

describe("the live view's credential", () => {
  async function gateway(init: { agentToken?: string; viewLocked?: boolean }) {
    const g = new Gateway(
      { host: "127.0.0.1", port: 0, ...init },
      {
        service: () => undefined,
        services: () => [],
        health: () => ({}),
        clusterView: () => ({ members: [] }),
      },
    );
    const port = await g.start();
    const status = (authorization?: string) =>
      fetch(`http://127.0.0.1:${port}/_agent/cluster`, {
        headers: authorization ? { authorization } : {},
      }).then((r) => r.status);
    return { status, stop: () => g.stop() };
  }

  it("serves the view to an HMAC of the agent token (or the token), never to a stale one or another token", async () => {
    const g = await gateway({ agentToken: "view-secret" });
    try {
      expect(await g.status(await viewAuthorization("view-secret", Date.now()))).toBe(200);
      expect(await g.status("Bearer view-secret")).toBe(200);
      expect(await g.status()).toBe(401);
      expect(await g.status("Bearer cluster-secret")).toBe(401);
      expect(await g.status(await viewAuthorization("cluster-secret", Date.now()))).toBe(401);
      expect(await g.status(await viewAuthorization("view-secret", Date.now() - 2 * MIN))).toBe(
        401,
      );
    } finally {
      await g.stop();
    }
  });

  it("takes a signed credential once, and only one made out to this agent's PeerId", async () => {
    const g = new Gateway(
      { host: "127.0.0.1", port: 0, agentToken: "view-secret" },
      {
        service: () => undefined,
        services: () => [],
        health: () => ({}),
        clusterView: () => ({ members: [] }),
        selfId: () => "agent-a",
      },
    );
    const port = await g.start();
    const status = (authorization: string) =>
      fetch(`http://127.0.0.1:${port}/_agent/cluster`, { headers: { authorization } }).then(
        (r) => r.status,
      );
    try {
      const mine = await viewAuthorization("view-secret", Date.now(), "agent-a");
      expect(await status(mine)).toBe(200);
      expect(await status(mine)).toBe(401); // replayed
      expect(await status(await viewAuthorization("view-secret", Date.now(), "agent-b"))).toBe(401);
      expect(await status(await viewAuthorization("view-secret", Date.now() + 1, "agent-a"))).toBe(
        200,
      );
    } finally {
      await g.stop();
    }
  });

  it("keeps a used credential strictly past the end of its window", () => {
    const seen = new ViewReplayCache(2);
    expect(seen.use("s", 100, 0)).toBe(true);
    expect(seen.use("s", 100, 99)).toBe(false);
    expect(seen.use("s", 100, 100)).toBe(true); // its window is over: the skew check refuses it
    expect(seen.use("t", 200, 101)).toBe(true);
    expect(seen.use("u", 200, 101)).toBe(true); // full: the oldest ("s") goes
    expect(seen.use("u", 200, 102)).toBe(false);
    expect(seen.use("t", 200, 102)).toBe(false);
  });

  it("serves nobody when a cluster token is set but no agent token (the view is not open then)", async () => {
    const g = await gateway({ viewLocked: true });
    try {
      expect(await g.status()).toBe(401);
      expect(await g.status("Bearer anything")).toBe(401);
    } finally {
      await g.stop();
    }
  });

  it("checks the HMAC in constant form: a wrong length or a malformed header is refused", () => {
    const now = Date.now();
    for (const header of [
      `Rollcall-View ts=${now}, sig=abc`,
      `Rollcall-View ts=${now}, sig=${"0".repeat(64)}`,
      `Rollcall-View ts=x, sig=${"0".repeat(64)}`,
      "Rollcall-View",
      "",
    ]) {
      expect(viewAuthorized(header, "view-secret", now), header).toBe(false);
    }
  });
});
