/**
 * A crafted peer against real mesh nodes on 127.0.0.1: a plain libp2p node with our stack that
 * sends what an attacker would. It signs heartbeats for another cluster, replays a dead
 * member's recorded heartbeats after the others forgot it, tries to join with the pre-shared
 * key but without being on the allow-list, and floods peer exchange with made-up peers whose
 * addresses point at TCP servers that count what they are made to accept. Also: the mesh
 * refuses to listen beyond loopback without a pre-shared key.
 */
import net from "node:net";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { afterAll, describe, expect, it } from "vitest";
import {
  type Heartbeat,
  type Mesh,
  Membership,
  decodeHeartbeat,
  encodeHeartbeat,
  watchersOf,
  heartbeatTopic,
  openHeartbeat,
  signHeartbeat,
} from "../mesh/index.ts";
import { type MeshLibp2p, createNode } from "../mesh/node.ts";
import { PEX_LIMITS, PEX_PROTOCOL } from "../mesh/pex.ts";
import {
  NodeProcess,
  TEST_TIMINGS,
  allSeeAlive,
  makeIdentities,
  startMesh,
  tempDir,
  waitFor,
} from "./helpers/mesh-cluster.ts";

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

const PSK = `/key/swarm/psk/1.0.0/\n/base16/\n${"ab".repeat(32)}\n`;

/** The attacker: a started libp2p node with our stack, subscribed to `topic`. */
async function rogue(topic: string, psk?: string): Promise<{ node: MeshLibp2p; key: PrivateKey }> {
  const key = await generateKeyPair("Ed25519");
  const node = await createNode({
    privateKey: key,
    listen: ["/ip4/127.0.0.1/tcp/0"],
    psk,
    // It must be able to send a message again that it saw before (a replay).
    gossip: { seenTTL: 100 },
  });
  await node.start();
  cleanups.push(() => node.stop());
  node.services.pubsub.subscribe(topic);
  return { node, key };
}

/** A signed heartbeat of the rogue itself, as our own encoder would write it. */
async function ownBeat(
  key: PrivateKey,
  cluster: string,
  seq: number,
  extra: Partial<Heartbeat> = {},
): Promise<Uint8Array> {
  const id = peerIdFromPrivateKey(key).toString();
  const m = new Membership(
    id,
    { local: { url: "http://127.0.0.1:9", status: "online", services: [] } },
    { now: () => Date.now(), setTimeout: () => 0, clearTimeout: () => {} },
  );
  return signHeartbeat(encodeHeartbeat({ ...m.heartbeat(), seq, ...extra }), key, cluster);
}

const ids = (m: Mesh) => m.view().members.map((x) => x.id);

