/**
 * The agent CLI's read-only commands, which ask a running agent or the coordinator:
 * `members` (every member the local agent sees, like `serf members`), `services` (the
 * coordinator's services with healthy/total providers) and `status` (this agent: ID, cluster,
 * leader and term, coordinator, last report, writes today); and `drain` (maintenance mode, like
 * `consul maint`: the agent takes no new routed requests, and the command waits until it is
 * safe to stop; `drain --off` ends it). Tables for people, `--json` for
 * scripts; exit 1 when what they ask cannot be reached or refuses, 2 on a bad option. Tokens
 * go in the Authorization header only, never in a URL.
 */
import { parseArgs } from "node:util";
import type { BudgetAnswer } from "../coordinator.ts";
import type { DrainStatus } from "./drain.ts";
import type { z } from "zod";
import {
  type AgentClusterView,
  memberRows,
  membersTable,
  servicesTable,
  statusOf,
  statusText,
} from "./command-views.ts";

/** The commands, by name. */
const COMMANDS = ["members", "services", "status", "drain"] as const;

/** A command's name. */
export type CommandName = (typeof COMMANDS)[number];

/** Whether a word names a command. */
export function isCommand(word: string | undefined): word is CommandName {
  return (COMMANDS as readonly (string | undefined)[]).includes(word);
}

/** Flag, environment variable, meaning: the commands' options (as in the agent's --help). */
const OPTIONS = [
  ["agent", "ROLLCALL_AGENT_URL", "the agent's gateway (default: ROLLCALL_LISTEN, else :8700)"],
  ["agent-token", "ROLLCALL_AGENT_TOKEN", "token of its live view (never the cluster token)"],
  [
    "coordinator",
    "ROLLCALL_COORDINATOR",
    "coordinator URL (default: the one the agent reports to)",
  ],
  ["admin-token", "ROLLCALL_ADMIN_TOKEN", "admin token for the coordinator (prefer the variable)"],
  ["timeout", "", "seconds to wait for an answer (default 5)"],
  ["off", "", "drain: end the drain (take routed requests again)"],
  ["wait", "", "drain: seconds to wait until it is safe to stop (default 120; 0: do not wait)"],
  ["json", "", "print JSON for scripts instead of a table"],
] as const;

/** The commands' part of `--help`. */
export function commandsHelp(): string {
  return [
    "Commands (read a running agent or the coordinator; exit 1 when unreachable):",
    "  rollcall-agent members    every member this agent sees: address, status, services, leader",
    "  rollcall-agent services   the coordinator's services with healthy/total providers",
    "  rollcall-agent status     this agent: ID, cluster, leader and term, coordinator,",
    "                            last report, writes today",
    "  rollcall-agent drain      maintenance: no new routed requests, in-flight ones finish;",
    "                            waits until it is safe to stop (drain --off: back in service)",
    "",
    "Command options:",
    ...OPTIONS.map(([flag, env, help]) => `  --${flag.padEnd(15)} ${env.padEnd(24)} ${help}`),
    "",
  ].join("\n");
}

/** What a command needs from its surroundings (tests pass their own). */
export interface CommandIo {
  env: Record<string, string | undefined>;
  out(text: string): void;
  err(text: string): void;
  fetch?: typeof fetch;
  now?: () => number;
}

/** A command that cannot go on; `code` is its exit code. */
class CommandError extends Error {
  constructor(
    message: string,
    readonly code: 1 | 2,
  ) {
    super(message);
    this.name = "CommandError";
  }
}

interface Context {
  agent: string;
  agentToken: string | undefined;
  coordinator: string | undefined;
  adminToken: string | undefined;
  timeoutMs: number;
  json: boolean;
  off: boolean;
  waitMs: number;
  io: CommandIo;
}

function httpUrl(value: string, what: string): string {
  try {
    const u = new URL(value);
    if ((u.protocol === "http:" || u.protocol === "https:") && u.username === "" && !u.search) {
      return u.href.replace(/\/+$/, "");
    }
  } catch {
    // falls through to the error
  }
  throw new CommandError(`Invalid ${what}: use an http(s) URL without credentials or query`, 2);
}

