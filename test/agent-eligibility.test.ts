/**
 * LeadEligibility on a fake clock: an agent offers to lead only once the coordinator took its
 * token, keeps checking (with backoff) while it does not, and withdraws the offer when a later
 * call is refused; a coordinator that is merely unreachable changes nothing. The real thing,
 * with agents and a coordinator, is in agent-crafted-peer.test.ts.
 */
import { describe, expect, it } from "vitest";
import { type AuthOutcome, LeadEligibility } from "../agent/eligibility.ts";
import { FakeClock } from "../mesh/clock.ts";
import { testCoordinator } from "./helpers/coord-fixtures.ts";

function setup(answers: AuthOutcome[]) {
  const clock = new FakeClock(0);
  const changes: boolean[] = [];
  const lines: string[] = [];
  let checks = 0;
  const e = new LeadEligibility(
    { minBackoffMs: 1000, maxBackoffMs: 8000 },
    {
      check: async () => {
        checks++;
        return answers.shift() ?? { ok: false, status: 0 };
      },
      onChange: (c) => changes.push(c),
      clock,
      random: () => 0.999,
      log: (l) => lines.push(l),
    },
  );
  /** Advances the clock and lets the checks' promises settle. */
  const advance = async (ms: number) => {
    clock.advance(ms);
    for (let i = 0; i < 5; i++) await Promise.resolve();
  };
  return { e, clock, changes, lines, advance, checks: () => checks };
}

describe("GET /api/cluster/auth", () => {
  it("answers 200 to the cluster token only, and writes nothing", async () => {
    const { call, store } = testCoordinator({ clusterToken: "t0k", adminToken: "adm" });
    expect((await call("GET", "/api/cluster/auth")).status).toBe(401);
    expect(
      (await call("GET", "/api/cluster/auth", undefined, { authorization: "Bearer no" })).status,
    ).toBe(401);
    expect(
      (await call("GET", "/api/cluster/auth", undefined, { authorization: "Bearer adm" })).status,
    ).toBe(401);
    const ok = await call("GET", "/api/cluster/auth", undefined, { authorization: "Bearer t0k" });
    expect(ok).toMatchObject({ status: 200, body: { status: "ok" } });
    expect(store.writes).toBe(0);
  });
});

describe("LeadEligibility", () => {
  it("offers to lead once the coordinator takes the token; not before, not without it", async () => {
    const s = setup([
      { ok: false, status: 0 }, // unreachable
      { ok: false, status: 401 }, // refused
      { ok: true, status: 200 },
    ]);
    s.e.start();
    await s.advance(0);
    expect(s.e.canLead).toBe(false);
    await s.advance(1000);
    expect(s.e.canLead).toBe(false);
    expect(s.lines.join("\n")).toMatch(/Not offering to lead the mesh: .*refused.*--token/);
    await s.advance(2000);
    expect(s.e.canLead).toBe(true);
    expect(s.changes).toEqual([true]);
    const checks = s.checks();
    await s.advance(60_000);
    expect(s.checks()).toBe(checks); // no more checks while it offers
    s.e.stop();
    expect(s.clock.pending).toBe(0);
  });

  it("a refused report withdraws the offer and the checks resume; an unreachable coordinator does not", async () => {
    const s = setup([{ ok: true, status: 200 }]);
    s.e.start();
    await s.advance(0);
    expect(s.e.canLead).toBe(true);
    s.e.observe({ ok: false, status: 503 });
    s.e.observe({ ok: false, status: 0 });
    expect(s.e.canLead).toBe(true);
    s.e.observe({ ok: false, status: 401 });
    expect(s.e.canLead).toBe(false);
    expect(s.changes).toEqual([true, false]);
    await s.advance(1000);
    expect(s.checks()).toBe(2);
    s.e.stop();
  });

  it("a report refused for something else than the token (a 403 for membership) keeps the offer; the token check decides", async () => {
    const s = setup([
      { ok: true, status: 200 },
      { ok: true, status: 200 },
    ]);
    s.e.start();
    await s.advance(0);
    s.e.doubt({ ok: false, status: 403 });
    await s.advance(0);
    expect(s.checks()).toBe(2); // checked at once
    expect(s.e.canLead).toBe(true);
    expect(s.changes).toEqual([true]);
    expect(s.lines.filter((l) => l.startsWith("Not offering"))).toEqual([]);
    s.e.doubt({ ok: false, status: 503 }); // no news of the token
    expect(s.e.canLead).toBe(true);
    // A token that is really refused: the check says so, and the offer goes.
    const r = setup([
      { ok: true, status: 200 },
      { ok: false, status: 401 },
    ]);
    r.e.start();
    await r.advance(0);
    r.e.doubt({ ok: false, status: 401 });
    expect(r.e.canLead).toBe(true); // until the check answers
    await r.advance(0);
    expect(r.e.canLead).toBe(false);
    expect(r.changes).toEqual([true, false]);
    s.e.stop();
    r.e.stop();
  });
});
