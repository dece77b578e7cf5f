/**
 * The coordinator on Bun with the persistent file store: `bun scripts/start-bun.ts`
 * (`npm run coordinator:bun`). Flags (or env): --port (PORT, 8787), --host (HOST, 127.0.0.1),
 * --data (ROLLCALL_DATA, .data/coordinator.json), --log-format (ROLLCALL_LOG_FORMAT),
 * --access-log (ROLLCALL_ACCESS_LOG), --help, --version. `bun coordinator.ts` also serves, but
 * with the in-memory store only.
 */
import fs from "node:fs/promises";
import {
  bunClientAddress,
  CoordinatorConfigError,
  configFromEnv,
  createCoordinator,
  fileStore,
} from "../coordinator.ts";
import { withAccessLog } from "./access-log.ts";
import { startStarter } from "./starter.ts";

declare const Bun: {
  serve(options: {
    port: number;
    hostname: string;
    fetch(request: Request, server: unknown): Response | Promise<Response>;
  }): { port: number; stop(force?: boolean): void };
};

const { options, log } = startStarter("bun", process.argv.slice(2), process.env, (code) =>
  process.exit(code),
);
const { port, host: hostname, data: path } = options;
let init: ReturnType<typeof configFromEnv>;
try {
  init = configFromEnv(process.env);
} catch (err) {
  if (!(err instanceof CoordinatorConfigError)) throw err;
  log.error(`rollcall-coordinator: ${err.message}`);
  process.exit(2);
}
const coordinator = createCoordinator(init, {
  store: fileStore({ path }, { fs }),
  clientAddress: bunClientAddress,
  // Details of errors answered generically (with their request id) go to the log.
  log: (line) => log.error(`rollcall-coordinator: ${line}`),
});
coordinator.start(); // flushes deferred writes every minute, scaling signals every 5 s
const handler = options.accessLog
  ? withAccessLog(coordinator.fetch, log, coordinator.settings.aliases)
  : coordinator.fetch;
const server = Bun.serve({
  port,
  hostname,
  fetch: (request, srv) => handler(request, srv),
});
log.info(
  `rollcall coordinator (bun) listening on http://${hostname}:${server.port} (file store ${path})`,
);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    coordinator.stop();
    server.stop(true);
    process.exit(0);
  });
}
