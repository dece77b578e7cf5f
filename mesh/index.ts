/**
 * rollcall's gossip mesh: the public API. Import this module (it loads the Node 20
 * `Promise.withResolvers` shim before libp2p).
 *
 * Runtime: `createMesh(init, components)` -> `Mesh` (start/stop, setLocalState, view,
 * multiaddrs, stats; events "leader", "member-up", "member-down", "view").
 * Pure pieces, which run on a FakeClock without a network: `Membership`, `elect`, the
 * heartbeat codec, `FakeClock`. Importing this module loads libp2p all the same; code that
 * wants only those imports their own modules (clock.ts, membership.ts, election.ts,
 * protocol.ts, types.ts), which load no libp2p.
 */
import "./shim.ts";

export type { Clock } from "./clock.ts";
export { FakeClock, systemClock } from "./clock.ts";
export type { ElectionMember, ElectionSettings, ElectionView } from "./election.ts";
export { DEFAULT_SETTLE_MS, elect, eligible } from "./election.ts";
export type { Identity } from "./identity.ts";
export { IdentityError, keyPath, loadIdentity } from "./identity.ts";
export type { HeartbeatOptions, MemberChange, MembershipInit } from "./membership.ts";
export { MEMBERSHIP_DEFAULTS, Membership, checkLocal } from "./membership.ts";
export { DEFAULT_WATCHERS, watchedBy, watchersOf } from "./ring.ts";
export type {
  Mesh,
  MeshComponents,
  MeshEventMap,
  MeshEvents,
  MeshInit,
  MeshStats,
} from "./api.ts";
export { MeshStateError } from "./api.ts";
export { createMesh } from "./mesh.ts";
export { BootstrapError } from "./dialer.ts";
export { OpenMeshError, checkExposure, loopbackOnly } from "./exposure.ts";
export { HeartbeatVerifier, signHeartbeat } from "./signing.ts";
export type { MeshLibp2p } from "./node.ts";
export { GOSSIP_DEFAULTS, PskError, parsePsk } from "./node.ts";
export type { Accusation, Heartbeat, HeartbeatState } from "./protocol.ts";
export {
  EVERYONE,
  HEARTBEAT_VERSION,
  HeartbeatError,
  LIMITS,
  MAX_HEARTBEAT_BYTES,
  SIGNATURE_BYTES,
  decodeHeartbeat,
  directTopic,
  signingInput,
  encodeHeartbeat,
  heartbeatTopic,
  openHeartbeat,
  sealHeartbeat,
} from "./protocol.ts";
export type {
  Leader,
  LocalState,
  MemberMeta,
  MemberState,
  MemberStatus,
  MemberView,
  MembershipView,
  ServiceSummary,
  ViewSnapshot,
} from "./types.ts";
