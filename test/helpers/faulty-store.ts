/**
 * A store that fails on command, around any store: writes refused (as Workers KV answers 429
 * or a spent daily quota), reads failing, every call hanging until released, and Workers KV's
 * eventual consistency (a read returns the value as it was up to `lagMs` ago).
 */
import type { Store } from "../../coordinator.ts";

/** How the store misbehaves now. */
export type StoreFault = "none" | "refuse-429" | "quota" | "reads-fail" | "hang";

/** A store whose faults a test switches; `calls` counts what reached the inner store. */
export interface FaultyStore extends Store {
  fault: StoreFault;
  /** Writes that reached the inner store. */
  writes: number;
  /** Calls held by "hang" right now. */
  readonly hanging: number;
  /** Lets every held call go on (to the inner store) and stops hanging. */
  release(): void;
}

/** Wraps `inner`; with `lag` set, reads see each key as it was `lag.ms` ago on `lag.now()`. */
export function faultyStore(inner: Store, lag?: { ms: number; now(): number }): FaultyStore {
  const held: (() => void)[] = [];
  const history = new Map<string, { at: number; value: string | null }[]>();
  const gate = async (kind: "read" | "write") => {
    if (store.fault === "hang") await new Promise<void>((resolve) => held.push(resolve));
    if (kind === "write" && store.fault === "refuse-429") {
      throw new Error("KV PUT failed: 429 Too Many Requests");
    }
    if (kind === "write" && store.fault === "quota") {
      throw new Error("KV put() limit exceeded for the day");
    }
    if (kind === "read" && store.fault === "reads-fail") throw new Error("KV GET failed: 500");
  };
  const remember = (key: string, value: string | null) => {
    if (!lag) return;
    const list = history.get(key) ?? [];
    list.push({ at: lag.now(), value });
    history.set(key, list);
  };
  const store: FaultyStore = {
    kind: inner.kind,
    persistent: inner.persistent,
    ...(inner.minWriteIntervalMs ? { minWriteIntervalMs: inner.minWriteIntervalMs } : {}),
    fault: "none",
    writes: 0,
    get hanging() {
      return held.length;
    },
    release() {
      store.fault = "none";
      for (const go of held.splice(0)) go();
    },
    async get(key) {
      await gate("read");
      if (!lag) return inner.get(key);
      // The newest value written at least lag.ms ago (or, if none is that old, what was there).
      const list = history.get(key) ?? [];
      const cutoff = lag.now() - lag.ms;
      const visible = list.filter((e) => e.at <= cutoff).at(-1);
      if (visible) return visible.value;
      return list.length > 0 ? null : inner.get(key);
    },
    async list(prefix) {
      await gate("read");
      return inner.list(prefix);
    },
    async set(key, value, options) {
      await gate("write");
      await inner.set(key, value, options);
      store.writes++;
      remember(key, value);
    },
    async delete(key) {
      await gate("write");
      await inner.delete(key);
      store.writes++;
      remember(key, null);
    },
  };
  return store;
}
