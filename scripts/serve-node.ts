/**
 * The Node coordinator as a function, for `scripts/start-node.ts` (`npm run coordinator`) and
 * the `rollcall coordinator` subcommand: options, file store, keep-alive upstream client,
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
import { nodeClientAddress } from "./client-address.ts";
import { drainEarlyAnswers } from "./node-drain.ts";
import { createNodeFetch, nodeClientGone } from "./node-fetch.ts";
import { withAccessLog } from "./access-log.ts";
import { startStarter } from "./starter.ts";

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
  const upstream =
    process.env.ROLLCALL_NODE_FETCH === "builtin"
      ? null
      : createNodeFetch({
          allowAddress: (host, address) => coordinator.allowsUpstream(host, address),
        });
  const coordinator = createCoordinator(init, {
    store: fileStore({ path }, { fs }),
    ...(upstream ? { fetch: upstream.fetch } : {}),
    // Whichever upstream client: it asks the server's response, where the default reads
    // request.signal, which makes @hono/node-server build a real Request.
    clientGone: nodeClientGone,
    clientAddress: nodeClientAddress,
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
