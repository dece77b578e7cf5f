/**
 * The agent's command line: `npx tsx agent/cli.ts --help` (Node), `deno task agent`, or
 * `rollcall agent` (the bundled CLI). Bad configuration stops it at once (exit 2) with a
 * message naming the setting.
 */
import { agentMain } from "./main.ts";

process.exitCode = await agentMain(process.argv.slice(2));