/** The agent's URL when none is given: ROLLCALL_LISTEN (0.0.0.0 asked on 127.0.0.1). */
function defaultAgent(env: Record<string, string | undefined>): string {
  const listen = env.ROLLCALL_LISTEN?.trim();
  const m = listen ? /^(.*):(\d+)$/.exec(listen) : null;
  if (!m) return "http://127.0.0.1:8700";
  const host = m[1] === "0.0.0.0" || m[1] === "" || m[1] === "[::]" ? "127.0.0.1" : m[1];
  return `http://${host}:${m[2]}`;
}

function parse(argv: string[], io: CommandIo): Context {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        agent: { type: "string" },
        "agent-token": { type: "string" },
        coordinator: { type: "string" },
        "admin-token": { type: "string" },
        timeout: { type: "string" },
        json: { type: "boolean" },
        off: { type: "boolean" },
        wait: { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new CommandError((err as Error).message, 2);
  }
  const env = io.env;
  const str = (v: unknown) => (typeof v === "string" && v.trim() !== "" ? v.trim() : undefined);
  const agent = str(values.agent) ?? str(env.ROLLCALL_AGENT_URL) ?? defaultAgent(env);
  const coordinator = str(values.coordinator) ?? str(env.ROLLCALL_COORDINATOR);
  const timeout = Number(str(values.timeout) ?? "5");
  if (!(timeout > 0 && timeout <= 300)) {
    throw new CommandError("Invalid --timeout: use seconds from 0 to 300", 2);
  }
  const wait = Number(str(values.wait) ?? "120");
  if (!(wait >= 0 && wait <= 3600)) {
    throw new CommandError("Invalid --wait: use seconds from 0 to 3600", 2);
  }
  return {
    agent: httpUrl(agent, "--agent"),
    // Only the agent-view token: an agent never takes the cluster token for its view (they must
    // differ), so sending that would only show it to whatever answers at --agent.
    agentToken: str(values["agent-token"]) ?? str(env.ROLLCALL_AGENT_TOKEN),
    coordinator: coordinator === undefined ? undefined : httpUrl(coordinator, "--coordinator"),
    adminToken: str(values["admin-token"]) ?? str(env.ROLLCALL_ADMIN_TOKEN),
    timeoutMs: timeout * 1000,
    json: values.json === true,
    off: values.off === true,
    waitMs: wait * 1000,
    io,
  };
}

/** The setting that holds the token each side checks, named when it refuses. */
const TOKEN_SETTING = {
  "The agent": "--agent-token or ROLLCALL_AGENT_TOKEN",
  "The coordinator": "--admin-token or ROLLCALL_ADMIN_TOKEN",
} as const;

/**
 * GETs (or `method`s) JSON with a bearer token, parsed with `schema` when one is given (the
 * coordinator's answers); every failure is a CommandError saying what failed.
 */
async function getJson<T>(
  ctx: Context,
  url: string,
  token: string | undefined,
  what: keyof typeof TOKEN_SETTING,
  method = "GET",
  schema?: z.ZodType<T>,
): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  let res: Response;
  try {
    res = await (ctx.io.fetch ?? fetch)(url, {
      method,
      headers,
      signal: AbortSignal.timeout(ctx.timeoutMs),
    });
  } catch (err) {
    const name = (err as Error).name;
    const why =
      name === "TimeoutError" ? `no answer within ${ctx.timeoutMs / 1000} s` : "unreachable";
    throw new CommandError(`Could not reach ${what} at ${new URL(url).origin}: ${why}`, 1);
  }
  if (res.status === 401 || res.status === 403) {
    await res.body?.cancel();
    throw new CommandError(
      `${what} at ${new URL(url).origin} refused the request (${res.status}): check the token (${TOKEN_SETTING[what]})`,
      1,
    );
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new CommandError(`${what} at ${new URL(url).origin} answered ${res.status}`, 1);
  }
  let data: unknown;
  try {
    data = await res.json();
  } catch {
    throw new CommandError(
      `${what} at ${new URL(url).origin} answered something that is not JSON`,
      1,
    );
  }
  if (schema === undefined) return data as T;
  const parsed = schema.safeParse(data);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue?.path.map(String).join(".") || "the body";
  throw new CommandError(
    `${what} at ${new URL(url).origin} answered something unexpected (${where}: ${issue?.message ?? "refused"})`,
    1,
  );
}

