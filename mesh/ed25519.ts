/**
 * Heartbeat signature checks without a key import per check. @libp2p/crypto's Ed25519 key
 * (Node build) turns its raw bytes into a `node:crypto` KeyObject through a JWK on every
 * verify() and sign(): at N = 10 that is ten key imports a second per agent, the largest
 * single item in the idle agent's profile after the socket writes (docs/BENCHMARKS.md, issue
 * 15). `withCachedVerify` imports the public key once and verifies with `node:crypto` (Node,
 * Deno and Bun all have it); `signCached` does the same for our own key when signing. Same keys, same signatures, same answers: only the import is
 * cached.
 */
import { createPrivateKey, createPublicKey, type KeyObject, sign, verify } from "node:crypto";
import type { PrivateKey, PublicKey } from "@libp2p/interface";
import { toString as uint8ArrayToString } from "uint8arrays";

/** The `node:crypto` KeyObject of a raw 32-byte Ed25519 public key. */
export function ed25519KeyObject(raw: Uint8Array): KeyObject {
  if (raw.byteLength !== 32) throw new TypeError("An Ed25519 public key is 32 bytes");
  return createPublicKey({
    format: "jwk",
    key: { kty: "OKP", crv: "Ed25519", x: uint8ArrayToString(raw, "base64url") },
  });
}

/**
 * `key` with a verify() that checks Ed25519 signatures against a KeyObject made once. Any other
 * key type is returned as it is. Everything else (raw, equals, toString...) is `key`'s own.
 */
export function withCachedVerify(key: PublicKey): PublicKey {
  if (key.type !== "Ed25519") return key;
  let object: KeyObject | undefined;
  const fast = Object.create(key) as PublicKey;
  fast.verify = (data, sig) => {
    if (sig.byteLength !== 64) return false;
    object ??= ed25519KeyObject(key.raw);
    return verify(null, data instanceof Uint8Array ? data : data.subarray(), object, sig);
  };
  return fast;
}

const privateObjects = new WeakMap<PrivateKey, KeyObject>();

/** Signs `data` with `key`: an Ed25519 key through a KeyObject made once per key, others as libp2p does. */
export async function signCached(key: PrivateKey, data: Uint8Array): Promise<Uint8Array> {
  if (key.type !== "Ed25519" || key.raw.byteLength !== 64) return key.sign(data);
  let object = privateObjects.get(key);
  if (!object) {
    object = createPrivateKey({
      format: "jwk",
      key: {
        kty: "OKP",
        crv: "Ed25519",
        d: uint8ArrayToString(key.raw.subarray(0, 32), "base64url"),
        x: uint8ArrayToString(key.raw.subarray(32), "base64url"),
      },
    });
    privateObjects.set(key, object);
  }
  return new Uint8Array(sign(null, data, object));
}
