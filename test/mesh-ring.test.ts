/**
 * The watch ring (mesh/ring.ts) and what Membership does with it: watchers judge a member's
 * silence at the suspicion timeout, the others wait longer and take a watcher's accusation,
 * which the accused refutes with any fresh heartbeat. Pure, on a fake clock.
 */
import { describe, expect, it } from "vitest";
import { FakeClock } from "../mesh/clock.ts";
import { elect } from "../mesh/election.ts";
import { Membership } from "../mesh/membership.ts";
import type { Heartbeat } from "../mesh/protocol.ts";
import { watchedBy, watchersOf } from "../mesh/ring.ts";

const local = { url: "http://127.0.0.1:1", status: "online" as const, services: [] };
const RING = ["A", "B", "C", "D", "E", "F"];

describe("watchersOf / watchedBy", () => {
  it.each([
    ["A", 3, ["B", "C", "D"]],
    ["E", 3, ["F", "A", "B"]],
    ["F", 2, ["A", "B"]],
    ["C", 10, ["D", "E", "F", "A", "B"]],
    ["C", 0, []],
    // Not in the ring (yet): the next ones after where it would be.
    ["Cx", 2, ["D", "E"]],
  ] as const)("the watchers of %s with k=%i are %j", (id, k, want) => {
    expect(watchersOf(RING, id, k)).toEqual(want);
  });

  it("watchedBy is the inverse of watchersOf", () => {
    for (const k of [1, 2, 3, 5, 8]) {
      for (const self of RING) {
        const mine = RING.filter((x) => watchersOf(RING, x, k).includes(self)).sort();
        expect([...watchedBy(RING, self, k)].sort()).toEqual(mine);
      }
    }
  });

  it("every member has exactly min(k, N-1) watchers and watches as many", () => {
    for (const k of [1, 3, 7]) {
      const want = Math.min(k, RING.length - 1);
      for (const id of RING) {
        expect(new Set(watchersOf(RING, id, k)).size).toBe(want);
        expect(new Set(watchedBy(RING, id, k)).size).toBe(want);
      }
    }
  });
});

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

/** "C" with watchers=2 among A..F: it watches A and B; D's watchers are E and F. */
function observer() {
  const clock = new FakeClock(1_000_000);
  const m = new Membership(
    "C",
    { local, watchers: 2, suspectAfterMs: 3000, unwatchedSuspectAfterMs: 9000 },
    clock,
  );
  for (const id of RING) if (id !== "C") m.onHeartbeat(beat(id, 1));
  return { clock, m };
}

