/**
 * The agent's request signer: its libp2p key (the one behind its PeerId, the worker id it
 * reports under) signs every call to the coordinator, so no holder of the cluster token can
 * register, heartbeat, unregister or report in its name (docs/PROTOCOL.md, "Signed requests").
 */
import { readFileSync } from "node:fs";
import { privateKeyFromProtobuf } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { keyPath } from "../mesh/identity.ts";

/** Signs requests as one PeerId. */
export interface RequestSigner {
  /** The PeerId whose key signs: the worker id or leader id the requests claim. */
  readonly id: string;
  /** Signs bytes with the private key (Ed25519: 64 bytes). */
  sign(data: Uint8Array): Uint8Array | Promise<Uint8Array>;
}

/** The signer of a libp2p private key. */
export function signerFromKey(privateKey: PrivateKey): RequestSigner {
  return {
    id: peerIdFromPrivateKey(privateKey).toString(),
    sign: (data) => privateKey.sign(data),
  };
}

/** The signer of the key the mesh keeps at `<dataDir>/peer.key` (it must exist: after mesh start). */
export function loadSigner(dataDir: string): RequestSigner {
  return signerFromKey(privateKeyFromProtobuf(readFileSync(keyPath(dataDir))));
}
