/**
 * Hostile bytes at the heartbeat codec (fast-check): arbitrary byte strings, and valid
 * heartbeats with bytes flipped, cut, extended or spliced, through `openHeartbeat` and
 * `decodeHeartbeat`. Each either decodes to a heartbeat within the codec's own limits or throws
 * the codec's own `HeartbeatError`: never anything else, never a value it could not send back.
 * Runs: ROLLCALL_FUZZ_RUNS (10,000 in `npm run fuzz`), a short count in `npm test`.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decodeHeartbeat,
  encodeHeartbeat,
  type Heartbeat,
  HeartbeatError,
  MAX_HEARTBEAT_BYTES,
  openHeartbeat,
  sealHeartbeat,
} from "../mesh/protocol.ts";
import { fuzzRuns } from "./helpers/fuzz.ts";

const VALID: Heartbeat = {
  id: "12D3KooWJ7c9KkuZmGFa18hiHujutMT21aQ3d5ibkDCX9TTtaAG7",
  incarnation: 3,
  seq: 42,
  term: 2,
  leader: true,
  leaving: false,
  status: "online",
  uptimeMs: 12_345,
  stateVersion: 7,
  state: {
    url: "http://127.0.0.1:8701",
    services: [{ name: "upload", status: "healthy", latency_ms: 3 }],
  },
  addrs: [Uint8Array.of(4, 127, 0, 0, 1, 6, 0x1c, 0xe8)],
  peers: 4,
};

/** Decodes or throws HeartbeatError; anything else fails the property. */
function decodeOrCodecError(bytes: Uint8Array): Heartbeat | null {
  try {
    const hb = decodeHeartbeat(bytes);
    // What it decoded, it can send back: re-encoding gives a heartbeat within the limit.
    expect(encodeHeartbeat(hb).byteLength).toBeLessThanOrEqual(MAX_HEARTBEAT_BYTES);
    return hb;
  } catch (err) {
    if (err instanceof HeartbeatError) return null;
    throw err;
  }
}

const valid = encodeHeartbeat(VALID);

const mutated = fc
  .tuple(
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
    fc.nat(),
    fc.uint8Array({ maxLength: 64 }),
  )
  .map(([flips, cut, tail]) => {
    const b = Uint8Array.from(valid);
    for (const [at, v] of flips) if (b.length) b[at % b.length] = v;
    const kept = b.subarray(0, b.length ? cut % (b.length + 1) : 0);
    const out = new Uint8Array(kept.length + tail.length);
    out.set(kept);
    out.set(tail, kept.length);
    return out;
  });

const bytes = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.uint8Array({ maxLength: MAX_HEARTBEAT_BYTES + 256 }),
  mutated,
  // Varints that never end, or that claim huge lengths.
  fc.integer({ min: 1, max: 5000 }).map((n) => new Uint8Array(n).fill(0xff)),
  fc
    .uint8Array({ minLength: 1, maxLength: 16 })
    .map((b) => Uint8Array.of(1, ...b, 0xff, 0xff, 0xff, 0x7f)),
);

describe("the heartbeat codec under hostile bytes", () => {
  it("the valid sample decodes (so the mutations start from a real heartbeat)", () => {
    expect(valid.byteLength).toBeGreaterThan(0);
    expect(decodeHeartbeat(valid).id).toBe(VALID.id);
  });

  it("decodeHeartbeat: decodes within the limits or throws HeartbeatError, nothing else", () => {
    fc.assert(
      fc.property(bytes, (b) => {
        decodeOrCodecError(b);
      }),
      { numRuns: fuzzRuns(2000) },
    );
  });

  it("openHeartbeat then decode: the sealed envelope throws only HeartbeatError too", () => {
    const sealed = sealHeartbeat(valid, new Uint8Array(64).fill(7));
    fc.assert(
      fc.property(
        fc.oneof(
          bytes,
          bytes.map((b) => Uint8Array.from([...sealed.subarray(0, 8), ...b])),
        ),
        (b) => {
          try {
            const { body, signature } = openHeartbeat(b);
            expect(signature.byteLength).toBe(64);
            decodeOrCodecError(body);
          } catch (err) {
            if (!(err instanceof HeartbeatError)) throw err;
          }
        },
      ),
      { numRuns: fuzzRuns(2000) },
    );
  });
});
