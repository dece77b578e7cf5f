/**
 * The simulation model behind scripts/simulate.ts: a cluster's day on a virtual clock, run
 * with the REAL code of every part that decides writes: mesh membership and election,
 * the agent's aggregate and leader reporter (or direct reporter), and the coordinator
 * (its hono app on a memory store, called in-process). Only the network is simulated:
 * heartbeats are handed from member to member each second instead of gossiped.
 *
 * The leader can only be one of the lowest IDs, so the three lowest members run a whole
 * agent (membership, election, reporter), and so does a flapping member; the others are
 * plain heartbeat senders. The dialer's probes are modelled as the runtime makes them (a
 * crash closes connections and the probe is refused twice: dead at once; a member that falls
 * silent is probed: a frozen one's host accepts, a cut-off one's does not answer).
 */
import { aggregate, reportBody } from "../agent/aggregate.ts";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { CoordinatorClient } from "../agent/client.ts";
import { DirectReporter } from "../agent/direct.ts";
import { LeaderReporter } from "../agent/reporter.ts";
import { type RequestSigner, signerFromKey } from "../agent/signer.ts";
import {
  type ClusterMemberReport,
  type Coordinator,
  createCoordinator,
  memoryStore,
} from "../coordinator.ts";
// The pure mesh modules only: mesh/index.ts would load libp2p, which the simulation never uses.
import { FakeClock } from "../mesh/clock.ts";
import { DEFAULT_SETTLE_MS, elect } from "../mesh/election.ts";
import { Membership } from "../mesh/membership.ts";
import type { Heartbeat } from "../mesh/protocol.ts";
import type { Leader } from "../mesh/types.ts";
import { countingStore } from "../support/counting-store.ts";
import { prng } from "../support/random.ts";

/** What happens to the cluster during the day. */
export type Scenario = "steady" | "churn" | "flapping" | "netflap";

/** The outcome of one simulated run. */
export interface SimResult {
  writes: number;
  /** Reports or heartbeats the coordinator answered `deferred` (over the cap). */
  deferred: number;
  /** Changes a user would call real: members leaving or joining, a member taking the lead. */
  realChanges: number;
  /** Requests the coordinator served. */
  requests: number;
  /** Distinct leaders that reported. */
  leaders: number;
}

const DAY_MS = 24 * 3600 * 1000;
/** Simulations start at a UTC midnight, so "a day" is one write-budget day. */
const SIM_START = Date.UTC(2026, 0, 1);

const plainId = (i: number) => `m${String(i).padStart(5, "0")}`;
/** How long (real time) `settle` waits for the requests in flight before it calls one hung. */
const HUNG_MS = 60_000;

/**
 * Counts the requests in flight (signing, the coordinator's hashing and signature checks run
 * on Web Crypto, whose jobs finish in real time, on the thread pool), so that the virtual
 * clock moves on only once every one has been answered. Waiting a fixed number of event-loop
 * turns instead let a slow machine answer a report a virtual second or more late, which moved
 * every later keepalive: 26 or 27 steady writes a day under load instead of 29 or 30.
 */
function inflight() {
  let pending = 0;
  return {
    track<T>(p: Promise<T>): Promise<T> {
      pending++;
      return p.finally(() => {
        pending--;
      });
    },
    /** Resolves once no request is in flight (and the event loop has turned at least once). */
    async settle(): Promise<void> {
      const start = performance.now();
      do {
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (performance.now() - start > HUNG_MS) {
          throw new Error(`A simulated request did not finish within ${HUNG_MS / 1000} s`);
        }
      } while (pending > 0);
    },
  };
}

