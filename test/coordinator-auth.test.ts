/**
 * Who may do what at the coordinator (docs/SECURITY.md, items 6, 7, 10, 11): guards that fail
 * closed, PeerIds decoded by hand and checked against @libp2p/peer-id, signed requests (Ed25519
 * through Web Crypto) against takeover and replay, the cluster's roster, JSON-only agent
 * endpoints, and the live view's own credential. Each test failed on the code before the fix.
 */
import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { describe, expect, it } from "vitest";
import { viewAuthorized } from "../agent/view-auth.ts";
import {
  base58Decode,
  CLUSTER_PACE_MS,
  CoordinatorConfigError,
  configFromEnv,
  isPeerId,
  peerIdPublicKey,
  resolveSettings,
  verifyEd25519,
} from "../coordinator.ts";
import { LEADER, member, registration, report, testCoordinator } from "./helpers/coord-fixtures.ts";
import { signedHeaders, type TestKey, testKey } from "./helpers/signing.ts";
import { until } from "./helpers/upstream.ts";

const MIN = 60_000;
/** The signature headers of a POST of `text` to `path` by `key` at `now`. */
const signPost = (key: TestKey, path: string, text: string, now: number) =>
  signedHeaders(key, { method: "POST", path, body: text, now });
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

describe("item 6: every guard needs its own token once any token is set", () => {
  it("refuses admin endpoints and /metrics when only the cluster token is set, and /health says so", async () => {
    const { call } = testCoordinator({ clusterToken: "cluster-secret" });
    for (const path of ["/api/admin/workers", "/api/admin/budget", "/metrics"]) {
      const res = await call("GET", path);
      expect(res.status, path).toBe(403);
      expect(res.body.error).toBe("Admin endpoints are disabled");
      expect((await call("GET", path, undefined, bearer("cluster-secret"))).status).toBe(403);
    }
    const health = (await call("GET", "/health")).body;
    expect(health).toMatchObject({
      mode: "secured",
      auth: { agent_endpoints: "token", admin_endpoints: "disabled" },
    });
  });

  it("refuses agent endpoints when only the admin token is set, except token-less legacy workers where admitted", async () => {
    const closed = testCoordinator({ adminToken: "admin-secret" });
    const res = await closed.call("POST", "/api/worker/register", registration("w"));
    expect(res.status).toBe(403);
    expect(res.body.error).toBe("Agent endpoints are disabled");
    expect(closed.store.writes).toBe(0);
    const legacy = testCoordinator({ adminToken: "admin-secret", allowLegacyWorkers: true });
    expect((await legacy.call("POST", "/api/worker/register", registration("w"))).status).toBe(200);
    const withToken = await legacy.call(
      "POST",
      "/api/worker/register",
      registration("w2"),
      bearer("anything"),
    );
    expect(withToken.status).toBe(403);
  });

  it("treats an empty or blank token as a configuration error, never as open", () => {
    for (const name of ["ROLLCALL_CLUSTER_TOKEN", "ROLLCALL_ADMIN_TOKEN", "ROLLCALL_AGENT_TOKEN"]) {
      for (const value of ["", "   "]) {
        expect(() => configFromEnv({ [name]: value }), `${name}=${JSON.stringify(value)}`).toThrow(
          new CoordinatorConfigError(`${name} is set but empty: remove it or set a value`),
        );
      }
    }
    expect(() => resolveSettings({ clusterToken: "" })).toThrow(CoordinatorConfigError);
    expect(() => resolveSettings({ adminToken: " " })).toThrow(CoordinatorConfigError);
    // The live view's credential reads only: it may not be a token that writes.
    expect(() => resolveSettings({ clusterToken: "same", agentToken: "same" })).toThrow(
      /agent token must differ/,
    );
    // Every agent holds the cluster token: it may not open the admin API too.
    expect(() => resolveSettings({ clusterToken: "same", adminToken: "same" })).toThrow(
      /cluster token must differ from the admin token/,
    );
  });
});

