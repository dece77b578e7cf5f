/**
 * The coordinator on Deno with Deno KV: `deno task coordinator`
 * (`deno run -A --unstable-kv scripts/start-deno.ts`). Flags (or env): --port (PORT, 8787),
 * --host (HOST, 127.0.0.1), --kv (ROLLCALL_KV_PATH; unset: Deno's default database, which on
 * Deno Deploy is the project's managed KV). Settings: ROLLCALL_* env vars, see docs/DEPLOY.md.
 */
import { parseArgs } from "node:util";
import { configFromEnv, createCoordinator, type DenoKvLike, denoKvStore } from "../coordinator.ts";
import { createNodeFetch } from "./node-fetch.ts";

declare const Deno: {
  args: string[];
  env: { toObject(): Record<string, string> };
  openKv(path?: string): Promise<DenoKvLike>;
  serve(
    options: { port: number; hostname: string; onListen(addr: { port: number }): void },
    handler: (request: Request, info: unknown) => Response | Promise<Response>,
  ): { shutdown(): Promise<void> };
  addSignalListener(signal: "SIGINT" | "SIGTERM", fn: () => void): void;
  exit(code: number): never;
};

const env = Deno.env.toObject();
const { values } = parseArgs({
  args: Deno.args,
  options: { port: { type: "string" }, host: { type: "string" }, kv: { type: "string" } },
});
const port = Number(values.port ?? env.PORT ?? 8787);
const hostname = values.host ?? env.HOST ?? "127.0.0.1";
const kvPath = values.kv ?? env.ROLLCALL_KV_PATH;

const kv = await Deno.openKv(kvPath);
// Deno's node:http client is faster than its fetch for many small upstream calls.
// The client checks what upstream names resolve to against ROLLCALL_UPSTREAM_ALLOW.
const upstream =
  env.ROLLCALL_NODE_FETCH === "builtin"
    ? null
    : createNodeFetch({
        allowAddress: (host, address) => coordinator.allowsUpstream(host, address),
      });
const coordinator = createCoordinator(configFromEnv(env), {
  store: denoKvStore(kv),
  ...(upstream ? { fetch: upstream.fetch } : {}),
});
coordinator.start(); // flushes deferred writes every minute, scaling signals every 5 s
const server = Deno.serve(
  {
    port,
    hostname,
    onListen: ({ port: bound }) =>
      console.log(
        `rollcall coordinator (deno) listening on http://${hostname}:${bound} (Deno KV ${kvPath ?? "default"})`,
      ),
  },
  (request, info) => coordinator.fetch(request, info),
);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    coordinator.stop();
    upstream?.close();
    void server.shutdown().finally(() => Deno.exit(0));
  });
}
