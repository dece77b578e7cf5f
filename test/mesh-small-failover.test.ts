/**
 * A 2-member cluster of real libp2p nodes on loopback: the leader (the lower ID) runs in a child
 * process, so that it can be killed (SIGKILL) or frozen (SIGSTOP). The survivor hears no peer
 * then, and its election's isolation rule would keep a merely suspected leader until it is dead;
 * what lets it take over at once is evidence that a flapping network never produces, gathered by
 * its dialer's probes. The tests check that evidence decided (no timing asserts: the figures
 * are in test/mesh-election-small.test.ts and docs/BENCHMARKS.md).
 */
import { afterAll, describe, expect, it } from "vitest";
import type { MemberView } from "../mesh/index.ts";
import {
  NodeProcess,
  makeIdentities,
  nodeArgs,
  startMesh,
  tempDir,
  waitFor,
} from "./helpers/mesh-cluster.ts";

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Starts the pair; resolves once the survivor follows the child, the lower ID. */
async function pair(prefix: string) {
  const tmp = tempDir(prefix);
  cleanups.push(tmp.cleanup);
  const [low, high] = await makeIdentities(tmp.path, 2);
  if (!low || !high) throw new Error("no identities");
  const survivor = await startMesh({ dataDir: high.dir });
  cleanups.push(() => survivor.stop());
  const child = new NodeProcess(nodeArgs(low.dir, survivor.multiaddrs()));
  cleanups.push(() => child.kill("SIGKILL"));
  await child.line("the child to start", (l) => l.event === "started");
  await waitFor("the survivor to follow the child", () => survivor.view().leader?.id === low.id);
  // When the survivor names itself leader, how does it see the child at that moment?
  const atTakeover = new Promise<MemberView | undefined>((resolve) => {
    survivor.addEventListener("leader", (e) => {
      if (e.detail?.id === survivor.id)
        resolve(survivor.view().members.find((m) => m.id === low.id));
    });
  });
  return { survivor, child, low, atTakeover };
}

describe("a 2-member cluster fails over on evidence, not on the suspicion timeout", () => {
  it("kill -9 of the leader: its port refuses twice, so it is dead at once and the survivor leads", async () => {
    const { survivor, child, atTakeover } = await pair("rollcall-small-kill-");
    await child.kill("SIGKILL");
    const seen = await atTakeover;
    expect(seen?.state).toBe("dead");
    expect(seen?.evidence).toBe("refused");
    expect(survivor.stats().refusedTwice).toBeGreaterThanOrEqual(1);
  });

  it("SIGSTOP of the leader: its host still accepts, so the survivor leads while it is only suspect", async () => {
    const { survivor, child, atTakeover } = await pair("rollcall-small-stop-");
    child.child.kill("SIGSTOP");
    cleanups.push(() => void child.child.kill("SIGCONT"));
    const seen = await atTakeover;
    expect(seen?.state).toBe("suspect");
    expect(seen?.reachable).toBe(true);
    expect(survivor.stats().reachable).toBeGreaterThanOrEqual(1);
    // Resumed, the old leader finds it was frozen, rejoins and follows until it settles again.
    child.child.kill("SIGCONT");
    await waitFor("the resumed node to be alive again", () =>
      survivor.view().members.every((m) => m.state === "alive"),
    );
  });

  it("a leader already suspect (frozen, its host accepting) that is then killed is proven dead by refusals, not by the timeout", async () => {
    // What a loaded machine does to the kill -9 case above: the leader's heartbeats come late,
    // it is suspect (and its host accepts) before it dies; its connection's close must still
    // be probed, or it dies only by the suspicion timeout (once seen in a fresh-clone CI run).
    const { survivor, child, low, atTakeover } = await pair("rollcall-small-stop-kill-");
    child.child.kill("SIGSTOP");
    const seen = await atTakeover;
    expect(seen?.state).toBe("suspect");
    await child.kill("SIGKILL");
    await waitFor("the killed leader to be dead", () =>
      survivor.view().members.find((m) => m.id === low.id && m.state === "dead"),
    );
    const dead = survivor.view().members.find((m) => m.id === low.id);
    expect(dead?.evidence).toBe("refused");
  });
});
