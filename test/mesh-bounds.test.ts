/**
 * The mesh's pure defences, on a fake clock with real keys: every number a peer sends is
 * bounded alike by the decoder and the encoder, and what we derive from one saturates; a
 * forgotten member's recorded heartbeats stay stale; a member's own uptime buys little of
 * the settle period; the election passes over members that do not offer to lead; the inbox
 * blames a sender only for its own faults; peer exchange and listen addresses are bounded.
 */
import { generateKeyPair } from "@libp2p/crypto/keys";
import { TopicValidatorResult } from "@libp2p/gossipsub";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { describe, expect, it } from "vitest";
import type { MeshStats } from "../mesh/api.ts";
import { FakeClock } from "../mesh/clock.ts";
import { elect, type ElectionMember } from "../mesh/election.ts";
import { OpenMeshError, checkExposure, loopbackOnly } from "../mesh/exposure.ts";
import { HeartbeatInbox } from "../mesh/inbox.ts";
import { createMesh } from "../mesh/mesh.ts";
import { Membership } from "../mesh/membership.ts";
import { PEX_LIMITS, parsePex } from "../mesh/pex.ts";
import {
  type Heartbeat,
  HeartbeatError,
  LIMITS,
  decodeHeartbeat,
  encodeHeartbeat,
} from "../mesh/protocol.ts";
import { signHeartbeat } from "../mesh/signing.ts";

const ID = "12D3KooWGRUVh4QXxWvRZkLZyRzd8nK1Gbbr5ZqdF4gRNiVMpbQo";
const local = { url: "http://127.0.0.1:1", status: "online" as const, services: [] };

function beat(over: Partial<Heartbeat> = {}): Heartbeat {
  return {
    id: ID,
    incarnation: 1,
    seq: 1,
    term: 0,
    leader: false,
    leaving: false,
    canLead: true,
    status: "online",
    uptimeMs: 0,
    stateVersion: 1,
    ...over,
  };
}

