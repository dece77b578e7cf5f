/**
 * The coordinator on Node with the persistent file store: `npm run coordinator`.
 * Flags (or env): --port (PORT, 8787), --host (HOST, 127.0.0.1), --data (ROLLCALL_DATA,
 * .data/coordinator.json). Settings: ROLLCALL_* env vars, see docs/DEPLOY.md.
 * Upstream calls go through a keep-alive node:http client (scripts/node-fetch.ts), several
 * times faster than Node 20's built-in fetch; ROLLCALL_NODE_FETCH=builtin uses fetch instead.
 */
import fs from "node:fs/promises";
import { parseArgs } from "node:util";
import { serve } from "@hono/node-server";
import { configFromEnv, createCoordinator, fileStore } from "../coordinator.ts";
import { createNodeFetch, nodeClientGone } from "./node-fetch.ts";

const { values } = parseArgs({
  options: { port: { type: "string" }, host: { type: "string" }, data: { type: "string" } },
});
const port = Number(values.port ?? process.env.PORT ?? 8787);
const hostname = values.host ?? process.env.HOST ?? "127.0.0.1";
const path = values.data ?? process.env.ROLLCALL_DATA ?? ".data/coordinator.json";

// The client checks what upstream names resolve to against ROLLCALL_UPSTREAM_ALLOW.
const upstream =
  process.env.ROLLCALL_NODE_FETCH === "builtin"
    ? null
    : createNodeFetch({
        allowAddress: (host, address) => coordinator.allowsUpstream(host, address),
      });
const coordinator = createCoordinator(configFromEnv(process.env), {
  store: fileStore({ path }, { fs }),
  ...(upstream ? { fetch: upstream.fetch } : {}),
  // Whichever upstream client: it asks the server's response, where the default reads
  // request.signal, which makes @hono/node-server build a real Request.
  clientGone: nodeClientGone,
});
coordinator.start(); // flushes deferred writes every minute, scaling signals every 5 s
const server = serve({ fetch: coordinator.fetch, port, hostname }, (info) => {
  console.log(
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
