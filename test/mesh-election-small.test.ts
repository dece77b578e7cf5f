/**
 * Failover in a 2-member cluster, on a fake clock with the default timings. B hears no peer
 * once A is gone, so the election's isolation rule keeps a merely suspected A until it is dead:
 * docs/ARCHITECTURE.md states the price, and these tests show the figure. The driver follows
 * the mesh runtime's cadence: a heartbeat every 1000 ms, a tick every 250 ms that advances the
 * membership and re-runs the election, and a crash (closed connection) suspected at once by
 * the dialer's probe (Membership.suspect).
 */
import { describe, expect, it } from "vitest";
import { FakeClock } from "../mesh/clock.ts";
import { DEFAULT_SETTLE_MS, elect } from "../mesh/election.ts";
import { MEMBERSHIP_DEFAULTS, Membership } from "../mesh/membership.ts";
import type { Leader } from "../mesh/types.ts";

const HEARTBEAT_MS = 1000;
const TICK_MS = 250;
const local = { url: "http://127.0.0.1:1", status: "online" as const, services: [] };

class Pair {
  clock = new FakeClock(0);
  a = new Membership("A", { local }, this.clock);
  b = new Membership("B", { local }, this.clock);
  leaderAtB: Leader | null = null;
  aUp = true;

  /** Advances one tick: heartbeats when due, then B's tick and election, as the runtime does. */
  step(): void {
    this.clock.advance(TICK_MS);
    if (this.clock.now() % HEARTBEAT_MS === 0) {
      if (this.aUp) this.b.onHeartbeat(this.a.heartbeat());
      this.a.onHeartbeat(this.b.heartbeat({ leaderTerm: this.mine() }));
    }
    this.b.tick();
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

/** A pair in which B follows the settled A; A's last heartbeat went out at the returned time. */
function settled(): { pair: Pair; lastBeat: number } {
  const pair = new Pair();
  pair.until("A");
  while (pair.clock.now() % HEARTBEAT_MS !== 0) pair.step();
  return { pair, lastBeat: pair.clock.now() };
}

describe("failover in a 2-member cluster (fake clock, default timings)", () => {
  it("a crash: the probe suspects A at once, B takes over once A is dead, 6 s later", () => {
    const { pair, lastBeat } = settled();
    pair.aUp = false;
    pair.b.suspect("A"); // the dialer's probe found A's port closed
    pair.elect();
    expect(pair.leaderAtB?.id).toBe("A"); // suspected only: B is cut off as far as it knows
    const took = pair.until("B") - lastBeat;
    expect(pair.b.member("A")?.state).toBe("dead");
    // deadAfterMs of suspicion. Here the suspicion falls on a tick; in a real run the probe
    // takes ~50 ms and the next tick comes up to 250 ms later.
    expect(took).toBe(MEMBERSHIP_DEFAULTS.deadAfterMs);
    expect(took).toBe(6000);
  });

  it("a silent failure: suspect after 3 s, dead 6 s later, B leads 9.25 s after A's last beat", () => {
    const { pair, lastBeat } = settled();
    pair.aUp = false;
    const took = pair.until("B") - lastBeat;
    expect(pair.b.member("A")?.state).toBe("dead");
    // Silence above suspectAfterMs, seen on a tick; then deadAfterMs, seen on the same tick.
    expect(took).toBe(
      MEMBERSHIP_DEFAULTS.suspectAfterMs + TICK_MS + MEMBERSHIP_DEFAULTS.deadAfterMs,
    );
    expect(took).toBe(9250);
  });
});
