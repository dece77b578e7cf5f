/**
 * mesh/lean.ts reaches into private members of yamux (a muxer's `_newStream`, a stream's
 * `sendWindowUpdate` and receive window) and of @libp2p/tcp (a connection's `sendData`), so
 * package.json pins both packages to exact versions. These tests guard the pin's next bump:
 * two real nodes from createNode() on 127.0.0.1 push more than yamux's largest receive window
 * through one lean stream (lazy window updates must never stall a sender), and a wrapper that
 * fell back to stock (a member gone after an upgrade) fails the suite instead of only logging.
 */
import { createHash, randomBytes } from "node:crypto";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { Stream } from "@libp2p/interface";
import { afterAll, describe, expect, it } from "vitest";
import { type MeshLibp2p, createNode } from "../mesh/node.ts";

const PROTOCOL = "/rollcall-test/lean-bulk/1.0.0";
/** yamux 8 starts a stream's receive window at 256 KiB and grows it to 16 MiB at most. */
const MAX_WINDOW = 16 * 1024 * 1024;
const TOTAL = MAX_WINDOW + 2 * 1024 * 1024;
const CHUNK = 64 * 1024;
/** A stall (no window update) shows as no progress for this long, never as a hung test. */
const STALL_MS = 15_000;

const stops: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const stop of stops) await stop();
});

/** A started lean node whose fallback lines land in `lines`. */
async function leanNode(lines: string[]): Promise<MeshLibp2p> {
  const n = await createNode(
    { privateKey: await generateKeyPair("Ed25519"), listen: ["/ip4/127.0.0.1/tcp/0"], lean: true },
    { log: (line) => lines.push(line) },
  );
  await n.start();
  stops.push(async () => {
    await n.stop();
  });
  return n;
}

/** Rejects with `what` (and how far it got) once `progress()` stands still for STALL_MS. */
function stallGuard(
  what: string,
  progress: () => number,
): { stalled: Promise<never>; stop: () => void } {
  let last = -1;
  let timer: ReturnType<typeof setInterval> | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      const now = progress();
      if (now === last) reject(new Error(`${what} stalled at ${now} of ${TOTAL} bytes`));
      last = now;
    }, STALL_MS);
  });
  return { stalled, stop: () => clearInterval(timer) };
}

/** B's side: reads TOTAL bytes, answers their SHA-256. */
function serveDigest(node: MeshLibp2p, seen: { bytes: number; stream?: Stream }): Promise<void> {
  return node.handle(PROTOCOL, async (stream) => {
    seen.stream = stream;
    const hash = createHash("sha256");
    for await (const chunk of stream) {
      const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray();
      hash.update(bytes);
      seen.bytes += bytes.length;
      if (seen.bytes >= TOTAL) break;
    }
    stream.send(hash.digest());
    await stream.close({ signal: AbortSignal.timeout(5000) }).catch((err) => stream.abort(err));
  });
}

describe("mesh/lean.ts under bulk data", () => {
  const lines: string[] = [];
  const received = { bytes: 0 } as { bytes: number; stream?: Stream };
  let outbound: Stream | undefined;

  it(`carries ${TOTAL / 2 ** 20} MiB (more than yamux's largest receive window) through one lean stream, intact`, async () => {
    const a = await leanNode(lines);
    const b = await leanNode(lines);
    await serveDigest(b, received);
    const data = randomBytes(TOTAL);
    const stream = await a.dialProtocol(b.getMultiaddrs(), PROTOCOL);
    outbound = stream;
    let sent = 0;
    const guard = stallGuard("The lean stream", () => received.bytes);
    const transfer = (async () => {
      for (; sent < TOTAL; sent += CHUNK) {
        if (!stream.send(data.subarray(sent, sent + CHUNK))) await stream.onDrain();
      }
      const answer: Uint8Array[] = [];
      for await (const chunk of stream) {
        answer.push(chunk instanceof Uint8Array ? chunk : chunk.subarray());
        if (Buffer.concat(answer).length >= 32) break;
      }
      return Buffer.concat(answer).subarray(0, 32);
    })();
    try {
      const digest = await Promise.race([transfer, guard.stalled]);
      expect(received.bytes).toBe(TOTAL);
      expect(Buffer.from(digest).toString("hex")).toBe(
        createHash("sha256").update(data).digest("hex"),
      );
    } finally {
      guard.stop();
      await stream.close({ signal: AbortSignal.timeout(5000) }).catch((err) => stream.abort(err));
    }
  });

  it("ran with both wrappers in place: no fallback said, both streams' window updates lean", () => {
    // After a bump of @libp2p/tcp or yamux, lean.ts falls back and says so in a log line; this
    // turns that line into a failure. Read the line, adapt lean.ts, then move the pin.
    expect(lines, "a lean wrapper fell back to stock: see mesh/lean.ts").toEqual([]);
    for (const [side, stream] of [
      ["outbound", outbound],
      ["inbound", received.stream],
    ] as const) {
      expect(stream, `the ${side} stream`).toBeDefined();
      expect(
        Object.hasOwn(stream as object, "sendWindowUpdate"),
        `the ${side} yamux stream's sendWindowUpdate is wrapped by lazyWindowUpdates`,
      ).toBe(true);
    }
  });
});
