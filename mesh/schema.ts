/**
 * The heartbeat schema: field limits and the checks shared by the codec (mesh/protocol.ts)
 * and the local state (mesh/membership.ts). Pure; every failure is a HeartbeatError.
 */
import { fromString, toString as bytesToString } from "uint8arrays";
import type { MemberMeta, ServiceSummary } from "./types.ts";

/** Largest counter a heartbeat carries (fits a 7-byte varint and a double exactly). */
export const MAX_VARINT = 2 ** 49;

/**
 * Per-field limits of the heartbeat schema, shared by the decoder and the encoder: every number
 * a peer may send is one our own encoder can send back, and whatever we derive from one (the
 * next term, incarnation, sequence or state version) saturates at its limit instead of
 * breaking the encoder (see `saturate`).
 */
export const LIMITS = {
  idBytes: 128,
  url: 512,
  services: 64,
  serviceName: 64,
  metaBytes: 1024,
  addrs: 8,
  addrBytes: 128,
  /** Members one heartbeat accuses of silence. */
  accusations: 8,
  incarnation: MAX_VARINT,
  seq: MAX_VARINT,
  term: MAX_VARINT,
  stateVersion: MAX_VARINT,
  uptimeMs: MAX_VARINT,
  /** Direct peers a member reports: more than any cluster this is built for. */
  peers: 65_535,
  /** A probe's latency: an hour. */
  latencyMs: 3_600_000,
} as const;

/** The numeric fields of a heartbeat, each bounded by its entry in LIMITS. */
export type CounterField =
  | "incarnation"
  | "seq"
  | "term"
  | "stateVersion"
  | "uptimeMs"
  | "peers"
  | "latencyMs";

/** `n + 1`, or the field's limit if that is reached: derived counters never outgrow the codec. */
export function saturate(n: number, field: CounterField): number {
  return Math.min(LIMITS[field], n + 1);
}
/**
 * The one name rule of clusters, services and members (1-64 of A-Z a-z 0-9 . _ -, starting with
 * a letter or digit): a copy of coordinator.ts's (mesh/ never imports it);
 * test/name-rule.test.ts keeps the two equal.
 */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A heartbeat failed to decode or validate; the message says what failed. */
export class HeartbeatError extends Error {
  override name = "HeartbeatError";
}

/** Checks a URL field: empty, or an absolute http(s) URL within the size limit. */
export function validateUrl(url: string): void {
  if (url === "") return;
  if (url.length > LIMITS.url) throw new HeartbeatError(`URL exceeds ${LIMITS.url} characters`);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new HeartbeatError(`URL is not valid: ${JSON.stringify(url.slice(0, 80))}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new HeartbeatError("URL must use http or https");
  }
}

/** Checks a service list against the heartbeat schema. */
export function validateServices(services: readonly ServiceSummary[]): void {
  if (services.length > LIMITS.services) {
    throw new HeartbeatError(`Too many services (at most ${LIMITS.services})`);
  }
  const seen = new Set<string>();
  for (const s of services) {
    if (
      typeof s.name !== "string" ||
      s.name.length > LIMITS.serviceName ||
      !NAME_PATTERN.test(s.name)
    ) {
      throw new HeartbeatError(
        `Service name is not valid: ${JSON.stringify(String(s.name).slice(0, 80))}`,
      );
    }
    if (seen.has(s.name)) throw new HeartbeatError(`Service ${s.name} is listed twice`);
    seen.add(s.name);
    if (s.status !== "healthy" && s.status !== "unhealthy") {
      throw new HeartbeatError(`Service ${s.name} has an unknown status`);
    }
    const l = s.latency_ms;
    if (l !== undefined && !(Number.isInteger(l) && l >= 0 && l <= LIMITS.latencyMs)) {
      throw new HeartbeatError(
        `Service ${s.name} latency must be an integer from 0 to ${LIMITS.latencyMs}`,
      );
    }
  }
}

/** Encodes metadata as bounded JSON (empty when absent), checking its shape. */
export function encodeMeta(meta: MemberMeta | undefined): Uint8Array {
  if (meta === undefined) return new Uint8Array(0);
  const bytes = fromString(JSON.stringify(meta), "utf8");
  if (bytes.length > LIMITS.metaBytes)
    throw new HeartbeatError(`Meta exceeds ${LIMITS.metaBytes} bytes`);
  checkMeta(meta);
  return bytes;
}

function checkMeta(meta: unknown): asserts meta is MemberMeta {
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) {
    throw new HeartbeatError("Meta must be an object");
  }
  const { tier, capabilities, name, draining } = meta as Record<string, unknown>;
  if (draining !== undefined && typeof draining !== "boolean") {
    throw new HeartbeatError("Meta draining must be true or false");
  }
  if (name !== undefined && !(typeof name === "string" && NAME_PATTERN.test(name))) {
    throw new HeartbeatError("Meta name must be 1-64 letters, digits or . _ -");
  }
  if (
    tier !== undefined &&
    !(Number.isInteger(tier) && (tier as number) >= 0 && (tier as number) <= 255)
  ) {
    throw new HeartbeatError("Meta tier must be an integer from 0 to 255");
  }
  if (
    capabilities !== undefined &&
    (typeof capabilities !== "object" || capabilities === null || Array.isArray(capabilities))
  ) {
    throw new HeartbeatError("Meta capabilities must be an object");
  }
}

/** Decodes metadata bytes (empty: none), checking its shape. */
export function decodeMeta(bytes: Uint8Array): MemberMeta | undefined {
  if (bytes.length === 0) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytesToString(bytes, "utf8"));
  } catch {
    throw new HeartbeatError("Heartbeat meta is not valid JSON");
  }
  checkMeta(parsed);
  const out: MemberMeta = {};
  if (parsed.tier !== undefined) out.tier = parsed.tier;
  if (parsed.capabilities !== undefined) out.capabilities = parsed.capabilities;
  if (parsed.name !== undefined) out.name = parsed.name;
  if (parsed.draining === true) out.draining = true;
  return out;
}

/** Checks one numeric field against its limit (the encoder's and the decoder's check alike). */
export function checkCounter(n: number, field: CounterField): void {
  if (!Number.isInteger(n) || n < 0 || n > LIMITS[field]) {
    throw new HeartbeatError(
      `Heartbeat ${FIELD_NAMES[field]} must be an integer from 0 to ${LIMITS[field]}`,
    );
  }
}

/** How error messages name each numeric field. */
export const FIELD_NAMES: Record<CounterField, string> = {
  incarnation: "incarnation",
  seq: "sequence",
  term: "term",
  stateVersion: "state version",
  uptimeMs: "uptime",
  peers: "peer count",
  latencyMs: "service latency",
};