describe("a crafted peer against real mesh nodes", () => {
  it("a heartbeat signed for another cluster is refused (spoofed), the same one signed for this cluster is not", async () => {
    const tmp = tempDir("rollcall-xcluster-");
    cleanups.push(tmp.cleanup);
    const [n0, n1] = await makeIdentities(tmp.path, 2);
    const a = await startMesh({ dataDir: n0?.dir as string, cluster: "lab" });
    const b = await startMesh({
      dataDir: n1?.dir as string,
      cluster: "lab",
      bootstrap: a.multiaddrs(),
    });
    cleanups.push(() => Promise.all([a.stop(), b.stop()]).then(() => {}));
    await waitFor("the pair to see each other", () => allSeeAlive([a, b], [a.id, b.id]));

    const topic = heartbeatTopic("lab");
    const { node, key } = await rogue(topic);
    const rogueId = node.peerId.toString();
    await node.dial(multiaddr(a.multiaddrs()[0] as string));
    await waitFor("the rogue to see a subscribed", () =>
      node.services.pubsub.getSubscribers(topic).some((p) => p.toString() === a.id),
    );
    const before = a.stats().spoofed;
    // A heartbeat signed by its own key, but for the cluster "other" (a peer of both clusters
    // replaying it here would send exactly this).
    await node.services.pubsub.publish(topic, await ownBeat(key, "other", 1));
    await waitFor("a to count it spoofed", () => a.stats().spoofed > before);
    expect(ids(a)).not.toContain(rogueId);
    // Signed for "lab", the rogue is taken: the refusal above was the cluster binding.
    await node.services.pubsub.publish(topic, await ownBeat(key, "lab", 2));
    await waitFor("a to take the rogue's own lab heartbeat", () => ids(a).includes(rogueId));
  });

  it("a dead member's recorded heartbeats, replayed after the others forgot it, do not bring it (or its lead) back", async () => {
    const tmp = tempDir("rollcall-replay-");
    cleanups.push(tmp.cleanup);
    const [victim, n1, n2] = await makeIdentities(tmp.path, 3); // the victim has the lowest ID
    // Observers forget quickly, and gossipsub forgets message ids well before that, so that a
    // replay reaches the heartbeat validator instead of the duplicate filter (a crash proven by
    // a refused redial is forgotten about forgetAfterMs after the kill: with equal times the
    // last recorded message was sometimes still in gossipsub's seen cache).
    const observer = { forgetAfterMs: 1000, gossip: { seenTTL: 200 } };
    const a = await startMesh({ dataDir: n1?.dir as string, ...observer });
    const b = await startMesh({
      dataDir: n2?.dir as string,
      ...observer,
      bootstrap: a.multiaddrs(),
    });
    cleanups.push(() => Promise.all([a.stop(), b.stop()]).then(() => {}));
    const v = new NodeProcess([
      ...["--data-dir", victim?.dir as string, "--bootstrap", a.multiaddrs()[0] as string],
      ...["--heartbeat-ms", String(TEST_TIMINGS.heartbeatIntervalMs)],
      ...["--suspect-ms", String(TEST_TIMINGS.suspectAfterMs)],
      ...["--dead-ms", String(TEST_TIMINGS.deadAfterMs)],
      ...["--settle-ms", String(TEST_TIMINGS.settleMs)],
    ]);
    cleanups.push(() => v.kill());
    const started = await v.line("the victim to start", (l) => l.event === "started");
    const vid = started.id as string;
    expect(vid).toBe(victim?.id);

    // The rogue connects to the victim and records what it floods: a heartbeat claiming the lead.
    const topic = heartbeatTopic("default");
    const { node } = await rogue(topic);
    const recorded: Uint8Array[] = [];
    node.services.pubsub.addEventListener("message", (e) => {
      try {
        const hb = decodeHeartbeat(openHeartbeat(e.detail.data).body);
        if (hb.id === vid && hb.leader) recorded.push(e.detail.data);
      } catch {
        // not a heartbeat we can read: not worth recording
      }
    });
    await node.dial(multiaddr((started.addrs as string[])[0] as string));
    await node.dial(multiaddr(a.multiaddrs()[0] as string));
    await waitFor("the victim to lead everywhere", () =>
      [a, b].every((m) => m.view().leader?.id === vid),
    );
    // With the watch ring a leadership claim is flooded once, as news (the watchers get the rest,
    // signed for them alone): one recorded claim is what a rogue can count on to replay.
    await waitFor("a recorded claim of the victim", () => recorded.length >= 1);

    await v.kill("SIGKILL");
    await waitFor("the others to forget the victim", () =>
      [a, b].every((m) => !ids(m).includes(vid) && m.view().leader?.id !== vid),
    );
    const before = a.stats();
    for (const data of recorded) await node.services.pubsub.publish(topic, data);
    // Every replay is refused as stale (b's own heartbeats also count as received, so waiting
    // on `received` alone could look before the replays arrived).
    await waitFor(
      "a to refuse every replayed heartbeat as stale",
      () => a.stats().stale - before.stale >= recorded.length,
    );
    expect(a.stats().accepted - before.accepted).toBeLessThanOrEqual(
      a.stats().received - before.received - recorded.length,
    );
    for (const m of [a, b]) {
      expect(ids(m)).not.toContain(vid);
      expect(m.view().leader?.id).not.toBe(vid);
    }
  });

  it("with the watch ring, a flooded accusation by a member that does not watch the accused is ignored, and the accused refutes it", async () => {
    const tmp = tempDir("rollcall-accuse-");
    cleanups.push(tmp.cleanup);
    const idents = await makeIdentities(tmp.path, 3);
    const meshes: Mesh[] = [];
    for (const n of idents) {
      meshes.push(
        await startMesh({ dataDir: n.dir, watchers: 1, bootstrap: meshes[0]?.multiaddrs() ?? [] }),
      );
    }
    cleanups.push(() => Promise.all(meshes.map((m) => m.stop())).then(() => {}));
    const all = meshes.map((m) => m.id);
    await waitFor("the three to see each other", () => allSeeAlive(meshes, all));

    const topic = heartbeatTopic("default");
    const { node, key } = await rogue(topic);
    const rogueId = node.peerId.toString();
    for (const m of meshes) await node.dial(multiaddr(m.multiaddrs()[0] as string));
    await node.services.pubsub.publish(topic, await ownBeat(key, "default", 1));
    await waitFor("every member to take the rogue", () =>
      meshes.every((m) => ids(m).includes(rogueId)),
    );
    // The victim: a member whose one watcher (the next ID in the ring) is not the rogue.
    const ring = [...all, rogueId].sort();
    const victim = meshes.find((m) => watchersOf(ring, m.id, 1)[0] !== rogueId) as Mesh;
    const others = meshes.filter((m) => m !== victim);
    const incarnation = victim.view().members.find((x) => x.self)?.incarnation as number;
    const downs: string[] = [];
    for (const m of others) {
      m.addEventListener("member-down", (e) => {
        if (e.detail.id === victim.id) downs.push(m.id);
      });
    }
    const floods = victim.stats().floods;
    await node.services.pubsub.publish(
      topic,
      await ownBeat(key, "default", 2, { accuse: [{ id: victim.id, incarnation }] }),
    );
    // The victim refutes at once (a fresh flood), whoever accused it.
    await waitFor("the victim to refute", () => victim.stats().floods > floods);
    // A later heartbeat of the rogue on the same links: once the others show it, they have
    // handled the accusation before it.
    await node.services.pubsub.publish(
      topic,
      await ownBeat(key, "default", 3, { status: "degraded" }),
    );
    await waitFor("the others to take the rogue's next heartbeat", () =>
      others.every((m) => m.view().members.find((x) => x.id === rogueId)?.status === "degraded"),
    );
    for (const m of others) {
      expect(m.stats().accused).toBe(0);
      expect(m.view().members.find((x) => x.id === victim.id)?.state).toBe("alive");
    }
    expect(downs).toEqual([]);
  });

  it("with an allow-list, a peer that holds the pre-shared key but is not on it cannot join", async () => {
    const tmp = tempDir("rollcall-allow-");
    cleanups.push(tmp.cleanup);
    const [n0, n1] = await makeIdentities(tmp.path, 2);
    const allowPeers = [n0?.id as string, n1?.id as string];
    const a = await startMesh({ dataDir: n0?.dir as string, psk: PSK, allowPeers });
    const b = await startMesh({
      dataDir: n1?.dir as string,
      psk: PSK,
      allowPeers,
      bootstrap: a.multiaddrs(),
    });
    cleanups.push(() => Promise.all([a.stop(), b.stop()]).then(() => {}));
    await waitFor("the allowed pair to see each other", () => allSeeAlive([a, b], [a.id, b.id]));

    const topic = heartbeatTopic("default");
    const { node, key } = await rogue(topic, PSK);
    await node.dial(multiaddr(a.multiaddrs()[0] as string)).catch(() => undefined);
    await node.services.pubsub.publish(topic, await ownBeat(key, "default", 1));
    // As long as b's next heartbeats take to reach a, the rogue had to get in.
    const seen = a.stats().accepted;
    await waitFor("a to accept b's next heartbeats", () => a.stats().accepted > seen + 2);
    expect(ids(a)).not.toContain(node.peerId.toString());
    expect(a.libp2p?.getPeers().map(String)).not.toContain(node.peerId.toString());
  });

  it("refuses to listen beyond loopback without a pre-shared key (and binds nothing)", async () => {
    const tmp = tempDir("rollcall-open-");
    cleanups.push(tmp.cleanup);
    // 192.0.2.1 (TEST-NET-1) is not this machine's: binding it would fail anyway, so even
    // code without the check would never listen beyond loopback here.
    await expect(
      startMesh({ dataDir: tmp.path, listen: ["/ip4/192.0.2.1/tcp/0"] }),
    ).rejects.toMatchObject({ name: "OpenMeshError" });
  });

  it("a peer-exchange flood makes a node dial a bounded number of made-up peers and addresses", async () => {
    const tmp = tempDir("rollcall-pexflood-");
    cleanups.push(tmp.cleanup);
    const a = await startMesh({ dataDir: tmp.path });
    cleanups.push(() => a.stop());
    // Eight TCP servers that count and close what they accept: the made-up peers' addresses.
    const hits = Array.from({ length: 8 }, () => 0);
    const victims = await Promise.all(
      hits.map(
        (_, i) =>
          new Promise<net.Server>((resolve) => {
            const s = net.createServer((sock) => {
              hits[i] = (hits[i] ?? 0) + 1;
              sock.destroy();
            });
            s.listen(0, "127.0.0.1", () => resolve(s));
          }),
      ),
    );
    cleanups.push(() => {
      for (const s of victims) s.close();
    });
    const addrs = victims.map((s) => `/ip4/127.0.0.1/tcp/${(s.address() as net.AddressInfo).port}`);
    // 100 made-up peers, each with the eight addresses (the answer fits the size limit); ids
    // above a's, so a would dial them all.
    const fake: string[] = [];
    while (fake.length < 100) {
      const id = peerIdFromPrivateKey(await generateKeyPair("Ed25519")).toString();
      if (id > a.id) fake.push(id);
    }
    const { node } = await rogue(heartbeatTopic("default"));
    const answer = new TextEncoder().encode(
      JSON.stringify({ peers: fake.map((id) => ({ id, addrs })) }),
    );
    await node.handle(PEX_PROTOCOL, (stream) => {
      const framed = new Uint8Array(4 + answer.length);
      new DataView(framed.buffer).setUint32(0, answer.length);
      framed.set(answer, 4);
      stream.send(framed);
      void stream.close().catch(() => {});
    });
    await node.dial(multiaddr(a.multiaddrs()[0] as string)); // a asks every new connection

    const want = PEX_LIMITS.peers;
    await waitFor(
      "a to dial every peer it took, and each dial to fail",
      () => a.stats().introductionsDialed >= want && a.stats().dialFailures >= want,
    );
    const s = a.stats();
    expect(s.pexDropped).toBe(100 - want + want * (8 - PEX_LIMITS.addrsPerPeer));
    // Only the first addrsPerPeer addresses were ever tried, at most once per peer each.
    expect(hits.slice(PEX_LIMITS.addrsPerPeer)).toEqual([0, 0, 0, 0]);
    expect(hits.reduce((x, y) => x + y, 0)).toBeLessThanOrEqual(want * PEX_LIMITS.addrsPerPeer);
  });
});
