/**
 * An in-process coordinator for the routing tests: memory store, a manual clock, a seeded
 * random source for the picker, and one leader-mode cluster whose members each provide the
 * service "svc" at a real upstream.
 */
import {
  type ClientAddress,
  type RawRequestHeaders,
  type CoordinatorInit,
  createCoordinator,
  memoryStore,
} from "../../coordinator.ts";
import { nodeClientAddress } from "../../scripts/client-address.ts";
import { readAnswer } from "./answer.ts";
import { TEST_INIT, testClock } from "./coord-fixtures.ts";
import { prng } from "../../support/random.ts";
import { keyOf, signedHeaders, testKey } from "./signing.ts";

/** A row of `GET /api/admin/breakers`. */
export interface BreakerRow {
  service: string;
  worker_id: string;
  state: string;
  ejected: boolean;
  ejected_until: string | null;
  ejections: number;
  trips: number;
  consecutive_failures: number;
}

/** Members (ID and upstream URL) that provide "svc" (unless `services` says otherwise). */
export type Members = { id: string; url: string; tier?: 1 | 2 | 3; services?: string[] }[];

/** A coordinator whose cluster has `members`; the live view is off unless `init` turns it on. */
export async function routingCoordinator(
  members: Members,
  init: CoordinatorInit = {},
  components: {
    fetch?: typeof fetch;
    random?: () => number;
    log?: (line: string) => void;
    clientAddress?: ClientAddress;
    rawHeaders?: RawRequestHeaders;
  } = {},
) {
  const clock = testClock();
  const coordinator = createCoordinator(
    { ...TEST_INIT, ...init },
    {
      store: memoryStore({}, { clock }),
      clock,
      random: components.random ?? prng(7),
      // Requests carry @hono/node-server's env when a test gives a client address.
      clientAddress: components.clientAddress ?? nodeClientAddress,
      ...(components.fetch ? { fetch: components.fetch } : {}),
      ...(components.log ? { log: components.log } : {}),
      ...(components.rawHeaders ? { rawHeaders: components.rawHeaders } : {}),
    },
  );
  const call = async (path: string, reqInit: RequestInit = {}) =>
    readAnswer(await coordinator.fetch(new Request(`http://coordinator.test${path}`, reqInit)));
  const bearer = (token: string | null | undefined): Record<string, string> =>
    token ? { authorization: `Bearer ${token}` } : {};
  const admin = async (path: string) => {
    const res = await call(path, { headers: bearer(init.adminToken) });
    if (res.status !== 200) throw new Error(`${path} answered ${res.status}`);
    return res.body;
  };
  // The first member leads when it is a test key's PeerId (a live view is read from its URL);
  // otherwise a leader that is no member reports (reports must be signed by their leader).
  const first = members[0]?.id;
  const leader = keyOf(first) ?? testKey("routing fixture leader");
  const text = JSON.stringify({
    leader_id: leader.id,
    term: 1,
    sequence: 1,
    members: members.map((m) => ({
      worker_id: m.id,
      status: "online",
      url: m.url,
      tier: m.tier ?? 2,
      services: (m.services ?? ["svc"]).map((name) => ({ name, url: `${m.url}/${name}` })),
    })),
  });
  const path = "/api/cluster/heartbeat";
  const signature = await signedHeaders(leader, {
    method: "POST",
    path,
    body: text,
    now: clock.now(),
  });
  const reported = await call(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...bearer(init.clusterToken), ...signature },
    body: text,
  });
  if (reported.status !== 200) throw new Error(`The report answered ${reported.status}`);
  /** The breaker row of a worker (`GET /api/admin/breakers`). */
  const breaker = async (id: string): Promise<BreakerRow> => {
    const rows = (await admin("/api/admin/breakers")).breakers as BreakerRow[];
    return rows.find((b) => b.worker_id === id) as BreakerRow;
  };
  return { coordinator, clock, call, admin, breaker, get: (p = "/api/service/svc/x") => call(p) };
}
