/**
 * Review of the watch ring's accusations and needsState (mesh/membership.ts, commit 052fbb7),
 * pure, on a fake clock. Both are open findings for the mesh protocol's author
 * (/work/notes/review-findings.md): fixed (they failed on the code before the fix).
 */
import { describe, expect, it } from "vitest";
import { FakeClock } from "../mesh/clock.ts";
import { Membership } from "../mesh/membership.ts";
import type { Heartbeat } from "../mesh/protocol.ts";

const local = { url: "http://127.0.0.1:1", status: "online" as const, services: [] };

function beat(id: string, seq: number, extra: Partial<Heartbeat> = {}): Heartbeat {
  return {
    id,
    incarnation: 1,
    seq,
    term: 0,
    leader: false,
    leaving: false,
    canLead: true,
    status: "online",
    uptimeMs: 0,
    stateVersion: 1,
    ...extra,
  };
}

/** "C" among A..E, everyone watching everyone (the default), suspicion after 3 s. */
function observer() {
  const clock = new FakeClock(1_000_000);
  const m = new Membership("C", { local, suspectAfterMs: 3000, deadAfterMs: 6000 }, clock);
  for (const id of ["A", "B", "D", "E"]) m.onHeartbeat(beat(id, 1));
  return { clock, m };
}

/**
 * D falls silent for 5 s three times (longer than our own suspicion timeout: real downs), and
 * comes back each time. `accused`: a watcher's accusation reaches us before our own tick does.
 */
function flaps(accused: boolean) {
  const { clock, m } = observer();
  let seq = 1;
  for (let i = 0; i < 3; i++) {
    clock.advance(2000);
    if (accused) expect(m.accuse("E", "D", 1).outcome).toBe("taken");
    clock.advance(1001);
    m.tick();
    expect(m.member("D")?.state).toBe("suspect");
    clock.advance(2000);
    m.onHeartbeat(beat("D", ++seq));
    expect(m.member("D")?.state).toBe("alive");
  }
  return { clock, m };
}

describe("review3: accusations and refutation", () => {
  it("a member silent beyond our own timeout is flapping and resettles, when nobody accuses it", () => {
    const { clock, m } = flaps(false);
    expect(m.member("D")).toMatchObject({ flapping: true, aliveSince: clock.now() });
  });

  // An accusation that arrives before our own judgement turns a real down (5 s of silence, more
  // than we allow) into a "refutation": no down counted, the settle period kept. A member that
  // really drops out again and again is never damped as flapping, and keeps its eligibility to
  // lead, in every node its watchers accuse it to first (in a watch ring: all non-watchers).
  it("an accusation does not excuse a silence longer than we allow (flapping, settle)", () => {
    const { clock, m } = flaps(true);
    expect(m.member("D")).toMatchObject({ flapping: true, aliveSince: clock.now() });
  });
});

describe("review3: needsState across incarnations", () => {
  // State versions restart with each run (Membership starts at 1), so a version of the new
  // incarnation says nothing about the state we hold of the old one: after a restart whose
  // heartbeats carry no state, we keep the old run's URL and services and never ask.
  it("a restarted member's state is needed until it sent the new incarnation's", () => {
    const { m } = observer();
    m.onHeartbeat(
      beat("D", 2, { stateVersion: 1, state: { url: "http://127.0.0.1:2", services: [] } }),
    );
    expect(m.needsState("D")).toBe(false);
    m.onHeartbeat(beat("D", 1, { incarnation: 2, stateVersion: 1 }));
    expect(m.member("D")?.incarnation).toBe(2);
    expect(m.needsState("D")).toBe(true);
  });
});