/** The coordinator's answer schemas, loaded only by the commands that ask the coordinator. */
const answers = () => import("./answers.ts");

const agentView = (ctx: Context) =>
  getJson<AgentClusterView>(ctx, `${ctx.agent}/_agent/cluster`, ctx.agentToken, "The agent");

const print = (ctx: Context, data: unknown, text: string) =>
  ctx.io.out(ctx.json ? `${JSON.stringify(data, null, 2)}\n` : text);

async function members(ctx: Context): Promise<void> {
  const view = await agentView(ctx);
  const rows = memberRows(view);
  print(
    ctx,
    { self: view.self, cluster: view.cluster, leader: view.leader, members: rows },
    membersTable(rows),
  );
}

async function services(ctx: Context): Promise<void> {
  const coordinator = ctx.coordinator ?? (await agentView(ctx)).coordinator ?? undefined;
  if (!coordinator) {
    throw new CommandError(
      "No coordinator known: pass --coordinator or set ROLLCALL_COORDINATOR",
      2,
    );
  }
  const base = httpUrl(coordinator, "coordinator URL");
  const body = await getJson(
    ctx,
    `${base}/api/admin/services`,
    ctx.adminToken,
    "The coordinator",
    "GET",
    (await answers()).ServicesAnswerSchema,
  );
  print(ctx, body, servicesTable(body));
}

async function status(ctx: Context): Promise<void> {
  const view = await agentView(ctx);
  const coordinator = ctx.coordinator ?? view.coordinator ?? undefined;
  let budget: BudgetAnswer | null = null;
  if (ctx.adminToken && coordinator) {
    const base = httpUrl(coordinator, "coordinator URL");
    const schema = (await answers()).BudgetAnswerSchema;
    const url = `${base}/api/admin/budget`;
    budget = await getJson(ctx, url, ctx.adminToken, "The coordinator", "GET", schema);
  }
  const s = statusOf(
    ctx.agent,
    { ...view, coordinator: coordinator ?? null },
    budget,
    (ctx.io.now ?? Date.now)(),
  );
  print(ctx, s, statusText(s));
}

async function drain(ctx: Context): Promise<void> {
  const url = `${ctx.agent}/_agent/drain`;
  const call = (method: string) =>
    getJson<DrainStatus>(ctx, url, ctx.agentToken, "The agent", method);
  if (ctx.off) {
    const s = await call("DELETE");
    return print(ctx, s, `Drain ended: ${ctx.agent} takes routed requests again\n`);
  }
  let s = await call("POST");
  if (!ctx.json) {
    ctx.io.out(
      `Draining ${ctx.agent}: the coordinator stops routing to it; ${s.in_flight} request(s) in flight\n`,
    );
  }
  const now = ctx.io.now ?? Date.now;
  const end = now() + ctx.waitMs;
  while (!s.safe_to_stop && ctx.waitMs > 0) {
    if (now() >= end) {
      throw new CommandError(
        `Not safe to stop yet after ${ctx.waitMs / 1000} s: ${s.in_flight} request(s) in flight (still draining; rerun to wait more)`,
        1,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
    s = await call("GET");
  }
  const text = s.safe_to_stop
    ? `Safe to stop: nothing in flight and no new request for ${s.quiet_ms / 1000} s\n`
    : "Draining (not waiting: --wait 0)\n";
  print(ctx, s, text);
}

/** Runs a command; resolves with its exit code (0, 1 unreachable or refused, 2 bad usage). */
export async function runCommand(
  name: CommandName,
  argv: string[],
  io: CommandIo,
): Promise<number> {
  try {
    const ctx = parse(argv, io);
    await { members, services, status, drain }[name](ctx);
    return 0;
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    io.err(`rollcall-agent ${name}: ${err.message}\n`);
    if (err.code === 2) io.err("Run with --help for the options.\n");
    return err.code;
  }
}
