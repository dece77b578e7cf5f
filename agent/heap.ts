/**
 * The agent's young generation, kept small from inside the process (issue 15, docs/BENCHMARKS.md).
 *
 * V8 grows its new space (1 MB a semi-space at start) up to 16 MB a semi-space whenever many
 * young objects survive a scavenge, as they do while an agent starts and connects to its peers,
 * and gives it back only slowly: that growth was most of the spread between agents' RSS (new
 * space 2 MB in most agents of a run, 32 MB in some, which were 25-35 MB larger). An idle agent
 * allocates little, so a young generation that does not grow costs it nothing measurable.
 * `--max-semi-space-size` cannot be set once V8 runs (the heap is sized at start), but the
 * growth factor is read at each growth: 1 keeps the new space at its starting size.
 */
import { setFlagsFromString } from "node:v8";

/** The V8 flag the agent sets on itself. */
export const AGENT_V8_FLAGS = "--semi-space-growth-factor=1";

/**
 * Sets AGENT_V8_FLAGS on plain Node, unless the process was started with its own young-generation
 * flags (in NODE_OPTIONS or Node's arguments). Nothing on Bun or Deno. Returns whether it set them.
 */
export function keepYoungGenerationSmall(
  env: Record<string, string | undefined> = process.env,
  execArgv: readonly string[] = process.execArgv,
): boolean {
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  if (g.Bun !== undefined || g.Deno !== undefined) return false;
  if (/semi[-_]space/.test(`${env.NODE_OPTIONS ?? ""} ${execArgv.join(" ")}`)) return false;
  try {
    setFlagsFromString(AGENT_V8_FLAGS);
    return true;
  } catch {
    return false;
  }
}
