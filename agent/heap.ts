/**
 * The agent's V8 settings for a small, steady RSS, set from inside the process on plain Node
 * (issue 15, docs/BENCHMARKS.md).
 *
 * - The young generation stays at its starting size. V8 grows its new space (1 MB a semi-space
 *   at start) up to 16 MB a semi-space whenever many young objects survive a scavenge, as they do
 *   while an agent starts and connects to its peers, and gives it back only slowly: that growth
 *   was the spread between agents' RSS before. `--max-semi-space-size` cannot be set once V8
 *   runs, but the growth factor is read at each growth: 1 keeps the new space at its size.
 * - WebAssembly stays in its baseline tier (Liftoff). Node's fetch (undici) parses HTTP with
 *   llhttp compiled to WebAssembly; the first answer to a fetch (the first service probe or
 *   report) made V8 recompile it with TurboFan on its background threads, which malloc'ed
 *   30-44 MB for a second. glibc kept that freed memory in those threads' arenas in some
 *   agents and not others: 0-30 MB more RSS, the outliers. The agent's fetches are a few per
 *   10 s (the gateway proxies with node:http, whose llhttp is native), so the baseline tier
 *   costs nothing measurable there.
 */
import { setFlagsFromString } from "node:v8";

/** A V8 flag the agent sets on itself, and what in Node's own flags makes it keep its hands off. */
const AGENT_V8_FLAGS: readonly { flag: string; unless: RegExp }[] = [
  { flag: "--semi-space-growth-factor=1", unless: /semi[-_]space/ },
  { flag: "--liftoff-only", unless: /liftoff|wasm[-_]tier/ },
];

/**
 * Sets the agent's V8 flags on plain Node, each unless the process was started with its own
 * flags of that kind (in NODE_OPTIONS or Node's arguments). Nothing on Bun or Deno. Returns the
 * flags it set.
 */
export function setAgentV8Flags(
  env: Record<string, string | undefined> = process.env,
  execArgv: readonly string[] = process.execArgv,
): string[] {
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  if (g.Bun !== undefined || g.Deno !== undefined) return [];
  const given = `${env.NODE_OPTIONS ?? ""} ${execArgv.join(" ")}`;
  const set: string[] = [];
  for (const { flag, unless } of AGENT_V8_FLAGS) {
    if (unless.test(given)) continue;
    try {
      setFlagsFromString(flag);
      set.push(flag);
    } catch {} // not a flag of this V8: nothing to set
  }
  return set;
}
