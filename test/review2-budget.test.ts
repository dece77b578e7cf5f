/**
 * Review 2 (attacker's pass over issue 9 item 8): the leader's reserve of the write budget is
 * open to any cluster that exists, including one a token holder created a moment ago, and a
 * cluster's "changed" reports are written without any pause between them.
 */
import { describe, expect, it } from "vitest";
import { member, report, testCoordinator } from "./helpers/coord-fixtures.ts";
import { peer } from "./helpers/signing.ts";

const secured = { clusterToken: "cluster-secret", adminToken: "admin-secret" };
const token = { authorization: "Bearer cluster-secret" };

describe("finding 4: one token holder spends the whole day's budget, the reserve too", () => {
  // FINDING review2-4 (medium): `clusterHeartbeat` lets every report whose document changed
  // write at once, and `reserved = merged.rev > 0` lets any existing cluster spend the
  // leader's reserve. One token holder with one key of its own creates cluster "squat", then
  // sends reports that change a member each time: the day's cap (reserve included) is gone in
  // seconds and the real cluster's next change waits for UTC midnight.
  it("a freshly created cluster's report flood leaves the real leader's change written", async () => {
    const { call, store, clock } = testCoordinator({
      ...secured,
      writeCap: 20,
      leaderReserve: 0.1,
    });
    const first = await call("POST", "/api/cluster/heartbeat", report(), token);
    expect(first.body).toMatchObject({ written: true, reason: "changed" });
    const mallory = peer("mallory");
    for (let i = 1; i <= 40; i++) {
      clock.advance(1000);
      const flood = report({
        cluster: "squat",
        leader_id: mallory,
        sequence: i,
        members: [member(mallory), member(`fake-${i}`)],
      } as never);
      expect((await call("POST", "/api/cluster/heartbeat", flood, token)).status).toBe(200);
    }
    clock.advance(1000);
    const change = report({ sequence: 2, members: [member("A")] });
    const res = await call("POST", "/api/cluster/heartbeat", change, token);
    expect(res.body).toMatchObject({ written: true, reason: "changed" });
    expect(store.writes).toBeLessThanOrEqual(20);
  });
});
