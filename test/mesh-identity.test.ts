import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { afterAll, describe, expect, it } from "vitest";
import {
  HeartbeatError,
  HeartbeatVerifier,
  IdentityError,
  PskError,
  encodeHeartbeat,
  keyPath,
  loadIdentity,
  openHeartbeat,
  parsePsk,
  signHeartbeat,
} from "../mesh/index.ts";
import { parsePex } from "../mesh/pex.ts";
import { tempDir } from "./helpers/mesh-cluster.ts";

const tmp = tempDir("rollcall-ident-");
afterAll(tmp.cleanup);

describe("identity", () => {
  it("creates the key on first start (0600), reuses it after, and takes a higher incarnation each time", async () => {
    const dir = join(tmp.path, "a");
    const first = await loadIdentity(dir);
    expect(first.created).toBe(true);
    expect(statSync(keyPath(dir)).mode & 0o777).toBe(0o600);
    const second = await loadIdentity(dir);
    expect(second.created).toBe(false);
    expect(second.peerId.toString()).toBe(first.peerId.toString());
    expect(second.incarnation).toBeGreaterThan(first.incarnation);
  });

  it("refuses a key file that is not a libp2p key, with a clear error", async () => {
    const dir = join(tmp.path, "bad");
    await loadIdentity(dir);
    writeFileSync(keyPath(dir), "not a key");
    await expect(loadIdentity(dir)).rejects.toThrow(IdentityError);
    await expect(loadIdentity(dir)).rejects.toThrow(/is not a libp2p private key/);
  });
});

describe("heartbeat signatures", () => {
  it("verifies the claimed id's own signature and nothing else", async () => {
    const alice = await loadIdentity(join(tmp.path, "alice"));
    const mallory = await generateKeyPair("Ed25519");
    const hb = {
      id: alice.peerId.toString(),
      incarnation: 1,
      seq: 1,
      term: 0,
      leader: false,
      leaving: false,
      canLead: true,
      uptimeMs: 0,
      status: "online" as const,
      stateVersion: 1,
    };
    const body = encodeHeartbeat(hb);
    const verifier = new HeartbeatVerifier({ cluster: "lab" });
    const good = openHeartbeat(await signHeartbeat(body, alice.privateKey, "lab"));
    expect(await verifier.verify(hb.id, good.body, good.signature)).toBe(true);
    const forged = openHeartbeat(await signHeartbeat(body, mallory, "lab"));
    expect(await verifier.verify(hb.id, forged.body, forged.signature)).toBe(false);
    // Alice's own signature, made for another cluster (same body, same bytes on the wire).
    const elsewhere = openHeartbeat(await signHeartbeat(body, alice.privateKey, "lab2"));
    expect(elsewhere.body).toEqual(good.body);
    expect(await verifier.verify(hb.id, elsewhere.body, elsewhere.signature)).toBe(false);
    // Signed for one receiver (a direct heartbeat to a watcher): it verifies for that receiver
    // only, neither as a flood nor for another member, so a watcher cannot pass it on.
    const toBob = openHeartbeat(await signHeartbeat(body, alice.privateKey, "lab", "bob"));
    expect(await verifier.verify(hb.id, toBob.body, toBob.signature, "bob")).toBe(true);
    expect(await verifier.verify(hb.id, toBob.body, toBob.signature)).toBe(false);
    expect(await verifier.verify(hb.id, toBob.body, toBob.signature, "carol")).toBe(false);
    expect(await verifier.verify(hb.id, good.body, good.signature, "bob")).toBe(false);
    const tampered = Uint8Array.from(good.body);
    tampered[0] = (tampered[0] ?? 0) ^ 1;
    expect(await verifier.verify(hb.id, tampered, good.signature)).toBe(false);
    expect(() => openHeartbeat(new Uint8Array(64))).toThrow(HeartbeatError);
    expect(() => verifier.keyOf("not-a-peer-id")).toThrow(HeartbeatError);
  });
});

describe("pre-shared key and peer exchange parsing", () => {
  it("accepts only the swarm.key format", () => {
    const key = `/key/swarm/psk/1.0.0/\n/base16/\n${"0f".repeat(32)}\n`;
    expect(parsePsk(key).length).toBeGreaterThan(64);
    expect(() => parsePsk("hunter2")).toThrow(PskError);
    expect(() => parsePsk(key.replace("/base16/", "/base64/"))).toThrow(/swarm.key/);
  });

  it("parses peer-exchange answers defensively", () => {
    const enc = (x: unknown) => new TextEncoder().encode(JSON.stringify(x));
    const id = "12D3KooWGRUVh4QXxWvRZkLZyRzd8nK1Gbbr5ZqdF4gRNiVMpbQo";
    const { peers } = parsePex(
      enc({
        peers: [
          { id, addrs: ["/ip4/127.0.0.1/tcp/1", "not an addr", 7] },
          { id: "bogus", addrs: [] },
          { id, addrs: "nope" },
          null,
        ],
      }),
    );
    expect(peers).toHaveLength(1);
    expect(peers[0]?.addrs.map(String)).toEqual(["/ip4/127.0.0.1/tcp/1"]);
    expect(() => parsePex(enc({ nope: 1 }))).toThrow(/no peer list/);
    expect(() => parsePex(new TextEncoder().encode("{"))).toThrow();
    expect(() => parsePex(new Uint8Array(70_000))).toThrow(/too large/);
  });
});
