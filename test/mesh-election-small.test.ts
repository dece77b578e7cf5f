/**
 * Failover in 2- and 3-member clusters, on a fake clock with the default timings, driven at the
 * mesh runtime's cadence: a heartbeat every 1000 ms, a tick every 250 ms that advances the
 * membership and re-runs the election, and the dialer's probes (mesh/dialer.ts): a connection
 * that closes is probed at once, a member that falls silent is probed on the tick that suspects
 * it, and a refusal is confirmed by a redial 250 ms later. What the probe finds is the test's
 * input: `refused` (the process is gone), `accepts` (a frozen process) or `timeout` (the network
 * is cut, which a node cannot tell from being cut off itself).
 *
 * The election's isolation rule (a node that hears none of its peers keeps a merely suspected
 * leader until it is dead) made a 2-member cluster wait 6 s after a crash and 9.25 s after a
 * silent leader. Evidence that a flapping network never produces lets it fail over as fast as a
 * big cluster: a refusal confirmed by a redial (dead at once), and a host that accepts while its
 * process is silent (not cut off). A cut still waits: that is what keeps a member whose network
 * flaps from grabbing the lead (test/simulate.test.ts checks the flapping member's day).
 */
import { describe, expect, it } from "vitest";
import { FakeClock } from "../mesh/clock.ts";
import { DEFAULT_SETTLE_MS, elect } from "../mesh/election.ts";
import { MEMBERSHIP_DEFAULTS, Membership } from "../mesh/membership.ts";
import type { Leader } from "../mesh/types.ts";

const HEARTBEAT_MS = 1000;
const TICK_MS = 250;
/** The dialer's redial after a refused probe (DialerInit.confirmAfterMs). */
const CONFIRM_MS = 250;
const local = { url: "http://127.0.0.1:1", status: "online" as const, services: [] };

type Probe = "refused" | "accepts" | "timeout";

/** A cluster A < B (< C): A leads; B is the observer whose election is followed. */
class Cluster {
  clock = new FakeClock(0);
  ids: string[];
  m = new Map<string, Membership>();
  leaderAtB: Leader | null = null;
  aUp = true;
  /** What a probe of A finds once A is down. */
  probe: Probe = "refused";
  #confirmAt: number | undefined;

  constructor(n: 2 | 3) {
    this.ids = ["A", "B", "C"].slice(0, n);
    for (const id of this.ids) this.m.set(id, new Membership(id, { local }, this.clock));
  }

  get b(): Membership {
    return this.m.get("B") as Membership;
  }

  /** One tick: heartbeats when due, then B's tick, probes and election, as the runtime does. */
  step(): void {
    this.clock.advance(TICK_MS);
    const now = this.clock.now();
    if (now % HEARTBEAT_MS === 0) {
      for (const from of this.ids) {
        if (from === "A" && !this.aUp) continue;
        const sender = this.m.get(from) as Membership;
        const hb = sender.heartbeat({ leaderTerm: from === "B" ? this.mine() : undefined });
        for (const to of this.ids) if (to !== from) this.m.get(to)?.onHeartbeat(hb);
      }
    }
    for (const id of this.ids) if (id !== "B") this.m.get(id)?.tick();
    for (const c of this.b.tick()) {
      if (c.id === "A" && c.from === "alive" && c.to === "suspect") this.#probe(false);
    }
    if (this.#confirmAt !== undefined && now >= this.#confirmAt) {
      this.#confirmAt = undefined;
      if (this.probe === "refused") this.b.refused("A");
    }
    this.elect();
  }

