/**
 * Leaders that crash or collide, against the coordinator on a Workers-KV-like store: a leader
 * that crashes between two reports, one that crashes while its report is in flight, and two
 * leaders reporting at once after a partition heals. Reports are built as a leader's agent
 * builds them (agent/aggregate.ts from a mesh view). The stored view must say the truth after
 * one report of the surviving leader.
 */
import { describe, expect, it } from "vitest";
import { aggregate } from "../agent/aggregate.ts";
import { type ClusterReportInput, createCoordinator } from "../coordinator.ts";
import type { MemberView } from "../mesh/types.ts";
import { agentPost, kvLikeStore, testClock, TEST_INIT } from "./helpers/coord-fixtures.ts";
import { peer } from "./helpers/signing.ts";

/** The members are real keys (a report is signed by its leader), called A to E here. */
const P = (name: string) => peer(`faults-leader ${name}`);
const nameOf = new Map(["A", "B", "C", "D", "E"].map((n) => [P(n), n]));
const named = (ids: string[]) => ids.map((id) => nameOf.get(id) ?? id).sort();

/**
 * A member as a mesh view shows it. `crashed`: dead with evidence (its host refused a connection
 * twice, mesh/dialer.ts), as a leader that crashed is seen by the one that follows it.
 */
function view(name: string, state: MemberView["state"] | "crashed", incarnation = 1): MemberView {
  const id = P(name);
  const crashed = state === "crashed";
  return {
    id,
    self: false,
    state: crashed ? "dead" : state,
    ...(crashed ? { evidence: "refused" } : {}),
    incarnation,
    flapping: false,
    url: `http://127.0.0.1:${9000 + name.charCodeAt(0)}`,
    status: "online",
    services: [{ name: "upload", status: "healthy" }],
    lastSeen: 1000,
    aliveSince: 0,
    since: 1000,
  } as unknown as MemberView;
}

function setup() {
  const clock = testClock();
  const { store, hold } = kvLikeStore(clock);
  const coordinator = createCoordinator(TEST_INIT, { store, clock });
  let sequence = 0;
  const send = async (leader: string, term: number, members: MemberView[]) => {
    clock.advance(1500);
    const body: ClusterReportInput = {
      leader_id: P(leader),
      term,
      sequence: ++sequence,
      ...aggregate({ members }),
    };
    const app = {
      request: (path: string, init: RequestInit) =>
        coordinator.fetch(new Request(`http://c.test${path}`, init)),
    };
    return (await agentPost(app, "/api/cluster/heartbeat", body, clock.now())).status;
  };
  /** Routable workers as a fresh isolate on the same store sees them (what is stored). */
  const storedTruth = async () => {
    clock.advance(2000);
    await coordinator.flush(); // what the per-key write rate deferred (the minute timer's job)
    clock.advance(61_000); // past the consistency grace and every cache
    const fresh = createCoordinator(TEST_INIT, { store, clock });
    const table = await fresh.table();
    return {
      routable: named(table.workers.filter((w) => w.healthy).map((w) => w.worker_id)),
      leaders: named(table.clusters.map((c) => c.leader_id ?? "")),
    };
  };
  return { send, storedTruth, hold, clock, writes: () => store.writes };
}

