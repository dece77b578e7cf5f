/**
 * `rollcall keygen`: a libp2p private-network key (swarm.key) for `--psk`. Every agent of a
 * cluster gets the same file; peers without it cannot even complete a connection.
 */
import { writeFileSync } from "node:fs";

/** The swarm.key text of 32 random bytes, as @libp2p/pnet reads it. */
function swarmKey(
  random: (bytes: Uint8Array) => Uint8Array = (b) => crypto.getRandomValues(b),
): string {
  const hex = [...random(new Uint8Array(32))].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `/key/swarm/psk/1.0.0/\n/base16/\n${hex}\n`;
}

/**
 * Writes a new swarm key to `path`, readable by its owner only (mode 0600). Refuses to replace
 * an existing file unless `force`: a new key would cut this agent off from its cluster.
 */
export function writeSwarmKey(path: string, options: { force?: boolean } = {}): void {
  writeFileSync(path, swarmKey(), { mode: 0o600, flag: options.force ? "w" : "wx" });
}
