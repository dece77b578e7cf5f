/**
 * What the coordinator's starters (Node, Bun, Deno) share: their flags with `--help` and
 * `--version`, the log format, and the optional access log. A bad flag stops a starter with a
 * message, never a stack trace.
 */
import { parseArgs } from "node:util";
import { createLogger, isLogFormat, type LogFormat, type Logger } from "../agent/log.ts";
import { COORDINATOR_VERSION } from "../coordinator.ts";

/**
 * The Node flags the coordinator runs with (`npm run coordinator` passes them to Node through
 * tsx): a young generation of 32-64 MB instead of V8's default, which starts at 1 MB a
 * semi-space. Under proxy load V8's default kept the Node coordinator in scavenges: with
 * these it served 2.3x the requests per second at half the CPU per request (docs/BENCHMARKS.md,
 * "Young generation"). They cannot be set from inside a running process (V8 sizes its heap at
 * start, and NODE_OPTIONS refuses `--min-semi-space-size`): the starter says so when missing.
 */
export const NODE_FLAGS: readonly string[] = [
  "--max-semi-space-size=64",
  "--min-semi-space-size=32",
];

/** The runtimes with a starter. */
export type StarterRuntime = "node" | "bun" | "deno";

/** A starter's resolved options. */
export interface StarterOptions {
  port: number;
  host: string;
  /** File store path (Node, Bun). */
  data: string;
  /** Deno KV path (Deno); undefined: Deno's default database. */
  kv: string | undefined;
  logFormat: LogFormat;
  accessLog: boolean;
}

const COMMAND: Record<StarterRuntime, string> = {
  node: "npm run coordinator --",
  bun: "bun scripts/start-bun.ts",
  deno: "deno task coordinator",
};

/** The --help text of a runtime's starter. */
function starterHelp(runtime: StarterRuntime): string {
  const store =
    runtime === "deno"
      ? "  --kv PATH          ROLLCALL_KV_PATH  Deno KV file (default: Deno's own database)"
      : "  --data PATH        ROLLCALL_DATA     file store (default .data/coordinator.json)";
  return [
    `Usage: ${COMMAND[runtime]} [options]`,
    "",
    `Starts the rollcall coordinator on ${runtime === "node" ? "Node" : runtime === "bun" ? "Bun" : "Deno"}.`,
    "",
    "Options (flag, environment variable, meaning):",
    "  --port N           PORT              port to listen on (default 8787; 0: any free one)",
    "  --host ADDR        HOST              address to bind (default 127.0.0.1)",
    store,
    "  --log-format F     ROLLCALL_LOG_FORMAT  text (default) or json",
    "  --access-log       ROLLCALL_ACCESS_LOG  one line per request: method, path, service,",
    "                                      worker, status, ms (default off)",
    "  --help                               this text",
    "  --version                            print the version and exit",
    "",
    "Every other setting is a ROLLCALL_* environment variable: see docs/DEPLOY.md.",
    "",
  ].join("\n");
}

/** Why the options could not be used (the starter prints it and exits with 2). */
class StarterError extends Error {
  override name = "StarterError";
}

const truthy = (v: string | undefined) =>
  ["1", "true", "yes", "on"].includes(v?.toLowerCase() ?? "");

/**
 * Reads a starter's flags and environment; `help`/`version` say the starter should print and
 * exit. Throws StarterError naming the bad flag or variable.
 */
function starterOptions(
  runtime: StarterRuntime,
  argv: string[],
  env: Record<string, string | undefined>,
): { options: StarterOptions; help: boolean; version: boolean } {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs<{
      args: string[];
      strict: true;
      allowPositionals: false;
      options: Record<string, { type: "string" | "boolean" }>;
    }>({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        port: { type: "string" },
        host: { type: "string" },
        // The store's flag: a file for Node and Bun, a Deno KV path for Deno.
        ...(runtime === "deno"
          ? { kv: { type: "string" as const } }
          : { data: { type: "string" as const } }),
        "log-format": { type: "string" },
        "access-log": { type: "boolean" },
        help: { type: "boolean" },
        version: { type: "boolean" },
      },
    }));
  } catch (err) {
    throw new StarterError((err as Error).message);
  }
  const portText = (values.port as string | undefined) ?? env.PORT ?? "8787";
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new StarterError(`Invalid ${values.port ? "--port" : "PORT"}: ${portText}`);
  }
  const format = (values["log-format"] as string | undefined) ?? env.ROLLCALL_LOG_FORMAT ?? "text";
  if (!isLogFormat(format)) {
    throw new StarterError(
      `Invalid ${values["log-format"] ? "--log-format" : "ROLLCALL_LOG_FORMAT"}: ${format} (use text or json)`,
    );
  }
  return {
    help: values.help === true,
    version: values.version === true,
    options: {
      port,
      host: (values.host as string | undefined) ?? env.HOST ?? "127.0.0.1",
      data: (values.data as string | undefined) ?? env.ROLLCALL_DATA ?? ".data/coordinator.json",
      kv: (values.kv as string | undefined) ?? env.ROLLCALL_KV_PATH,
      logFormat: format,
      accessLog: values["access-log"] === true || truthy(env.ROLLCALL_ACCESS_LOG),
    },
  };
}

/**
 * Parses a starter's options, or prints --help / --version / the error and exits. Returns the
 * options and a logger in the chosen format.
 */
export function startStarter(
  runtime: StarterRuntime,
  argv: string[],
  env: Record<string, string | undefined>,
  exit: (code: number) => never,
): { options: StarterOptions; log: Logger } {
  try {
    const { options, help, version } = starterOptions(runtime, argv, env);
    if (help) {
      console.log(starterHelp(runtime));
      return exit(0);
    }
    if (version) {
      console.log(`rollcall-coordinator ${COORDINATOR_VERSION}`);
      return exit(0);
    }
    return { options, log: createLogger({ format: options.logFormat }) };
  } catch (err) {
    if (!(err instanceof StarterError)) throw err;
    console.error(`rollcall-coordinator: ${err.message}`);
    console.error("Run with --help for the options.");
    return exit(2);
  }
}
