/**
 * Maintenance mode with real processes (issue 13's `drain`): a coordinator and two agents that
 * both run `alpha`, a steady load through the coordinator's proxy, and the real CLI
 * (`agent/cli.ts drain`) against one agent. Drained, the agent is reported "draining" and the
 * coordinator stops routing to it; the CLI says when it is safe to stop; stopped then, not one
 * request fails. `drain --off` brings it back. The endpoint refuses callers without the token.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  LOCAL_CLUSTER_START_MS,
  type LocalCluster,
  type LocalWorker,
  startLocalCluster,
} from "./helpers/local-cluster.ts";
import { killAll, pollUntil, startTs } from "../support/processes.ts";

interface WorkerRow {
  worker_id: string;
  status: string;
}

let cluster: LocalCluster;
let victim: LocalWorker;

beforeAll(async () => {
  cluster = await startLocalCluster({ layout: [["alpha"], ["alpha"]] });
  const leader = await cluster.leader();
  victim = cluster.workers.find((w) => w !== leader) as LocalWorker;
}, LOCAL_CLUSTER_START_MS);

afterAll(async () => {
  await killAll();
});

/** Runs the real CLI's drain command; resolves with its exit code and output. */
async function drainCli(args: string[]): Promise<{ code: number | null; out: string }> {
  const p = startTs("drain-cli", "agent/cli.ts", [
    "drain",
    "--agent",
    victim.gateway,
    "--agent-token",
    cluster.agentToken,
    ...args,
  ]);
  const code = await new Promise<number | null>((resolve) => p.proc.once("exit", resolve));
  return { code, out: p.output() };
}

const statusAt = async (id: string) =>
  (await cluster.admin<WorkerRow[]>("/api/admin/workers")).find((w) => w.worker_id === id)?.status;

/** A steady sequential load on `alpha` through the coordinator, until `stop()`. */
function load() {
  const failures: string[] = [];
  const servedBy = new Map<string, number>();
  let sent = 0;
  let running = true;
  const done = (async () => {
    while (running && sent < 20_000) {
      sent++;
      try {
        const res = await fetch(`${cluster.url}/api/service/alpha/drain-load`, {
          signal: AbortSignal.timeout(10_000),
        });
        const body = await res.text();
        if (res.status !== 200) failures.push(`${res.status} ${body.slice(0, 120)}`);
        const worker = /"worker":"([^"]+)"/.exec(body)?.[1] ?? "?";
        servedBy.set(worker, (servedBy.get(worker) ?? 0) + 1);
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  })();
  return {
    failures,
    servedBy,
    sent: () => sent,
    async stop() {
      running = false;
      await done;
    },
  };
}

describe("rollcall-agent drain (real processes)", () => {
  it("refuses the drain endpoint without the agent token, and other methods", async () => {
    const url = `${victim.gateway}/_agent/drain`;
    expect((await fetch(url, { method: "POST" })).status).toBe(401);
    const bad = await fetch(url, { method: "POST", headers: { authorization: "Bearer nope" } });
    expect(bad.status).toBe(401);
    const put = await fetch(url, {
      method: "PUT",
      headers: { authorization: `Bearer ${cluster.agentToken}` },
    });
    expect(put.status).toBe(405);
    const state = await fetch(url, {
      headers: { authorization: `Bearer ${cluster.agentToken}` },
    });
    expect(((await state.json()) as { draining: boolean }).draining).toBe(false);
    expect(await statusAt(victim.id)).toBe("online");
  });

  it("drain --off brings a drained agent back into service", async () => {
    const on = await drainCli(["--wait", "0"]);
    expect(on.code).toBe(0);
    await pollUntil("the coordinator to show it draining", async () =>
      (await statusAt(victim.id)) === "draining" ? true : undefined,
    );
    const off = await drainCli(["--off"]);
    expect(off.code).toBe(0);
    expect(off.out).toMatch(/Drain ended/);
    await pollUntil("the coordinator to show it online again", async () =>
      (await statusAt(victim.id)) === "online" ? true : undefined,
    );
  });

  it("zero failed requests while a worker with a second provider is drained and stopped", async () => {
    const l = load();
    try {
      await pollUntil("both workers to serve the load", async () =>
        l.servedBy.size >= 2 ? true : undefined,
      );
      const drained = await drainCli(["--wait", "60"]);
      expect(drained.out).toMatch(/Safe to stop/);
      expect(drained.code).toBe(0);
      expect(await statusAt(victim.id)).toBe("draining");
      // Safe to stop: the agent and its service go; the load goes on for a while.
      await victim.proc.kill("SIGTERM");
      victim.alive = false;
      for (const s of victim.services.values()) await s.kill();
      const after = l.sent();
      await pollUntil("200 more requests after the stop", async () =>
        l.sent() - after >= 200 ? true : undefined,
      );
    } finally {
      await l.stop();
    }
    expect(l.failures).toEqual([]);
  });
});
