/**
 * The agent's command line: `npx tsx agent/cli.ts --help` (Node), `deno task agent`, or
 * `rollcall agent` (the bundled CLI); the read-only commands `members`, `services` and `status`
 * are in commands.ts. Bad configuration stops it at once (exit 2) with a message naming the
 * setting.
 */
import { isCommand, runCommand } from "./commands.ts";

const argv = process.argv.slice(2);
const [command, ...rest] = argv;
if (isCommand(command)) {
  const io = {
    env: process.env,
    out: (text: string) => process.stdout.write(text),
    err: (text: string) => process.stderr.write(text),
  };
  process.exitCode = await runCommand(command, rest, io);
} else {
  // Before libp2p loads and the agent starts: its V8 memory settings (agent/heap.ts).
  (await import("./heap.ts")).setAgentV8Flags();
  // Loaded only to run the agent (libp2p and all): the commands above start fast.
  const code = await (await import("./main.ts")).agentMain(argv);
  if (code !== undefined) process.exitCode = code;
}
