/** A store wrapper that counts the writes a coordinator spends, for tests and the simulation. */
import type { Store } from "../coordinator.ts";

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
