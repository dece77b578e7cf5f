/**
 * The store contract on every driver's real backend: memory; the file driver on disk; Deno KV
 * in a real Deno process; Workers KV in workerd through Miniflare with a local KV namespace.
 */
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fileStore, memoryStore, StoreError } from "../coordinator.ts";
import { ManualClock } from "./helpers/coord-fixtures.ts";
import {
  BIN,
  bundleWorker,
  type Spawned,
  spawnUntil,
  startWorkerd,
  tempDir,
} from "./helpers/coord-runtimes.ts";
import { type OpenStore, storeContract } from "./helpers/coord-store-contract.ts";
import { remoteStore, type StoreCall } from "./helpers/coord-store-rpc.ts";

const post = (url: string) => (call: StoreCall) =>
  fetch(url, { method: "POST", body: JSON.stringify(call) });

describe("memory store", () => {
  const shared = memoryStore();
  storeContract(() => async () => ({ store: shared, close: async () => {} }), {
    kind: "memory",
    cas: true,
    persistent: false,
  });

  it("expires keys after their TTL (on its clock)", async () => {
    const clock = new ManualClock();
    const store = memoryStore({}, { clock });
    await store.set("k", "v", { ttlSeconds: 60 });
    clock.advance(59_000);
    expect(await store.get("k")).toBe("v");
    clock.advance(1_000);
    expect(await store.get("k")).toBeNull();
    expect(await store.list("")).toEqual([]);
  });
});

describe("file store (on disk)", () => {
  const dir = tempDir("file-store");
  const file = path.join(dir, "sub", "registry.json");
  storeContract(
    () => async () => ({ store: fileStore({ path: file }, { fs }), close: async () => {} }),
    {
      kind: "file",
      cas: true,
      persistent: true,
    },
  );

  it("writes through a temporary file and leaves only the store file", async () => {
    const store = fileStore({ path: file }, { fs });
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.set(`k${i}`, String(i))));
    expect(await fs.readdir(path.dirname(file))).toEqual(["registry.json"]);
    const reopened = fileStore({ path: file }, { fs });
    expect(await reopened.list("k")).toHaveLength(20);
  });

  it("expires keys after their TTL and refuses a corrupt file instead of overwriting it", async () => {
    const clock = new ManualClock();
    const store = fileStore({ path: path.join(dir, "ttl.json") }, { fs, clock });
    await store.set("k", "v", { ttlSeconds: 1 });
    clock.advance(1000);
    expect(await store.get("k")).toBeNull();
    const corrupt = path.join(dir, "corrupt.json");
    await fs.writeFile(corrupt, "{not json");
    await expect(fileStore({ path: corrupt }, { fs }).get("k")).rejects.toBeInstanceOf(StoreError);
    expect(await fs.readFile(corrupt, "utf8")).toBe("{not json");
  });
});

describe("Deno KV (real Deno process)", () => {
  const dir = tempDir("deno-kv");
  let current: Spawned | null = null;
  const open: OpenStore = async () => {
    current = await spawnUntil(
      BIN("deno"),
      [
        "run",
        "--unstable-kv",
        "-A",
        "test/helpers/coord-deno-kv-rpc.ts",
        path.join(dir, "kv.sqlite"),
      ],
      { ready: /PORT (\d+)/ },
    );
    const proc = current;
    const store = await remoteStore(post(`http://127.0.0.1:${proc.match[1]}`));
    return { store, close: () => proc.stop() };
  };
  afterAll(async () => {
    await (current as Spawned | null)?.stop();
  });
  storeContract(() => open, { kind: "deno-kv", cas: true, persistent: true });
});

describe("Workers KV (workerd through Miniflare)", () => {
  const persist = tempDir("workers-kv");
  let scriptPath = "";
  beforeAll(async () => {
    scriptPath = await bundleWorker("test/helpers/coord-kv-rpc-worker.ts");
  });
  const open: OpenStore = async () => {
    const w = await startWorkerd({ scriptPath, kvBinding: "KV", kvPersist: persist });
    const store = await remoteStore(post(w.url));
    return { store, close: w.stop };
  };
  storeContract(() => open, { kind: "cloudflare-kv", cas: false, persistent: true });
});
