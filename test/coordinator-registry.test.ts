/** The coordinator's pure registry pieces: digest, merge of cluster reports, write policy, budget. */
import { describe, expect, it } from "vitest";
import {
  type ClusterDoc,
  type ClusterReportInput,
  ClusterReportSchema,
  decideClusterWrite,
  directHeartbeatDue,
  directStaleAfterMs,
  mergeClusterDocs,
  mergeClusterReport,
  resolveSettings,
  routingDigest,
  WriteBudget,
} from "../coordinator.ts";
import { member } from "./helpers/coord-fixtures.ts";

const lease = { leaseMs: 58 * 60_000 };
const parse = (r: ClusterReportInput) => ClusterReportSchema.parse(r);
const merge = (doc: ClusterDoc | null, r: ClusterReportInput, now = 10_000) =>
  mergeClusterReport(doc, parse(r), { now, ...lease });
const ids = (doc: ClusterDoc) => Object.keys(doc.members).sort();

describe("routingDigest", () => {
  const base = [
    {
      worker_id: "B",
      url: "http://b:1",
      status: "online",
      services: [{ name: "x" }, { name: "a" }],
    },
    { worker_id: "A", url: "http://a:1/", status: "online", tier: 2, services: [] },
  ];

  it("ignores order, trailing slashes, default tier, default service URL and health", () => {
    const same = [
      { worker_id: "A", url: "http://a:1", status: "online", services: [] },
      {
        worker_id: "B",
        url: "http://b:1",
        status: "online",
        tier: 2,
        services: [
          { name: "a", url: "http://b:1/service/a", status: "healthy" },
          { name: "x", status: "healthy" },
        ],
      },
    ];
    expect(routingDigest(same)).toBe(routingDigest(base));
    expect(routingDigest(base)).toMatch(/^[0-9a-f]{14}$/);
  });

  it("changes with anything routing needs", () => {
    const d = routingDigest(base);
    const variants = [
      [{ ...base[0], status: "degraded" }, base[1]],
      [{ ...base[0], url: "http://b:2" }, base[1]],
      [{ ...base[0], tier: 1 }, base[1]],
      [{ ...base[0], services: [{ name: "x", status: "unhealthy" }, { name: "a" }] }, base[1]],
      [{ ...base[0], services: [{ name: "x", url: "http://elsewhere" }, { name: "a" }] }, base[1]],
      [base[0]],
    ];
    for (const v of variants) expect(routingDigest(v as typeof base)).not.toBe(d);
  });
});

