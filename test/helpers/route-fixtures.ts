/**
 * An in-process coordinator for the routing tests: memory store, a manual clock, a seeded
 * random source for the picker, and one leader-mode cluster whose members each provide the
 * service "svc" at a real upstream.
 */
import {
  type ClientAddress,
  type CoordinatorInit,
  createCoordinator,
  memoryStore,
} from "../../coordinator.ts";
import { nodeClientAddress } from "../../scripts/client-address.ts";
import { ManualClock, TEST_INIT } from "./coord-fixtures.ts";
import { keyOf, signedHeaders, testKey } from "./signing.ts";

/** A small deterministic random source (a linear congruential generator), for the picker. */
export function seeded(seed = 1): () => number {
  let x = (seed >>> 0) % 233_280;
  return () => {
    x = (x * 9301 + 49_297) % 233_280;
    return x / 233_280;
  };
}

/** An answer, its body parsed when it is JSON. */
export interface Answer {
  status: number;
  headers: Headers;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers
  body: any;
}

async function read(res: Response): Promise<Answer> {
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, headers: res.headers, body };
}

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
  } = {},
) {
  const clock = new ManualClock();
  const coordinator = createCoordinator(
    { ...TEST_INIT, ...init },
    {
      store: memoryStore({}, { clock }),
      clock,
      random: components.random ?? seeded(7),
      // Requests carry @hono/node-server's env when a test gives a client address.
      clientAddress: components.clientAddress ?? nodeClientAddress,
      ...(components.fetch ? { fetch: components.fetch } : {}),
      ...(components.log ? { log: components.log } : {}),
    },
  );
  const call = async (path: string, reqInit: RequestInit = {}) =>
    read(await coordinator.fetch(new Request(`http://coordinator.test${path}`, reqInit)));
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