describe("Membership with a watch ring", () => {
  it("judges the silence of the members it watches at suspectAfterMs, of the others later", () => {
    const { clock, m } = observer();
    expect(m.watchers()).toEqual(["D", "E"]);
    expect(["A", "B", "D", "E", "F"].filter((x) => m.watching(x))).toEqual(["A", "B"]);
    clock.advance(3001);
    expect(
      m
        .tick()
        .map((c) => c.id)
        .sort(),
    ).toEqual(["A", "B"]);
    expect(m.quiet(1500).sort()).toEqual([]);
    clock.advance(6000);
    expect(
      m
        .tick()
        .map((c) => `${c.id}:${c.to}`)
        .sort(),
    ).toEqual(["A:dead", "B:dead", "D:suspect", "E:suspect", "F:suspect"]);
  });

  it("quiet() allows the unwatched their longer silence", () => {
    const { clock, m } = observer();
    clock.advance(2000);
    expect(m.quiet(1500).sort()).toEqual(["A", "B"]);
    clock.advance(6000);
    expect(m.quiet(1500).sort()).toEqual(["A", "B", "D", "E", "F"]);
  });

  it("takes an accusation by a watcher of the accused, not by anyone else", () => {
    const { clock, m } = observer();
    clock.advance(2000);
    // D's watchers are E and F; A is none of them.
    expect(m.accuse("A", "D", 1)).toEqual({ outcome: "not-watcher", changes: [] });
    expect(m.member("D")?.state).toBe("alive");
    expect(m.accuse("E", "D", 1)).toEqual({
      outcome: "taken",
      changes: [{ id: "D", from: "alive", to: "suspect" }],
    });
    expect(m.member("D")?.state).toBe("suspect");
  });

  it("ignores an accusation of a member it heard itself a moment ago, or of another incarnation", () => {
    const { clock, m } = observer();
    clock.advance(1000);
    m.onHeartbeat(beat("D", 2));
    clock.advance(1000);
    expect(m.accuse("E", "D", 1).outcome).toBe("heard");
    expect(m.accuse("E", "D", 2).outcome).toBe("moot");
    expect(m.accuse("E", "nobody", 1).outcome).toBe("moot");
    expect(m.accuse("E", "C", 1).outcome).toBe("self");
    expect(m.accuse("E", "C", 0).outcome).toBe("moot");
    expect(m.member("D")?.state).toBe("alive");
  });

  it("a fresh heartbeat refutes an accusation: alive again, settle period kept, no flapping", () => {
    const { clock, m } = observer();
    const since = m.member("D")?.aliveSince;
    for (let i = 0; i < 5; i++) {
      clock.advance(2000);
      expect(m.accuse("E", "D", 1).outcome).toBe("taken");
      const back = m.onHeartbeat(beat("D", 2 + i));
      expect(back).toEqual([{ id: "D", from: "suspect", to: "alive", refuted: true }]);
    }
    expect(m.member("D")).toMatchObject({ state: "alive", flapping: false, aliveSince: since });
  });

  it("an accusation nobody refutes ends in death after deadAfterMs", () => {
    const { clock, m } = observer();
    clock.advance(2000);
    m.accuse("F", "D", 1);
    clock.advance(5999);
    expect(m.tick().filter((c) => c.id === "D")).toEqual([]);
    clock.advance(1);
    expect(m.tick().filter((c) => c.id === "D")).toEqual([
      { id: "D", from: "suspect", to: "dead" },
    ]);
  });

  it("the ring follows the view: dead members leave it and the watched pass on", () => {
    const { clock, m } = observer();
    clock.advance(3001);
    m.tick(); // A and B (watched) suspect
    clock.advance(6000);
    m.tick(); // A and B dead, D E F (unwatched, 9 s) suspect
    expect(m.ring()).toEqual(["C", "D", "E", "F"]);
    expect(["D", "E", "F"].filter((x) => m.watching(x))).toEqual(["E", "F"]);
    expect(m.watchers()).toEqual(["D", "E"]);
  });

  it("needsState: a member that announces a newer state version than the state we hold", () => {
    const { m } = observer();
    expect(m.needsState("D")).toBe(true); // its first heartbeat carried no state
    m.onHeartbeat(
      beat("D", 2, { stateVersion: 1, state: { url: "http://127.0.0.1:2", services: [] } }),
    );
    expect(m.needsState("D")).toBe(false);
    m.onHeartbeat(beat("D", 3, { stateVersion: 2 }));
    expect(m.needsState("D")).toBe(true);
  });
});

