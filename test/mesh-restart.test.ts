/**
 * A cluster restarted with its keys and data: real libp2p nodes on loopback, started again in
 * an order that makes the lowest ID the last to settle. It must elect its final leader once
 * (before: the highest ID, settled first, led term 1 for a moment, and the lowest took term 2:
 * an extra report and write, and a surprise on the dashboard).
 */
import { afterAll, describe, expect, it } from "vitest";
import type { Leader, Mesh } from "../mesh/index.ts";
import {
  TEST_TIMINGS,
  leaders,
  makeIdentities,
  startMesh,
  tempDir,
  waitFor,
} from "./helpers/mesh-cluster.ts";

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

describe("a restarted cluster", () => {
  it("elects its final leader once when the lowest ID starts last", async () => {
    const tmp = tempDir("rollcall-restart-");
    cleanups.push(tmp.cleanup);
    const ids = await makeIdentities(tmp.path, 3);
    const [low, mid, high] = ids as [(typeof ids)[0], (typeof ids)[0], (typeof ids)[0]];

    // First run: the three come up and elect the lowest; then all stop (keys and data kept).
    const first: Mesh[] = [];
    for (const n of ids) {
      first.push(await startMesh({ dataDir: n.dir, bootstrap: first[0]?.multiaddrs() ?? [] }));
    }
    await waitFor("the first run to elect the lowest ID", () => {
      const l = leaders(first);
      return l.length === 1 && l[0]?.startsWith(`${low.id}@`);
    });
    const addrs = new Map(first.map((m) => [m.id, m.multiaddrs()[0] as string]));
    await Promise.all(first.map((m) => m.stop()));

    // Second run, on the same ports, each with the others in its bootstrap list: the highest
    // first, the lowest more than a tick after it (its settle period ends last everywhere).
    // The premise: the others hear the lowest before their own settle period ends (they cannot
    // wait for a member they have not heard). From its start until its first heartbeat arrives
    // (dial, Noise, identify, gossipsub) takes 0.6 s here idle and 2.5 s under load, so this
    // run settles in twice the test timing: 6 s, leaving 5 s for it after the 1 s gap.
    const settleMs = 2 * TEST_TIMINGS.settleMs;
    const named = new Map<string, Array<Leader | null>>();
    const heardLowAt = new Map<string, number>();
    const meshes: Mesh[] = [];
    cleanups.push(async () => {
      await Promise.all(meshes.map((m) => m.stop()));
    });
    const start = async (n: (typeof ids)[0]) => {
      const others = ids.filter((o) => o !== n).map((o) => addrs.get(o.id) as string);
      const listen = [(addrs.get(n.id) as string).replace(/\/p2p\/.*$/, "")];
      const m = await startMesh({ dataDir: n.dir, bootstrap: others, listen, settleMs });
      const seen: Array<Leader | null> = [];
      named.set(n.id, seen);
      m.addEventListener("leader", (e) => seen.push(e.detail));
      m.addEventListener("member-up", (e) => {
        if (e.detail.id === low.id && !heardLowAt.has(n.id)) heardLowAt.set(n.id, Date.now());
      });
      meshes.push(m);
      return m;
    };
    const startedAt = Date.now();
    await start(high);
    await start(mid);
    await waitFor("1 s to pass since the highest ID started", () => Date.now() - startedAt >= 1000);
    await start(low);

    const final = await waitFor("the restarted cluster to elect the lowest ID", () => {
      const l = leaders(meshes);
      return l.length === 1 && l[0]?.startsWith(`${low.id}@`) && l[0];
    });
    // Two more heartbeats: nobody changes its mind.
    const settledAt = Date.now();
    await waitFor(
      "two heartbeats",
      () => Date.now() - settledAt >= 2 * TEST_TIMINGS.heartbeatIntervalMs,
    );
    expect(leaders(meshes)).toEqual([final]);
    const heard = [high, mid]
      .map((n) => `${(heardLowAt.get(n.id) ?? Number.NaN) - startedAt}`)
      .join(" and ");
    for (const n of ids) {
      expect(
        named.get(n.id),
        `leaders named by ${n === high ? "the highest" : n === mid ? "the middle" : "the lowest"} ID (the highest and middle heard the lowest ${heard} ms after the highest started; they settle ${settleMs} ms after their start)`,
      ).toEqual([{ id: low.id, term: 1 }]);
    }
  });
});
