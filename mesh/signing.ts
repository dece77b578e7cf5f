/**
 * Heartbeat signatures: the sender signs the heartbeat body with its libp2p key; a receiver
 * verifies it against the public key inside the claimed PeerId (Ed25519 ids embed it), so a
 * heartbeat whose claimed id is not its signer's is dropped (and counted as spoofed).
 */
import type { PrivateKey, PublicKey } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { HeartbeatError, sealHeartbeat } from "./protocol.ts";

/** Signs a heartbeat body and returns the wire form. */
export async function signHeartbeat(body: Uint8Array, key: PrivateKey): Promise<Uint8Array> {
  return sealHeartbeat(body, await key.sign(body));
}

/** Verifies heartbeat signatures, caching the public key of each claimed id. */
export class HeartbeatVerifier {
  #keys = new Map<string, PublicKey>();
  readonly #max: number;

  constructor(init: { maxKeys?: number } = {}) {
    this.#max = init.maxKeys ?? 4096;
  }

  /** The public key embedded in a PeerId string; throws HeartbeatError if it has none. */
  keyOf(id: string): PublicKey {
    const cached = this.#keys.get(id);
    if (cached) return cached;
    let key: PublicKey | undefined;
    try {
      key = peerIdFromString(id).publicKey;
    } catch {
      throw new HeartbeatError("Heartbeat id is not a PeerId");
    }
    if (!key) throw new HeartbeatError("Heartbeat id does not embed a public key");
    if (this.#keys.size >= this.#max) this.#keys.clear();
    this.#keys.set(id, key);
    return key;
  }

  /** Whether `signature` over `body` was made by the key of `id`. */
  async verify(id: string, body: Uint8Array, signature: Uint8Array): Promise<boolean> {
    try {
      return await this.keyOf(id).verify(body, signature);
    } catch (err) {
      if (err instanceof HeartbeatError) throw err;
      return false;
    }
  }
}
