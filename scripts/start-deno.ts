/**
 * The coordinator on Deno with Deno KV: `deno task coordinator`
 * (`deno run -A --unstable-kv scripts/start-deno.ts`). Flags (or env): --port (PORT, 8787),
 * --host (HOST, 127.0.0.1), --kv (ROLLCALL_KV_PATH; unset: Deno's default database, which on
 * Deno Deploy is the project's managed KV), --log-format (ROLLCALL_LOG_FORMAT), --access-log
 * (ROLLCALL_ACCESS_LOG), --help, --version. Settings: ROLLCALL_* env vars, see docs/DEPLOY.md.
 */
import {
  CoordinatorConfigError,
  configFromEnv,
  createCoordinator,
  type DenoKvLike,
  denoKvStore,
} from "../coordinator.ts";
import { denoClientAddress } from "./client-address.ts";
import { createNodeFetch } from "./node-fetch.ts";
import { withAccessLog } from "./access-log.ts";
import { startStarter } from "./starter.ts";

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
const { options, log } = startStarter("deno", Deno.args, env, (code) => Deno.exit(code));
const { port, host: hostname, kv: kvPath } = options;
let init: ReturnType<typeof configFromEnv>;
try {
  init = configFromEnv(env);
} catch (err) {
  if (!(err instanceof CoordinatorConfigError)) throw err;
  log.error(`rollcall-coordinator: ${err.message}`);
  Deno.exit(2);
}

const kv = await Deno.openKv(kvPath);
// Deno's node:http client is faster than its fetch for many small upstream calls.
// The client checks what upstream names resolve to against ROLLCALL_UPSTREAM_ALLOW.
const upstream =
  env.ROLLCALL_NODE_FETCH === "builtin"
    ? null
    : createNodeFetch({
        allowAddress: (host, address) => coordinator.allowsUpstream(host, address),
      });
const coordinator = createCoordinator(init, {
  store: denoKvStore(kv),
  clientAddress: denoClientAddress,
  ...(upstream ? { fetch: upstream.fetch } : {}),
  // Details of errors answered generically (with their request id) go to the log.
  log: (line) => log.error(`rollcall-coordinator: ${line}`),
});
coordinator.start(); // flushes deferred writes every minute, scaling signals every 5 s
const handler = options.accessLog
  ? withAccessLog(coordinator.fetch, log, coordinator.settings.aliases)
  : coordinator.fetch;
const server = Deno.serve(
  {
    port,
    hostname,
    onListen: ({ port: bound }) =>
      log.info(
        `rollcall coordinator (deno) listening on http://${hostname}:${bound} (Deno KV ${kvPath ?? "default"})`,
      ),
  },
  (request, info) => handler(request, info as never),
);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    coordinator.stop();
    upstream?.close();
    void server.shutdown().finally(() => Deno.exit(0));
  });
}
