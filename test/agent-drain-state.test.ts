/**
 * The drain state (agent/drain.ts) on a fake clock, the `draining` meta through the heartbeat
 * codec, and the leader's report of a draining member (agent/aggregate.ts).
 */
import { describe, expect, it } from "vitest";
import { aggregate } from "../agent/aggregate.ts";
import { Drain } from "../agent/drain.ts";
import { FakeClock } from "../mesh/clock.ts";
import { decodeMeta, encodeMeta, HeartbeatError } from "../mesh/schema.ts";
import type { MemberView } from "../mesh/types.ts";

describe("Drain", () => {
  it("is safe to stop only when draining, nothing is in flight and nothing new came for quietMs", () => {
    const clock = new FakeClock(1000);
    const d = new Drain({ quietMs: 500 }, clock);
    let changes = 0;
    d.addEventListener("change", () => changes++);
    const end = d.started();
    expect(d.status()).toMatchObject({ draining: false, in_flight: 1, safe_to_stop: false });
    d.set(true);
    d.set(true); // no change
    expect(changes).toBe(1);
    clock.advance(600);
    expect(d.status().safe_to_stop).toBe(false); // one still in flight
    end();
    end(); // counted once
    expect(d.status()).toMatchObject({ in_flight: 0, safe_to_stop: true });
    const late = d.started(); // one more arrived while the coordinator was learning of it
    late();
    expect(d.status().safe_to_stop).toBe(false);
    clock.advance(500);
    expect(d.status().safe_to_stop).toBe(true);
    d.set(false);
    expect(d.status()).toMatchObject({ draining: false, since: null, safe_to_stop: false });
    expect(changes).toBe(2);
  });
});

describe("the draining meta", () => {
  it("crosses the heartbeat codec; anything but a boolean is refused", () => {
    expect(decodeMeta(encodeMeta({ name: "w1", draining: true }))).toEqual({
      name: "w1",
      draining: true,
    });
    expect(decodeMeta(encodeMeta({ name: "w1" }))).toEqual({ name: "w1" });
    const bad = new TextEncoder().encode(JSON.stringify({ draining: "yes" }));
    expect(() => decodeMeta(bad)).toThrow(HeartbeatError);
  });

  it('is reported as "draining" (not routed), unless the member is gone or flapping', () => {
    const m = (id: string, over: Partial<MemberView>): MemberView => ({
      id,
      self: false,
      state: "alive",
      incarnation: 1,
      flapping: false,
      url: `http://127.0.0.1:900${id.length}`,
      status: "online",
      services: [],
      canLead: true,
      aliveSince: 0,
      lastSeen: 1000,
      since: 0,
      ...over,
    });
    const report = aggregate({
      members: [
        m("a", { meta: { draining: true } }),
        m("bb", { meta: { draining: true }, flapping: true }),
        m("ccc", { meta: { draining: true }, state: "left" }),
      ],
    }).members;
    expect(report.map((r) => r.status)).toEqual(["draining", "degraded", "left"]);
  });
});