describe("the stored view converges within one report of the surviving leader", () => {
  // The new leader reports a member it saw crash (refused twice: a dead process, which a
  // partition never looks like) as "offline" until its mesh forgets it (agent/aggregate.ts):
  // the coordinator stops routing to it, and, listed with a higher term, the crashed leader's
  // own view is superseded by the merge rules. Before, it was left out like a member dead by
  // silence, and the crashed leader's view kept it routable until the view lapsed (58 min).
  it("after a leader crashed between two reports", async () => {
    const t = setup();
    expect(await t.send("A", 1, [view("A", "alive"), view("B", "alive"), view("C", "alive")])).toBe(
      200,
    );
    // A crashes. B's view: A dead (refused twice). B leads with term 2 and reports once.
    expect(
      await t.send("B", 2, [view("A", "crashed"), view("B", "alive"), view("C", "alive")]),
    ).toBe(200);
    const truth = await t.storedTruth();
    expect(truth.routable).toEqual(["B", "C"]);
    expect(truth.leaders).toEqual(["B"]);
  });

  it("after a leader crashed while its report was in flight", async () => {
    const t = setup();
    expect(await t.send("A", 1, [view("A", "alive"), view("B", "alive")])).toBe(200);
    // A's next report (C joined) reaches the store slowly; A crashes meanwhile.
    const release = t.hold();
    const inFlight = t.send("A", 1, [view("A", "alive"), view("B", "alive"), view("C", "alive")]);
    await new Promise((r) => setTimeout(r, 20));
    const next = t.send("B", 2, [view("A", "crashed"), view("B", "alive"), view("C", "alive")]);
    release();
    expect(await inFlight).toBe(200);
    expect(await next).toBe(200);
    const truth = await t.storedTruth();
    expect(truth.routable).toEqual(["B", "C"]);
  });

  it("after a leader left gracefully: listed as left, its view is superseded at once", async () => {
    const t = setup();
    expect(await t.send("A", 1, [view("A", "alive"), view("B", "alive"), view("C", "alive")])).toBe(
      200,
    );
    expect(await t.send("B", 2, [view("A", "left"), view("B", "alive"), view("C", "alive")])).toBe(
      200,
    );
    const truth = await t.storedTruth();
    expect(truth.routable).toEqual(["B", "C"]);
    expect(truth.leaders).toEqual(["B"]);
  });

  it("once the mesh forgot the crashed leader, dropping it from the report costs no write", async () => {
    const t = setup();
    expect(await t.send("A", 1, [view("A", "alive"), view("B", "alive")])).toBe(200);
    expect(await t.send("B", 2, [view("A", "crashed"), view("B", "alive")])).toBe(200);
    const writes = t.writes();
    expect(await t.send("B", 2, [view("B", "alive")])).toBe(200);
    expect(t.writes()).toBe(writes);
    expect((await t.storedTruth()).routable).toEqual(["B"]);
  });

  it("a leader dead by silence alone (a partition looks the same) stays in the stored view until its own view lapses (58 min + a keepalive)", async () => {
    const t = setup();
    const abc = () => [view("A", "alive"), view("B", "alive"), view("C", "alive")];
    expect(await t.send("A", 1, abc())).toBe(200);
    expect(await t.send("B", 2, [view("A", "dead"), view("B", "alive"), view("C", "alive")])).toBe(
      200,
    );
    t.clock.advance(58 * 60_000 + 1000);
    // The first report after the lapse drops A's view and hands its entries to B ...
    expect(await t.send("B", 2, [view("B", "alive"), view("C", "alive")])).toBe(200);
    expect((await t.storedTruth()).routable).toEqual(["A", "B", "C"]);
    // ... and B's next one (its keepalive, 48 min later) removes them.
    t.clock.advance(48 * 60_000);
    expect(await t.send("B", 2, [view("B", "alive"), view("C", "alive")])).toBe(200);
    const truth = await t.storedTruth();
    expect(truth.routable).toEqual(["B", "C"]);
    expect(truth.leaders).toEqual(["B"]);
  });

  it("after two leaders reported at once when a partition healed", async () => {
    const t = setup();
    const all = ["A", "B", "C", "D"];
    expect(
      await t.send(
        "A",
        1,
        all.map((id) => view(id, "alive")),
      ),
    ).toBe(200);
    // Split: A leads {A, B}; C leads {C, D} with term 2. Healed: both report at once.
    await Promise.all([
      t.send("A", 1, [view("A", "alive"), view("B", "alive")]),
      t.send("C", 2, [view("C", "alive"), view("D", "alive")]),
    ]);
    // One leader again (A, the lowest, takes term 3) and reports the whole cluster once.
    expect(
      await t.send(
        "A",
        3,
        all.map((id) => view(id, "alive")),
      ),
    ).toBe(200);
    const truth = await t.storedTruth();
    expect(truth.routable).toEqual(all);
    expect(truth.leaders).toEqual(["A"]);
  });
});

describe("a partition's small side keeps reporting", () => {
  // Open (docs/RELIABILITY.md, "Open"): `admitsLeader` takes a leader only while it is in the
  // document's current members or leader views, though its comment promises any key a leader of
  // the cluster ever listed. In a 2/3 split the big side's new leader first lists the old one as
  // a suspect member (its view is deposed), then, once it is dead by silence, leaves it out:
  // that report adopts the deposed leader's entries and deletes them, and from then on the small
  // side's leader is refused 403 "Leader is not a member of this cluster" (seen in the netns lab
  // right after a heal): the coordinator loses the small side for the rest of the partition.
  it("the small side's leader is still admitted after the big side's leader left it out", async () => {
    const t = setup();
    const all = ["A", "B", "C", "D", "E"];
    expect(
      await t.send(
        "A",
        1,
        all.map((id) => view(id, "alive")),
      ),
    ).toBe(200);
    // Split {A, B} | {C, D, E}: C leads the big side with term 2; its first report still lists
    // A and B, suspect (not dead yet).
    const big = [view("C", "alive"), view("D", "alive"), view("E", "alive")];
    expect(await t.send("C", 2, [view("A", "suspect"), view("B", "suspect"), ...big])).toBe(200);
    expect(await t.send("A", 1, [view("A", "alive"), view("B", "alive")])).toBe(200);
    // A and B dead by silence in C's view: left out of its next report.
    expect(await t.send("C", 2, big)).toBe(200);
    // A still leads its side, which is still there: its report must be taken.
    expect(await t.send("A", 1, [view("A", "alive"), view("B", "alive")])).toBe(200);
    expect((await t.storedTruth()).routable).toEqual(all);
  });
});