/** A coordinator in-process, and a fetch that reaches it without a network. */
function coordinatorOn(clock: FakeClock, writeCap: number) {
  const store = countingStore(memoryStore({}, { clock }));
  const coordinator: Coordinator = createCoordinator({ writeCap }, { store, clock });
  const flight = inflight();
  let requests = 0;
  let deferred = 0;
  const answer = async (input: RequestInfo | URL, init?: RequestInit) => {
    requests++;
    const req = new Request(input, { ...init, signal: null });
    const res = await coordinator.app.request(req);
    if (res.headers.get("content-type")?.includes("json")) {
      const text = await res.clone().text();
      if (text.includes('"reason":"deferred"')) deferred++;
    }
    return res;
  };
  const fetcher = ((input: RequestInfo | URL, init?: RequestInit) =>
    flight.track(answer(input, init))) as typeof fetch;
  const client = new CoordinatorClient({ baseUrl: "http://localhost" }, { fetch: fetcher });
  /** A client that signs as `signer` (a leader's reports must be signed with its key). */
  const signedClient = (signer: RequestSigner) =>
    new CoordinatorClient(
      { baseUrl: "http://localhost", signer },
      { fetch: fetcher, now: () => clock.now() },
    );
  return {
    store,
    client,
    signedClient,
    track: flight.track,
    settle: flight.settle,
    stats: () => ({ requests, deferred }),
  };
}

interface Agent {
  id: string;
  membership: Membership;
  reporter: LeaderReporter<ClusterMemberReport>;
  leader: Leader | null;
  incarnation: number;
  /** Virtual second of its last view change: elections run while a settle period may end. */
  changedAt: number;
  /** Its view changed between two seconds (a probe's verdict): the next second takes it up. */
  dirty: boolean;
}

interface Plain {
  id: string;
  hb: Heartbeat;
  beats: number;
}

