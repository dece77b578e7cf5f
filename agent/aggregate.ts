/**
 * The leader's aggregate: the mesh view turned into the members of a cluster
 * report (docs/PROTOCOL.md), with the coordinator's own routing digest. Pure.
 *
 * What is listed, and why it costs few writes:
 * - alive and suspect members are listed with their own status; a suspicion is
 *   short-lived and not worth a write;
 * - a flapping member is listed as "degraded" whatever its momentary state, so
 *   its ups and downs cost one write, not one per flap;
 * - a member that said goodbye is listed as "left", and one proven dead (its host refused a
 *   connection twice: mesh/dialer.ts) as "offline", until the mesh forgets it: the
 *   coordinator then stops routing to it at once, even where another leader's view (a
 *   crashed leader's own) still lists it, and this report supersedes that view. Neither
 *   counts in the routing digest, so the departure is one change and the forgetting none;
 * - a member in maintenance (`rollcall-agent drain`: `draining` in its meta) is listed as
 *   "draining", which the coordinator never routes to;
 * - members dead by silence alone are left out: a partition looks the same, and the
 *   coordinator must not lose the other side's members (the other side's leader reports them).
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
  if (m.flapping) return m.state !== "left";
  if (m.state === "dead") return m.evidence === "refused";
  return true;
}

/** The status a listed member is reported with. */
function reportStatus(m: MemberView): ClusterMemberReport["status"] {
  if (m.flapping) return "degraded";
  if (m.state === "left") return "left";
  if (m.state === "dead") return "offline";
  if (m.meta?.draining === true) return "draining";
  return m.status;
}

/** One member as the coordinator receives it. */
function toReportMember(m: MemberView): ClusterMemberReport {
  const tier = m.meta?.tier;
  return {
    worker_id: m.id,
    name: m.meta?.name ?? null,
    incarnation: m.incarnation,
    status: reportStatus(m),
    url: m.url,
    tier: tier === 1 || tier === 2 || tier === 3 ? tier : null,
    capabilities: (m.meta?.capabilities as ClusterMemberReport["capabilities"]) ?? null,
    // Gone: the moment we saw it go is the freshest news of it (a crashed leader's own entry
    // carries its last heartbeat before the crash).
    last_seen: Math.max(0, Math.round(gone(m) ? Math.max(m.lastSeen, m.since) : m.lastSeen)),
    services: m.services.map((s) => ({
      name: s.name,
      url: null,
      status: s.status,
      latency_ms: s.latency_ms ?? null,
    })),
  };
}

function gone(m: MemberView): boolean {
  return !m.flapping && (m.state === "left" || m.state === "dead");
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

/**
 * The members of the live view (`/_agent/cluster`): the aggregate's, each with its liveness
 * (`state`: alive, suspect, or dead for a flapping member), which a report leaves out because
 * a suspicion is not worth a write, while the coordinator's admin views should show it at once.
 */
export function liveMembers(
  view: Pick<ViewSnapshot, "members">,
): (ClusterMemberReport & { state: MemberView["state"] })[] {
  const states = new Map(view.members.map((m) => [m.id, m.state]));
  return aggregate(view).members.map((m) => ({ ...m, state: states.get(m.worker_id) ?? "alive" }));
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
