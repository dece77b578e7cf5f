/**
 * A tiny RPC over HTTP for the store contract suite: the driver runs inside its real runtime
 * (Deno with Deno KV, workerd with Workers KV) and the suite calls it from vitest.
 */
import type { SetOptions, Store } from "../../coordinator.ts";

/** One store call. */
export interface StoreCall {
  op: "get" | "set" | "delete" | "list" | "cas" | "info";
  key?: string;
  value?: string;
  expected?: string | null;
  prefix?: string;
  ttlSeconds?: number;
}

/** Runs one call against a store (inside the runtime under test). */
export async function dispatchStoreCall(store: Store, call: StoreCall): Promise<Response> {
  const options: SetOptions | undefined = call.ttlSeconds
    ? { ttlSeconds: call.ttlSeconds }
    : undefined;
  try {
    let result: unknown;
    switch (call.op) {
      case "get":
        result = await store.get(call.key ?? "");
        break;
      case "set":
        result = await store.set(call.key ?? "", call.value ?? "", options);
        break;
      case "delete":
        result = await store.delete(call.key ?? "");
        break;
      case "list":
        result = await store.list(call.prefix ?? "");
        break;
      case "cas":
        if (!store.compareAndSet) throw new Error("This store has no compare-and-set");
        result = await store.compareAndSet(
          call.key ?? "",
          call.expected ?? null,
          call.value ?? "",
          options,
        );
        break;
      case "info":
        result = {
          kind: store.kind,
          persistent: store.persistent,
          cas: Boolean(store.compareAndSet),
        };
        break;
    }
    return Response.json({ result: result ?? null });
  } catch (err) {
    return Response.json({ error: (err as Error).message }, { status: 500 });
  }
}

/** A Store whose calls go over `send` to a driver in another runtime. */
export async function remoteStore(send: (call: StoreCall) => Promise<Response>): Promise<Store> {
  const call = async <T>(c: StoreCall): Promise<T> => {
    const res = await send(c);
    const body = (await res.json()) as { result?: T; error?: string };
    if (body.error) throw new Error(body.error);
    return body.result as T;
  };
  const info = await call<{ kind: string; persistent: boolean; cas: boolean }>({ op: "info" });
  const store: Store = {
    kind: info.kind,
    persistent: info.persistent,
    get: (key) => call({ op: "get", key }),
    set: (key, value, options) => call({ op: "set", key, value, ...(options ?? {}) }),
    delete: (key) => call({ op: "delete", key }),
    list: (prefix) => call({ op: "list", prefix }),
  };
  if (info.cas) {
    store.compareAndSet = (key, expected, value, options) =>
      call({ op: "cas", key, expected, value, ...(options ?? {}) });
  }
  return store;
}
