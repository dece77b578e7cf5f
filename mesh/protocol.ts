/**
 * The gossip heartbeat: a versioned, compact binary codec with strict bounds. Pure: no I/O,
 * no libp2p. Every decode failure is a HeartbeatError; no input can make it throw anything else.
 *
 * Layout (version 3), varints are unsigned LEB128:
 *   u8 version | varint flags | bytes id | varint incarnation | varint seq | varint term
 *   | varint uptimeMs | varint stateVersion | [flags.peers] varint peers
 *   | [flags.state] string url, varint n, n x (string name, u8 sflags, [varint latency]), bytes meta
 *   | [flags.addrs] varint n, n x bytes multiaddr
 *   | [flags.accuse] varint n (1..8), n x (bytes id, varint incarnation)
 * bytes/string = varint length + content (string is UTF-8). Trailing bytes are an error. Every
 * number is bounded by its entry in LIMITS (mesh/schema.ts), on the way in and on the way out.
 *
 * On the wire the body is sealed: body || 64-byte Ed25519 signature by the claimed id's key
 * (see seal/open here and mesh/signing.ts), so the claimed id is the signed sender by
 * construction, for 66 bytes less than gossipsub's own signed envelope. The signature covers
 * the cluster's name too (`signingInput`), which is not sent: a heartbeat signed for one
 * cluster does not verify in another. So does its receiver: a heartbeat sent to one member
 * (its direct topic) is signed for that member alone, one flooded to the cluster for "*".
 */
import { fromString, toString as bytesToString } from "uint8arrays";
import {
  type CounterField,
  FIELD_NAMES,
  HeartbeatError,
  LIMITS,
  MAX_VARINT,
  checkCounter,
  decodeMeta,
  encodeMeta,
  validateServices,
  validateUrl,
} from "./schema.ts";
import type { MemberMeta, MemberStatus, ServiceSummary } from "./types.ts";

export { HeartbeatError, LIMITS, encodeMeta, validateServices, validateUrl };
export { saturate } from "./schema.ts";

/**
 * Current wire version (3: heartbeats sent to one receiver and signed for it, accusations, the
 * state request; flags a varint). Version 2 does not interoperate (docs/PROTOCOL.md).
 */
export const HEARTBEAT_VERSION = 3;
/** Largest heartbeat accepted or produced, in bytes. */
export const MAX_HEARTBEAT_BYTES = 4096;

/** The gossipsub topic a cluster's flooded heartbeats (news) travel on (one per wire version). */
export function heartbeatTopic(cluster = "default"): string {
  return `rollcall/${cluster}/hb/${HEARTBEAT_VERSION}`;
}

/** Characters of a member's id that name its direct topic (47 bits of base58: no collision). */
const DIRECT_TAG = 8;

/**
 * The gossipsub topic only member `id` subscribes to: heartbeats sent to it alone (its watched
 * members' heartbeats, answers to its state requests). Short, since every message names it; a
 * collision would only deliver a heartbeat signed for another receiver, which fails to verify.
 */
export function directTopic(cluster: string, id: string): string {
  return `${heartbeatTopic(cluster)}/${id.slice(-DIRECT_TAG)}`;
}

/** The receiver a flooded heartbeat is signed for (a direct one names its receiver's id). */
export const EVERYONE = "*";

/**
 * What a heartbeat's signature covers: a domain naming the wire version, the cluster and the
 * receiver (a member's id, or EVERYONE for a flood), then the body. The domain is not sent, so
 * binding a heartbeat to its cluster and receiver costs no byte.
 */
export function signingInput(cluster: string, body: Uint8Array, to = EVERYONE): Uint8Array {
  const domain = fromString(`rollcall/hb/${HEARTBEAT_VERSION}/${cluster}/${to}\n`, "utf8");
  const out = new Uint8Array(domain.length + body.length);
  out.set(domain, 0);
  out.set(body, domain.length);
  return out;
}

const F_LEADER = 1;
const F_LEAVING = 2;
const F_DEGRADED = 4;
const F_STATE = 8;
const F_ADDRS = 16;
const F_PEERS = 32;
const F_CAN_LEAD = 64;
const F_ACCUSE = 128;
const F_REQUEST_STATE = 256;
const F_KNOWN = 511;
const S_UNHEALTHY = 1;
const S_LATENCY = 2;

