/**
 * The dialer on a fake clock with a stand-in for the libp2p node (only what the dialer calls:
 * peerId, getConnections, dial, hangUp, the peer store's addresses, events). No libp2p sockets; the
 * probes connect to real loopback ports (a listener, a closed port, a listener that closes).
 */
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PeerId } from "@libp2p/interface";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { createServer, type Server } from "node:net";
import { multiaddr } from "@multiformats/multiaddr";
import { describe, expect, it } from "vitest";
import { tempDir } from "./helpers/mesh-cluster.ts";
import type { MeshStats } from "../mesh/api.ts";
import { FakeClock } from "../mesh/clock.ts";
import {
  BootstrapError,
  Dialer,
  type DialerComponents,
  type DialerInit,
  parseBootstrap,
} from "../mesh/dialer.ts";
import { createMesh } from "../mesh/mesh.ts";
import type { MeshLibp2p } from "../mesh/node.ts";

/** Polls `done` until it holds (2 s at most). */
async function waitUntil(done: () => boolean): Promise<void> {
  const end = Date.now() + 2000;
  while (!done()) {
    if (Date.now() > end) throw new Error("Timed out waiting for the probe");
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function peer(): Promise<PeerId> {
  return peerIdFromPrivateKey(await generateKeyPair("Ed25519"));
}

/** A fresh mesh's counters (all zero), as the mesh hands them to its dialer. */
function zeroStats(): MeshStats {
  return createMesh({
    dataDir: "unused",
    local: { url: "", status: "online", services: [] },
  }).stats();
}

/**
 * A node connected to `connected`, whose dials never finish and whose hang-ups are recorded; the
 * peer store knows `addrs` for every peer.
 */
function fakeNode(self: PeerId, connected: PeerId[], addrs: string[] = []) {
  const dials: string[] = [];
  const hangUps: string[] = [];
  const node = {
    peerId: self,
    addEventListener: () => {},
    removeEventListener: () => {},
    peerStore: {
      get: async () => ({ addresses: addrs.map((a) => ({ multiaddr: multiaddr(a) })) }),
    },
    getConnections: () => connected.map((remotePeer) => ({ remotePeer })),
    dial: (target: unknown) => {
      dials.push(String(target));
      return new Promise(() => {});
    },
    hangUp: (id: PeerId) => {
      hangUps.push(id.toString());
      return Promise.resolve();
    },
  } as unknown as MeshLibp2p;
  return { node, dials, hangUps };
}

function dialer(
  init: DialerInit,
  c: Pick<DialerComponents, "node" | "clock" | "stats"> & Partial<DialerComponents>,
): Dialer {
  return new Dialer(init, {
    log: () => {},
    wanted: () => [],
    subscribers: () => [],
    silent: () => [],
    onUnreachable: () => {},
    ...c,
  });
}

describe("Dialer", () => {
  it("counts repairs in the mesh's stats, where they add up across restarts", async () => {
    const [self, mute] = [await peer(), await peer()];
    const clock = new FakeClock(0);
    const stats = zeroStats();
    const { node, hangUps } = fakeNode(self, [mute]);
    // Connected to a wanted member that never became a gossipsub subscriber: reset it.
    const wanted = () => [mute.toString()];
    const first = dialer({ repairAfterMs: 5000 }, { node, clock, stats, wanted });
    first.start();
    clock.advance(6000);
    expect(hangUps).toEqual([mute.toString()]);
    expect(stats.repairs).toBe(1);
    first.stop();
    // A restarted mesh makes a new Dialer with the same stats.
    const second = dialer({ repairAfterMs: 5000 }, { node, clock, stats, wanted });
    second.start();
    clock.advance(6000);
    expect(stats.repairs).toBe(2);
    second.stop();
  });

  it("parses the bootstrap list once: a bad address fails start(), a good one is dialed as parsed", async () => {
    const [self, boot] = [await peer(), await peer()];
    const good = `/ip4/127.0.0.1/tcp/9/p2p/${boot}`;
    for (const bad of ["not-a-multiaddr", "/ip4/127.0.0.1/tcp/9/p2p/not-a-peer-id"]) {
      expect(() => parseBootstrap([good, bad])).toThrow(BootstrapError);
      const tmp = tempDir("rollcall-dialer-");
      const mesh = createMesh({
        dataDir: tmp.path,
        bootstrap: [bad],
        local: { url: "", status: "online", services: [] },
      });
      await expect(mesh.start()).rejects.toThrow(BootstrapError);
      tmp.cleanup();
    }

    const clock = new FakeClock(0);
    const lines: string[] = [];
    const { node, dials } = fakeNode(self, []);
    const d = dialer(
      { bootstrap: parseBootstrap([good]) },
      { node, clock, stats: zeroStats(), log: (l) => lines.push(l) },
    );
    d.start();
    clock.advance(30_000);
    d.stop();
    expect(dials[0]).toBe(good);
    expect(lines).toEqual([]);
  });

  it("dials introduced peers at most introductionsPerRound per round, from a bounded queue", async () => {
    const self = await peer();
    const clock = new FakeClock(0);
    const stats = zeroStats();
    const { node, dials } = fakeNode(self, []);
    const d = dialer({ introductionsPerRound: 4, maxIntroductions: 10 }, { node, clock, stats });
    d.start();
    // A flood of 30 made-up peers (each of them ours to dial: their ids sort above ours).
    const flood: PeerId[] = [];
    while (flood.length < 30) {
      const p = await peer();
      if (p.toString() > self.toString()) flood.push(p);
    }
    for (const p of flood) d.introduce(p.toString());
    expect(dials).toHaveLength(4); // this round's budget
    expect(d.pendingIntroductions).toBe(10); // the queue is full
    expect(stats.introductionsDropped).toBe(30 - 4 - 10);
    clock.advance(1000); // the next round
    expect(dials).toHaveLength(8);
    clock.advance(2000);
    expect(dials).toHaveLength(14);
    expect(d.pendingIntroductions).toBe(0);
    expect(stats.introductionsDialed).toBe(14);
    d.stop();
  });

  it("probes a peer: a listener accepts; a port refused twice is proof of death; a silent peer's listener is reachable", async () => {
    const [self, other] = [await peer(), await peer()];
    const listen = (): Promise<Server> =>
      new Promise((resolve) => {
        const server = createServer((socket) => socket.destroy());
        server.listen(0, "127.0.0.1", () => resolve(server));
      });
    const port = (server: Server) => (server.address() as { port: number }).port;
    const server = await listen();
    const closed = await listen();
    const closedPort = port(closed);
    await new Promise((r) => closed.close(r));

    const events: string[] = [];
    const run = (addr: string) => {
      const { node } = fakeNode(self, [], [addr]);
      const d = dialer(
        { confirmAfterMs: 20 },
        {
          node,
          clock: new FakeClock(0),
          stats: zeroStats(),
          onUnreachable: (id) => events.push(`unreachable ${id === other.toString()}`),
          onRefused: (id) => events.push(`refused ${id === other.toString()}`),
          onReachable: (id) => events.push(`reachable ${id === other.toString()}`),
        },
      );
      d.start();
      return d;
    };
    const live = run(`/ip4/127.0.0.1/tcp/${port(server)}`);
    expect(await live.check(other)).toBe("accepts");
    live.probe(other, "silent");
    await waitUntil(() => events.length === 1);
    expect(events).toEqual(["reachable true"]);
    live.stop();

    events.length = 0;
    const dead = run(`/ip4/127.0.0.1/tcp/${closedPort}`);
    expect(await dead.check(other)).toBe("refused");
    dead.probe(other, "closed"); // a connection closed: suspect at once, dead once confirmed
    await waitUntil(() => events.length === 2);
    expect(events).toEqual(["unreachable true", "refused true"]);
    events.length = 0;
    dead.probe(other, "silent"); // fell silent and the port refuses: dead, without a suspicion
    await waitUntil(() => events.length === 1);
    expect(events).toEqual(["refused true"]);
    dead.stop();

    // No address to try is no proof of anything: "unreachable" (a timeout gives the same).
    const none = dialer(
      {},
      { node: fakeNode(self, [], []).node, clock: new FakeClock(0), stats: zeroStats() },
    );
    expect(await none.check(other)).toBe("unreachable");
    await new Promise((r) => server.close(r));
  });
});
