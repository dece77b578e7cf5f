/**
 * Leader election as a pure function of a membership view.
 *
 * Leader = the lowest ID among alive, non-flapping members that offer to lead (`canLead`: an
 * agent that reached the coordinator with a valid token) and have been alive for the settle
 * period. A sitting leader keeps the role until it is no longer alive (suspect, dead, left) or a
 * lower settled ID is present; a node that hears none of its peers waits until the leader is
 * dead, not just suspect (it is more likely the one cut off). A node that would pick itself but hears a higher-ID alive member
 * claim leadership follows that claimant instead (see below), so claims converge to one; a node
 * that has named no leader yet follows a lower ID's claim as well. A cluster
 * that starts or restarts together (no leader known, nobody claims) waits for a lower ID that is
 * only still settling instead of electing a higher one first: one leadership, not two.
 * Terms: a leader's term is authoritative once it claims it in a heartbeat; a sitting leader that
 * sees a higher term while nobody else claims (a healed partition's other side led under it)
 * takes a fresh one; a new leadership
 * takes max(term seen, previous term) + 1, so nodes that saw the same history pick the same term before the
 * new leader has even spoken. Terms saturate at LIMITS.term (mesh/schema.ts), the most a
 * heartbeat can carry: a peer that gossips the largest term cannot make a new leader's
 * heartbeat unencodable; leaders then share that term, and the IDs still order them.
 */
import { LIMITS } from "./schema.ts";
import type { Leader, MemberState } from "./types.ts";

/** What the election needs to know about one member. */
export interface ElectionMember {
  id: string;
  self: boolean;
  state: MemberState;
  flapping: boolean;
  aliveSince: number;
  leaderTerm?: number;
  /** false: it does not offer to lead (passed over; its claims are not followed). Default true. */
  canLead?: boolean;
  /** Suspect, but its host accepts connections: we are not cut off from it. */
  reachable?: boolean;
  /** Suspect on one watcher's accusation only (not confirmed): a sitting leader keeps the lead. */
  accused?: boolean;
}

/** What the election needs to know about the view. */
export interface ElectionView {
  self: string;
  members: readonly ElectionMember[];
}

/** Election settings: the settle period, the current time and the highest term seen. */
export interface ElectionSettings {
  settleMs: number;
  now: number;
  maxTerm: number;
}

/** Default settle period: how long a member must be alive before it may lead. */
export const DEFAULT_SETTLE_MS = 5000;

/** Whether a member may take leadership now. */
export function eligible(m: ElectionMember, settings: ElectionSettings): boolean {
  return (
    m.state === "alive" &&
    !m.flapping &&
    m.canLead !== false &&
    settings.now - m.aliveSince >= settings.settleMs
  );
}

/** Whether a member with an ID below `id` is alive, offers to lead and only waits to settle. */
function settling(view: ElectionView, id: string, settings: ElectionSettings): boolean {
  return view.members.some(
    (m) =>
      m.id < id &&
      m.state === "alive" &&
      !m.flapping &&
      m.canLead !== false &&
      settings.now - m.aliveSince < settings.settleMs,
  );
}

/** Elects the leader of `view` given the previous result on this node; null if none is eligible. */
export function elect(
  view: ElectionView,
  previous: Leader | null,
  settings: ElectionSettings,
): Leader | null {
  let lowest: ElectionMember | undefined;
  let sitting: ElectionMember | undefined;
  let others = 0;
  let hearing = 0;
  for (const m of view.members) {
    if (previous && m.id === previous.id) sitting = m;
    if (eligible(m, settings) && (!lowest || m.id < lowest.id)) lowest = m;
    if (!m.self && m.state !== "left") {
      others++;
      if (m.state === "alive" || (m.state === "suspect" && m.reachable)) hearing++;
    }
  }
  // Cut off: we hear none of the members we know, and reach none of their hosts. More likely
  // we are the one cut off than that all of them failed at once (Lifeguard's lesson), so a
  // merely suspected leader keeps its role until it is dead. A member whose network flaps never
  // grabs the lead. A silent member whose host accepts our connection (a frozen process) or
  // refused it twice (dead, with evidence) is no sign that we are cut off.
  // A leader suspect on one watcher's accusation only keeps the lead until a second watcher, our
  // own judgement or its death confirms it: one watcher's word (a hiccup of its own, or a rogue)
  // would otherwise move the lead away and back when the leader refutes it.
  const isolated = others > 0 && hearing === 0;
  const sittingHolds =
    sitting !== undefined &&
    sitting.canLead !== false &&
    (sitting.state === "alive" ||
      (sitting.state === "suspect" && (isolated || sitting.accused === true)));
  const keep =
    previous !== null &&
    sittingHolds &&
    !(lowest !== undefined && lowest.id < (sitting as ElectionMember).id);
  let chosen = keep ? sitting : lowest;
  // Symmetry breaker: while a member with a higher ID than the choice is alive and claims
  // leadership, follow the highest such claimant until it steps down. This gives one leader
  // right after a partition heals, and keeps a member that others see as flapping or unsettled
  // (which it cannot see itself) from leading beside the leader they chose.
  // A node that has named no leader yet follows a claim below its choice too: the claimant has
  // settled in its own view (it knew itself before we heard of it, and we credit its uptime only
  // as far back as we knew of it), so taking a term above it would make a second leadership that
  // ends as soon as the claimant settles in ours.
  let claimant: ElectionMember | undefined;
  let claimed = false;
  const floor = previous === null ? "" : (chosen?.id ?? "");
  for (const m of view.members) {
    const claims = m.state === "alive" && m.leaderTerm !== undefined && m.canLead !== false;
    if (claims && !m.self) claimed = true;
    if (!m.self && claims && m.id > floor) {
      if (!claimant || m.id > claimant.id) claimant = m;
    }
  }
  // A cluster that starts (or restarts) together: nobody leads and nobody claims, and a lower
  // ID that offers to lead is merely still settling. Its settle period ends within settleMs, so
  // wait for it rather than hand the lead to a higher ID first and take it back then (two
  // leaderships, two reports, where one will do).
  if (!keep && previous === null && !claimed && chosen && settling(view, chosen.id, settings)) {
    chosen = undefined;
  }
  if (!chosen) return null;
  if (claimant) return { id: claimant.id, term: claimant.leaderTerm as number };
  // The previous term counts even if its leader never claimed it aloud: that leader may have
  // acted on it (an agent reports the moment it leads), so a successor must go above it. Nodes
  // that saw failures in a different order may guess different terms for a moment; the new
  // leader's claim, authoritative, aligns them within a heartbeat.
  const fresh = Math.min(LIMITS.term, Math.max(settings.maxTerm, previous?.term ?? 0) + 1);
  // A sitting leader that sees a higher term than its own while nobody else claims the lead
  // (another side of a healed partition led under it, and stepped down before we heard its
  // claim) takes a term above it: a leader whose term is below one the cluster used is a deposed
  // leader to the coordinator. While another still claims, the claim rules settle it (two
  // sitting leaders raising their terms in turn would never stop).
  if (chosen.self) {
    const own = keep && previous && (previous.term >= settings.maxTerm || claimed);
    return { id: chosen.id, term: own ? previous.term : fresh };
  }
  if (chosen.leaderTerm !== undefined) return { id: chosen.id, term: chosen.leaderTerm };
  if (keep && previous) return { id: chosen.id, term: previous.term };
  return { id: chosen.id, term: fresh };
}
