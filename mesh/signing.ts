/**
 * Heartbeat signatures: the sender signs the heartbeat body, prefixed with a domain that names
 * the cluster (`signingInput`), with its libp2p key; a receiver verifies it against the public
 * key inside the claimed PeerId (Ed25519 ids embed it), so a heartbeat whose claimed id is not
 * its signer's, or that was signed for another cluster or another receiver, is dropped (and
 * counted as spoofed).
 */
import type { PrivateKey, PublicKey } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { signCached, withCachedVerify } from "./ed25519.ts";
import { EVERYONE, HeartbeatError, sealHeartbeat, signingInput } from "./protocol.ts";

/**
 * Signs a heartbeat body for `cluster` and its receiver (`to`: a member's id for a direct
 * heartbeat, default EVERYONE for a flood) and returns the wire form.
 */
export async function signHeartbeat(
  body: Uint8Array,
  key: PrivateKey,
  cluster: string,
  to = EVERYONE,
): Promise<Uint8Array> {
  return sealHeartbeat(body, await signCached(key, signingInput(cluster, body, to)));
}

/** Verifies one cluster's heartbeat signatures, caching the public key of each claimed id. */
export class HeartbeatVerifier {
  #keys = new Map<string, PublicKey>();
  readonly #max: number;
  readonly #cluster: string;

  constructor(init: { cluster: string; maxKeys?: number }) {
    this.#cluster = init.cluster;
    this.#max = init.maxKeys ?? 4096;
  }

  /** The public key embedded in a PeerId string; throws HeartbeatError if it has none. */
  keyOf(id: string): PublicKey {
    const cached = this.#keys.get(id);
    if (cached) return cached;
    let key: PublicKey | undefined;
    try {
      const embedded = peerIdFromString(id).publicKey;
      key = embedded && withCachedVerify(embedded);
    } catch {
      throw new HeartbeatError("Heartbeat id is not a PeerId");
    }
    if (!key) throw new HeartbeatError("Heartbeat id does not embed a public key");
    if (this.#keys.size >= this.#max) this.#keys.clear();
    this.#keys.set(id, key);
    return key;
  }

  /** Whether `signature` over `body` (in this cluster, for receiver `to`) was made by the key of `id`. */
  async verify(
    id: string,
    body: Uint8Array,
    signature: Uint8Array,
    to = EVERYONE,
  ): Promise<boolean> {
    const key = this.keyOf(id);
    try {
      return await key.verify(signingInput(this.#cluster, body, to), signature);
    } catch {
      return false;
    }
  }
}
