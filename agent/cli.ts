/**
 * The agent's command line: `npx tsx agent/cli.ts --help` (Node) or `deno task agent`; the
 * read-only commands `members`, `services` and `status` are in commands.ts.
 * Bad configuration stops it at once (exit 2) with a message naming the setting.
 */
import { fileURLToPath } from "node:url";
import type { Agent } from "./agent.ts";
import { commandsHelp, isCommand, runCommand } from "./commands.ts";
import { ConfigError, helpText, loadConfig } from "./config.ts";
import { loadManifest } from "./detect.ts";

const DEFAULT_MANIFEST = fileURLToPath(new URL("./services.example.json", import.meta.url));

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  if (isCommand(command)) {
    const out = (text: string) => process.stdout.write(text);
    const err = (text: string) => process.stderr.write(text);
    process.exit(await runCommand(command, rest, { env: process.env, out, err }));
  }
  let agent: Agent;
  try {
    const { config, help } = loadConfig(process.argv.slice(2));
    if (help) {
      process.stdout.write(`${helpText()}\n${commandsHelp()}`);
      return;
    }
    // Loaded only to run the agent (libp2p and all): the commands above start fast.
    const { Agent } = await import("./agent.ts");
    agent = new Agent(config, loadManifest(config.services ?? DEFAULT_MANIFEST));
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`rollcall-agent: ${err.message}`);
      console.error("Run with --help for the settings.");
      process.exit(2);
    }
    throw err;
  }
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`Received ${signal}: leaving the cluster...`);
    const force = setTimeout(() => process.exit(1), 5000);
    force.unref?.();
    await agent.stop();
    console.log("Stopped.");
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  try {
    await agent.start();
  } catch (err) {
    console.error(`rollcall-agent: could not start: ${(err as Error).message}`);
    await agent.stop().catch(() => {});
    process.exit(1);
  }
}

await main();
