/**
 * The heard-of question (mesh/vouch.ts): the codec's bounds, pure; then two real libp2p nodes
 * on 127.0.0.1 asking each other, including a peer the allow-list refuses and a crafted request.
 */
import { generateKeyPair } from "@libp2p/crypto/keys";
import { afterAll, describe, expect, it } from "vitest";
import { FakeClock } from "../mesh/clock.ts";
import { createNode, type MeshLibp2p } from "../mesh/node.ts";
import {
  decodeVouchAnswer,
  decodeVouchRequest,
  encodeVouchAnswer,
  encodeVouchRequest,
  VOUCH_LIMITS,
  VOUCH_PROTOCOL,
  VouchError,
  Vouches,
  type VouchComponents,
} from "../mesh/vouch.ts";

const stops: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const stop of stops.reverse()) await stop();
});

async function node(): Promise<MeshLibp2p> {
  const n = await createNode({
    privateKey: await generateKeyPair("Ed25519"),
    listen: ["/ip4/127.0.0.1/tcp/0"],
  });
  await n.start();
  stops.push(async () => {
    await n.stop();
  });
  return n;
}

describe("heard-of codec", () => {
  it("round-trips requests and answers, capping ages", async () => {
    const a = (await generateKeyPair("Ed25519")).publicKey.toString();
    const ids = [a, "12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf"];
    expect(decodeVouchRequest(encodeVouchRequest(ids))).toEqual(ids);
    const answer = encodeVouchAnswer([undefined, 12, 10 ** 9]);
    expect(decodeVouchAnswer(answer, 3)).toEqual([undefined, 12, VOUCH_LIMITS.ageMs]);
  });

  it("refuses malformed, oversized or mismatched messages with VouchError", () => {
    const bad: Array<() => unknown> = [
      () => encodeVouchRequest([]),
      () => encodeVouchRequest(Array(VOUCH_LIMITS.ids + 1).fill("12D3KooW")),
      () => decodeVouchRequest(Uint8Array.of()),
      () => decodeVouchRequest(Uint8Array.of(2, 1, 1, 1)), // unknown version
      () => decodeVouchRequest(Uint8Array.of(1, 0)), // empty
      () => decodeVouchRequest(Uint8Array.of(1, 17)), // too many ids
      () => decodeVouchRequest(Uint8Array.of(1, 1, 5, 1, 2)), // ends early
      () => decodeVouchRequest(Uint8Array.of(1, 1, 1, 1, 9)), // trailing
      () => decodeVouchRequest(Uint8Array.of(1, 1, 0xff, 0xff, 0xff, 0xff, 0x7f)), // varint
      () => decodeVouchRequest(new Uint8Array(VOUCH_LIMITS.bytes + 1).fill(1)),
      () => decodeVouchAnswer(encodeVouchAnswer([1, 2]), 3),
      () => decodeVouchAnswer(Uint8Array.of(1, 1, 0xff, 0xff, 0x7f), 1), // age above the cap
    ];
    for (const f of bad) expect(f).toThrow(VouchError);
  });
});

describe("heard-of question between two real nodes", () => {
  it("answers what the answerer heard itself; a quiet member is vouched for by a round", async () => {
    const [asker, helper] = [await node(), await node()];
    await asker.dial(helper.getMultiaddrs()[0] as never);
    const quietId = (await generateKeyPair("Ed25519")).publicKey.toString();
    const unknown = (await generateKeyPair("Ed25519")).publicKey.toString();
    const clock = new FakeClock(10_000);
    const serving = (over: Partial<VouchComponents>) =>
      new Vouches(
        {},
        {
          node: helper,
          clock,
          heardAgo: (id) => (id === quietId ? 120 : undefined),
          quiet: () => [],
          hearing: () => [],
          onHeard: () => false,
          ...over,
        },
      );
    const server = serving({});
    await server.start();
    stops.push(() => server.stop());
    const heard: Array<[string, number]> = [];
    const client = new Vouches(
      { quietAfterMs: 1500, askEveryMs: 500 },
      {
        node: asker,
        clock,
        heardAgo: () => undefined,
        quiet: () => [quietId],
        hearing: () => [quietId, helper.peerId.toString()],
        onHeard: (id, at) => {
          heard.push([id, at]);
          return true;
        },
      },
    );
    expect(await client.ask(helper.peerId.toString(), [quietId, unknown])).toEqual([
      120,
      undefined,
    ]);
    client.round();
    const until = Date.now() + 5000;
    while (heard.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    // Asked only of the helper (the quiet member is no helper); heard 120 ms before the round.
    expect(heard).toEqual([[quietId, 10_000 - 120]]);
    client.round(); // asked again only after askEveryMs
    expect(heard).toHaveLength(1);
  });

  it("a peer the allow-list refuses, or a crafted request, gets no answer", async () => {
    const [asker, helper] = [await node(), await node()];
    await asker.dial(helper.getMultiaddrs()[0] as never);
    const quietId = (await generateKeyPair("Ed25519")).publicKey.toString();
    let allow = false;
    const server = new Vouches(
      {},
      {
        node: helper,
        clock: new FakeClock(0),
        heardAgo: () => 5,
        quiet: () => [],
        hearing: () => [],
        onHeard: () => false,
        allowed: () => allow,
      },
    );
    await server.start();
    stops.push(() => server.stop());
    const client = new Vouches(
      {},
      {
        node: asker,
        clock: new FakeClock(0),
        heardAgo: () => undefined,
        quiet: () => [],
        hearing: () => [],
        onHeard: () => false,
      },
    );
    expect(await client.ask(helper.peerId.toString(), [quietId])).toEqual([undefined]);
    allow = true;
    expect(await client.ask(helper.peerId.toString(), [quietId])).toEqual([5]);

    // Crafted: a request in an unknown version is aborted, no answer written.
    const stream = await asker.dialProtocol(helper.peerId, VOUCH_PROTOCOL);
    stream.send(Uint8Array.of(9, 1, 1, 1));
    await stream.close().catch(() => {});
    const chunks: number[] = [];
    try {
      for await (const c of stream) chunks.push(c.byteLength);
    } catch {
      // aborted by the server: what it should do
    }
    expect(chunks).toEqual([]);
    // The server still answers the next honest question.
    expect(await client.ask(helper.peerId.toString(), [quietId])).toEqual([5]);
  });
});
