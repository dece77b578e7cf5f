/**
 * The leader's aggregate: the mesh view turned into the members of a cluster
 * report (docs/PROTOCOL.md), with the coordinator's own routing digest. Pure.
 *
 * What is listed, and why it costs few writes:
 * - alive and suspect members are listed with their own status; a suspicion is
 *   short-lived and not worth a write;
 * - a flapping member is listed as "degraded" whatever its momentary state, so
 *   its ups and downs cost one write, not one per flap;
 * - dead and departed members are left out: their departure is one change.
 */
import type { ClusterMemberReport, ClusterReportInput } from "../coordinator.ts";
import { ClusterMemberSchema, routingDigest } from "../coordinator.ts";
import type { MemberView, ViewSnapshot } from "../mesh/index.ts";

/** The members of a cluster report, and their digest. */
export interface Aggregate {
  members: ClusterMemberReport[];
  digest: string;
}

/** Whether a member belongs in the leader's report. */
export function listed(m: MemberView): boolean {
  if (m.state === "left") return false;
  if (m.flapping) return true;
  return m.state === "alive" || m.state === "suspect";
}

/** One member as the coordinator receives it. */
export function toReportMember(m: MemberView): ClusterMemberReport {
  const tier = m.meta?.tier;
  return {
    worker_id: m.id,
    name: m.meta?.name ?? null,
    incarnation: m.incarnation,
    status: m.flapping ? "degraded" : m.status,
    url: m.url,
    tier: tier === 1 || tier === 2 || tier === 3 ? tier : null,
    capabilities: (m.meta?.capabilities as ClusterMemberReport["capabilities"]) ?? null,
    last_seen: Math.max(0, Math.round(m.lastSeen)),
    services: m.services.map((s) => ({
      name: s.name,
      url: null,
      status: s.status,
      latency_ms: s.latency_ms ?? null,
    })),
  };
}

/**
 * The leader's aggregate of a view: listed members and their digest. A member whose
 * gossiped state the coordinator would refuse (no URL yet, a bad capability) is left
 * out, so one odd peer can never make the whole report fail.
 */
export function aggregate(view: Pick<ViewSnapshot, "members">): Aggregate {
  const members = view.members
    .filter((m) => listed(m) && m.url !== "")
    .map(toReportMember)
    .filter((m) => ClusterMemberSchema.safeParse(m).success);
  return { members, digest: routingDigest(members) };
}

/** The body of POST /api/cluster/heartbeat. */
export function reportBody(input: {
  cluster: string;
  leaderId: string;
  term: number;
  sequence: number;
  aggregate: Aggregate;
}): ClusterReportInput {
  return {
    cluster: input.cluster,
    leader_id: input.leaderId,
    term: input.term,
    sequence: input.sequence,
    members: input.aggregate.members,
    digest: input.aggregate.digest,
  };
}