describe("item 7: PeerIds, decoded by hand", () => {
  it("finds the Ed25519 key inside real PeerIds, and nothing inside anything else", async () => {
    for (let i = 0; i < 20; i++) {
      const key = await generateKeyPair("Ed25519");
      const id = peerIdFromPrivateKey(key).toString();
      expect(peerIdPublicKey(id)).toEqual(key.publicKey.raw);
      expect(isPeerId(id)).toBe(true);
    }
    const secp = peerIdFromPrivateKey(await generateKeyPair("secp256k1")).toString();
    const others = [secp, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "worker-1", "12D3KooW"];
    for (const id of others) expect(isPeerId(id), id).toBe(false);
    const real = peerIdFromPrivateKey(await generateKeyPair("Ed25519")).toString();
    expect(isPeerId(`${real.slice(0, -1)}0`)).toBe(false); // 0 is no base58 digit
    expect(base58Decode("1112")).toEqual(new Uint8Array([0, 0, 0, 1]));
    expect(base58Decode("5Q")).toEqual(new Uint8Array([0xff]));
  });

  it("verifies an Ed25519 signature of a libp2p key with Web Crypto", async () => {
    const key = await generateKeyPair("Ed25519");
    const data = new TextEncoder().encode("rollcall");
    const sig = await key.sign(data);
    expect(await verifyEd25519(key.publicKey.raw, sig, data)).toBe(true);
    expect(await verifyEd25519(key.publicKey.raw, sig, new TextEncoder().encode("rollcalL"))).toBe(
      false,
    );
  });
});

describe("item 7: a worker id that is a PeerId belongs to its key", () => {
  const secured = () =>
    testCoordinator({ clusterToken: "cluster-secret", adminToken: "admin-secret" });

  it("lets only the key's own signed requests register, heartbeat or unregister it", async () => {
    const { call, store } = secured();
    const owner = testKey("direct owner");
    const body = registration(owner.id, { tunnel_url: "http://127.0.0.1:7001" });
    const token = bearer("cluster-secret");
    expect((await call("POST", "/api/worker/register", body, token)).status).toBe(200);
    const writes = store.writes;
    // A token holder without the key: overwrite, heartbeat "draining", delete. All refused.
    const hijack = registration(owner.id, { tunnel_url: "http://203.0.113.9:80" });
    const unsigned = { unsigned: true };
    for (const [method, path, b] of [
      ["POST", "/api/worker/register", hijack],
      ["POST", "/api/worker/heartbeat", { worker_id: owner.id, status: "draining" }],
      ["DELETE", `/api/worker/unregister/${owner.id}`, undefined],
    ] as const) {
      const res = await call(method, path, b, token, unsigned);
      expect(res.status, path).toBe(401);
      expect(res.body.error).toBe("Signature required");
    }
    // Another key signing for the owner's id.
    const other = testKey("another key");
    const text = JSON.stringify(hijack);
    const path = "/api/worker/register";
    const forged = await signPost(other, path, text, Date.now());
    const res = await call("POST", path, text, { ...token, ...forged });
    expect(res.status).toBe(401);
    expect(store.writes).toBe(writes);
    const worker = (await call("GET", "/api/admin/workers", undefined, bearer("admin-secret")))
      .body[0];
    expect(worker).toMatchObject({ worker_id: owner.id, tunnel_url: "http://127.0.0.1:7001" });
    expect(
      (await call("DELETE", `/api/worker/unregister/${owner.id}`, undefined, token)).status,
    ).toBe(200);
  });

  it("refuses a replayed, expired or tampered signature", async () => {
    const { call, clock } = secured();
    const owner = testKey("replayed owner");
    const path = "/api/worker/register";
    const text = JSON.stringify(registration(owner.id));
    const token = bearer("cluster-secret");
    const headers = await signPost(owner, path, text, clock.now());
    expect((await call("POST", path, text, { ...token, ...headers })).status).toBe(200);
    const replay = await call("POST", path, text, { ...token, ...headers });
    expect(replay.status).toBe(401);
    expect(replay.body.error).toBe("Request signature already used");
    const tampered = text.replace("127.0.0.1:9999", "203.0.113.9:9999");
    const fresh = await signPost(owner, path, text, clock.now());
    const bad = await call("POST", path, tampered, { ...token, ...fresh });
    expect(bad.body.error).toBe("Invalid request signature");
    const old = await signPost(owner, path, text, clock.now());
    clock.advance(6 * MIN);
    const expired = await call("POST", path, text, { ...token, ...old });
    expect(expired.status).toBe(401);
    expect(expired.body).toMatchObject({
      error: "Request signature expired",
      server_time: clock.now(),
    });
  });

  it("remembers a nonce strictly past the last moment its signature is good", async () => {
    const { call, clock } = secured();
    const owner = testKey("ahead owner");
    const path = "/api/worker/register";
    const text = JSON.stringify(registration(owner.id));
    const token = bearer("cluster-secret");
    // Signed as far ahead as the window allows: good until now + 2 windows, not a ms beyond.
    const ahead = await signPost(owner, path, text, clock.now() + 5 * MIN);
    expect((await call("POST", path, text, { ...token, ...ahead })).status).toBe(200);
    clock.advance(10 * MIN);
    const replay = await call("POST", path, text, { ...token, ...ahead });
    expect(replay.body.error).toBe("Request signature already used");
  });

  it("lets a token-less legacy worker touch only what legacy workers registered", async () => {
    const { call } = testCoordinator({
      clusterToken: "cluster-secret",
      adminToken: "admin-secret",
      allowLegacyWorkers: true,
    });
    const token = bearer("cluster-secret");
    expect((await call("POST", "/api/worker/register", registration("owned"), token)).status).toBe(
      200,
    );
    const takeover = registration("owned", { tunnel_url: "http://203.0.113.9:80" });
    expect((await call("POST", "/api/worker/register", takeover)).status).toBe(403);
    const hb = await call("POST", "/api/worker/heartbeat", { worker_id: "owned", status: "down" });
    expect(hb.status).toBe(403);
    expect((await call("DELETE", "/api/worker/unregister/owned")).status).toBe(403);
    // A legacy worker's own record stays its own, and a token holder may still manage it.
    expect((await call("POST", "/api/worker/register", registration("old-kind"))).status).toBe(200);
    expect(
      (await call("POST", "/api/worker/heartbeat", { worker_id: "old-kind", status: "online" }))
        .status,
    ).toBe(200);
    expect((await call("DELETE", "/api/worker/unregister/old-kind", undefined, token)).status).toBe(
      200,
    );
    // A signed worker's id can never be taken by a legacy request.
    const owner = testKey("legacy target");
    const res = await call(
      "POST",
      "/api/worker/register",
      registration(owner.id),
      {},
      {
        unsigned: true,
      },
    );
    expect(res.status).toBe(401);
  });
});

