/**
 * Retry delays shared by the agent's reporters (leader and direct mode): exponential
 * backoff with jitter, capped, honouring a server's Retry-After up to the cap.
 */

/** Settings of one backoff computation. */
export interface BackoffOptions {
  /** Delay scale of the first retry; the ceiling doubles from here with each failure. */
  minMs: number;
  /** Longest delay, also the cap for `retryAfterMs`. */
  maxMs: number;
  /** A number in [0, 1); injected so tests and simulations are deterministic. */
  random: () => number;
  /** What the server asked for (Retry-After), if anything: the delay is at least this. */
  retryAfterMs?: number | undefined;
}

/**
 * The delay before retry number `failures` (1 for the first): a jittered value between
 * minMs / 2 and min(maxMs, minMs * 2^(failures - 1)), raised to `retryAfterMs`, never above maxMs.
 */
export function backoffMs(failures: number, options: BackoffOptions): number {
  const { minMs, maxMs, random, retryAfterMs } = options;
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.max(0, failures - 1));
  const jittered = minMs / 2 + random() * (ceiling - minMs / 2);
  return Math.min(maxMs, Math.max(jittered, retryAfterMs ?? 0));
}
