/**
 * The store contract on every driver's real backend: memory; the file driver on disk; Deno KV
 * in a real Deno process; Workers KV in workerd through Miniflare with a local KV namespace.
 */
import fs from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FileSystemLike, fileStore, memoryStore, StoreError } from "../coordinator.ts";
import { testClock } from "./helpers/coord-fixtures.ts";
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
    const clock = testClock();
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

  /** node:fs/promises, with `rename` replaced when given, noting each write and rename. */
  const recordingFs = (calls: string[], rename = fs.rename): FileSystemLike => ({
    readFile: (p, encoding) => fs.readFile(p, encoding),
    mkdir: (p, options) => fs.mkdir(p, options),
    writeFile: async (p, data, encoding) => {
      calls.push(`write ${p}`);
      await fs.writeFile(p, data, encoding);
    },
    rename: async (from, to) => {
      calls.push(`rename ${from} -> ${to}`);
      await rename(from, to);
    },
  });

  it("writes through a temporary file and leaves only the store file", async () => {
    const calls: string[] = [];
    const store = fileStore({ path: file }, { fs: recordingFs(calls) });
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.set(`k${i}`, String(i))));
    // Each change: the whole file written beside the store file, then renamed over it.
    expect(calls).toHaveLength(40);
    for (let i = 0; i < calls.length; i += 2) {
      const tmp = calls[i]?.replace(/^write /, "") ?? "";
      expect(calls[i]).toMatch(/^write /);
      expect(tmp).not.toBe(file);
      expect(path.dirname(tmp)).toBe(path.dirname(file));
      expect(calls[i + 1]).toBe(`rename ${tmp} -> ${file}`);
    }
    expect(await fs.readdir(path.dirname(file))).toEqual(["registry.json"]);
    const reopened = fileStore({ path: file }, { fs });
    expect(await reopened.list("k")).toHaveLength(20);
  });

  it("leaves the old file whole when the rename over it fails", async () => {
    const target = path.join(dir, "crash.json");
    await fileStore({ path: target }, { fs }).set("k", "old");
    const before = await fs.readFile(target, "utf8");
    const calls: string[] = [];
    const crashing = recordingFs(calls, async () => {
      throw new Error("crashed before the rename");
    });
    const store = fileStore({ path: target }, { fs: crashing });
    await expect(store.set("k", "new")).rejects.toBeInstanceOf(StoreError);
    expect(calls).toHaveLength(2);
    expect(await fs.readFile(target, "utf8")).toBe(before);
    expect(await fileStore({ path: target }, { fs }).get("k")).toBe("old");
  });

  it("expires keys after their TTL and refuses a corrupt file instead of overwriting it", async () => {
    const clock = testClock();
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
