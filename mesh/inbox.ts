/**
 * The receiving end of the heartbeat topic, run as gossipsub's topic validator (so before any
 * relaying): size limit, decode, signature by the claimed id (for this cluster), then the
 * allow-list, staleness and membership. Decides, per heartbeat, whether our gossipsub mesh
 * should relay it. Counts everything.
 *
 * Only the sender's own faults (a message that does not decode or verify) reject a heartbeat,
 * which makes gossipsub score its sender down. A fault of ours while applying a good heartbeat
 * is logged and counted (`stats.faults`) and the heartbeat ignored: an honest peer is never
 * penalised for our bug.
 */
import { TopicValidatorResult } from "@libp2p/gossipsub";
import type { MeshStats } from "./api.ts";
import type { MemberChange, Membership } from "./membership.ts";
import { type Heartbeat, decodeHeartbeat, openHeartbeat } from "./protocol.ts";
import { HeartbeatVerifier } from "./signing.ts";

/** Collaborators of the inbox. */
export interface InboxComponents {
  membership: Membership;
  stats: MeshStats;
  log: (line: string) => void;
  /** The cluster whose signatures count (mesh/protocol.ts `signingInput`). */
  cluster: string;
  /** Whether heartbeats of `id` may be taken at all (the allow-list); default every id. */
  allowed?: (id: string) => boolean;
  /** Whether the mesh still runs (late deliveries after stop() are ignored). */
  running: () => boolean;
  /**
   * Called with every fresh, verified heartbeat, the membership changes it caused, and whether it
   * came to us alone (our direct topic) rather than flooded.
   */
  onAccepted: (hb: Heartbeat, changes: MemberChange[], direct: boolean) => void;
}

/** Validates and applies received heartbeats. */
export class HeartbeatInbox {
  #c: InboxComponents;
  #verifier: HeartbeatVerifier;

  constructor(components: InboxComponents) {
    this.#c = components;
    this.#verifier = new HeartbeatVerifier({ cluster: components.cluster });
  }

  /**
   * Handles one message; never throws. Reject = invalid (penalised), Ignore = do not relay.
   * `to`: our own id for a message on our direct topic (it must be signed for us), else a flood.
   */
  async receive(data: Uint8Array, to?: string): Promise<TopicValidatorResult> {
    const { stats } = this.#c;
    stats.received++;
    let hb: Heartbeat;
    try {
      const { body, signature } = openHeartbeat(data);
      hb = decodeHeartbeat(body);
      if (!(await this.#verifier.verify(hb.id, body, signature, to))) {
        stats.spoofed++;
        this.#c.log(`dropped a heartbeat claiming ${hb.id} that its key did not sign`);
        return TopicValidatorResult.Reject;
      }
    } catch {
      stats.invalid++;
      return TopicValidatorResult.Reject;
    }
    try {
      return this.#apply(hb, to !== undefined);
    } catch (err) {
      stats.faults++;
      this.#c.log(
        `fault while taking a heartbeat of ${hb.id}: ${err instanceof Error ? err.message : String(err)}`,
      );
      return TopicValidatorResult.Ignore;
    }
  }

  /** Applies a decoded, verified heartbeat (our side: what throws here is our fault). */
  #apply(hb: Heartbeat, direct: boolean): TopicValidatorResult {
    const { membership: m, stats } = this.#c;
    if (!this.#c.running()) return TopicValidatorResult.Ignore;
    if (this.#c.allowed && !this.#c.allowed(hb.id)) {
      stats.refused++;
      return TopicValidatorResult.Ignore;
    }
    if (m.isStale(hb)) {
      stats.stale++;
      return TopicValidatorResult.Ignore;
    }
    if (!m.admits(hb.id)) {
      stats.refused++;
      return TopicValidatorResult.Ignore;
    }
    const changes = m.onHeartbeat(hb);
    stats.accepted++;
    this.#c.onAccepted(hb, changes, direct);
    // A direct heartbeat is for us alone: nobody else subscribes to our topic.
    return !direct && this.#relay(hb.peers)
      ? TopicValidatorResult.Accept
      : TopicValidatorResult.Ignore;
  }

  /**
   * Whether to forward a heartbeat to our gossipsub mesh. Its author flooded it to every peer it
   * is connected to; only if that is fewer than the live members (a joiner, a node behind NAT,
   * a broken link) do the others need a relay. Otherwise relaying would only send duplicates.
   */
  #relay(authorPeers: number | undefined): boolean {
    if (authorPeers === undefined) return true;
    return authorPeers + 1 < this.#c.membership.count((x) => x.state === "alive");
  }
}
