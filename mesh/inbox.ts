/**
 * The receiving end of the heartbeat topic, run as gossipsub's topic validator (so before any
 * relaying): size limit, decode, signature by the claimed id, staleness, then membership.
 * Decides, per heartbeat, whether our gossipsub mesh should relay it. Counts everything.
 */
import { TopicValidatorResult } from "@libp2p/gossipsub";
import type { MeshStats } from "./api.ts";
import type { MemberChange, Membership } from "./membership.ts";
import { type Heartbeat, MAX_HEARTBEAT_BYTES, decodeHeartbeat, openHeartbeat } from "./protocol.ts";
import { HeartbeatVerifier } from "./signing.ts";

/** Collaborators of the inbox. */
export interface InboxComponents {
  membership: Membership;
  stats: MeshStats;
  log: (line: string) => void;
  /** Whether the mesh still runs (late deliveries after stop() are ignored). */
  running: () => boolean;
  /** Called with every fresh, verified heartbeat and the membership changes it caused. */
  onAccepted: (hb: Heartbeat, changes: MemberChange[]) => void;
}

/** Validates and applies received heartbeats. */
export class HeartbeatInbox {
  #c: InboxComponents;
  #verifier = new HeartbeatVerifier();

  constructor(components: InboxComponents) {
    this.#c = components;
  }

  /** Handles one message; never throws. Reject = invalid (penalised), Ignore = do not relay. */
  async receive(data: Uint8Array): Promise<TopicValidatorResult> {
    const { membership: m, stats } = this.#c;
    stats.received++;
    try {
      if (data.length > MAX_HEARTBEAT_BYTES) throw new Error("Heartbeat is too large");
      const { body, signature } = openHeartbeat(data);
      const hb = decodeHeartbeat(body);
      if (!(await this.#verifier.verify(hb.id, body, signature))) {
        stats.spoofed++;
        this.#c.log(`dropped a heartbeat claiming ${hb.id} that its key did not sign`);
        return TopicValidatorResult.Reject;
      }
      if (!this.#c.running()) return TopicValidatorResult.Ignore;
      if (m.isStale(hb)) {
        stats.stale++;
        return TopicValidatorResult.Ignore;
      }
      const changes = m.onHeartbeat(hb);
      stats.accepted++;
      this.#c.onAccepted(hb, changes);
      return this.#relay(hb.peers) ? TopicValidatorResult.Accept : TopicValidatorResult.Ignore;
    } catch {
      stats.invalid++;
      return TopicValidatorResult.Reject;
    }
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
