/**
 * The watch ring is the mesh's default (issue 15): five real libp2p nodes on 127.0.0.1 started
 * without `watchers` send their heartbeats to their 3 watchers and flood only now and then;
 * `watchers: Infinity` is the flood of every heartbeat to every peer.
 */
import { afterAll, describe, expect, it } from "vitest";
import type { Mesh } from "../mesh/index.ts";
import {
  allSeeAlive,
  makeIdentities,
  startMesh,
  tempDir,
  waitFor,
} from "./helpers/mesh-cluster.ts";

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function cluster(n: number, watchers?: number): Promise<Mesh[]> {
  const tmp = tempDir("rollcall-ring-default-");
  cleanups.push(tmp.cleanup);
  const meshes: Mesh[] = [];
  for (const node of await makeIdentities(tmp.path, n)) {
    meshes.push(
      await startMesh({
        dataDir: node.dir,
        bootstrap: meshes[0]?.multiaddrs() ?? [],
        ...(watchers === undefined ? {} : { watchers }),
      }),
    );
  }
  cleanups.push(() => Promise.all(meshes.map((m) => m.stop())).then(() => {}));
  await waitFor("every node to see the others", () =>
    allSeeAlive(
      meshes,
      meshes.map((m) => m.id),
    ),
  );
  return meshes;
}

describe("the mesh's default", () => {
  it("is the watch ring: a member's heartbeats go to its watchers, few are flooded", async () => {
    const meshes = await cluster(5);
    const m = meshes[4] as Mesh;
    const before = m.stats();
    // Ten rounds of heartbeats to its 3 watchers (the flood would send none of these).
    await waitFor("30 direct heartbeats", () => m.stats().direct - before.direct >= 30);
    const after = m.stats();
    expect(after.floods - before.floods).toBeLessThan((after.direct - before.direct) / 3);
  });

  it("floods every heartbeat with watchers: Infinity, and sends none directly once joined", async () => {
    const meshes = await cluster(5, Number.POSITIVE_INFINITY);
    const m = meshes[4] as Mesh;
    const before = m.stats();
    await waitFor("10 flooded heartbeats", () => m.stats().floods - before.floods >= 10);
    expect(m.stats().direct - before.direct).toBeLessThan(3);
  });
});
