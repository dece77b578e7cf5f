/**
 * The mesh's public data types: what an agent declares about itself (LocalState) and what
 * it learns about the others (MemberView, ViewSnapshot). Pure types, no I/O.
 */

/** Self-declared status of an agent ("degraded" also marks a flapping member). */
export type MemberStatus = "online" | "degraded";

/** One local service as summarised in heartbeats. */
export interface ServiceSummary {
  name: string;
  status: "healthy" | "unhealthy";
  latency_ms?: number;
}

/** Small, size-limited metadata an agent gossips about itself. */
export interface MemberMeta {
  tier?: number;
  capabilities?: Record<string, unknown>;
  /** The agent's human name (`--name`), shown by the coordinator; never used to route. */
  name?: string;
  /** In maintenance (`rollcall-agent drain`): reported "draining", never routed to. */
  draining?: boolean;
}

/** What the local agent declares about itself in every heartbeat. */
export interface LocalState {
  /** The agent's gateway/public URL ("" while unknown). */
  url: string;
  status: MemberStatus;
  services: ServiceSummary[];
  meta?: MemberMeta;
  /**
   * Whether this agent offers to lead (default true). An agent sets it once it reached the
   * coordinator with a valid token; the election passes over members that do not offer.
   */
  canLead?: boolean;
}

/** A member's liveness as judged by the local node. */
export type MemberState = "alive" | "suspect" | "dead" | "left";

/** One member (self included) as the local node sees it. */
export interface MemberView {
  /** PeerId string: the stable ID. */
  id: string;
  self: boolean;
  state: MemberState;
  incarnation: number;
  /** Went down and up repeatedly recently: report it degraded, never elect it. */
  flapping: boolean;
  url: string;
  status: MemberStatus;
  services: ServiceSummary[];
  meta?: MemberMeta;
  /** It offers to lead (its latest heartbeat said so); the election passes over it otherwise. */
  canLead: boolean;
  /** Clock ms when it last became alive, as far back as we knew of it (membership.ts): for settling. */
  aliveSince: number;
  /** Clock ms of its last accepted heartbeat (self: the last one sent). */
  lastSeen: number;
  /** The term it claims as leader in its latest heartbeat, when it claims leadership. */
  leaderTerm?: number;
  /** Clock ms of its last change of state (came up, suspected, dead, left). */
  since: number;
  /**
   * Dead, and proven so: its host refused a connection twice (the process is gone; a network
   * cut never answers at all). A silent member's death is a verdict, which a partition gives too.
   */
  evidence?: "refused";
  /** Suspect, but its host accepts connections: its process is silent, the network is not cut. */
  reachable?: boolean;
  /**
   * Suspect on one watcher's accusation only (watch ring): not yet confirmed by a second watcher,
   * by our own judgement of its silence, or by its death. A leader that is only this keeps the lead.
   */
  accused?: boolean;
}

/** A leader and the term of its leadership. */
export interface Leader {
  id: string;
  term: number;
}

/** Membership as the pure state machine exposes it: enough to run the election. */
export interface MembershipView {
  self: string;
  /** Clock ms when the view was taken. */
  now: number;
  /** Highest term seen in any heartbeat (including our own claims). */
  maxTerm: number;
  /** Every known member, self included, sorted by id. */
  members: MemberView[];
}

/** What `Mesh.view()` returns and the "view" event carries. */
export interface ViewSnapshot {
  self: string;
  members: MemberView[];
  leader: Leader | null;
}