/** Unsigned LEB128, as the codec writes it. */
function varint(n: number): number[] {
  const out: number[] = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

/** `bytes` with the last occurrence of `from` replaced by `to` (same length). */
function patch(bytes: Uint8Array, from: number[], to: number[]): Uint8Array {
  expect(to.length).toBe(from.length);
  const out = Uint8Array.from(bytes);
  for (let i = out.length - from.length; i >= 0; i--) {
    if (from.every((b, k) => out[i + k] === b)) {
      out.set(to, i);
      return out;
    }
  }
  throw new Error("pattern not found");
}

/** A fresh mesh's counters (all zero), as the mesh hands them to its inbox. */
function stats(): MeshStats {
  return createMesh({ dataDir: "unused", local }).stats();
}

describe("numbers a peer sends", () => {
  const fields = [
    ["incarnation", (n: number) => beat({ incarnation: n }), LIMITS.incarnation],
    ["seq", (n: number) => beat({ seq: n }), LIMITS.seq],
    ["term", (n: number) => beat({ term: n }), LIMITS.term],
    ["uptimeMs", (n: number) => beat({ uptimeMs: n }), LIMITS.uptimeMs],
    ["stateVersion", (n: number) => beat({ stateVersion: n }), LIMITS.stateVersion],
    ["peers", (n: number) => beat({ peers: n }), LIMITS.peers],
    [
      "latencyMs",
      (n: number) =>
        beat({ state: { url: "", services: [{ name: "a", status: "healthy", latency_ms: n }] } }),
      LIMITS.latencyMs,
    ],
  ] as const;

  it.each(fields)(
    "%s: the decoder takes exactly what the encoder may send",
    (_field, make, limit) => {
      const atLimit = encodeHeartbeat(make(limit));
      expect(decodeHeartbeat(atLimit)).toEqual(make(limit));
      expect(() => encodeHeartbeat(make(limit + 1))).toThrow(HeartbeatError);
      // The same bytes with the field one above its limit (a crafted peer's heartbeat).
      const over = patch(atLimit, varint(limit), varint(limit + 1));
      expect(() => decodeHeartbeat(over)).toThrow(HeartbeatError);
    },
  );

  it("a peer's largest term gives the next leader a term it can still send", () => {
    const clock = new FakeClock(0);
    const m = new Membership("B", { local }, clock);
    m.onHeartbeat(beat({ id: "A", term: LIMITS.term, uptimeMs: 10_000 }));
    m.onHeartbeat(beat({ id: "C", uptimeMs: 10_000 }));
    clock.advance(6000);
    m.onHeartbeat(beat({ id: "C", seq: 2 }));
    m.suspect("A"); // the leader is gone: B (lowest alive) takes over
    const v = m.view();
    const next = elect(
      v,
      { id: "A", term: LIMITS.term },
      { settleMs: 5000, now: v.now, maxTerm: v.maxTerm },
    );
    expect(next).toEqual({ id: "B", term: LIMITS.term });
    expect(() => encodeHeartbeat(m.heartbeat({ leaderTerm: next?.term }))).not.toThrow();
  });

  it("our own counters saturate instead of outgrowing the codec", () => {
    const m = new Membership("B", { local, incarnation: LIMITS.incarnation }, new FakeClock(0));
    expect(m.rejoin()).toBe(LIMITS.incarnation);
    expect(() => encodeHeartbeat(m.heartbeat({ leaderTerm: LIMITS.term + 5 }))).not.toThrow();
  });
});

describe("replayed heartbeats", () => {
  const timings = { suspectAfterMs: 1000, deadAfterMs: 1000, forgetAfterMs: 1000 };

  /** A's heartbeats as recorded by an attacker, then A goes silent and is forgotten by B. */
  function forgotten() {
    const clock = new FakeClock(0);
    const m = new Membership("B", { local, ...timings }, clock);
    const recorded = [1, 2, 3].map((seq) => beat({ id: "A", seq, term: 4, leader: true }));
    for (const hb of recorded) m.onHeartbeat(hb);
    for (let i = 0; i < 40; i++) {
      clock.advance(100);
      m.tick();
    }
    expect(m.member("A")).toBeUndefined();
    return { m, clock, recorded };
  }

  it("a forgotten member's recorded stream does not bring it (or its claim) back", () => {
    const { m, recorded } = forgotten();
    for (const hb of recorded) {
      expect(m.isStale(hb)).toBe(true);
      expect(m.onHeartbeat(hb)).toEqual([]);
    }
    expect(m.member("A")).toBeUndefined();
    // Its real restart (a higher incarnation) is welcome, and removes the tombstone.
    expect(m.onHeartbeat(beat({ id: "A", incarnation: 2 }))).toEqual([
      { id: "A", from: null, to: "alive" },
    ]);
  });

  it("remembers at most maxTombstones forgotten members, the newest", () => {
    const clock = new FakeClock(0);
    const m = new Membership("B", { local, ...timings, maxTombstones: 2 }, clock);
    for (const id of ["A", "C", "D"]) {
      m.onHeartbeat(beat({ id, seq: 5 }));
      for (let i = 0; i < 40; i++) {
        clock.advance(100);
        m.tick();
      }
    }
    expect(m.isStale(beat({ id: "D", seq: 5 }))).toBe(true);
    expect(m.isStale(beat({ id: "C", seq: 5 }))).toBe(true);
    expect(m.isStale(beat({ id: "A", seq: 5 }))).toBe(false); // the oldest tombstone went
  });

  it("a member's own uptime buys at most uptimeCreditMs of the settle period", () => {
    const clock = new FakeClock(100_000);
    const m = new Membership("B", { local }, clock);
    m.onHeartbeat(beat({ id: "A", uptimeMs: 86_400_000 })); // "up for a day"
    expect(m.member("A")?.aliveSince).toBe(100_000 - 1000);
    const v = m.view();
    const settings = { settleMs: 5000, now: v.now, maxTerm: 0 };
    const members = v.members.map((x) => (x.self ? { ...x, canLead: false } : x));
    expect(elect({ self: "B", members }, null, settings)).toBeNull();
  });

  it("believes the uptime of a member we knew of (a bootstrap peer) as far back as we knew of it", () => {
    const clock = new FakeClock(100_000);
    const m = new Membership("B", { local }, clock);
    m.heardOf("A"); // in our bootstrap list: we have been waiting for it since now
    clock.advance(4000); // its first heartbeat reaches us late (it booted, we redialed)
    m.onHeartbeat(beat({ id: "A", uptimeMs: 86_400_000 }));
    expect(m.member("A")?.aliveSince).toBe(100_000);
    m.onHeartbeat(beat({ id: "C", uptimeMs: 3000 })); // a stranger: 1 s of its 3 s
    expect(m.member("C")?.aliveSince).toBe(104_000 - 1000);
  });

  it("takes no new member past maxMembers", () => {
    const m = new Membership("B", { local, maxMembers: 2 }, new FakeClock(0));
    m.onHeartbeat(beat({ id: "A" }));
    expect(m.admits("C")).toBe(false);
    expect(m.onHeartbeat(beat({ id: "C" }))).toEqual([]);
    expect(m.admits("A")).toBe(true);
    expect(m.size).toBe(2);
  });
});

describe("the election and the offer to lead", () => {
  const member = (id: string, over: Partial<ElectionMember> = {}): ElectionMember => ({
    id,
    self: false,
    state: "alive",
    flapping: false,
    aliveSince: 0,
    ...over,
  });
  const settings = { settleMs: 5000, now: 10_000, maxTerm: 3 };

  it("passes over members that do not offer to lead", () => {
    const view = {
      self: "C",
      members: [member("A", { canLead: false }), member("B"), member("C", { self: true })],
    };
    expect(elect(view, null, settings)).toEqual({ id: "B", term: 4 });
  });

  it("replaces a sitting leader that withdrew its offer, and follows no claim of one that does not offer", () => {
    const members = [
      member("A"),
      member("B", { canLead: false, leaderTerm: 3 }),
      member("C", { self: true }),
    ];
    // B leads (A settled only now), then withdraws but still claims: nobody follows it.
    expect(elect({ self: "C", members }, { id: "B", term: 3 }, settings)).toEqual({
      id: "A",
      term: 4,
    });
    const none = members.map((m) => ({ ...m, canLead: false }));
    expect(elect({ self: "C", members: none }, null, settings)).toBeNull();
  });
});

describe("the inbox", () => {
  async function signed(cluster: string) {
    const key = await generateKeyPair("Ed25519");
    const id = peerIdFromPrivateKey(key).toString();
    const body = encodeHeartbeat(beat({ id }));
    return { id, wire: await signHeartbeat(body, key, cluster) };
  }

  function inbox(onAccepted: () => void, allowed?: (id: string) => boolean) {
    const s = stats();
    const m = new Membership("12D3KooWSelf", { local }, new FakeClock(0));
    const box = new HeartbeatInbox({
      membership: m,
      stats: s,
      log: () => {},
      cluster: "lab",
      allowed,
      running: () => true,
      onAccepted,
    });
    return { box, s, m };
  }

  it("a fault of ours ignores a good heartbeat and counts it; it never rejects the sender", async () => {
    const { box, s } = inbox(() => {
      throw new Error("a bug of ours");
    });
    const { wire } = await signed("lab");
    expect(await box.receive(wire)).toBe(TopicValidatorResult.Ignore);
    expect(s).toMatchObject({ faults: 1, invalid: 0, spoofed: 0 });
  });

  it("rejects a heartbeat signed for another cluster, and ignores one of a peer not allowed", async () => {
    const { box, s, m } = inbox(() => {});
    const elsewhere = await signed("lab2");
    expect(await box.receive(elsewhere.wire)).toBe(TopicValidatorResult.Reject);
    expect(s.spoofed).toBe(1);
    expect(m.member(elsewhere.id)).toBeUndefined();
    const strict = inbox(
      () => {},
      () => false,
    );
    expect(await strict.box.receive((await signed("lab")).wire)).toBe(TopicValidatorResult.Ignore);
    expect(strict.s.refused).toBe(1);
  });
});

describe("what a neighbour or a setting can make us dial or open", () => {
  it("takes a bounded number of peers and plain TCP addresses from a peer exchange", async () => {
    const ids = await Promise.all(
      Array.from({ length: 100 }, async () =>
        peerIdFromPrivateKey(await generateKeyPair("Ed25519")).toString(),
      ),
    );
    const addrs = [
      "/ip4/10.0.0.1/tcp/1",
      "/ip4/10.0.0.1/udp/1/quic-v1",
      "/dns4/example.org/tcp/1/ws",
      "/ip4/0.0.0.0/tcp/1",
      "/ip4/10.0.0.2/tcp/2",
      "/ip6/::1/tcp/3",
      "/dns4/example.org/tcp/4",
      "/ip4/10.0.0.5/tcp/5",
      "/ip4/10.0.0.6/tcp/6",
    ];
    const answer = new TextEncoder().encode(
      JSON.stringify({ peers: ids.map((id) => ({ id, addrs })) }),
    );
    const { peers, dropped } = parsePex(answer);
    expect(peers).toHaveLength(PEX_LIMITS.peers);
    expect(peers[0]?.addrs.map(String)).toEqual([
      "/ip4/10.0.0.1/tcp/1",
      "/ip4/10.0.0.2/tcp/2",
      "/ip6/::1/tcp/3",
      "/dns4/example.org/tcp/4",
    ]);
    expect(dropped).toBe(100 - PEX_LIMITS.peers + PEX_LIMITS.peers * (addrs.length - 4));
  });

  it("refuses to listen beyond loopback without a pre-shared key unless told", () => {
    for (const a of ["/ip4/127.0.0.1/tcp/0", "/ip4/127.1.2.3/tcp/7400", "/ip6/::1/tcp/0"]) {
      expect(loopbackOnly(a)).toBe(true);
    }
    for (const a of [
      "/ip4/0.0.0.0/tcp/7400",
      "/ip6/::/tcp/0",
      "/ip4/10.0.0.5/tcp/1",
      "/dns4/x/tcp/1",
    ]) {
      expect(loopbackOnly(a)).toBe(false);
    }
    const listen = ["/ip4/127.0.0.1/tcp/1", "/ip4/0.0.0.0/tcp/7400"];
    expect(() => checkExposure({ listen })).toThrow(OpenMeshError);
    expect(() => checkExposure({ listen })).toThrow(/--psk.*--insecure-open-mesh/);
    expect(() => checkExposure({ listen, psk: "k" })).not.toThrow();
    expect(() => checkExposure({ listen, insecureOpenMesh: true })).not.toThrow();
  });
});
