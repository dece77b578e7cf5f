/**
 * Real agents (agent/cli.ts processes) and a real coordinator (Node starter) on loopback,
 * against what a peer or a misconfiguration can do to their leadership:
 * - the agent with the lowest ID has a token the coordinator refuses: it never offers to lead,
 *   so the cluster keeps a leader that can report;
 * - a crafted libp2p peer gossips the largest term a heartbeat can carry, then the leader is
 *   killed: every successor must still be able to send its heartbeat (the old code threw in a
 *   timer and the agent died, and so did each next leader).
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  LIMITS,
  Membership,
  encodeHeartbeat,
  heartbeatTopic,
  loadIdentity,
  signHeartbeat,
} from "../mesh/index.ts";
import { type MeshLibp2p, createNode } from "../mesh/node.ts";
import { type Proc, freePort, killAll, pollUntil, startTs } from "./helpers/processes.ts";

const TOKEN = "crafted-cluster-token";
const ADMIN = "crafted-admin-token";
/** The agents' live-view credential: the test reads each agent's view with it. */
const VIEW = "crafted-view-token";

interface Agent {
  id: string;
  token: string;
  gateway: string;
  mesh: string;
  proc: Proc;
}

let base: string;
let rogue: MeshLibp2p | undefined;
const agents: Agent[] = [];

/** GET a JSON document; undefined while it does not answer 200. */
async function getJson<T>(url: string, token?: string): Promise<T | undefined> {
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(2000) }).catch(
    () => undefined,
  );
  if (!res?.ok) return undefined;
  return (await res.json()) as T;
}

interface View {
  leader: { id: string; term: number } | null;
  all_members: Array<{ worker_id: string; can_lead: boolean; state: string }>;
}
const view = (a: Agent) => getJson<View>(`${a.gateway}/_agent/cluster`, VIEW);
const alive = (a: Agent) => a.proc.proc.exitCode === null && a.proc.proc.signalCode === null;
const coordinatorLeader = async () =>
  (
    await getJson<{ leader: { leader_id: string; term: number } | null }>(
      `${base}/api/admin/stats`,
      ADMIN,
    )
  )?.leader ?? undefined;

/** The leader every agent in `among` names, once they agree (and it is not `unlike`). */
async function agreedLeader(among: Agent[], what: string, unlike?: string) {
  return pollUntil(what, async () => {
    const views = await Promise.all(among.map(view));
    const names = new Set(views.map((v) => (v?.leader ? `${v.leader.id}@${v.leader.term}` : "")));
    const leader = views[0]?.leader;
    return names.size === 1 && leader && leader.id !== unlike ? leader : undefined;
  });
}

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "rollcall-crafted-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const coordinator = startTs(
    "coordinator",
    "scripts/start-node.ts",
    ["--port", String(port), "--data", join(dir, "coordinator.json")],
    { ROLLCALL_CLUSTER_TOKEN: TOKEN, ROLLCALL_ADMIN_TOKEN: ADMIN },
  );
  const manifest = join(dir, "services.json");
  writeFileSync(manifest, JSON.stringify({ services: [] }));
  const plans = [];
  for (let i = 0; i < 3; i++) {
    const dataDir = join(dir, `agent${i}`);
    const id = (await loadIdentity(dataDir)).peerId.toString();
    const meshPort = await freePort();
    plans.push({ dataDir, id, meshPort, gatewayPort: await freePort() });
  }
  plans.sort((a, b) => (a.id < b.id ? -1 : 1));
  await coordinator.waitForLine(/listening on/);
  for (const [i, p] of plans.entries()) {
    // The lowest ID holds a token the coordinator refuses.
    const token = i === 0 ? "not-the-cluster-token" : TOKEN;
    const bootstrap = plans
      .filter((o) => o !== p)
      .map((o) => `/ip4/127.0.0.1/tcp/${o.meshPort}/p2p/${o.id}`);
    const proc = startTs(`agent${i}`, "agent/cli.ts", [
      ...["--coordinator", base, "--token", token, "--agent-token", VIEW, "--data-dir", p.dataDir],
      ...["--listen", `127.0.0.1:${p.gatewayPort}`],
      ...["--mesh-listen", `/ip4/127.0.0.1/tcp/${p.meshPort}`],
      ...["--bootstrap", bootstrap.join(","), "--services", manifest, "--debounce", "0.2"],
    ]);
    agents.push({
      id: p.id,
      token,
      gateway: `http://127.0.0.1:${p.gatewayPort}`,
      mesh: `/ip4/127.0.0.1/tcp/${p.meshPort}/p2p/${p.id}`,
      proc,
    });
  }
}, 60_000);

