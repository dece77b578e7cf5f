/**
 * mesh/lean.ts keeps the mesh within its traffic goal, and an update of @libp2p/tcp or yamux
 * could undo it with every other test green. So: two real nodes from createNode() on 127.0.0.1,
 * K small gossip messages from A to B, one at a time, and every socket.write counted per side.
 * Lean: one write per message at A (Noise's length prefix and ciphertext together) and none at
 * B (no window update per frame). Stock: two writes per message at A and a window update (two
 * more writes) per message at B.
 */
import { Socket } from "node:net";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { afterAll, describe, expect, it } from "vitest";
import { coalesceWrites, lazyWindowUpdates } from "../mesh/lean.ts";
import { type MeshLibp2p, createNode } from "../mesh/node.ts";
import { heartbeatTopic } from "../mesh/protocol.ts";
import { waitFor } from "./helpers/mesh-cluster.ts";

const TOPIC = heartbeatTopic("lean-test");
const K = 40;
/** Writes outside the messages that may fall in the window (a gossipsub heartbeat's GRAFT). */
const SLACK = 3;

// Every socket.write in this process, attributed by the listening port of A (B dials A).
let countFor: ((socket: Socket) => void) | undefined;
const write = Socket.prototype.write;
Socket.prototype.write = function (this: Socket, ...args: unknown[]) {
  countFor?.(this);
  return (write as (...a: unknown[]) => boolean).apply(this, args);
} as typeof Socket.prototype.write;

const stops: Array<() => Promise<void>> = [];
afterAll(async () => {
  Socket.prototype.write = write;
  for (const stop of stops) await stop();
});

async function node(lean: boolean): Promise<MeshLibp2p> {
  const n = await createNode({
    privateKey: await generateKeyPair("Ed25519"),
    listen: ["/ip4/127.0.0.1/tcp/0"],
    lean,
  });
  await n.start();
  stops.push(async () => {
    await n.stop();
  });
  n.services.pubsub.subscribe(TOPIC);
  return n;
}

/** Sends K messages from A to B, each after B got the previous one; counts both sides' writes. */
async function measure(lean: boolean): Promise<{ a: number; b: number }> {
  const a = await node(lean);
  const b = await node(lean);
  await b.dial(a.getMultiaddrs()[0] as never);
  const subscribed = (x: MeshLibp2p, y: MeshLibp2p) =>
    x.services.pubsub.getSubscribers(TOPIC).some((p) => p.equals(y.peerId));
  await waitFor("A and B to see each other subscribed", () => subscribed(a, b) && subscribed(b, a));
  const aAddr = a.getMultiaddrs()[0];
  const aPort = Number(aAddr?.getComponents().find((c) => c.name === "tcp")?.value);

  const writes = { a: 0, b: 0 };
  let received = 0;
  let next: (() => void) | undefined;
  b.services.pubsub.addEventListener("message", () => {
    received++;
    next?.();
  });
  countFor = (s) => {
    if (s.localPort === aPort) writes.a++;
    else if (s.remotePort === aPort) writes.b++;
  };
  try {
    for (let i = 0; i < K; i++) {
      const got = new Promise<void>((resolve) => {
        next = resolve;
      });
      await a.services.pubsub.publish(TOPIC, new TextEncoder().encode(`heartbeat-sized ${i}`));
      await got;
    }
  } finally {
    countFor = undefined;
  }
  expect(received).toBe(K);
  return writes;
}

describe("mesh/lean.ts on the wire", () => {
  it("lean: one socket write per message, no window update per frame", async () => {
    const w = await measure(true);
    expect(w.a).toBeGreaterThanOrEqual(K);
    expect(w.a).toBeLessThanOrEqual(K + SLACK);
    expect(w.b).toBeLessThanOrEqual(SLACK);
  });

  it("stock (lean: false) costs what lean saves, so the test above can tell them apart", async () => {
    // If this fails, the stock stack became lean by itself and mesh/lean.ts may be obsolete.
    const w = await measure(false);
    expect(w.a).toBeGreaterThanOrEqual(2 * K);
    expect(w.b).toBeGreaterThanOrEqual(K);
  });
});

describe("mesh/lean.ts fallbacks", () => {
  it("say once that they fell back, and leave what they cannot wrap as it is", () => {
    const lines: string[] = [];
    const conn = {};
    expect(coalesceWrites(conn, (l) => lines.push(l))).toBe(conn);
    const stream = { sendWindowUpdate: () => {} };
    expect(lazyWindowUpdates(stream as never, (l) => lines.push(l))).toBe(stream);
    expect(lines).toEqual([
      expect.stringMatching(/@libp2p\/tcp changed .*lean TCP writes are off/),
      expect.stringMatching(/libp2p-yamux changed .*lazy window updates are off/),
    ]);
  });
});
