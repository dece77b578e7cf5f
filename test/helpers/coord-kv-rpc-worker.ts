/** A Worker (run by workerd through Miniflare) serving the store RPC over its `KV` binding. */
import { cloudflareKvStore, type KvNamespaceLike } from "../../coordinator.ts";
import { dispatchStoreCall, type StoreCall } from "./coord-store-rpc.ts";

export default {
  async fetch(request: Request, env: { KV: KvNamespaceLike }): Promise<Response> {
    return dispatchStoreCall(cloudflareKvStore(env.KV), (await request.json()) as StoreCall);
  },
};
