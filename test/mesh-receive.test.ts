/**
 * What the heartbeat receive path relies on, on a fake clock: the mesh re-runs the election on a
 * received heartbeat only when Membership reports a change, so a leadership claim that starts,
 * ends or changes its term must be reported as one; a stale heartbeat is told apart before it
 * is applied (isStale); and the non-copying queries (count, ids) must agree with the full view()
 * they replace.
 */
import { describe, expect, it } from "vitest";
import { FakeClock } from "../mesh/clock.ts";
import { Membership } from "../mesh/membership.ts";
import type { Heartbeat } from "../mesh/protocol.ts";

const local = { url: "http://127.0.0.1:1", status: "online" as const, services: [] };

function beats(id: string) {
  let seq = 0;
  return (claim?: number): Heartbeat => ({
    id,
    incarnation: 1,
    seq: ++seq,
    term: claim ?? 0,
    leader: claim !== undefined,
    leaving: false,
    status: "online",
    canLead: true,
    uptimeMs: 0,
    stateVersion: 1,
  });
}

describe("membership as the receive path sees it", () => {
  it("reports a leadership claim that starts, changes its term or ends; a repeat is no change", () => {
    const m = new Membership("B", { local }, new FakeClock(0));
    const a = beats("A");
    const same = [{ id: "A", from: "alive", to: "alive" }];
    expect(m.onHeartbeat(a())).toEqual([{ id: "A", from: null, to: "alive" }]);
    expect(m.onHeartbeat(a())).toEqual([]);
    expect(m.onHeartbeat(a(3))).toEqual(same); // starts claiming
    expect(m.member("A")?.leaderTerm).toBe(3);
    expect(m.onHeartbeat(a(3))).toEqual([]); // the same claim again
    expect(m.onHeartbeat(a(4))).toEqual(same); // a new term
    expect(m.onHeartbeat(a())).toEqual(same); // steps down
    expect(m.member("A")?.leaderTerm).toBeUndefined();
  });

  it("isStale() names exactly the heartbeats onHeartbeat() ignores", () => {
    const m = new Membership("B", { local }, new FakeClock(0));
    const hb = (incarnation: number, seq: number, leaving = false): Heartbeat => ({
      ...beats("A")(),
      incarnation,
      seq,
      leaving,
    });
    expect(m.isStale(hb(1, 5))).toBe(false); // unknown member
    m.onHeartbeat(hb(1, 5));
    expect(m.isStale(hb(1, 5))).toBe(true); // duplicate
    expect(m.isStale(hb(1, 4))).toBe(true); // older sequence
    expect(m.isStale(hb(0, 99))).toBe(true); // older incarnation
    expect(m.isStale(hb(1, 6))).toBe(false);
    m.onHeartbeat(hb(1, 6, true)); // goodbye
    expect(m.isStale(hb(1, 7))).toBe(true); // after the goodbye, same incarnation
    expect(m.isStale(hb(2, 1))).toBe(false); // a restart
    expect(m.isStale({ ...hb(1, 1), id: "B" })).toBe(false); // our own: not stale, just ignored
  });

  it("count() and ids() agree with view(), self included", () => {
    const clock = new FakeClock(0);
    const m = new Membership("B", { local, suspectAfterMs: 1000 }, clock);
    for (const id of ["A", "C", "D"]) m.onHeartbeat(beats(id)());
    clock.advance(500);
    m.onHeartbeat({ ...beats("C")(), seq: 2 });
    clock.advance(700);
    m.tick(); // A and D are suspect now, C is alive
    m.suspect("C");
    m.onHeartbeat({ ...beats("C")(), seq: 3 });
    const members = m.view().members;
    for (const pred of [
      (x: { state: string }) => x.state === "alive",
      (x: { state: string }) => x.state === "suspect",
      (x: { self: boolean; state: string }) => !x.self && x.state !== "left",
    ]) {
      expect(m.count(pred)).toBe(members.filter(pred).length);
      expect(m.ids(pred).sort()).toEqual(members.filter(pred).map((x) => x.id));
    }
    expect(m.count((x) => x.state === "alive")).toBe(2); // B itself and C
  });
});