describe("item 7: a cluster report is its leader's, and a cluster's members are its roster's", () => {
  it("refuses a report not signed by its leader_id's key", async () => {
    const { call, store } = testCoordinator();
    expect(
      (await call("POST", "/api/cluster/heartbeat", report(), {}, { unsigned: true })).status,
    ).toBe(401);
    const other = testKey("not the leader");
    const text = JSON.stringify(report());
    const path = "/api/cluster/heartbeat";
    const forged = await signPost(other, path, text, Date.now());
    const res = await call("POST", path, text, forged);
    expect(res.status).toBe(401);
    expect(store.writes).toBe(0);
  });

  it("never lets a key its cluster never listed take the members over, whatever term it claims", async () => {
    const { call, clock } = testCoordinator();
    const real = [member(LEADER), member("B", { url: "http://127.0.0.1:8702" })];
    expect((await call("POST", "/api/cluster/heartbeat", report({ members: real }))).status).toBe(
      200,
    );
    const attacker = testKey("outsider");
    const evil = "http://203.0.113.66:80";
    const takeover = {
      leader_id: attacker.id,
      term: 99,
      sequence: 1,
      members: [
        member(attacker.id, { url: evil }),
        member(LEADER, { url: evil, incarnation: 99 }), // the real leader, as a plain member
        member("B", { url: evil, incarnation: 99 }),
      ],
    };
    const res = await call("POST", "/api/cluster/heartbeat", takeover);
    expect(res.status).toBe(403);
    expect(res.body.error).toBe("Leader is not a member of this cluster");
    const workers = (await call("GET", "/api/admin/workers")).body as { tunnel_url: string }[];
    expect(workers.map((w) => w.tunnel_url)).not.toContain(evil);
    // The real leader still reports, and removes what it no longer lists.
    clock.advance(CLUSTER_PACE_MS);
    const next = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ sequence: 2, members: [member(LEADER)] }),
    );
    expect(next.body.reason).toBe("changed");
    expect((await call("GET", "/api/admin/leader")).body.clusters[0].leader_id).toBe(LEADER);
  });

  it("lets a member its leader listed take over as the next leader", async () => {
    const { call } = testCoordinator();
    const next = testKey("next leader");
    await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member(LEADER), member(next.id)] }),
    );
    const res = await call("POST", "/api/cluster/heartbeat", {
      leader_id: next.id,
      term: 2,
      sequence: 1,
      members: [member(next.id)],
    });
    expect(res.status).toBe(200);
    expect((await call("GET", "/api/admin/leader")).body.clusters[0].leader_id).toBe(next.id);
  });

  it("keeps a worker id with whoever claimed it first: a newer cluster cannot take it over", async () => {
    const { call } = testCoordinator();
    const real = "http://127.0.0.1:8702";
    await call("POST", "/api/cluster/heartbeat", report({ members: [member("B", { url: real })] }));
    const owner = testKey("signed direct worker");
    await call(
      "POST",
      "/api/worker/register",
      registration(owner.id, { tunnel_url: "http://127.0.0.1:7007" }),
    );
    // An outsider starts its own cluster (allowed: the token admits it) listing both ids.
    const outsider = testKey("cluster founder");
    const evil = "http://203.0.113.66:80";
    const own = await call("POST", "/api/cluster/heartbeat", {
      cluster: "evil",
      leader_id: outsider.id,
      term: 1,
      sequence: 1,
      members: [member("B", { url: evil }), member(owner.id, { url: evil })],
    });
    expect(own.status).toBe(200);
    const workers = (await call("GET", "/api/admin/workers")).body as {
      worker_id: string;
      tunnel_url: string;
      cluster: string | null;
    }[];
    expect(workers.find((w) => w.worker_id === "B")).toMatchObject({
      tunnel_url: real,
      cluster: "default",
    });
    expect(workers.find((w) => w.worker_id === owner.id)?.tunnel_url).toBe("http://127.0.0.1:7007");
  });

  it("starts a cluster nobody reported for a week afresh", async () => {
    const { call, clock } = testCoordinator();
    await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member(LEADER), member("B")] }),
    );
    clock.advance(8 * 24 * 60 * MIN);
    const newcomer = testKey("newcomer");
    const res = await call("POST", "/api/cluster/heartbeat", {
      leader_id: newcomer.id,
      term: 1,
      sequence: 1,
      members: [member(newcomer.id)],
    });
    expect(res.status).toBe(200);
    const ids = ((await call("GET", "/api/admin/workers")).body as { worker_id: string }[]).map(
      (w) => w.worker_id,
    );
    expect(ids).toEqual([newcomer.id]);
  });

  it("lets an operator forget a cluster whose members all got new keys: its new leader is then admitted", async () => {
    const { call, clock, store } = testCoordinator({
      adminToken: "admin-secret",
      clusterToken: "cluster-secret",
    });
    const admin = bearer("admin-secret");
    const agent = bearer("cluster-secret");
    await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member(LEADER), member("B")] }),
      agent,
    );
    // The fleet's data directories were wiped: every member has a new key.
    const fresh = testKey("re-provisioned leader");
    const newReport = {
      leader_id: fresh.id,
      term: 1,
      sequence: 1,
      members: [member(fresh.id)],
    };
    const refused = await call("POST", "/api/cluster/heartbeat", newReport, agent);
    expect(refused.status).toBe(403);
    expect(refused.body.message).toContain("/api/admin/clusters/forget");

    const path = "/api/admin/clusters/forget";
    // Fails closed: not without the admin token, not with the agents' cluster token.
    expect((await call("POST", path, { cluster: "default" })).status).toBe(401);
    expect((await call("POST", path, { cluster: "default" }, agent)).status).toBe(401);
    const writes = store.writes;
    const done = await call("POST", path, { cluster: "default" }, admin);
    expect(done.status).toBe(200);
    expect(done.body).toMatchObject({
      status: "ok",
      cluster: "default",
      members: 2,
      written: true,
    });
    expect(store.writes).toBe(writes + 1);
    expect((await call("GET", "/api/admin/workers", undefined, admin)).body).toEqual([]);

    clock.advance(CLUSTER_PACE_MS);
    const admitted = await call("POST", "/api/cluster/heartbeat", newReport, agent);
    expect(admitted.status).toBe(200);
    const ids = (
      (await call("GET", "/api/admin/workers", undefined, admin)).body as { worker_id: string }[]
    ).map((w) => w.worker_id);
    expect(ids).toEqual([fresh.id]);
    // The forgotten keys are now the outsiders.
    clock.advance(CLUSTER_PACE_MS);
    const old = await call(
      "POST",
      "/api/cluster/heartbeat",
      report({ term: 5, members: [member(LEADER)] }),
      agent,
    );
    expect(old.status).toBe(403);
  });

  it("answers a bad forget with a 4xx and changes nothing", async () => {
    const { call, store } = testCoordinator({
      adminToken: "admin-secret",
      clusterToken: "cluster-secret",
    });
    const admin = bearer("admin-secret");
    const agent = bearer("cluster-secret");
    await call("POST", "/api/cluster/heartbeat", report(), agent);
    const writes = store.writes;
    const path = "/api/admin/clusters/forget";
    const cases: [unknown, Record<string, string>, number][] = [
      [{ cluster: "nope" }, {}, 404],
      [{ cluster: "../default" }, {}, 400],
      [{ cluster: 7 }, {}, 400],
      [{}, {}, 400],
      ["{not json", {}, 400],
      [JSON.stringify({ cluster: "default" }), { "content-type": "text/plain" }, 415],
      [{ cluster: "default", pad: "x".repeat(5000) }, {}, 413],
    ];
    for (const [body, headers, status] of cases) {
      const res = await call("POST", path, body, { ...admin, ...headers });
      expect(res.status, JSON.stringify(body).slice(0, 40)).toBe(status);
    }
    expect(store.writes).toBe(writes);
    expect((await call("GET", "/api/admin/workers", undefined, admin)).body).toHaveLength(2);
  });
});