describe("mergeClusterReport", () => {
  it("takes each member by freshness: incarnation, then last_seen", () => {
    let doc = merge(null, {
      leader_id: "A",
      term: 1,
      sequence: 1,
      members: [member("X", { incarnation: 2, last_seen: 500 })],
    });
    doc = merge(doc, {
      leader_id: "A",
      term: 1,
      sequence: 2,
      members: [member("X", { incarnation: 1, last_seen: 900, status: "offline" })],
    });
    expect(doc.members.X?.status).toBe("online"); // lower incarnation loses
    doc = merge(doc, {
      leader_id: "A",
      term: 1,
      sequence: 3,
      members: [member("X", { incarnation: 2, last_seen: 600, status: "degraded" })],
    });
    expect(doc.members.X?.status).toBe("degraded"); // same incarnation, later last_seen wins
  });

  it("loses nothing with two leaders during a partition", () => {
    let doc = merge(null, {
      leader_id: "A",
      term: 1,
      sequence: 1,
      members: [member("A"), member("B"), member("C"), member("D")],
    });
    // Partition: A sees {A, B}, C leads {C, D} with its own term.
    doc = merge(doc, {
      leader_id: "A",
      term: 1,
      sequence: 2,
      members: [member("A", { last_seen: 2000 }), member("B", { last_seen: 2000 })],
    });
    doc = merge(doc, {
      leader_id: "C",
      term: 2,
      sequence: 1,
      members: [member("C", { last_seen: 2100 }), member("D", { last_seen: 2100 })],
    });
    expect(ids(doc)).toEqual(["A", "B", "C", "D"]);
    expect(Object.keys(doc.leaders).sort()).toEqual(["A", "C"]);
    // A's newer report that does not list C/D does not remove C's members.
    doc = merge(doc, {
      leader_id: "A",
      term: 1,
      sequence: 3,
      members: [member("A", { last_seen: 3000 }), member("B", { last_seen: 3000 })],
    });
    expect(ids(doc)).toEqual(["A", "B", "C", "D"]);
    expect(doc.members.C?.reported_by).toBe("C");
  });

  it("removes a member only by its own leader's newer report", () => {
    let doc = merge(null, {
      leader_id: "A",
      term: 1,
      sequence: 5,
      members: [member("A"), member("B")],
    });
    // An older report of the same leader (late delivery) removes nothing.
    doc = merge(doc, { leader_id: "A", term: 1, sequence: 4, members: [member("A")] });
    expect(ids(doc)).toEqual(["A", "B"]);
    doc = merge(doc, { leader_id: "A", term: 1, sequence: 6, members: [member("A")] });
    expect(ids(doc)).toEqual(["A"]);
  });

  it("drops a leader's view once a higher-term report lists it as a plain member", () => {
    let doc = merge(null, {
      leader_id: "A",
      term: 1,
      sequence: 1,
      members: [member("A"), member("B")],
    });
    doc = merge(doc, { leader_id: "C", term: 2, sequence: 1, members: [member("C"), member("D")] });
    doc = merge(doc, {
      leader_id: "A",
      term: 3,
      sequence: 1,
      members: [member("A"), member("B"), member("C", { last_seen: 5000 })],
    });
    expect(Object.keys(doc.leaders)).toEqual(["A"]);
    // D (only C knew it) passes to A and stays until A's next report omits it.
    expect(doc.members.D?.reported_by).toBe("A");
    doc = merge(doc, {
      leader_id: "A",
      term: 3,
      sequence: 2,
      members: [member("A"), member("B"), member("C", { last_seen: 5000 })],
    });
    expect(ids(doc)).toEqual(["A", "B", "C"]);
  });

  it("gives a deposed leader's late report no view, but keeps fresher members from it", () => {
    let doc = merge(null, {
      leader_id: "A",
      term: 1,
      sequence: 1,
      members: [member("A"), member("B")],
    });
    doc = merge(doc, { leader_id: "B", term: 2, sequence: 1, members: [member("A"), member("B")] });
    expect(Object.keys(doc.leaders)).toEqual(["B"]);
    doc = merge(doc, {
      leader_id: "A",
      term: 1,
      sequence: 2,
      members: [member("A", { incarnation: 5 })],
    });
    expect(Object.keys(doc.leaders)).toEqual(["B"]);
    expect(doc.members.A?.incarnation).toBe(5);
    expect(ids(doc)).toEqual(["A", "B"]);
  });

  it("lets nobody's entries linger: a deposed leader's late report and a late report of one's own", () => {
    // Regression: entries taken by a report that has no view (deposed) or by a leader's late
    // report were in no leader's view, so no report could ever remove them: a member that left
    // stayed "online" for good.
    let doc = merge(null, {
      leader_id: "A",
      term: 1,
      sequence: 1,
      members: [member("A"), member("B"), member("X")],
    });
    const at = (t: number) => [member("A", { last_seen: t }), member("B", { last_seen: t })];
    doc = merge(doc, {
      leader_id: "B",
      term: 2,
      sequence: 1,
      members: [...at(2000), member("X", { last_seen: 2000 })],
    });
    // A, deposed, reports late with fresher entries (X among them), then X leaves.
    doc = merge(doc, {
      leader_id: "A",
      term: 1,
      sequence: 2,
      members: [...at(2500), member("X", { last_seen: 2500 })],
    });
    expect(doc.members.X?.reported_by).toBe("A");
    // A has no view: its entries are the reporting leader's, so B's report that omits X removes
    // it at once (a change, so it is written, whichever isolate merges next).
    doc = merge(doc, { leader_id: "B", term: 2, sequence: 2, members: at(3000) });
    expect(ids(doc)).toEqual(["A", "B"]);
    expect(Object.values(doc.members).map((m) => m.reported_by)).toEqual(["B", "B"]);

    // One leader: an older report delivered late adds Y; the next newer report omits it.
    let own = merge(null, { leader_id: "A", term: 1, sequence: 5, members: [member("A")] });
    own = merge(own, {
      leader_id: "A",
      term: 1,
      sequence: 4,
      members: [member("A"), member("Y")],
    });
    own = merge(own, { leader_id: "A", term: 1, sequence: 6, members: [member("A")] });
    expect(ids(own)).toEqual(["A"]);
  });

  it("drops a view that lapsed past the lease when another leader reports", () => {
    let doc = merge(null, { leader_id: "A", term: 1, sequence: 1, members: [member("A")] }, 0);
    doc = merge(
      doc,
      { leader_id: "B", term: 1, sequence: 1, members: [member("B")] },
      lease.leaseMs + 1,
    );
    expect(Object.keys(doc.leaders)).toEqual(["B"]);
    expect(doc.members.A?.reported_by).toBe("B");
  });

  it("does not mutate its input", () => {
    const doc = merge(null, {
      leader_id: "A",
      term: 1,
      sequence: 1,
      members: [member("A"), member("B")],
    });
    const copy = structuredClone(doc);
    merge(doc, { leader_id: "A", term: 1, sequence: 2, members: [] });
    expect(doc).toEqual(copy);
  });
});

