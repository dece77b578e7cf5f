import { describe, expect, it } from "vitest";
import {
  type Heartbeat,
  HeartbeatError,
  MAX_HEARTBEAT_BYTES,
  decodeHeartbeat,
  encodeHeartbeat,
} from "../mesh/protocol.ts";
import { prng } from "../support/random.ts";

const ID = "12D3KooWGRUVh4QXxWvRZkLZyRzd8nK1Gbbr5ZqdF4gRNiVMpbQo";

function full(): Heartbeat {
  return {
    id: ID,
    incarnation: 7,
    seq: 123456,
    term: 4,
    leader: true,
    leaving: false,
    status: "degraded",
    canLead: true,
    uptimeMs: 86_400_000,
    stateVersion: 3,
    state: {
      url: "http://127.0.0.1:8701",
      services: [
        { name: "upload", status: "healthy", latency_ms: 3 },
        { name: "ocr.v2", status: "unhealthy" },
      ],
      meta: { tier: 1, capabilities: { has_gpu: true, cpu_cores: 8 } },
    },
    addrs: [Uint8Array.from([4, 127, 0, 0, 1, 6, 0x1f, 0x90])],
  };
}

describe("heartbeat codec", () => {
  it("round-trips a full heartbeat compactly", () => {
    const hb = full();
    const bytes = encodeHeartbeat(hb);
    expect(decodeHeartbeat(bytes)).toEqual(hb);
    expect(bytes.length).toBeLessThan(160);
  });

  it("round-trips a slim heartbeat (no state, no addresses) in under 60 bytes", () => {
    const hb: Heartbeat = { ...full(), leader: false, status: "online" };
    delete hb.state;
    delete hb.addrs;
    const bytes = encodeHeartbeat(hb);
    expect(decodeHeartbeat(bytes)).toEqual(hb);
    expect(bytes.length).toBeLessThan(60);
  });

  it("carries a member's name (--name) in its meta, and only the known meta fields", () => {
    const hb = full();
    (hb.state as { meta: unknown }).meta = { tier: 2, name: "gpu-box.lab_1", extra: "dropped" };
    expect(decodeHeartbeat(encodeHeartbeat(hb)).state?.meta).toEqual({
      tier: 2,
      name: "gpu-box.lab_1",
    });
  });

  it("keeps the leaving flag and large counters", () => {
    const hb: Heartbeat = { ...full(), leaving: true, seq: 2 ** 40, incarnation: 2 ** 31 + 5 };
    expect(decodeHeartbeat(encodeHeartbeat(hb))).toEqual(hb);
  });

  it("refuses to encode what it would refuse to decode", () => {
    const bad: Array<[string, (hb: Heartbeat) => void]> = [
      ["url scheme", (hb) => ((hb.state as { url: string }).url = "ftp://x")],
      ["service name", (hb) => hb.state?.services.push({ name: "../etc", status: "healthy" })],
      ["duplicate service", (hb) => hb.state?.services.push({ name: "upload", status: "healthy" })],
      ["negative seq", (hb) => (hb.seq = -1)],
      ["fractional term", (hb) => (hb.term = 1.5)],
      ["meta tier", (hb) => ((hb.state as { meta: unknown }).meta = { tier: "gpu" })],
      ["meta name", (hb) => ((hb.state as { meta: unknown }).meta = { name: "gpu box\n" })],
      ["long name", (hb) => ((hb.state as { meta: unknown }).meta = { name: "n".repeat(65) })],
      [
        "huge meta",
        (hb) => ((hb.state as { meta: unknown }).meta = { capabilities: { x: "y".repeat(2000) } }),
      ],
    ];
    for (const [what, mutate] of bad) {
      const hb = full();
      mutate(hb);
      expect(() => encodeHeartbeat(hb), what).toThrow(HeartbeatError);
    }
  });

  it("round-trips a state request and accusations (version 3), bounded", () => {
    const hb: Heartbeat = {
      ...full(),
      requestState: true,
      accuse: [
        { id: ID, incarnation: 3 },
        { id: "12D3KooWAJjbRkp8FPF5MKgMU53aUTxWkqvDrs4zc1VMbwRwfsbE", incarnation: 2 ** 40 },
      ],
    };
    const bytes = encodeHeartbeat(hb);
    expect(bytes[0]).toBe(3);
    expect(decodeHeartbeat(bytes)).toEqual(hb);
    const many = { ...hb, accuse: Array.from({ length: 9 }, () => ({ id: ID, incarnation: 1 })) };
    expect(() => encodeHeartbeat(many)).toThrow(/Too many accusations/);
    expect(() => encodeHeartbeat({ ...hb, accuse: [{ id: ID, incarnation: 2 ** 50 }] })).toThrow(
      HeartbeatError,
    );
    // A count of 9 on the wire is refused as well (the last byte before the list is its count).
    const one = encodeHeartbeat({ ...hb, accuse: [{ id: ID, incarnation: 1 }] });
    const idLen = 1 + 38 + 1; // varint length, the id (38 bytes), the incarnation
    const at = one.length - idLen - 1;
    expect(one[at]).toBe(1);
    const nine = Uint8Array.from(one);
    nine[at] = 9;
    expect(() => decodeHeartbeat(nine)).toThrow(/Accusation count/);
  });

  it("rejects bad versions, unknown flags, truncation and trailing bytes with HeartbeatError", () => {
    const good = encodeHeartbeat(full());
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ["version", Uint8Array.from([1, ...good.slice(1)]), /version 1 is not supported/],
      // Version 2 (one flags byte, signatures without a receiver) is refused: no mixed clusters.
      ["version 2", Uint8Array.from([2, ...good.slice(1)]), /version 2 is not supported/],
      // Flags are a varint: 512 is none we know, nor is a 2^35 that 32-bit masks would lose.
      ["flags", Uint8Array.from([3, 0x80, 0x04, ...good.slice(2)]), /unknown flags/],
      [
        "huge flags",
        Uint8Array.from([3, 0x80, 0x80, 0x80, 0x80, 0x01, ...good.slice(2)]),
        /unknown flags/,
      ],
      ["truncated", good.slice(0, good.length - 3), /ended early|not valid|trailing/],
      ["trailing", Uint8Array.from([...good, 0]), /trailing bytes/],
      ["empty", new Uint8Array(0), /ended early in version/],
      ["oversized", new Uint8Array(MAX_HEARTBEAT_BYTES + 1), /exceeds/],
    ];
    for (const [what, bytes, message] of cases) {
      expect(() => decodeHeartbeat(bytes), what).toThrow(message);
    }
  });

  it("survives garbage: every random or mutated input decodes or throws HeartbeatError", () => {
    const rand = prng(42);
    const good = encodeHeartbeat(full());
    let decoded = 0;
    for (let i = 0; i < 20_000; i++) {
      let input: Uint8Array;
      if (i % 2 === 0) {
        input = new Uint8Array(Math.floor(rand() * 300));
        for (let j = 0; j < input.length; j++) input[j] = Math.floor(rand() * 256);
        if (input.length > 1 && i % 4 === 0) input[0] = 3; // get past the version byte
      } else {
        input = good.slice(0, Math.max(1, Math.floor(rand() * (good.length + 4))));
        const flips = 1 + Math.floor(rand() * 4);
        for (let f = 0; f < flips; f++) {
          input[Math.floor(rand() * input.length)] = Math.floor(rand() * 256);
        }
      }
      try {
        const hb = decodeHeartbeat(input);
        decoded++;
        // Whatever decodes is schema-valid: it re-encodes to an equivalent heartbeat.
        expect(decodeHeartbeat(encodeHeartbeat(hb))).toEqual(hb);
      } catch (err) {
        if (!(err instanceof HeartbeatError)) throw err;
      }
    }
    expect(decoded).toBeGreaterThan(0);
  });
});
