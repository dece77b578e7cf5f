/** Test fixtures for the coordinator: the fake clock, an in-process app, report builders. */
import {
  type ClusterReportInput,
  type CoordinatorInit,
  createCoordinator,
  memoryStore,
} from "../../coordinator.ts";
import { FakeClock } from "../../mesh/clock.ts";
import { countingStore } from "../../support/counting-store.ts";
import { type Answer, readAnswer } from "./answer.ts";
import { nodeClientAddress } from "../../scripts/client-address.ts";
import { peer, signedHeaders, signerFor } from "./signing.ts";

/** When every fixture clock starts: 2026-11-26T12:00:00Z. */
export const T0 = Date.parse("2026-11-26T12:00:00.000Z");

/** The tests' one fake clock (mesh/clock.ts's), at T0: time moves only when the test says so. */
export function testClock(start = T0): FakeClock {
  return new FakeClock(start);
}

/**
 * A counting memory store that behaves like Workers KV (one write per key per second, no
 * compare-and-set), with `hold()` to keep its writes waiting until the returned release runs.
 */
export function kvLikeStore(clock: FakeClock) {
  const inner = memoryStore({}, { clock });
  let gate: Promise<void> | null = null;
  const store = countingStore({
    ...inner,
    minWriteIntervalMs: 1000,
    compareAndSet: undefined,
    async set(key, value, options) {
      if (gate) await gate;
      await inner.set(key, value, options);
    },
  });
  const hold = () => {
    let release = () => {};
    gate = new Promise((resolve) => {
      release = resolve;
    });
    return () => {
      gate = null;
      release();
    };
  };
  return { store, hold };
}

/** Settings every in-process test coordinator starts from: test upstreams are on loopback. */
export const TEST_INIT: CoordinatorInit = {
  liveView: false,
  upstreamAllow: "loopback,private",
  // The names in-process tests call an open coordinator by (it answers loopback names only).
  allowedHosts: "c,c.test,coordinator,coordinator.test,coordinator.example",
};

/**
 * An in-process coordinator on a counting memory store and a manual clock (live view off by
 * default). `call` signs agent calls whose worker or leader id is a test key's PeerId, as the
 * agent does, unless the headers carry a signature already or `unsigned` is set.
 */
export function testCoordinator(init: CoordinatorInit = {}, fetcher?: typeof fetch) {
  const clock = testClock();
  const store = countingStore(memoryStore({}, { clock }));
  // The leader's live view is off unless a test asks for it: these upstreams are no agents.
  const coordinator = createCoordinator(
    { ...TEST_INIT, ...init },
    // Requests carry @hono/node-server's env when a test gives a client address.
    { store, clock, clientAddress: nodeClientAddress, ...(fetcher ? { fetch: fetcher } : {}) },
  );
  const call = async (
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
    options: { unsigned?: boolean } = {},
  ): Promise<Answer> => {
    const text =
      body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    const key =
      options.unsigned || "x-rollcall-signer" in headers ? undefined : signerFor(path, body);
    const signature = key
      ? await signedHeaders(key, {
          method,
          path,
          ...(text ? { body: text } : {}),
          now: clock.now(),
        })
      : {};
    const init: RequestInit = {
      method,
      headers: { "content-type": "application/json", ...signature, ...headers },
    };
    if (text !== undefined) init.body = text;
    return readAnswer(await coordinator.app.request(path, init));
  };
  return { coordinator, clock, store, call };
}

/**
 * POSTs an agent call to an app as an agent sends it: JSON, and signed (at `now`) when its
 * worker or leader id is a test key's PeerId.
 */
export async function agentPost(
  app: { request(path: string, init: RequestInit): Response | Promise<Response> },
  path: string,
  body: unknown,
  now: number,
  headers: Record<string, string> = {},
): Promise<Response> {
  const text = JSON.stringify(body);
  const key = signerFor(path, body);
  const signature = key ? await signedHeaders(key, { method: "POST", path, body: text, now }) : {};
  return app.request(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...signature, ...headers },
    body: text,
  });
}

/** The leader of `report()`: a real key's PeerId (reports must be signed by their leader). */
export const LEADER = peer("leader A");

/** A leader-mode report with sensible defaults. */
export function report(overrides: Partial<ClusterReportInput> = {}): ClusterReportInput {
  return {
    leader_id: LEADER,
    term: 1,
    sequence: 1,
    members: [member("A"), member("B")],
    ...overrides,
  };
}

/** A member of a leader-mode report. */
export function member(id: string, overrides: Record<string, unknown> = {}) {
  return {
    worker_id: id,
    incarnation: 1,
    status: "online" as const,
    url: `http://127.0.0.1:87${id.charCodeAt(0) % 100}`,
    last_seen: 1_000,
    services: [{ name: "upload", status: "healthy" as const }],
    ...overrides,
  };
}

/** A direct-mode registration body. */
export function registration(id: string, overrides: Record<string, unknown> = {}) {
  return {
    worker_id: id,
    capabilities: { cpu_cores: 4, ram: 8, worker_type: "cpu" },
    ip_address: "127.0.0.1",
    tunnel_url: "http://127.0.0.1:9999",
    services: ["upload"],
    ...overrides,
  };
}
