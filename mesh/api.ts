/**
 * The mesh runtime's public contract: settings, collaborators, events, counters and the Mesh
 * interface the agent builds on. Types only (plus one error class); mesh.ts implements them.
 */
import type { ConnectionGater } from "@libp2p/interface";
import type { TypedEventTarget } from "main-event";
import type { Clock } from "./clock.ts";
import type { MeshLibp2p, NodeInit } from "./node.ts";
import type { Leader, LocalState, MemberView, ViewSnapshot } from "./types.ts";

/** Settings of a mesh node; everything but dataDir and local has a default. */
export interface MeshInit {
  /** The key is persisted at <dataDir>/peer.key (0600), created on first start. */
  dataDir: string;
  /** Cluster name: topics rollcall/<cluster>/hb/3(/<member>), and the mDNS tag; default "default". */
  cluster?: string;
  /** Listen multiaddrs; default ["/ip4/127.0.0.1/tcp/0"]. */
  listen?: string[];
  /** Multiaddrs of peers to join through, with /p2p/<id>; a bad one fails start() (BootstrapError). */
  bootstrap?: string[];
  /** Discover peers on the LAN by mDNS; default false. */
  mdns?: boolean;
  /** pnet pre-shared key in the swarm.key text format: strangers without it cannot connect. */
  psk?: string | Uint8Array;
  /**
   * Listen beyond loopback without a pre-shared key anyway (anyone who reaches the port can
   * join); without it start() refuses such a listen address with OpenMeshError. Default false.
   */
  insecureOpenMesh?: boolean;
  /**
   * Only these PeerIds may connect, be dialed or have their heartbeats taken (our own is always
   * allowed); default everyone who has the pre-shared key.
   */
  allowPeers?: string[];
  local: LocalState;
  /** Default 1000 ms. */
  heartbeatIntervalMs?: number;
  /** Silence before a member is suspected (and replaced if it leads); default 3000 ms. */
  suspectAfterMs?: number;
  /** Suspicion timeout before a member is dead; default 6000 ms. */
  deadAfterMs?: number;
  /** Tombstone period of dead/left members; default 600000 ms. */
  forgetAfterMs?: number;
  /** How long a member must be alive before it may lead; default 5000 ms. */
  settleMs?: number;
  /**
   * How many members watch each one (the next ones in ID order, mesh/ring.ts): a member sends
   * its heartbeat every interval to its watchers only, and floods the cluster only with news and
   * now and then (every N - 1 intervals), so that per-agent traffic does not grow with N.
   * Default 3 (DEFAULT_WATCHERS); `Infinity` floods every heartbeat to every peer instead.
   */
  watchers?: number;
  /** Advanced: gossipsub overrides (see GOSSIP_DEFAULTS). */
  gossip?: NodeInit["gossip"];
  /** Advanced: false runs the stock TCP/yamux stack instead of mesh/lean.ts; default true. */
  lean?: boolean;
}

/** Collaborators of a mesh node. */
export interface MeshComponents {
  clock?: Clock;
  logger?: (line: string) => void;
  /** Decides which connections are allowed (tests use it to make partitions). */
  connectionGater?: ConnectionGater;
}

/** Counters of what the node received and sent. */
export interface MeshStats {
  received: number;
  accepted: number;
  /** Duplicates or older than what we hold (replays, restarts' old incarnations). */
  stale: number;
  /** Failed to decode or validate, or too large. */
  invalid: number;
  /** Not signed by the key of the id it claims (the claimed id is not the signed sender). */
  spoofed: number;
  sent: number;
  sendFailed: number;
  /** Times this process found itself frozen for longer than peers wait, and rejoined. */
  rejoins: number;
  /** Connections reset because a connected member had no gossip stream or fell silent. */
  repairs: number;
  /** Heartbeats of peers not on the allow-list, or of new members past `maxMembers`. */
  refused: number;
  /** Errors of our own (a timer, an event handler, the receive path) logged instead of thrown. */
  faults: number;
  /** Peers and addresses of peer-exchange answers dropped (over the limits, or not plain TCP). */
  pexDropped: number;
  /** Introduced peers (peer exchange, mDNS) dialed; at most a bounded number per round. */
  introductionsDialed: number;
  /** Introduced peers dropped because the dialer's queue was full. */
  introductionsDropped: number;
  /** Dials that failed (each is retried with backoff if the peer is a member). */
  dialFailures: number;
  /** Members found dead because their host refused a connection twice (a crash, proven). */
  refusedTwice: number;
  /** Silent members whose host still accepted a connection (a frozen process). */
  reachable: number;
  /** Answers of members that heard a quiet member later than we did (a suspicion avoided). */
  vouched: number;
  /** Heartbeats sent to one member (a watcher, an answer to a state request, a hello). */
  direct: number;
  /** Heartbeats flooded to the cluster (news, accusations, refutations, the occasional one). */
  floods: number;
  /** Bytes of heartbeats handed to gossipsub, times their receivers (no framing). */
  bytesSent: number;
  /** Accusations we flooded (members we watch that fell silent). */
  accusations: number;
  /** Accusations of others we took (the accused became suspect). */
  accused: number;
  /** Accusations we took that the accused refuted with a fresh heartbeat. */
  refuted: number;
  /** Full states we asked a member for (a join, a state version we lacked). */
  stateRequests: number;
}

/** Event name -> detail type. */
export interface MeshEvents {
  leader: Leader | null;
  "member-up": MemberView;
  "member-down": MemberView;
  view: ViewSnapshot;
}

/** Event name -> the event its listeners get: a CustomEvent with MeshEvents' detail. */
export type MeshEventMap = { [K in keyof MeshEvents]: CustomEvent<MeshEvents[K]> };

/** A running mesh node. Events: "leader", "member-up", "member-down", "view" (CustomEvent). */
export interface Mesh extends TypedEventTarget<MeshEventMap> {
  /** Our PeerId string; available once start() resolved. */
  readonly id: string;
  /** The libp2p node underneath (diagnostics and tests); undefined before start(). */
  readonly libp2p: MeshLibp2p | undefined;
  start(): Promise<void>;
  /** Announces leaving, closes libp2p, clears every timer. */
  stop(): Promise<void>;
  /**
   * Changes the local state; a real change bumps the state version and is gossiped at once and
   * on the next heartbeats. The incarnation stays as it is.
   */
  setLocalState(update: Partial<LocalState>): void;
  view(): ViewSnapshot;
  multiaddrs(): string[];
  stats(): MeshStats;
}

/** The mesh was used in a way its lifecycle does not allow. */
export class MeshStateError extends Error {
  override name = "MeshStateError";
}
