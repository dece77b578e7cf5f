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
});