afterAll(async () => {
  await rogue?.stop();
  await killAll();
});

describe("real agents against a misconfigured member and a crafted peer", () => {
  it("an agent whose token the coordinator refuses never leads, though its ID is the lowest", async () => {
    const [refused, second] = agents as [Agent, Agent, Agent];
    await pollUntil("the agents to agree on the lowest ID that offers to lead", async () =>
      (await agreedLeader(agents, "the agents to agree on a leader")).id === second.id
        ? true
        : undefined,
    );
    await pollUntil("the coordinator to hear from that leader", async () =>
      (await coordinatorLeader())?.leader_id === second.id ? true : undefined,
    );
    const v = (await view(second)) as View;
    const offers = Object.fromEntries(v.all_members.map((m) => [m.worker_id, m.can_lead]));
    expect(offers).toEqual({
      [refused.id]: false,
      [second.id]: true,
      [agents[2]?.id as string]: true,
    });
    expect(refused.proc.output()).toMatch(/Not offering to lead the mesh: the coordinator refused/);
    // Nobody ever named it leader, not even for a moment.
    for (const a of agents) expect(a.proc.output()).not.toContain(`leader ${refused.id}`);
  });

  it("after a crafted peer gossips the largest term, killing the leader leaves agents that stay up and keep a leader", async () => {
    const [refused, first, next] = agents as [Agent, Agent, Agent];
    // The crafted peer: a libp2p node with our stack, gossiping its own (validly signed)
    // heartbeat with the largest term a heartbeat can carry.
    const key = await generateKeyPair("Ed25519");
    rogue = await createNode({ privateKey: key, listen: ["/ip4/127.0.0.1/tcp/0"] });
    await rogue.start();
    const topic = heartbeatTopic("default");
    rogue.services.pubsub.subscribe(topic);
    for (const a of agents) await rogue.dial(multiaddr(a.mesh));
    const rogueId = peerIdFromPrivateKey(key).toString();
    const m = new Membership(
      rogueId,
      { local: { url: "http://127.0.0.1:9", status: "online", services: [] } },
      { now: () => Date.now(), setTimeout: () => 0, clearTimeout: () => {} },
    );
    const huge = { ...m.heartbeat(), term: LIMITS.term };
    await pollUntil("every agent to take the crafted term", async () => {
      await rogue?.services.pubsub.publish(
        topic,
        await signHeartbeat(encodeHeartbeat({ ...huge, seq: Date.now() }), key, "default"),
      );
      const views = await Promise.all(agents.map(view));
      return views.every((v) => v?.all_members.some((x) => x.worker_id === rogueId))
        ? true
        : undefined;
    });

    await first.proc.kill("SIGKILL");
    const leader = await agreedLeader(
      [refused, next],
      "the survivors to agree on a new leader",
      first.id,
    );
    expect(leader).toEqual({ id: next.id, term: LIMITS.term });
    await pollUntil("the coordinator to hear from the new leader", async () =>
      (await coordinatorLeader())?.leader_id === next.id ? true : undefined,
    );
    // Both survivors are up and answer; the new leader keeps sending heartbeats (its view of
    // the refused member stays fresh), which it could not with a term above the limit.
    for (const a of [refused, next]) {
      expect(alive(a)).toBe(true);
      expect(await getJson(`${a.gateway}/_agent/health`)).toMatchObject({
        status: "healthy",
        faults: 0,
      });
    }
    const seen = async () =>
      (await view(refused))?.all_members.find((x) => x.worker_id === next.id)?.state;
    expect(await seen()).toBe("alive");
    expect(next.proc.output()).not.toMatch(/\bfault/i);
  });
});