  /** The dialer's probe of A; `closed`: after a closed connection (suspect unless it accepts). */
  #probe(closed: boolean): void {
    if (this.probe === "accepts") this.b.reachable("A");
    else if (closed) this.b.suspect("A");
    if (this.probe === "refused") this.#confirmAt = this.clock.now() + CONFIRM_MS;
  }

  /** A crashes: its connections close, and B probes at once. */
  crash(): void {
    this.aUp = false;
    this.probe = "refused";
    this.#probe(true);
    this.elect();
  }

  mine(): number | undefined {
    return this.leaderAtB?.id === "B" ? this.leaderAtB.term : undefined;
  }

  elect(): void {
    const v = this.b.view();
    this.leaderAtB = elect(v, this.leaderAtB, {
      settleMs: DEFAULT_SETTLE_MS,
      now: v.now,
      maxTerm: v.maxTerm,
    });
  }

  /** Steps until B names `id` leader; returns the fake-clock time then. */
  until(id: string, limitMs = 60_000): number {
    const end = this.clock.now() + limitMs;
    while (this.leaderAtB?.id !== id) {
      if (this.clock.now() > end) throw new Error(`B did not name ${id} within ${limitMs} ms`);
      this.step();
    }
    return this.clock.now();
  }
}

/** A cluster in which B follows the settled A; A's last heartbeat went out at the returned time. */
function settled(n: 2 | 3): { c: Cluster; lastBeat: number } {
  const c = new Cluster(n);
  c.until("A");
  while (c.clock.now() % HEARTBEAT_MS !== 0) c.step();
  return { c, lastBeat: c.clock.now() };
}

describe.each([2, 3] as const)(
  "failover in a %i-member cluster (fake clock, default timings)",
  (n) => {
    it("a crash: the closed connection's probe is refused, the redial confirms it, B leads within 1 s", () => {
      const { c, lastBeat } = settled(n);
      c.crash(); // right after A's last heartbeat
      const took = c.until("B") - lastBeat;
      expect(took).toBeLessThanOrEqual(1000);
      // 2 members: once the redial confirmed the refusal, A is dead and B leads (before: 6 s of
      // suspicion first). 3 members: B hears C, so the suspicion alone was enough, then and now.
      expect(took).toBe(n === 2 ? CONFIRM_MS : 0);
      while (c.clock.now() < lastBeat + CONFIRM_MS) c.step();
      expect(c.b.member("A")?.state).toBe("dead");
      expect(c.b.member("A")?.evidence).toBe("refused");
    });

    it("a silent leader whose host accepts (a frozen process): B leads within 4 s of its last beat", () => {
      const { c, lastBeat } = settled(n);
      c.aUp = false;
      c.probe = "accepts";
      const took = c.until("B") - lastBeat;
      expect(c.b.member("A")?.state).toBe("suspect");
      // Silence above suspectAfterMs, seen on a tick; the probe answers on that tick (before: a
      // further 6 s of suspicion in a 2-member cluster).
      expect(took).toBe(MEMBERSHIP_DEFAULTS.suspectAfterMs + TICK_MS);
      expect(took).toBeLessThanOrEqual(4000);
    });

    it("a leader cut off by the network (the probe times out)", () => {
      const { c, lastBeat } = settled(n);
      c.aUp = false;
      c.probe = "timeout";
      const took = c.until("B") - lastBeat;
      if (n === 2) {
        // B cannot tell a cut leader from being cut off itself: it waits until A is dead, as a
        // member whose own network flaps must (9.25 s: suspectAfterMs, a tick, deadAfterMs).
        expect(c.b.member("A")?.state).toBe("dead");
        expect(took).toBe(
          MEMBERSHIP_DEFAULTS.suspectAfterMs + TICK_MS + MEMBERSHIP_DEFAULTS.deadAfterMs,
        );
      } else {
        // B hears C: not cut off, so the suspicion is enough.
        expect(took).toBe(MEMBERSHIP_DEFAULTS.suspectAfterMs + TICK_MS);
      }
    });
  },
);

describe("a member cut off by its own network (2 members, B is the one cut off)", () => {
  it("keeps its leader through a 5 s flap: no probe answers, so no evidence", () => {
    const { c } = settled(2);
    c.aUp = false; // B hears nothing of A ...
    c.probe = "timeout"; // ... and reaches nothing: the flapping member's view
    for (let t = 0; t < 5000; t += TICK_MS) c.step();
    expect(c.b.member("A")?.state).toBe("suspect");
    expect(c.leaderAtB?.id).toBe("A");
  });
});
