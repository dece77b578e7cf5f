/**
 * The Node coordinator as a function, for `scripts/start-node.ts` (`npm run coordinator`) and
 * the `rollcall coordinator` subcommand: options, file store, keep-alive upstream client (undici),
 * clean stop on SIGINT/SIGTERM.
 */
import fs from "node:fs/promises";
import { serve } from "@hono/node-server";
import {
  configFromEnv,
  CoordinatorConfigError,
  createCoordinator,
  fileStore,
} from "../coordinator.ts";
import { nodeClientAddress, nodeRawHeaders } from "./client-address.ts";
import { drainEarlyAnswers } from "./node-drain.ts";
import { createNodeFetch, nodeClientGone } from "./node-fetch.ts";
import { createUndiciFetch } from "./undici-fetch.ts";
import { withAccessLog } from "./access-log.ts";
import { NODE_FLAGS, startStarter } from "./starter.ts";

/** The flags of NODE_FLAGS that Node was not started with (by name; none under Bun). */
export function missingNodeFlags(execArgv: readonly string[], onBun: boolean): string[] {
  if (onBun) return [];
  return NODE_FLAGS.filter((flag) => {
    const name = flag.split("=")[0] as string;
    return !execArgv.some((arg) => arg === name || arg.startsWith(`${name}=`));
  });
}

/** Starts the coordinator on Node with `argv` (see `--help`); it runs until SIGINT/SIGTERM. */
export async function runNodeCoordinator(argv: string[]): Promise<void> {
  const { options, log } = startStarter("node", argv, process.env, (code) => process.exit(code));
  const { port, host: hostname, data: path } = options;
  let init: ReturnType<typeof configFromEnv>;
  try {
    init = configFromEnv(process.env);
  } catch (err) {
    if (!(err instanceof CoordinatorConfigError)) throw err;
    log.error(`rollcall-coordinator: ${err.message}`);
    process.exit(2);
  }
  // The client checks what upstream names resolve to against ROLLCALL_UPSTREAM_ALLOW.
  const client = process.env.ROLLCALL_NODE_FETCH;
  const allowAddress = (host: string, address: string) => coordinator.allowsUpstream(host, address);
  // undici's dispatcher by default: less CPU per request than the node:http client in the
  // proxy benchmark (docs/BENCHMARKS.md, run 6); ROLLCALL_NODE_FETCH=node-http or builtin.
  // Under Bun (the standalone binary) "undici" is Bun's own shim, without a working
  // dispatcher: the node:http client there.
  const onBun = "Bun" in globalThis;
  const upstream =
    client === "builtin"
      ? null
      : client === "node-http" || onBun
        ? createNodeFetch({ allowAddress })
        : createUndiciFetch({ allowAddress });
  const coordinator = createCoordinator(init, {
    store: fileStore({ path }, { fs }),
    ...(upstream ? { fetch: upstream.fetch } : {}),
    // Whichever upstream client: it asks the server's response, where the default reads
    // request.signal, which makes @hono/node-server build a real Request.
    clientGone: nodeClientGone,
    clientAddress: nodeClientAddress,
    // The proxy reads Node's own header list: no Headers built per request.
    rawHeaders: nodeRawHeaders,
    // Details of errors answered generically (with their request id) go to the log.
    log: (line) => log.error(`rollcall-coordinator: ${line}`),
  });
  coordinator.start(); // flushes deferred writes every minute, scaling signals every 5 s
  const handler = options.accessLog
    ? withAccessLog(coordinator.fetch, log, coordinator.settings.aliases)
    : coordinator.fetch;
  // An early answer (413, 401, 503) drains what is left of the body: the connection stays usable.
  const server = serve({ fetch: drainEarlyAnswers(handler), port, hostname }, (info) => {
    log.info(
      `rollcall coordinator (node) listening on http://${hostname}:${info.port} (file store ${path})`,
    );
    const missing = missingNodeFlags(process.execArgv, onBun);
    if (missing.length > 0) {
      log.info(
        `rollcall coordinator (node): started without ${missing.join(" ")}; the proxy serves about half as many requests per second on V8's default young generation (docs/BENCHMARKS.md)`,
      );
    }
  });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      coordinator.stop();
      upstream?.close();
      server.close(() => process.exit(0));
      setTimeout(() => process.exit(0), 2000).unref();
    });
  }
}
