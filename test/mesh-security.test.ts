/**
 * What a peer can do to a mesh node, with real libp2p nodes on 127.0.0.1: a hostile peer on the
 * heartbeat topic (garbage, oversize, a spoofed id) is dropped and counted and changes nothing;
 * a stranger without the cluster's pre-shared key cannot even connect.
 */
import { generateKeyPair } from "@libp2p/crypto/keys";
import { afterAll, describe, expect, it } from "vitest";
import {
  type Mesh,
  MAX_HEARTBEAT_BYTES,
  Membership,
  encodeHeartbeat,
  heartbeatTopic,
  signHeartbeat,
} from "../mesh/index.ts";
import { createNode } from "../mesh/node.ts";
import {
  allSeeAlive,
  makeIdentities,
  startMesh,
  tempDir,
  waitFor,
} from "./helpers/mesh-cluster.ts";

const TOPIC = heartbeatTopic("default");
const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function pair(root: string, psk?: string): Promise<Mesh[]> {
  const ids = await makeIdentities(root, 2);
  const a = await startMesh({ dataDir: ids[0]?.dir as string, psk });
  const b = await startMesh({ dataDir: ids[1]?.dir as string, psk, bootstrap: a.multiaddrs() });
  cleanups.push(() => Promise.all([a.stop(), b.stop()]).then(() => {}));
  await waitFor("the pair to see each other", () => allSeeAlive([a, b], [a.id, b.id]));
  return [a, b];
}

describe("mesh security", () => {
  it("drops and counts garbage, oversize and spoofed heartbeats, and survives them", async () => {
    const tmp = tempDir("rollcall-sec-");
    cleanups.push(tmp.cleanup);
    const [a, b] = (await pair(tmp.path)) as [Mesh, Mesh];

    // A hostile peer: a plain libp2p node with the same stack, on the same topic.
    const rogueKey = await generateKeyPair("Ed25519");
    const rogue = await createNode({ privateKey: rogueKey, listen: ["/ip4/127.0.0.1/tcp/0"] });
    await rogue.start();
    cleanups.push(() => rogue.stop());
    rogue.services.pubsub.subscribe(TOPIC);
    await rogue.dial(a.libp2p?.getMultiaddrs()[0] as never);
    await waitFor("the rogue to see a subscribed", () =>
      rogue.services.pubsub.getSubscribers(TOPIC).some((p) => p.toString() === a.id),
    );
    const before = a.stats();

    // 1. Garbage. 2. Oversize. 3. A heartbeat claiming b's id saying b is leaving, signed by
    // the rogue's own key. 4. The same body with a zeroed signature.
    const garbage = new Uint8Array(200).map((_, i) => (i * 37 + 11) & 0xff);
    const oversize = new Uint8Array(MAX_HEARTBEAT_BYTES + 100);
    const forged = new Membership(
      b.id,
      { local: { url: "", status: "online", services: [] } },
      {
        now: () => Date.now(),
        setTimeout: () => 0,
        clearTimeout: () => {},
      },
    );
    // A higher incarnation than b's own: taken, it would outrank every real heartbeat of b.
    const incarnation = (b.view().members.find((m) => m.self)?.incarnation ?? 0) + 1;
    const body = encodeHeartbeat({ ...forged.heartbeat({ leaving: true }), incarnation });
    const spoofed = await signHeartbeat(body, rogueKey, "default");
    const zeroed = new Uint8Array(spoofed.length);
    zeroed.set(body);
    for (const data of [garbage, oversize, spoofed, zeroed]) {
      await rogue.services.pubsub.publish(TOPIC, data);
    }

    await waitFor("a to count what it dropped", () => {
      const s = a.stats();
      return s.invalid - before.invalid >= 2 && s.spoofed - before.spoofed >= 2 && s;
    });
    // Nothing changed: had the forged goodbye been taken, b would be "left" and its real
    // heartbeats, of a lower incarnation, stale. Instead a still accepts them.
    const seen = a.stats().accepted;
    await waitFor("a to accept b's next heartbeats", () => a.stats().accepted > seen + 1);
    expect(a.view().members.find((m) => m.id === b.id)?.state).toBe("alive");
  });

  it("a stranger without the pre-shared key cannot join; the right key can", async () => {
    const tmp = tempDir("rollcall-psk-");
    cleanups.push(tmp.cleanup);
    const psk = `/key/swarm/psk/1.0.0/\n/base16/\n${"ab".repeat(32)}\n`;
    const other = `/key/swarm/psk/1.0.0/\n/base16/\n${"cd".repeat(32)}\n`;
    const [a, b] = (await pair(`${tmp.path}/ok`, psk)) as [Mesh, Mesh];

    const [wrong, none] = await makeIdentities(`${tmp.path}/strangers`, 2);
    const strangers = [
      await startMesh({ dataDir: wrong?.dir as string, psk: other, bootstrap: a.multiaddrs() }),
      await startMesh({ dataDir: none?.dir as string, bootstrap: a.multiaddrs() }),
    ];
    cleanups.push(() => Promise.all(strangers.map((s) => s.stop())).then(() => {}));
    const late = await startMesh({ dataDir: `${tmp.path}/late`, psk, bootstrap: a.multiaddrs() });
    cleanups.push(() => late.stop());

    // The holder of the key joins; meanwhile the strangers have had as long to try.
    await waitFor("the key holder to join", () => allSeeAlive([a, b, late], [a.id, b.id, late.id]));
    for (const s of strangers) {
      expect(s.libp2p?.getPeers()).toEqual([]);
      expect(s.view().members.map((m) => m.id)).toEqual([s.id]);
      expect(a.view().members.map((m) => m.id)).not.toContain(s.id);
    }
  });
});
