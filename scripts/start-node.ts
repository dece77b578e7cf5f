/**
 * The coordinator on Node with the persistent file store: `npm run coordinator`.
 * Flags (or env): --port (PORT, 8787), --host (HOST, 127.0.0.1), --data (ROLLCALL_DATA,
 * .data/coordinator.json), --log-format (ROLLCALL_LOG_FORMAT), --access-log
 * (ROLLCALL_ACCESS_LOG), --help, --version. Settings: ROLLCALL_* env vars, see docs/DEPLOY.md.
 * Upstream calls go through a keep-alive client on undici's dispatcher (scripts/undici-fetch.ts),
 * several times faster than Node 20's built-in fetch; ROLLCALL_NODE_FETCH=node-http uses the
 * node:http one (scripts/node-fetch.ts), ROLLCALL_NODE_FETCH=builtin uses fetch.
 */
import { runNodeCoordinator } from "./serve-node.ts";

await runNodeCoordinator(process.argv.slice(2));