/** The routing-relevant state a heartbeat may carry (omitted when unchanged, to save bytes). */
export interface HeartbeatState {
  url: string;
  services: ServiceSummary[];
  meta?: MemberMeta;
}

/** One decoded heartbeat. */
export interface Heartbeat {
  /** Claimed sender PeerId (must equal the signed sender). */
  id: string;
  incarnation: number;
  /** Per-incarnation sequence number, strictly increasing. */
  seq: number;
  /** The sender's term if `leader`, else the highest term it has seen. */
  term: number;
  /** The sender claims leadership with `term`. */
  leader: boolean;
  /** The sender is stopping gracefully: mark it left at once. */
  leaving: boolean;
  /** The sender offers to lead (an agent: it reached the coordinator with a valid token). */
  canLead: boolean;
  status: MemberStatus;
  /** Milliseconds since this incarnation started (receivers credit only a little of it). */
  uptimeMs: number;
  /** Bumped by the sender whenever its state changes. */
  stateVersion: number;
  state?: HeartbeatState;
  /** Listen multiaddrs in binary form, so peers can dial each other directly. */
  addrs?: Uint8Array[];
  /** How many peers the sender is directly connected to (relays help when it is too few). */
  peers?: number;
  /** The sender asks the receiver for its full state (a join, or a state version it lacks). */
  requestState?: boolean;
  /** Members the sender watches and suspects of silence (each in the incarnation it knew). */
  accuse?: Accusation[];
}

/** One accusation: the sender, a watcher of `id`, has not heard it for the suspicion timeout. */
export interface Accusation {
  id: string;
  incarnation: number;
}