/** Runs one day of a cluster in mesh mode. */
export async function simulateMesh(init: {
  n: number;
  scenario: Scenario;
  hours?: number;
  writeCap?: number;
  seed?: number;
}): Promise<SimResult> {
  const clock = new FakeClock(SIM_START);
  const { store, signedClient, track, settle, stats } = coordinatorOn(clock, init.writeCap ?? 1000);
  const random = prng(init.seed ?? 1);
  // The three lowest IDs can lead; a flapping member runs a whole agent too, since a member
  // cut off from the others runs its own election and could claim the lead.
  const isAgent = (i: number) =>
    i <= 3 || (init.scenario !== "steady" && init.scenario !== "churn" && i === init.n);
  // Agents report, so they are real keys (PeerIds, which sort below the plain "m..." IDs),
  // given out in ID order: agent 1 has the lowest.
  const agentIndices = Array.from({ length: init.n }, (_, k) => k + 1).filter(isAgent);
  const keys = await Promise.all(agentIndices.map(() => generateKeyPair("Ed25519")));
  const signers = keys.map((k) => signerFromKey(k)).sort((a, b) => (a.id < b.id ? -1 : 1));
  const signerOf = new Map(agentIndices.map((i, k) => [i, signers[k] as RequestSigner]));
  const pad = (i: number) => signerOf.get(i)?.id ?? plainId(i);
  const url = (i: number) => `http://10.0.${i >> 8}.${i & 255}:8700`;
  const local = (i: number) => ({
    url: url(i),
    status: "online" as const,
    services: [{ name: `svc${i % 5}`, status: "healthy" as const }],
  });
  const up = new Set<string>();
  const leadersSeen = new Set<string>();
  let realChanges = 0;

  const agents = new Map<string, Agent>();
  const newAgent = (i: number, incarnation: number): Agent => {
    const id = pad(i);
    const client = signedClient(signerOf.get(i) as RequestSigner);
    const membership = new Membership(id, { local: local(i), incarnation }, clock);
    const reporter = new LeaderReporter<ClusterMemberReport>(
      {},
      {
        clock,
        random,
        send: (r) => {
          leadersSeen.add(id);
          // Tracked from the start: the signature is made before the request is.
          return track(
            client.report(
              reportBody({
                cluster: "sim",
                leaderId: id,
                term: r.term,
                sequence: r.sequence,
                aggregate: r,
              }),
            ),
          );
        },
      },
    );
    return {
      id,
      membership,
      reporter,
      leader: null,
      incarnation,
      changedAt: Number.MAX_SAFE_INTEGER,
      dirty: false,
    };
  };
  const plains = new Map<string, Plain>();
  const newPlain = (i: number, incarnation: number): Plain => ({
    id: pad(i),
    beats: 0,
    hb: {
      id: pad(i),
      incarnation,
      seq: 0,
      term: 0,
      leader: false,
      leaving: false,
      status: "online",
      canLead: true,
      uptimeMs: 0,
      stateVersion: 1,
      state: local(i),
    },
  });
  for (let i = 1; i <= init.n; i++) {
    if (isAgent(i)) agents.set(pad(i), newAgent(i, 1));
    else plains.set(pad(i), newPlain(i, 1));
    up.add(pad(i));
  }

  // The day's events: second -> actions. Churn: every 30 min one member goes (alternately a
  // graceful leave and a crash) and comes back 10 min later as a restart; at 12:07 the
  // lowest member (the leader) crashes and returns. Flapping: the highest member is silent
  // 5 s of every 10 s, all day.
  const events = new Map<number, (() => void)[]>();
  const at = (s: number, fn: () => void) => {
    const list = events.get(s) ?? [];
    list.push(fn);
    events.set(s, list);
  };
  const hours = init.hours ?? 24;
  const seconds = hours * 3600;
  const leaving = new Set<string>();
  const goDown = (id: string, graceful: boolean) => {
    if (!up.has(id)) return;
    realChanges++;
    if (graceful) leaving.add(id);
    else {
      up.delete(id);
      // Its connections close; each agent's probe is refused, and the redial confirms it.
      for (const a of agents.values()) {
        if (up.has(a.id) && a.membership.refused(id).length > 0) a.dirty = true;
      }
    }
  };
  const comeBack = (i: number) => {
    const id = pad(i);
    if (up.has(id) && !leaving.has(id)) return;
    realChanges++;
    leaving.delete(id);
    const a = agents.get(id);
    if (a) {
      a.reporter.stop();
      agents.set(id, newAgent(i, a.incarnation + 1));
    } else {
      const p = plains.get(id) as Plain;
      plains.set(id, newPlain(i, p.hb.incarnation + 1));
    }
    up.add(id);
  };
  if (init.scenario === "churn") {
    let k = 0;
    for (let s = 15 * 60; s < seconds; s += 30 * 60, k++) {
      const i = 1 + Math.floor(random() * init.n);
      const graceful = k % 2 === 0;
      at(s, () => goDown(pad(i), graceful));
      at(s + 600, () => comeBack(i));
    }
    at(12 * 3600 + 7 * 60, () => goDown(pad(1), false));
    at(12 * 3600 + 17 * 60, () => comeBack(1));
  }
  const flapper = pad(init.n);
  const flapping = init.scenario === "flapping" || init.scenario === "netflap";
  const silent = (id: string, s: number) => flapping && id === flapper && init.n > 1 && s % 10 >= 5;
  // "flapping": the member freezes (like SIGSTOP); "netflap": it runs on, cut off from the others.
  const frozen = (id: string, s: number) => init.scenario === "flapping" && silent(id, s);
  const cut = (id: string, s: number) => init.scenario === "netflap" && silent(id, s);
  /** What agent `a`'s probe of a member that fell silent finds (mesh/dialer.ts). */
  const probe = (a: Agent, id: string, s: number) => {
    if (!up.has(id)) a.membership.refused(id);
    else if (!cut(id, s) && !cut(a.id, s)) a.membership.reachable(id);
    // cut off (either side): no answer, no evidence
  };

  // Seconds 0 .. seconds-1 after midnight: the run stays inside one budget day.
  for (let s = 0; s < seconds; s++) {
    if (s > 0) clock.advance(1000);
    for (const fn of events.get(s) ?? []) fn();
    // Who speaks this second: live agents build real heartbeats, plain members replay theirs.
    const beats: Heartbeat[] = [];
    for (const a of agents.values()) {
      if (!up.has(a.id) || silent(a.id, s)) continue;
      const leads = a.leader?.id === a.id;
      beats.push(
        a.membership.heartbeat({
          leaderTerm: leads ? a.leader?.term : undefined,
          withState: s % 10 === 0,
          leaving: leaving.has(a.id),
        }),
      );
    }
    for (const p of plains.values()) {
      if (!up.has(p.id) || silent(p.id, s)) continue;
      p.hb.seq++;
      p.hb.uptimeMs += 1000;
      p.hb.leaving = leaving.has(p.id);
      beats.push(p.beats++ % 10 === 0 || p.hb.leaving ? p.hb : { ...p.hb, state: undefined });
    }
    for (const id of leaving) up.delete(id);
    leaving.clear();
    // Every live agent hears every beat, ticks, elects, and (if it leads) reports.
    for (const a of agents.values()) {
      if (!up.has(a.id)) {
        a.reporter.setLeader(false, 0);
        continue;
      }
      if (frozen(a.id, s)) continue;
      let changed = a.dirty;
      a.dirty = false;
      const heard = silent(a.id, s) ? [] : beats;
      for (const hb of heard) if (a.membership.onHeartbeat(hb).length > 0) changed = true;
      const ticked = a.membership.tick();
      for (const c of ticked) if (c.from === "alive" && c.to === "suspect") probe(a, c.id, s);
      if (ticked.length > 0) changed = true;
      if (changed) a.changedAt = s;
      // Nothing changed and no settle period can end: the election's answer cannot change.
      if (!changed && s - a.changedAt > DEFAULT_SETTLE_MS / 1000 + 1) continue;
      const view = a.membership.view();
      const next = elect(view, a.leader, {
        settleMs: DEFAULT_SETTLE_MS,
        now: view.now,
        maxTerm: view.maxTerm,
      });
      const moved = next?.id !== a.leader?.id || next?.term !== a.leader?.term;
      a.leader = next;
      if (moved && next?.id === a.id) realChanges++; // leadership moved here: one change
      if (moved || changed) {
        const mine = next?.id === a.id;
        if (mine) a.reporter.update(aggregate(view));
        a.reporter.setLeader(mine, next?.term ?? 0);
      }
    }
    await settle();
  }
  for (const a of agents.values()) a.reporter.stop();
  const { requests, deferred } = stats();
  return { writes: store.writes, deferred, realChanges, requests, leaders: leadersSeen.size };
}

