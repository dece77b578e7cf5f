/** Test fixtures for the coordinator: a fake clock, an in-process app, report builders. */
import {
  type ClusterReportInput,
  type CoordinatorInit,
  createCoordinator,
  memoryStore,
  type Store,
} from "../../coordinator.ts";

/** A clock whose time moves only when the test says so. */
export class ManualClock {
  constructor(public t = Date.parse("2026-11-26T12:00:00.000Z")) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

/**
 * A store that counts what spends the write budget: writes, successful compare-and-sets and
 * deletes. Free of vitest, so the simulation (scripts/sim-cluster.ts) counts with it too.
 */
export function countingStore(inner: Store): Store & { writes: number } {
  const counted = {
    kind: inner.kind,
    persistent: inner.persistent,
    ...(inner.minWriteIntervalMs ? { minWriteIntervalMs: inner.minWriteIntervalMs } : {}),
    writes: 0,
    get: (key: string) => inner.get(key),
    list: (prefix: string) => inner.list(prefix),
    async set(key: string, value: string, options?: { ttlSeconds?: number }) {
      await inner.set(key, value, options);
      counted.writes++;
    },
    async delete(key: string) {
      await inner.delete(key);
      counted.writes++;
    },
    compareAndSet: undefined as Store["compareAndSet"],
  };
  const cas = inner.compareAndSet?.bind(inner);
  // Only a store that has compare-and-set gets one (Workers KV has none).
  if (cas) {
    counted.compareAndSet = async (key, expected, value, options) => {
      const ok = await cas(key, expected, value, options);
      if (ok) counted.writes++;
      return ok;
    };
  }
  return counted;
}

/**
 * A counting memory store that behaves like Workers KV (one write per key per second, no
 * compare-and-set), with `hold()` to keep its writes waiting until the returned release runs.
 */
export function kvLikeStore(clock: ManualClock) {
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

/** An in-process coordinator on a counting memory store and a manual clock (live view off by default). */
export function testCoordinator(init: CoordinatorInit = {}, fetcher?: typeof fetch) {
  const clock = new ManualClock();
  const store = countingStore(memoryStore({}, { clock }));
  // The leader's live view is off unless a test asks for it: these upstreams are no agents.
  const coordinator = createCoordinator(
    { liveView: false, ...init },
    fetcher ? { store, clock, fetch: fetcher } : { store, clock },
  );
  const call = async (
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
    // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers
  ): Promise<{ status: number; body: any; headers: Headers }> => {
    const init: RequestInit = {
      method,
      headers: { "content-type": "application/json", ...headers },
    };
    if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
    const res = await coordinator.app.request(path, init);
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body: parsed, headers: res.headers };
  };
  return { coordinator, clock, store, call };
}

/** A leader-mode report with sensible defaults. */
export function report(overrides: Partial<ClusterReportInput> = {}): ClusterReportInput {
  return {
    leader_id: "A",
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
