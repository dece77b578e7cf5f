/**
 * The coordinator on Bun with the persistent file store: `bun scripts/start-bun.ts`
 * (`npm run coordinator:bun`). Flags (or env): --port (PORT, 8787), --host (HOST, 127.0.0.1),
 * --data (ROLLCALL_DATA, .data/coordinator.json). `bun coordinator.ts` also serves, but with
 * the in-memory store only.
 */
import fs from "node:fs/promises";
import { parseArgs } from "node:util";
import { configFromEnv, createCoordinator, fileStore } from "../coordinator.ts";

declare const Bun: {
  serve(options: {
    port: number;
    hostname: string;
    fetch(request: Request, server: unknown): Response | Promise<Response>;
  }): { port: number; stop(force?: boolean): void };
};

const { values } = parseArgs({
  options: { port: { type: "string" }, host: { type: "string" }, data: { type: "string" } },
});
const port = Number(values.port ?? process.env.PORT ?? 8787);
const hostname = values.host ?? process.env.HOST ?? "127.0.0.1";
const path = values.data ?? process.env.ROLLCALL_DATA ?? ".data/coordinator.json";

const coordinator = createCoordinator(configFromEnv(process.env), {
  store: fileStore({ path }, { fs }),
});
coordinator.start(); // flushes deferred writes every minute, scaling signals every 5 s
const server = Bun.serve({
  port,
  hostname,
  fetch: (request, srv) => coordinator.fetch(request, srv),
});
console.log(
  `rollcall coordinator (bun) listening on http://${hostname}:${server.port} (file store ${path})`,
);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    coordinator.stop();
    server.stop(true);
    process.exit(0);
  });
}