describe("mergeClusterDocs (a deferred write meets what another isolate wrote)", () => {
  it("keeps members from both sides, each by freshness", () => {
    const base = merge(null, { leader_id: "A", term: 1, sequence: 1, members: [member("A")] });
    const stored = merge(base, {
      leader_id: "A",
      term: 1,
      sequence: 2,
      members: [member("A"), member("B", { incarnation: 2, status: "degraded" })],
    });
    const waiting = merge(base, {
      leader_id: "A",
      term: 1,
      sequence: 3,
      members: [member("A", { last_seen: 5_000 }), member("B"), member("C")],
    });
    const doc = mergeClusterDocs(stored, waiting);
    expect(ids(doc)).toEqual(["A", "B", "C"]);
    expect(doc.members.A?.last_seen).toBe(5_000); // fresher in the waiting document
    expect(doc.members.B?.status).toBe("degraded"); // higher incarnation in the stored one
    expect(doc.leaders.A?.sequence).toBe(3);
    expect(doc.digest).toBe(routingDigest(Object.values(doc.members)));
  });

  it("drops a view that a higher-term view lists as a member, handing its members over", () => {
    const base = merge(null, { leader_id: "A", term: 1, sequence: 1, members: [member("A")] });
    // This isolate's deferred state: B took over with term 2 and lists A as a plain member.
    const waiting = merge(base, {
      leader_id: "B",
      term: 2,
      sequence: 1,
      members: [member("A"), member("B"), member("C")],
    });
    // Meanwhile another isolate stored a late report of the deposed A with a member E.
    const stored = merge(base, {
      leader_id: "A",
      term: 1,
      sequence: 2,
      members: [member("A"), member("E")],
    });
    const doc = mergeClusterDocs(stored, waiting);
    expect(ids(doc)).toEqual(["A", "B", "C", "E"]);
    expect(Object.keys(doc.leaders)).toEqual(["B"]);
    expect(doc.members.E?.reported_by).toBe("B");
    expect(doc.leaders.B?.members).toContain("E");
  });
});

describe("write policy", () => {
  const base = { now: 100 * 60_000, keepaliveMs: 48 * 60_000, writesToday: 0, writeCap: 1000 };

  it("writes on change, on keepalive (with a minute's slack), defers at the cap", () => {
    expect(decideClusterWrite({ ...base, changed: true, lastWriteAt: base.now })).toEqual({
      write: true,
      reason: "changed",
    });
    expect(
      decideClusterWrite({ ...base, changed: false, lastWriteAt: base.now - 10 * 60_000 }),
    ).toEqual({ write: false, reason: "unchanged" });
    expect(
      decideClusterWrite({ ...base, changed: false, lastWriteAt: base.now - 47.5 * 60_000 }).reason,
    ).toBe("keepalive");
    expect(decideClusterWrite({ ...base, changed: false, lastWriteAt: null }).reason).toBe(
      "keepalive",
    );
    expect(
      decideClusterWrite({ ...base, changed: true, lastWriteAt: 0, writesToday: 1000 }),
    ).toEqual({ write: false, reason: "deferred" });
  });

  it("direct mode: due on status change or after the interval; stale only past interval + 2 heartbeats + grace", () => {
    expect(
      directHeartbeatDue({
        statusChanged: false,
        writtenAt: 0,
        now: 299_999,
        writeIntervalMs: 300_000,
      }),
    ).toBe(false);
    expect(
      directHeartbeatDue({
        statusChanged: false,
        writtenAt: 0,
        now: 300_000,
        writeIntervalMs: 300_000,
      }),
    ).toBe(true);
    expect(
      directHeartbeatDue({ statusChanged: true, writtenAt: 0, now: 1, writeIntervalMs: 300_000 }),
    ).toBe(true);
    expect(directStaleAfterMs(resolveSettings())).toBe(300_000 + 60_000 + 60_000);
  });

  it("the budget counts per UTC day and learns counts from stored stamps", () => {
    let t = Date.parse("2026-11-26T23:59:00Z");
    const budget = new WriteBudget(3, { now: () => t });
    budget.observe({ day: "2026-11-26", used: 2 });
    budget.observe({ day: "2026-11-25", used: 900 });
    expect(budget.used).toBe(2);
    expect(budget.spend()).toEqual({ day: "2026-11-26", used: 3 });
    expect(budget.available).toBe(false);
    t += 60_000;
    expect(budget.used).toBe(0);
    expect(budget.snapshot()).toMatchObject({
      day: "2026-11-27",
      cap: 3,
      remaining: 3,
      resets_at: "2026-11-28T00:00:00.000Z",
    });
  });
});
