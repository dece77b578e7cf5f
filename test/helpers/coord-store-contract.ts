/** The store contract: one suite every driver runs against its real backend. */
import { expect, it } from "vitest";
import { resolveSettings, type Store } from "../../coordinator.ts";

/** Opens a store on the backend (the same backing data each time it is called). */
export type OpenStore = () => Promise<{ store: Store; close(): Promise<void> }>;

/** Defines the contract tests (call inside a describe whose beforeAll/afterAll manage `open`). */
export function storeContract(
  getOpen: () => OpenStore,
  expectations: { kind: string; cas: boolean; persistent: boolean },
): void {
  const withStore = async (fn: (store: Store) => Promise<void>) => {
    const { store, close } = await getOpen()();
    try {
      await fn(store);
    } finally {
      await close();
    }
  };

  it("reports its kind and capabilities", () =>
    withStore(async (store) => {
      expect(store.kind).toBe(expectations.kind);
      expect(store.persistent).toBe(expectations.persistent);
      expect(Boolean(store.compareAndSet)).toBe(expectations.cas);
    }));

  it("gets null for a missing key, round-trips, overwrites and deletes", () =>
    withStore(async (store) => {
      expect(await store.get("c/missing")).toBeNull();
      await store.set("c/a", "one");
      expect(await store.get("c/a")).toBe("one");
      await store.set("c/a", 'two "quoted" é ✓ 🚀\n');
      expect(await store.get("c/a")).toBe('two "quoted" é ✓ 🚀\n');
      await store.delete("c/a");
      expect(await store.get("c/a")).toBeNull();
      await store.delete("c/never-there");
    }));

  it("stores a large value (a 1,000-member cluster document) intact", () =>
    withStore(async (store) => {
      const big = JSON.stringify(
        Array.from({ length: 1000 }, (_, i) => ({
          id: `12D3KooW${i}`,
          url: `http://10.0.${i % 250}.1:8701`,
          s: "é✓",
        })),
      );
      expect(big.length).toBeGreaterThan(60_000);
      await store.set("c/big", big);
      expect(await store.get("c/big")).toBe(big);
      await store.set("c/big", "small again");
      expect(await store.get("c/big")).toBe("small again");
      await store.delete("c/big");
    }));

  it("stores a document at the coordinator's size cap, in two-byte text, and replaces it", () =>
    withStore(async (store) => {
      // ROLLCALL_MAX_DOC_BYTES' default: Deno KV commits it (chunks and the old chunks'
      // deletes in one atomic operation) under its 800 KiB limit even when every character
      // is stored in two bytes.
      const cap = resolveSettings().maxDocBytes;
      const doc = "é".repeat(cap);
      await store.set("c/cap", doc);
      expect(await store.get("c/cap")).toBe(doc);
      const again = "ü".repeat(cap);
      await store.set("c/cap", again);
      expect(await store.get("c/cap")).toBe(again);
      await store.delete("c/cap");
    }));

  it("lists keys by prefix, sorted, and nothing else", () =>
    withStore(async (store) => {
      for (const k of ["l/b", "l/a", "l/c/d", "lx/other", "m/x"]) await store.set(k, k);
      expect(await store.list("l/")).toEqual(["l/a", "l/b", "l/c/d"]);
      expect(await store.list("l/c/")).toEqual(["l/c/d"]);
      expect(await store.list("zz/")).toEqual([]);
      for (const k of ["l/b", "l/a", "l/c/d", "lx/other", "m/x"]) await store.delete(k);
      expect(await store.list("l/")).toEqual([]);
    }));

  it("accepts a TTL and keeps the value readable before it lapses", () =>
    withStore(async (store) => {
      await store.set("t/a", "v", { ttlSeconds: 3600 });
      expect(await store.get("t/a")).toBe("v");
      expect(await store.list("t/")).toEqual(["t/a"]);
      await store.delete("t/a");
    }));

  if (expectations.cas) {
    it("compare-and-set: succeeds only on the expected value; one winner among racers", () =>
      withStore(async (store) => {
        const cas = store.compareAndSet as NonNullable<Store["compareAndSet"]>;
        expect(await cas("x/k", null, "v1")).toBe(true);
        expect(await cas("x/k", null, "v2")).toBe(false);
        expect(await cas("x/k", "wrong", "v2")).toBe(false);
        expect(await cas("x/k", "v1", "v2")).toBe(true);
        expect(await store.get("x/k")).toBe("v2");
        const results = await Promise.all(
          Array.from({ length: 8 }, (_, i) => cas("x/k", "v2", `r${i}`)),
        );
        expect(results.filter(Boolean)).toHaveLength(1);
        await store.delete("x/k");
      }));
  }

  if (expectations.persistent) {
    it("keeps its data when the store is opened again (a restart)", async () => {
      await withStore((store) => store.set("p/survivor", "still here"));
      await withStore(async (store) => {
        expect(await store.get("p/survivor")).toBe("still here");
        await store.delete("p/survivor");
      });
    });
  }
}
