/**
 * The `rollcall` command (package.json `bin`, bundled into dist/rollcall.mjs and the standalone
 * binary): `rollcall agent ...`, `rollcall coordinator ...`, `rollcall keygen [FILE]`,
 * `rollcall --version`.
 */
import { chmodSync } from "node:fs";
import { parseArgs } from "node:util";
import { writeSwarmKey } from "../agent/keygen.ts";

/** The version, as coordinator.ts says it (a test keeps them equal); the CLI loads that lazily. */
const VERSION = "0.1.0";

const HELP = `Usage: rollcall <command> [options]

Commands:
  agent [options]        run a worker agent (rollcall agent --help lists its settings)
  coordinator [options]  run the coordinator on Node with its file store
                         (rollcall coordinator --help)
  keygen [FILE]          write a new swarm key for --psk to FILE (default swarm.key),
                         mode 0600; --force replaces an existing file
  members                every member the local agent sees (options: rollcall agent --help)
  services               the coordinator's services with healthy/total providers
  status                 this agent: ID, cluster, leader, coordinator, last report
  drain [--off]          maintenance: no new routed requests; waits until safe to stop

  --version              print the version
  --help                 this text

Docs: docs/AGENTS.md (agents on real machines), docs/DEPLOY.md (the coordinator).
`;

function keygen(argv: string[]): number {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { force: { type: "boolean" }, help: { type: "boolean" } },
    });
  } catch (err) {
    console.error(`rollcall keygen: ${(err as Error).message}`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write("Usage: rollcall keygen [FILE] [--force]\n");
    return 0;
  }
  const file = parsed.positionals[0] ?? "swarm.key";
  try {
    writeSwarmKey(file, { force: parsed.values.force === true });
    chmodSync(file, 0o600); // an existing file replaced with --force keeps its old mode otherwise
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    console.error(
      `rollcall keygen: cannot write ${file}: ${e.code === "EEXIST" ? "it exists (use --force to replace it; every agent needs the same key)" : e.message}`,
    );
    return 1;
  }
  console.log(`Wrote a new swarm key to ${file} (mode 0600). Give every agent of the cluster`);
  console.log(`the same file: --psk ${file} (or ROLLCALL_PSK).`);
  return 0;
}

async function main(argv: string[]): Promise<number | undefined> {
  const [command, ...rest] = argv;
  switch (command) {
    // Loaded on demand: --version, --help and keygen need neither libp2p nor the coordinator.
    case "agent":
      // Before libp2p loads: the agent's V8 memory settings (agent/heap.ts).
      (await import("../agent/heap.ts")).setAgentV8Flags();
      return (await import("../agent/main.ts")).agentMain(rest);
    case "coordinator":
      await (await import("./serve-node.ts")).runNodeCoordinator(rest);
      return undefined;
    case "keygen":
      return keygen(rest);
    case "members":
    case "services":
    case "status":
    case "drain": {
      const { runCommand } = await import("../agent/commands.ts");
      const io = {
        env: process.env,
        out: (text: string) => process.stdout.write(text),
        err: (text: string) => process.stderr.write(text),
      };
      return runCommand(command, rest, io);
    }
    case "--version":
    case "-v":
    case "version":
      console.log(`rollcall ${VERSION}`);
      return 0;
    case undefined:
    case "--help":
    case "-h":
    case "help":
      process.stdout.write(HELP);
      return 0;
    default:
      console.error(`rollcall: unknown command "${command}"\n`);
      process.stderr.write(HELP);
      return 2;
  }
}

const code = await main(process.argv.slice(2));
if (code !== undefined) process.exitCode = code;
