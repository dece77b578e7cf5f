/**
 * The watch ring, pure: members sorted by ID form a ring, and each member is watched by the next
 * `k` members after it (wrapping around). A member sends its small heartbeat every interval only
 * to its watchers, so that per-agent traffic does not grow with the cluster; its watchers judge
 * its silence at the suspicion timeout and flood an accusation, which the others take. With
 * `k` >= N - 1 everyone watches everyone (a small cluster: the same as a flood).
 */

/** Default number of watchers per member. */
export const DEFAULT_WATCHERS = 3;

/** The `k` members after `id` in the sorted ring `sorted` (wrapping, never `id` itself). */
export function watchersOf(sorted: readonly string[], id: string, k: number): string[] {
  const n = sorted.length;
  const at = lowerBound(sorted, id);
  const present = sorted[at] === id;
  const others = present ? n - 1 : n;
  const count = Math.min(Math.max(0, Math.floor(k)), others);
  const out: string[] = [];
  const start = present ? at + 1 : at;
  for (let i = 0; out.length < count; i++) out.push(sorted[(start + i) % n] as string);
  return out;
}

/** Whether `watcher` is one of the `k` watchers of `id` in the sorted ring `sorted`. */
export function watches(
  sorted: readonly string[],
  watcher: string,
  id: string,
  k: number,
): boolean {
  return watcher !== id && watchersOf(sorted, id, k).includes(watcher);
}

/** The members `self` watches: the `k` before it in the ring (never `self`). */
export function watchedBy(sorted: readonly string[], self: string, k: number): string[] {
  const n = sorted.length;
  const at = lowerBound(sorted, self);
  const present = sorted[at] === self;
  const others = present ? n - 1 : n;
  const count = Math.min(Math.max(0, Math.floor(k)), others);
  const out: string[] = [];
  for (let i = 1; out.length < count; i++) out.push(sorted[(((at - i) % n) + n) % n] as string);
  return out;
}

/** Index of the first element of `sorted` that is >= `id` (JS string order). */
function lowerBound(sorted: readonly string[], id: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((sorted[mid] as string) < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
