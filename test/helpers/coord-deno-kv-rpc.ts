/**
 * Runs under Deno: opens a Deno KV database at the path given as first argument, serves the
 * store RPC on 127.0.0.1 (a free port) and prints `PORT <n>` once listening.
 */
import { type DenoKvLike, denoKvStore } from "../../coordinator.ts";
import { dispatchStoreCall, type StoreCall } from "./coord-store-rpc.ts";

declare const Deno: {
  args: string[];
  openKv(path?: string): Promise<DenoKvLike & { close(): void }>;
  serve(
    options: { hostname: string; port: number; onListen(addr: { port: number }): void },
    handler: (req: Request) => Promise<Response>,
  ): unknown;
};

const kv = await Deno.openKv(Deno.args[0]);
const store = denoKvStore(kv);
Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => console.log(`PORT ${port}`) },
  async (req) => dispatchStoreCall(store, (await req.json()) as StoreCall),
);