/** Runs one day of N workers in direct mode (each registers, then heartbeats every 30 s). */
export async function simulateDirect(init: {
  n: number;
  hours?: number;
  writeCap?: number;
}): Promise<SimResult> {
  const clock = new FakeClock(SIM_START);
  const { store, client, settle, stats } = coordinatorOn(clock, init.writeCap ?? 1000);
  const reporters: DirectReporter[] = [];
  for (let i = 1; i <= init.n; i++) {
    const r = new DirectReporter(
      {
        worker_id: plainId(i),
        tunnel_url: `http://10.0.${i >> 8}.${i & 255}:8700`,
        capabilities: {},
        containers: [
          {
            name: `svc${i % 5}`,
            service_url: `http://10.0.0.1:8700/service/svc${i % 5}`,
            port: 8100,
            health_endpoint: "/health",
          },
        ],
      },
      {
        client,
        clock,
        load: () => ({ status: "online", current_load: 0.5, available_memory: 1e9 }),
      },
    );
    reporters.push(r);
    // Workers start spread over the first 30 s, as real ones would.
    clock.setTimeout(() => void r.start(), (i * 30_000) / init.n);
  }
  const end = SIM_START + (init.hours ?? 24) * 3600 * 1000;
  while (clock.now() + 1000 < end) {
    clock.advance(1000);
    await settle();
  }
  const { requests, deferred } = stats();
  return { writes: store.writes, deferred, realChanges: 0, requests, leaders: 0 };
}

/** Writes a naive coordinator would make: every heartbeat of every worker, every 30 s. */
export function naiveWrites(n: number, hours = 24): number {
  return Math.round((n * hours * 3600) / 30);
}

export { DAY_MS };
