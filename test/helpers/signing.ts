/**
 * Real Ed25519 keys for tests (node:crypto), their PeerIds (@libp2p/peer-id), and the signed
 * request headers the coordinator checks (its own `signRequest`). Keys by name, created once per
 * test process: `peer("A")` is the same PeerId everywhere in a run.
 */
import { generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import { publicKeyFromRaw } from "@libp2p/crypto/keys";
import { peerIdFromPublicKey } from "@libp2p/peer-id";
import { signRequest } from "../../coordinator.ts";

/** A test key: its PeerId and a signer. */
export interface TestKey {
  id: string;
  sign(data: Uint8Array): Uint8Array;
}

const byName = new Map<string, TestKey>();
const byId = new Map<string, TestKey>();

function makeKey(): TestKey {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const raw = new Uint8Array(publicKey.export({ format: "der", type: "spki" }).subarray(-32));
  const id = peerIdFromPublicKey(publicKeyFromRaw(raw)).toString();
  const key: KeyObject = privateKey;
  return { id, sign: (data) => new Uint8Array(sign(null, data, key)) };
}

/** The key called `name` (created on first use); a fresh one without a name. */
export function testKey(name?: string): TestKey {
  if (name === undefined) {
    const key = makeKey();
    byId.set(key.id, key);
    return key;
  }
  let key = byName.get(name);
  if (!key) {
    key = makeKey();
    byName.set(name, key);
    byId.set(key.id, key);
  }
  return key;
}

/** The PeerId of the key called `name`. */
export function peer(name: string): string {
  return testKey(name).id;
}

/** The test key of a PeerId made here, if any. */
export function keyOf(id: unknown): TestKey | undefined {
  return typeof id === "string" ? byId.get(id) : undefined;
}

/** Signed-request headers for a call by `key` at time `now` (docs/PROTOCOL.md). */
export function signedHeaders(
  key: TestKey,
  init: { method: string; path: string; body?: string; now: number; nonce?: string },
): Promise<Record<string, string>> {
  return signRequest({
    method: init.method,
    path: init.path,
    body: init.body ?? null,
    signer: key.id,
    sign: (d) => key.sign(d),
    now: init.now,
    ...(init.nonce ? { nonce: init.nonce } : {}),
  });
}

/** The key that must sign an agent call, found in its path or body (a PeerId made here). */
export function signerFor(path: string, body: unknown): TestKey | undefined {
  const b = (body ?? {}) as { leader_id?: unknown; worker_id?: unknown };
  if (path === "/api/cluster/heartbeat") return keyOf(b.leader_id);
  if (path.startsWith("/api/worker/unregister/")) {
    return keyOf(decodeURIComponent(path.slice("/api/worker/unregister/".length)));
  }
  if (path.startsWith("/api/worker/")) return keyOf(b.worker_id);
  return undefined;
}
