import { describe, expect, it } from "vitest";
import { FakeClock } from "../mesh/clock.ts";

describe("FakeClock", () => {
  it("fires due timers in time order, then by creation order, and skips cancelled ones", () => {
    const c = new FakeClock(100);
    const fired: string[] = [];
    c.setTimeout(() => fired.push("b@30"), 30);
    const cancelled = c.setTimeout(() => fired.push("x@10"), 10);
    c.setTimeout(() => fired.push("a@10"), 10);
    c.setTimeout(() => fired.push("c@30"), 30);
    c.clearTimeout(cancelled);
    c.advance(29);
    expect(fired).toEqual(["a@10"]);
    expect(c.now()).toBe(129);
    c.advance(1);
    expect(fired).toEqual(["a@10", "b@30", "c@30"]);
    expect(c.pending).toBe(0);
  });

  it("fires timers set while advancing when they fall due in the same advance", () => {
    const c = new FakeClock();
    const at: number[] = [];
    const tick = () => {
      at.push(c.now());
      if (at.length < 5) c.setTimeout(tick, 1000);
    };
    c.setTimeout(tick, 1000);
    c.advance(10_000);
    expect(at).toEqual([1000, 2000, 3000, 4000, 5000]);
  });

  it("keeps order with many timers", () => {
    const c = new FakeClock();
    const fired: number[] = [];
    const delays = Array.from({ length: 2000 }, (_, i) => (i * 7919) % 1000);
    for (const d of delays) c.setTimeout(() => fired.push(d), d);
    c.advance(1000);
    expect(fired).toEqual([...delays].sort((a, b) => a - b));
  });
});
