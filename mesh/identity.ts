/**
 * Stable identity: the libp2p private key persisted at <dataDir>/peer.key (mode 0600), created
 * on first start and reused after, so the PeerId (the election's stable ID) survives restarts.
 * Also the incarnation counter at <dataDir>/incarnation: every start takes the next number (and
 * at least the seconds since 2023-11-14, in case the file is lost), so peers never mistake a
 * restarted member's fresh heartbeats for stale ones.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
import type { PeerId, PrivateKey } from "@libp2p/interface";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { LIMITS } from "./schema.ts";

/** The key file could not be read or is not a libp2p private key. */
export class IdentityError extends Error {
  override name = "IdentityError";
}

/** A loaded identity and this run's incarnation. */
export interface Identity {
  privateKey: PrivateKey;
  peerId: PeerId;
  /** True when the key was created by this call. */
  created: boolean;
  /** This run's incarnation: one more than the last run's. */
  incarnation: number;
}

/** Path of the key file inside a data dir. */
export function keyPath(dataDir: string): string {
  return join(dataDir, "peer.key");
}

function writePrivate(path: string, data: Uint8Array | string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, path);
}

/** Loads the key from `dataDir` (creating dir and key on first start) and takes the next incarnation. */
export async function loadIdentity(
  dataDir: string,
  components: { logger?: (line: string) => void } = {},
): Promise<Identity> {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = keyPath(dataDir);
  let privateKey: PrivateKey;
  let created = false;
  let bytes: Uint8Array | undefined;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new IdentityError(`Cannot read the key file ${path}: ${(err as Error).message}`);
    }
  }
  if (bytes) {
    try {
      privateKey = privateKeyFromProtobuf(bytes);
    } catch {
      throw new IdentityError(`The key file ${path} is not a libp2p private key`);
    }
    if ((statSync(path).mode & 0o077) !== 0) {
      chmodSync(path, 0o600);
      components.logger?.(`tightened permissions of ${path} to 0600`);
    }
  } else {
    privateKey = await generateKeyPair("Ed25519");
    writePrivate(path, privateKeyToProtobuf(privateKey));
    created = true;
  }
  return {
    privateKey,
    peerId: peerIdFromPrivateKey(privateKey),
    created,
    incarnation: nextIncarnation(dataDir),
  };
}

/** Seconds since 2023-11-14: a floor for incarnations in case the counter file is lost. */
const clockFloor = (): number => Math.max(0, Math.floor(Date.now() / 1000) - 1_700_000_000);

/** Reads the last incarnation (0 if none), stores and returns the next one (never below the clock floor). */
export function nextIncarnation(dataDir: string): number {
  const path = join(dataDir, "incarnation");
  let last = 0;
  try {
    const n = Number.parseInt(readFileSync(path, "utf8").trim(), 10);
    if (Number.isSafeInteger(n) && n >= 0) last = n;
  } catch {
    // first start, or unreadable: the clock floor still puts us above earlier runs
  }
  // Never above what a heartbeat can carry (a tampered file must not silence the node).
  return saveIncarnation(dataDir, Math.min(LIMITS.incarnation, Math.max(last + 1, clockFloor())));
}

/** Persists an incarnation taken at runtime (after a rejoin), so a restart goes above it. */
export function saveIncarnation(dataDir: string, incarnation: number): number {
  writePrivate(join(dataDir, "incarnation"), `${incarnation}\n`);
  return incarnation;
}
