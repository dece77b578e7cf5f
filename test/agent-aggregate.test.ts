import { describe, expect, it } from "vitest";
import { aggregate, listed, liveMembers } from "../agent/aggregate.ts";
import type { MemberView } from "../mesh/index.ts";

const member = (id: string, over: Partial<MemberView> = {}): MemberView => ({
  id,
  self: false,
  state: "alive",
  incarnation: 1,
  flapping: false,
  url: `http://10.0.0.${id.length}:8700`,
  status: "online",
  services: [{ name: "upload", status: "healthy", latency_ms: 3 }],
  canLead: true,
  aliveSince: 0,
  lastSeen: 1000,
  since: 0,
  ...over,
});

describe("aggregate", () => {
  it("lists alive and suspect members; a departed or crashed one as left / offline; leaves one dead by silence out", () => {
    const view = {
      members: [
        member("a"),
        member("bb", { state: "suspect" }),
        member("ccc", { state: "dead" }),
        member("dddd", { state: "left", since: 5000 }),
        member("eeeee", { state: "dead", evidence: "refused", since: 7000 }),
      ],
    };
    const report = aggregate(view).members;
    expect(report.map((m) => [m.worker_id, m.status])).toEqual([
      ["a", "online"],
      ["bb", "online"],
      ["dddd", "left"],
      ["eeeee", "offline"],
    ]);
    // Gone: reported as of when we saw it go, fresher than its own last word.
    expect(report.map((m) => m.last_seen)).toEqual([1000, 1000, 5000, 7000]);
    // Neither counts in the digest: going is one change, being forgotten later none.
    const gone = aggregate({ members: view.members.slice(0, 2) }).digest;
    expect(aggregate(view).digest).toBe(gone);
    expect(aggregate({ members: [...view.members.slice(0, 2), member("dddd")] }).digest).not.toBe(
      gone,
    );
  });

  it("gives the live view each member's liveness, which the report leaves out", () => {
    const view = {
      members: [
        member("a"),
        member("bb", { state: "suspect" }),
        member("ccc", { state: "dead", flapping: true }),
        member("dddd", { state: "dead" }),
      ],
    };
    const live = liveMembers(view);
    expect(live.map((m) => [m.worker_id, m.status, m.state])).toEqual([
      ["a", "online", "alive"],
      ["bb", "online", "suspect"],
      ["ccc", "degraded", "dead"],
    ]);
    // The report's members and digest do not change with a suspicion: no write for it.
    expect(aggregate(view).digest).toBe(
      aggregate({
        members: view.members.slice(0, 3).map((m) => ({ ...m, state: "alive" as const })),
      }).digest,
    );
  });

  it("reports a flapping member as degraded, even while it is down, so its flaps cost no writes", () => {
    const up = aggregate({ members: [member("a", { flapping: true })] });
    const down = aggregate({ members: [member("a", { flapping: true, state: "dead" })] });
    expect(up.members[0]?.status).toBe("degraded");
    expect(down.digest).toBe(up.digest);
    expect(listed(member("a", { flapping: true, state: "left" }))).toBe(false);
  });

  it("keeps the digest when only volatile fields move, and changes it when routing would", () => {
    const base = aggregate({ members: [member("a")] }).digest;
    const volatile = aggregate({
      members: [
        member("a", {
          lastSeen: 99_999,
          services: [{ name: "upload", status: "healthy", latency_ms: 80 }],
        }),
      ],
    });
    expect(volatile.digest).toBe(base);
    const sick = aggregate({
      members: [member("a", { services: [{ name: "upload", status: "unhealthy" }] })],
    });
    expect(sick.digest).not.toBe(base);
    const moved = aggregate({ members: [member("a", { url: "http://10.9.9.9:8700" })] });
    expect(moved.digest).not.toBe(base);
  });

  it("drops a member the coordinator would refuse instead of failing the whole report", () => {
    const view = {
      members: [
        member("a"),
        member("bb", { url: "" }),
        member("ccc", { url: "ftp://x" }),
        member("dddd", { meta: { capabilities: { cpu_cores: -4 } } }),
      ],
    };
    expect(aggregate(view).members.map((m) => m.worker_id)).toEqual(["a"]);
  });
});
