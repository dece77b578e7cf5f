/**
 * The agent as a program: settings, manifest, start, and a clean stop on SIGINT/SIGTERM.
 * `agent/cli.ts` and the `rollcall agent` subcommand both run it.
 */
import { COORDINATOR_VERSION } from "../coordinator.ts";
import { Agent } from "./agent.ts";
import { ConfigError, helpText, loadConfig } from "./config.ts";
import { loadManifest } from "./detect.ts";
import { createLogger, type Logger } from "./log.ts";

/**
 * Runs the agent with `argv`: resolves with 0 after --help or --version, or with undefined once
 * the agent runs (the process then lives until SIGINT/SIGTERM stops it cleanly).
 */
export async function agentMain(argv: string[]): Promise<number | undefined> {
  let agent: Agent;
  let log: Logger;
  try {
    const { config, help, version } = loadConfig(argv);
    if (help) {
      process.stdout.write(helpText());
      return 0;
    }
    if (version) {
      process.stdout.write(`rollcall-agent ${COORDINATOR_VERSION}\n`);
      return 0;
    }
    log = createLogger({
      format: config.logFormat,
      base: config.logFormat === "json" ? { worker: config.name } : {},
    });
    agent = new Agent(config, config.services ? loadManifest(config.services) : [], {
      logger: log,
    });
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
    log.info(`Received ${signal}: leaving the cluster...`);
    const force = setTimeout(() => process.exit(1), 5000);
    force.unref?.();
    await agent.stop();
    log.info("Stopped.");
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  try {
    await agent.start();
  } catch (err) {
    log.error(`rollcall-agent: could not start: ${(err as Error).message}`);
    await agent.stop().catch(() => {});
    process.exit(1);
  }
  return undefined;
}