describe("item 10: no cross-site writes", () => {
  it("takes agent calls only as JSON: a text/plain form post from any web page writes nothing", async () => {
    const { call, store } = testCoordinator();
    const body = JSON.stringify(registration("csrf"));
    for (const type of ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]) {
      const res = await call("POST", "/api/worker/register", body, { "content-type": type });
      expect(res.status, type).toBe(415);
    }
    expect(store.writes).toBe(0);
    for (const type of ["application/json; charset=utf-8", "application/vnd.rollcall+json"]) {
      const res = await call("POST", "/api/worker/register", body, { "content-type": type });
      expect(res.status, type).toBe(200);
    }
  });
});

describe("item 11: the live view has its own credential, and it never travels", () => {
  const liveSetup = (init: Record<string, unknown>) => {
    const asked: Headers[] = [];
    const fetcher = (async (url: string, init?: RequestInit) => {
      if (String(url).endsWith("/_agent/cluster")) asked.push(new Headers(init?.headers));
      return new Response(JSON.stringify({ members: [] }), { status: 200 });
    }) as typeof fetch;
    return { asked, t: testCoordinator({ liveView: true, ...init }, fetcher) };
  };

  it("signs the live view fetch with an HMAC of the agent token; the cluster token never goes", async () => {
    const { asked, t } = liveSetup({
      clusterToken: "cluster-secret",
      adminToken: "admin-secret",
      agentToken: "view-secret",
    });
    await t.call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member(LEADER)] }),
      bearer("cluster-secret"),
    );
    await t.call("GET", "/api/admin/services", undefined, bearer("admin-secret"));
    await until("the live view fetch", () => asked.length === 1);
    const auth = asked[0]?.get("authorization") ?? "";
    expect(auth).toMatch(/^Rollcall-View ts=\d+, sig=[0-9a-f]{64}$/);
    expect(auth).not.toContain("secret");
    // Made out to the leader (its PeerId): no other agent takes it.
    expect(viewAuthorized(auth, "view-secret", Date.now(), LEADER)).toBe(true);
    expect(viewAuthorized(auth, "view-secret", Date.now(), "another-agent")).toBe(false);
    expect(viewAuthorized(auth, "cluster-secret", Date.now(), LEADER)).toBe(false);
    expect(viewAuthorized(auth, "view-secret", Date.now() + 2 * MIN, LEADER)).toBe(false);
  });

  it("asks no agent for its view when tokens are set but no agent token is", async () => {
    const { asked, t } = liveSetup({ clusterToken: "cluster-secret", adminToken: "admin-secret" });
    await t.call(
      "POST",
      "/api/cluster/heartbeat",
      report({ members: [member(LEADER)] }),
      bearer("cluster-secret"),
    );
    await t.call("GET", "/api/admin/services", undefined, bearer("admin-secret"));
    // The same steps as above start a fetch (in the background) when one is due: none here.
    await t.call("GET", "/api/service/upload/x");
    await new Promise((r) => setImmediate(r));
    expect(asked).toEqual([]);
    expect((await t.call("GET", "/health")).body.auth.live_view).toBe("off");
  });
});