describe("accusations: refutations bounded, one watcher's word does not move the lead", () => {
  // F3 (review of the ring): every accusation of us made us flood a refutation, so a member that
  // accuses again and again made us flood at its rate. One per refuteEveryMs answers them all.
  it("refutes at most once per refuteEveryMs, however often it is accused", () => {
    const { clock, m } = observer();
    expect(m.settings.refuteEveryMs).toBe(1000);
    const outcomes: string[] = [];
    for (let i = 0; i < 10; i++) {
      outcomes.push(m.accuse(i % 2 ? "A" : "B", "C", 1).outcome);
      clock.advance(50);
    }
    expect(outcomes).toEqual(["self", ...Array(9).fill("refuted")]);
    clock.advance(500);
    expect(m.accuse("B", "C", 1).outcome).toBe("self");
  });

  /** "D" with watchers=2 among A..F: A (the leader, term 1) is watched by B and C, not by D. */
  function leaderView(timing: { deadAfterMs?: number; unwatchedSuspectAfterMs?: number } = {}) {
    const clock = new FakeClock(1_000_000);
    const m = new Membership(
      "D",
      {
        local,
        watchers: 2,
        suspectAfterMs: 3000,
        deadAfterMs: 20_000,
        unwatchedSuspectAfterMs: 9000,
        ...timing,
      },
      clock,
    );
    for (const id of RING) {
      if (id !== "D") m.onHeartbeat(beat(id, 1, id === "A" ? { leader: true, term: 1 } : {}));
    }
    clock.advance(10_000); // everyone settled; A's word keeps it alive
    m.onHeartbeat(beat("A", 2, { leader: true, term: 1 }));
    for (const id of ["B", "C", "E", "F"]) m.onHeartbeat(beat(id, 2));
    let leader = { id: "A", term: 1 };
    const changes: string[] = [];
    const run = () => {
      const v = m.view();
      const next = elect(v, leader, { settleMs: 5000, now: v.now, maxTerm: v.maxTerm });
      if (next && (next.id !== leader.id || next.term !== leader.term)) {
        changes.push(`${next.id}@${next.term}`);
        leader = next;
      }
    };
    return { clock, m, run, changes };
  }

  // F4: one watcher accuses the leader; the others took it, elected the next ID, and went back
  // when the leader refuted it: two leader changes (two reports) for one hiccup.
  it("a leader accused by one watcher keeps the lead; its refutation changes nothing", () => {
    const { clock, m, run, changes } = leaderView();
    clock.advance(2000);
    expect(m.accuse("B", "A", 1).outcome).toBe("taken");
    expect(m.member("A")).toMatchObject({ state: "suspect", accused: true });
    run();
    clock.advance(100);
    m.onHeartbeat(beat("A", 3, { leader: true, term: 1 }));
    run();
    expect(m.member("A")?.state).toBe("alive");
    expect(changes).toEqual([]);
  });

  it("a second watcher's accusation confirms it: the lead moves at once", () => {
    const { clock, m, run, changes } = leaderView();
    clock.advance(2000);
    m.accuse("B", "A", 1);
    expect(m.accuse("B", "A", 1).outcome).toBe("moot"); // the same watcher again is no second
    run();
    expect(m.accuse("C", "A", 1)).toEqual({
      outcome: "confirmed",
      changes: [{ id: "A", from: "suspect", to: "suspect" }],
    });
    expect(m.member("A")?.accused).toBeUndefined();
    run();
    expect(changes).toEqual(["B@2"]);
  });

  it("our own judgement of its silence confirms it (and the tick says so, for a watcher to accuse)", () => {
    const { clock, m, run, changes } = leaderView();
    clock.advance(2000);
    m.accuse("B", "A", 1);
    clock.advance(6999); // 8999 ms of silence: less than the 9 s we allow A (we do not watch it)
    for (const id of ["B", "C", "E", "F"]) m.onHeartbeat(beat(id, 3)); // the others speak
    const ofA = () => m.tick().filter((c) => c.id === "A");
    expect(ofA()).toEqual([]);
    run();
    expect(changes).toEqual([]);
    clock.advance(2);
    expect(ofA()).toEqual([{ id: "A", from: "suspect", to: "suspect", confirmed: true }]);
    run();
    expect(changes).toEqual(["B@2"]);
  });

  it("unconfirmed, it still dies after deadAfterMs, and the lead moves then", () => {
    const { clock, m, run, changes } = leaderView({
      deadAfterMs: 4000,
      unwatchedSuspectAfterMs: 20_000,
    });
    clock.advance(2000);
    m.accuse("C", "A", 1);
    clock.advance(3999);
    for (const id of ["B", "C", "E", "F"]) m.onHeartbeat(beat(id, 3));
    expect(m.tick().filter((c) => c.id === "A")).toEqual([]);
    run();
    expect(changes).toEqual([]);
    clock.advance(1);
    expect(m.tick().filter((c) => c.id === "A")).toEqual([
      { id: "A", from: "suspect", to: "dead" },
    ]);
    run();
    expect(changes).toEqual(["B@2"]);
  });
});
