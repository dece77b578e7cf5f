import { generateKeyPair } from "@libp2p/crypto/keys";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { signCached, withCachedVerify } from "../mesh/ed25519.ts";
import { HeartbeatVerifier, signHeartbeat } from "../mesh/signing.ts";
import { openHeartbeat } from "../mesh/protocol.ts";

describe("withCachedVerify (mesh/ed25519.ts)", () => {
  it("answers exactly as the libp2p key does: good, tampered, foreign and short signatures", async () => {
    const a = await generateKeyPair("Ed25519");
    const b = await generateKeyPair("Ed25519");
    const fast = withCachedVerify(a.publicKey);
    expect(fast.raw).toEqual(a.publicKey.raw);
    expect(fast.equals(a.publicKey)).toBe(true);
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), fc.nat(63), async (msg, at) => {
        const good = await a.sign(msg);
        const tampered = Uint8Array.from(good);
        tampered[at] = (tampered[at] as number) ^ 1;
        const foreign = await b.sign(msg);
        const other = Uint8Array.from([...msg, 1]);
        for (const [data, sig] of [
          [msg, good],
          [msg, tampered],
          [msg, foreign],
          [other, good],
        ] as const) {
          expect(await fast.verify(data, sig)).toBe(await a.publicKey.verify(data, sig));
        }
        expect(await fast.verify(msg, good)).toBe(true);
        expect(await fast.verify(msg, good.subarray(1))).toBe(false);
      }),
      { numRuns: 50 },
    );
  });

  it("signCached makes the very signature the libp2p key makes (Ed25519 is deterministic)", async () => {
    const a = await generateKeyPair("Ed25519");
    const k = await generateKeyPair("secp256k1");
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (msg) => {
        expect(await signCached(a, msg)).toEqual(Uint8Array.from(await a.sign(msg)));
        expect(await k.publicKey.verify(msg, await signCached(k, msg))).toBe(true);
      }),
      { numRuns: 30 },
    );
  });

  it("leaves other key types as they are", async () => {
    const k = await generateKeyPair("secp256k1");
    expect(withCachedVerify(k.publicKey)).toBe(k.publicKey);
  });

  it("is what HeartbeatVerifier checks with: a signed heartbeat passes, another signer's fails", async () => {
    const a = await generateKeyPair("Ed25519");
    const b = await generateKeyPair("Ed25519");
    const { peerIdFromPrivateKey } = await import("@libp2p/peer-id");
    const id = peerIdFromPrivateKey(a).toString();
    const v = new HeartbeatVerifier({ cluster: "c" });
    const body = Uint8Array.from([1, 2, 3, 4]);
    const check = async (key: typeof a) => {
      const { body: bb, signature } = openHeartbeat(await signHeartbeat(body, key, "c"));
      return v.verify(id, bb, signature);
    };
    expect(await check(a)).toBe(true);
    expect(await check(b)).toBe(false);
  });
});