class Writer {
  #parts: number[] = [];
  u8(n: number): void {
    this.#parts.push(n & 0xff);
  }
  varint(n: number): void {
    let v = n;
    while (v >= 0x80) {
      this.#parts.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.#parts.push(v);
  }
  bytes(b: Uint8Array): void {
    this.varint(b.length);
    for (const x of b) this.#parts.push(x);
  }
  string(s: string): void {
    this.bytes(fromString(s, "utf8"));
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.#parts);
  }
}

class Reader {
  #pos = 0;
  constructor(readonly buf: Uint8Array) {}
  get done(): boolean {
    return this.#pos >= this.buf.length;
  }
  u8(what: string): number {
    const b = this.buf[this.#pos++];
    if (b === undefined) throw new HeartbeatError(`Heartbeat ended early in ${what}`);
    return b;
  }
  /** A numeric field, bounded by its limit in LIMITS. */
  counter(field: CounterField): number {
    const n = this.varint(FIELD_NAMES[field]);
    checkCounter(n, field);
    return n;
  }
  varint(what: string): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8(what);
      value += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (value > MAX_VARINT) throw new HeartbeatError(`Heartbeat ${what} is too large`);
        return value;
      }
      scale *= 0x80;
    }
    throw new HeartbeatError(`Heartbeat ${what} is too long a varint`);
  }
  bytes(what: string, max: number): Uint8Array {
    const len = this.varint(what);
    if (len > max) throw new HeartbeatError(`Heartbeat ${what} exceeds ${max} bytes`);
    if (this.#pos + len > this.buf.length)
      throw new HeartbeatError(`Heartbeat ended early in ${what}`);
    const out = this.buf.slice(this.#pos, this.#pos + len);
    this.#pos += len;
    return out;
  }
  string(what: string, max: number): string {
    const b = this.bytes(what, max);
    const s = new TextDecoder("utf-8", { fatal: false }).decode(b);
    if (s.includes("\uFFFD")) throw new HeartbeatError(`Heartbeat ${what} is not valid UTF-8`);
    return s;
  }
}

/** Encodes a heartbeat; throws HeartbeatError if it breaks the schema or the size limit. */
export function encodeHeartbeat(hb: Heartbeat): Uint8Array {
  const w = new Writer();
  const id = fromString(hb.id, "base58btc");
  if (id.length === 0 || id.length > LIMITS.idBytes)
    throw new HeartbeatError("Heartbeat id is not valid");
  for (const [n, field] of [
    [hb.incarnation, "incarnation"],
    [hb.seq, "seq"],
    [hb.term, "term"],
    [hb.uptimeMs, "uptimeMs"],
    [hb.stateVersion, "stateVersion"],
    [hb.peers ?? 0, "peers"],
  ] as const) {
    checkCounter(n, field);
  }
  let flags = 0;
  if (hb.leader) flags |= F_LEADER;
  if (hb.leaving) flags |= F_LEAVING;
  if (hb.canLead) flags |= F_CAN_LEAD;
  if (hb.status === "degraded") flags |= F_DEGRADED;
  if (hb.state) flags |= F_STATE;
  if (hb.addrs && hb.addrs.length > 0) flags |= F_ADDRS;
  if (hb.peers !== undefined) flags |= F_PEERS;
  if (hb.requestState) flags |= F_REQUEST_STATE;
  if (hb.accuse && hb.accuse.length > 0) flags |= F_ACCUSE;
  w.u8(HEARTBEAT_VERSION);
  w.varint(flags);
  w.bytes(id);
  w.varint(hb.incarnation);
  w.varint(hb.seq);
  w.varint(hb.term);
  w.varint(hb.uptimeMs);
  w.varint(hb.stateVersion);
  if (hb.peers !== undefined) w.varint(hb.peers);
  if (hb.state) {
    validateUrl(hb.state.url);
    validateServices(hb.state.services);
    w.string(hb.state.url);
    w.varint(hb.state.services.length);
    for (const s of hb.state.services) {
      w.string(s.name);
      const lat = s.latency_ms !== undefined;
      w.u8((s.status === "unhealthy" ? S_UNHEALTHY : 0) | (lat ? S_LATENCY : 0));
      if (lat) w.varint(s.latency_ms as number);
    }
    w.bytes(encodeMeta(hb.state.meta));
  }
  if (hb.addrs && hb.addrs.length > 0) {
    if (hb.addrs.length > LIMITS.addrs)
      throw new HeartbeatError(`Too many addresses (at most ${LIMITS.addrs})`);
    w.varint(hb.addrs.length);
    for (const a of hb.addrs) {
      if (a.length > LIMITS.addrBytes) throw new HeartbeatError("Heartbeat address is too long");
      w.bytes(a);
    }
  }
  if (hb.accuse && hb.accuse.length > 0) {
    if (hb.accuse.length > LIMITS.accusations)
      throw new HeartbeatError(`Too many accusations (at most ${LIMITS.accusations})`);
    w.varint(hb.accuse.length);
    for (const a of hb.accuse) {
      const accused = fromString(a.id, "base58btc");
      if (accused.length === 0 || accused.length > LIMITS.idBytes)
        throw new HeartbeatError("Accused id is not valid");
      checkCounter(a.incarnation, "incarnation");
      w.bytes(accused);
      w.varint(a.incarnation);
    }
  }
  const out = w.finish();
  if (out.length > MAX_HEARTBEAT_BYTES) {
    throw new HeartbeatError(`Heartbeat exceeds ${MAX_HEARTBEAT_BYTES} bytes`);
  }
  return out;
}

/** Decodes and validates a heartbeat; throws HeartbeatError on anything malformed. */
export function decodeHeartbeat(buf: Uint8Array): Heartbeat {
  if (!(buf instanceof Uint8Array)) throw new HeartbeatError("Heartbeat is not bytes");
  if (buf.length > MAX_HEARTBEAT_BYTES)
    throw new HeartbeatError(`Heartbeat exceeds ${MAX_HEARTBEAT_BYTES} bytes`);
  const r = new Reader(buf);
  const version = r.u8("version");
  if (version !== HEARTBEAT_VERSION)
    throw new HeartbeatError(`Heartbeat version ${version} is not supported`);
  const flags = r.varint("flags");
  if (flags > F_KNOWN || (flags & ~F_KNOWN) !== 0)
    throw new HeartbeatError("Heartbeat has unknown flags");
  const idBytes = r.bytes("id", LIMITS.idBytes);
  if (idBytes.length === 0) throw new HeartbeatError("Heartbeat id is empty");
  const hb: Heartbeat = {
    id: bytesToString(idBytes, "base58btc"),
    incarnation: r.counter("incarnation"),
    seq: r.counter("seq"),
    term: r.counter("term"),
    leader: (flags & F_LEADER) !== 0,
    leaving: (flags & F_LEAVING) !== 0,
    canLead: (flags & F_CAN_LEAD) !== 0,
    status: (flags & F_DEGRADED) !== 0 ? "degraded" : "online",
    uptimeMs: r.counter("uptimeMs"),
    stateVersion: r.counter("stateVersion"),
  };
  if (flags & F_PEERS) hb.peers = r.counter("peers");
  if (flags & F_STATE) {
    const url = r.string("url", LIMITS.url);
    validateUrl(url);
    const n = r.varint("service count");
    if (n > LIMITS.services)
      throw new HeartbeatError(`Too many services (at most ${LIMITS.services})`);
    const services: ServiceSummary[] = [];
    for (let i = 0; i < n; i++) {
      const name = r.string("service name", LIMITS.serviceName);
      const sflags = r.u8("service flags");
      if ((sflags & ~(S_UNHEALTHY | S_LATENCY)) !== 0)
        throw new HeartbeatError("Heartbeat service has unknown flags");
      const s: ServiceSummary = { name, status: sflags & S_UNHEALTHY ? "unhealthy" : "healthy" };
      if (sflags & S_LATENCY) s.latency_ms = r.counter("latencyMs");
      services.push(s);
    }
    validateServices(services);
    const meta = decodeMeta(r.bytes("meta", LIMITS.metaBytes));
    hb.state = meta === undefined ? { url, services } : { url, services, meta };
  }
  if (flags & F_ADDRS) {
    const n = r.varint("address count");
    if (n === 0 || n > LIMITS.addrs)
      throw new HeartbeatError(`Address count must be 1 to ${LIMITS.addrs}`);
    hb.addrs = [];
    for (let i = 0; i < n; i++) hb.addrs.push(r.bytes("address", LIMITS.addrBytes));
  }
  if (flags & F_REQUEST_STATE) hb.requestState = true;
  if (flags & F_ACCUSE) {
    const n = r.varint("accusation count");
    if (n === 0 || n > LIMITS.accusations)
      throw new HeartbeatError(`Accusation count must be 1 to ${LIMITS.accusations}`);
    hb.accuse = [];
    for (let i = 0; i < n; i++) {
      const accused = r.bytes("accused id", LIMITS.idBytes);
      if (accused.length === 0) throw new HeartbeatError("Accused id is empty");
      hb.accuse.push({
        id: bytesToString(accused, "base58btc"),
        incarnation: r.counter("incarnation"),
      });
    }
  }
  if (!r.done) throw new HeartbeatError("Heartbeat has trailing bytes");
  return hb;
}

/** Length of the signature that seals a heartbeat body on the wire. */
export const SIGNATURE_BYTES = 64;

/** Appends the signature to a heartbeat body (the wire form). */
export function sealHeartbeat(body: Uint8Array, signature: Uint8Array): Uint8Array {
  if (signature.length !== SIGNATURE_BYTES)
    throw new HeartbeatError("Heartbeat signature must be 64 bytes");
  const out = new Uint8Array(body.length + SIGNATURE_BYTES);
  out.set(body, 0);
  out.set(signature, body.length);
  if (out.length > MAX_HEARTBEAT_BYTES)
    throw new HeartbeatError(`Heartbeat exceeds ${MAX_HEARTBEAT_BYTES} bytes`);
  return out;
}

/** Splits a wire heartbeat into body and signature (neither decoded nor verified yet). */
export function openHeartbeat(wire: Uint8Array): { body: Uint8Array; signature: Uint8Array } {
  if (!(wire instanceof Uint8Array)) throw new HeartbeatError("Heartbeat is not bytes");
  if (wire.length > MAX_HEARTBEAT_BYTES)
    throw new HeartbeatError(`Heartbeat exceeds ${MAX_HEARTBEAT_BYTES} bytes`);
  if (wire.length <= SIGNATURE_BYTES)
    throw new HeartbeatError("Heartbeat is too short to be signed");
  const cut = wire.length - SIGNATURE_BYTES;
  return { body: wire.subarray(0, cut), signature: wire.subarray(cut) };
}
