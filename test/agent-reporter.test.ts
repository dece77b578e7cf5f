import { describe, expect, it } from "vitest";
import { LeaderReporter, type OutgoingReport, type SendResult } from "../agent/reporter.ts";
import { FakeClock } from "../mesh/clock.ts";

const flush = () => new Promise((r) => setImmediate(r));

const okAnswer = (keepaliveS = 2880): SendResult => ({
  ok: true,
  answer: {
    written: true,
    reason: "changed",
    writes_today: 1,
    write_budget: 1000,
    next_keepalive_in_s: keepaliveS,
  },
});

function setup(answers: (r: OutgoingReport<string>) => SendResult = () => okAnswer()) {
  const clock = new FakeClock(1_000_000);
  const sent: OutgoingReport<string>[] = [];
  const reporter = new LeaderReporter<string>(
    { debounceMs: 2000, minBackoffMs: 1000, maxBackoffMs: 60_000 },
    {
      clock,
      random: () => 0.5,
      send: async (r) => {
        sent.push(r);
        return answers(r);
      },
    },
  );
  const step = async (ms: number) => {
    clock.advance(ms);
    await flush();
  };
  return { clock, sent, reporter, step };
}

describe("LeaderReporter", () => {
  it("reports at once when it becomes leader, then only on change", async () => {
    const { sent, reporter, step } = setup();
    reporter.update({ members: ["a"], digest: "d1" });
    await step(10_000);
    expect(sent).toHaveLength(0); // not leader: nothing is sent
    reporter.setLeader(true, 1);
    await step(0);
    expect(sent.map((r) => r.digest)).toEqual(["d1"]);
    reporter.update({ members: ["a"], digest: "d1" });
    await step(10_000);
    expect(sent).toHaveLength(1); // same digest: no report
  });

  it("collapses a burst of changes into one report with the latest state", async () => {
    const { sent, reporter, step } = setup();
    reporter.setLeader(true, 1);
    reporter.update({ members: ["a"], digest: "d1" });
    await step(0);
    for (let i = 2; i <= 6; i++) {
      reporter.update({ members: [`m${i}`], digest: `d${i}` });
      await step(300);
    }
    await step(2000);
    expect(sent.map((r) => r.digest)).toEqual(["d1", "d6"]);
    expect(sent[1]?.sequence).toBeGreaterThan(sent[0]?.sequence ?? 0);
  });

  it("sends a keepalive when the coordinator says one is due", async () => {
    const { sent, reporter, step } = setup(() => okAnswer(600));
    reporter.setLeader(true, 3);
    reporter.update({ members: [], digest: "d" });
    await step(0);
    await step(599_000);
    expect(sent).toHaveLength(1);
    await step(1_000);
    expect(sent).toHaveLength(2);
    expect(sent[1]?.digest).toBe("d");
    expect(sent[1]?.term).toBe(3);
  });

  it("retries errors with growing backoff and sends the latest state, never an older one", async () => {
    let fail = 3;
    const { sent, reporter, step } = setup(() =>
      fail-- > 0 ? { ok: false, retryable: true, error: "HTTP 503" } : okAnswer(),
    );
    reporter.setLeader(true, 1);
    reporter.update({ members: [], digest: "d1" });
    await step(0);
    expect(sent).toHaveLength(1);
    reporter.update({ members: [], digest: "d2" }); // supersedes d1 while failing
    // Jitter fixed at 0.5: each wait is half the minimum plus half of the rest up to a ceiling
    // that doubles (1 s, 2 s, 4 s): 750, 1250, then 2250 ms, each to the millisecond.
    for (const gap of [750, 1250, 2250]) {
      const before = sent.length;
      await step(gap - 1);
      expect(sent, `${gap - 1} ms into a ${gap} ms backoff`).toHaveLength(before);
      await step(1);
      expect(sent, `${gap} ms into a ${gap} ms backoff`).toHaveLength(before + 1);
    }
    expect(sent.map((r) => r.digest)).toEqual(["d1", "d2", "d2", "d2"]);
    expect(reporter.stats.failed).toBe(3);
    await step(60_000);
    expect(sent).toHaveLength(4); // acknowledged: quiet until the keepalive
  });

  it("honours Retry-After on 429", async () => {
    let first = true;
    const { sent, reporter, step } = setup(() => {
      if (!first) return okAnswer();
      first = false;
      return { ok: false, retryable: true, retryAfterMs: 20_000, error: "HTTP 429" };
    });
    reporter.setLeader(true, 1);
    reporter.update({ members: [], digest: "d1" });
    await step(0);
    await step(19_000);
    expect(sent).toHaveLength(1);
    await step(1_000);
    expect(sent).toHaveLength(2);
  });

  it("offers a deferred report again instead of treating it as stored", async () => {
    let deferred = true;
    const { sent, reporter, step } = setup(() => {
      if (!deferred) return okAnswer();
      deferred = false;
      return {
        ok: true,
        answer: {
          written: false,
          reason: "deferred",
          writes_today: 1000,
          write_budget: 1000,
          next_keepalive_in_s: 30,
        },
      };
    });
    reporter.setLeader(true, 1);
    reporter.update({ members: [], digest: "d1" });
    await step(0);
    await step(30_000);
    expect(sent.map((r) => r.digest)).toEqual(["d1", "d1"]);
  });

  it("stops sending when leadership is lost and leaves no timer behind", async () => {
    const { clock, sent, reporter, step } = setup();
    reporter.setLeader(true, 1);
    reporter.update({ members: [], digest: "d1" });
    await step(0);
    reporter.update({ members: [], digest: "d2" });
    reporter.setLeader(false, 2);
    await step(100_000);
    expect(sent).toHaveLength(1);
    expect(clock.pending).toBe(0);
    reporter.setLeader(true, 4);
    await step(0);
    expect(sent.map((r) => [r.digest, r.term])).toEqual([
      ["d1", 1],
      ["d2", 4],
    ]);
    reporter.stop();
    expect(clock.pending).toBe(0);
  });
});
