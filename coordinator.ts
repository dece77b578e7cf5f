/**
 * rollcall coordinator: the whole coordinator in one file.
 *
 * A hono app on Web-standard Request/Response. It keeps the registry of workers (direct mode:
 * one record per worker; leader mode: one document per cluster), spends store writes within a
 * daily hard cap, answers the admin API and routes `/api/service/<name>/<rest>` to a healthy
 * worker: power of two choices on in-flight x latency, outlier ejection, circuit breakers,
 * retries within a budget, a bounded queue, the leader agent's live view, metrics and scaling
 * signals, and the dashboard at /admin. It imports only `hono` and `zod`; runtime handles (a
 * KV binding, a Deno.Kv, a file system, a faster upstream client) are handed in by the
 * starters in `scripts/`.
 *
 * Its trust boundaries (docs/SECURITY.md): guards that fail closed, agent requests signed by the
 * key of the PeerId they claim, a cluster's roster, upstreams only where the operator allows,
 * requests framed by the proxy itself, workers blamed only for their own faults, every
 * per-isolate collection bounded, documents capped, errors told to clients without detail.
 *
 * Contents (`//#region` blocks; each uses only what is above it, which
 * test/coordinator-layout.test.ts checks):
 *   Utilities            time, URLs, JSON answers, deferred work, errors
 *   Wire schemas         the zod schemas of every body agents send and every answer, the name rules
 *   Upstream policy      which hosts the proxy may call (`ROLLCALL_UPSTREAM_ALLOW`)
 *   Configuration        `CoordinatorInit`, `Settings`, `resolveSettings`, `configFromEnv`
 *   Store                the `Store` interface and its drivers
 *   Pure registry logic  digest, merge of cluster reports, write decisions, staleness
 *   Write budget         the daily hard cap on store writes
 *   Registry             per-isolate state over the store; the routing table
 *   Registry operations  register, heartbeat, unregister (direct), cluster heartbeat (leader)
 *   Security             bearer tokens, guards, signed agent requests, the live view's credential
 *   Routing health       traffic windows, breakers, retry budget, endpoints, latency, picker,
 *                        ejection, service figures
 *   Paths and forwarding path safety, aliases, replayable bodies, forwarded headers
 *   Router               per-isolate routing state, live views, metrics
 *   Routing and proxy    admit, forward, retry, answer
 *   Dashboard            the /admin page, its snapshot, events, actions
 *   The app              `createCoordinator`: the wiring of the pieces above
 *   Default export       Cloudflare Workers and `bun coordinator.ts`
 */
import { type Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { cors } from "hono/cors";
import { z } from "zod";

/** Version reported by `/health`. */
export const COORDINATOR_VERSION = "0.1.0";

//#region Utilities
// Small helpers every region below uses: time, URLs, JSON answers, deferred work, errors.

const MINUTE = 60_000;

/** A source of time (ms since the epoch). */
export interface ClockLike {
  now(): number;
}

const systemNow: ClockLike = { now: () => Date.now() };

function trimSlash(url: string): string {
  return url.endsWith("/") ? url.slice(0, -1) : url;
}

/** Where the path of an absolute URL starts (the first `/` after `scheme://host`). */
function pathStart(url: string): number {
  return url.indexOf("/", url.indexOf("//") + 2);
}

/** The path of an absolute URL as sent (not decoded), without the query; cheaper than `new URL`. */
function pathOf(url: string, at = pathStart(url)): string {
  const q = url.indexOf("?", at);
  return q === -1 ? url.slice(at) : url.slice(at, q);
}

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return (
      (u.protocol === "http:" || u.protocol === "https:") &&
      u.hostname !== "" &&
      u.username === "" &&
      u.password === "" &&
      u.search === "" &&
      u.hash === ""
    );
  } catch {
    return false;
  }
}

function iso(ms: number): string | null {
  return ms > 0 ? new Date(ms).toISOString() : null;
}

function json(body: unknown, status: number, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=UTF-8", ...extra },
  });
}

/** Something that keeps a promise running after the answer (Workers' ExecutionContext). */
interface WaitUntil {
  waitUntil(promise: Promise<unknown>): void;
}

/** Runs a promise after the answer: `waitUntil` on Workers, detached elsewhere. */
function defer(exec: WaitUntil | null, promise: Promise<unknown>): void {
  const quiet = promise.catch(() => {});
  exec?.waitUntil(quiet); // elsewhere the promise runs on by itself
}

function issues(err: z.ZodError): { path: string; message: string }[] {
  return err.issues
    .slice(0, 10)
    .map((i) => ({ path: i.path.map(String).join("."), message: i.message }));
}

/** Whether a Content-Type is JSON (`application/json`, `application/<x>+json`, any parameters). */
function isJsonType(type: string | undefined): boolean {
  const media = (type ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  return media === "application/json" || /^application\/[a-z0-9.+-]+\+json$/.test(media);
}

/** Thrown when configuration from env/bindings is invalid. */
export class CoordinatorConfigError extends Error {
  override name = "CoordinatorConfigError";
}

//#endregion

//#region Wire schemas
// Every request body the coordinator accepts and every JSON answer it gives, the name rules

/**
 * The one name rule of clusters, services and workers: 1-64 of A-Z a-z 0-9 . _ -, starting with
 * a letter or digit (mesh/schema.ts `NAME_PATTERN` is its copy, test/name-rule.test.ts).
 */
const SERVICE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$/;

/** A worker's stable ID (direct mode: any; leader mode: the libp2p PeerId). */
const WorkerIdSchema = z
  .string()
  .regex(
    ID_PATTERN,
    "must be 1-128 letters, digits or . _ : @ + = -, starting with a letter or digit",
  );

const BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/** Decodes base58btc (the Bitcoin alphabet); null when a character is outside it. @internal */
export function base58Decode(text: string): Uint8Array | null {
  let zeros = 0;
  while (zeros < text.length && text[zeros] === "1") zeros++;
  const bytes: number[] = []; // base 256, least significant first
  for (let i = zeros; i < text.length; i++) {
    let carry = BASE58.indexOf(text[i] as string);
    if (carry < 0) return null;
    for (let j = 0; j < bytes.length; j++) {
      carry += (bytes[j] as number) * 58;
      bytes[j] = carry & 0xff;
      carry >>= 8;
    }
    while (carry > 0) {
      bytes.push(carry & 0xff);
      carry >>= 8;
    }
  }
  const out = new Uint8Array(zeros + bytes.length);
  for (let i = 0; i < bytes.length; i++) out[out.length - 1 - i] = bytes[i] as number;
  return out;
}

/**
 * An Ed25519 libp2p PeerId is the base58btc identity multihash (0x00, length 0x24) of the
 * protobuf PublicKey {Type: Ed25519 (0x08 0x01), Data: 32 bytes (0x12 0x20)}: "12D3KooW...".
 */
const ED25519_PEER_ID_PREFIX = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/**
 * The raw 32-byte Ed25519 public key inside a PeerId, or null when `id` is no Ed25519 PeerId.
 * @internal
 */
export function peerIdPublicKey(id: string): Uint8Array | null {
  if (!id.startsWith("12D3KooW") || id.length > 60) return null;
  const bytes = base58Decode(id);
  if (bytes === null || bytes.length !== 38) return null;
  for (let i = 0; i < ED25519_PEER_ID_PREFIX.length; i++) {
    if (bytes[i] !== ED25519_PEER_ID_PREFIX[i]) return null;
  }
  return bytes.slice(6);
}

/**
 * Whether a worker id is an Ed25519 PeerId: then only a request signed by its key may use it.
 * @internal
 */
export function isPeerId(id: string): boolean {
  return peerIdPublicKey(id) !== null;
}

/** A service name: 1-64 letters, digits, `.`, `_`, `-`, starting with a letter or digit. */
export const ServiceNameSchema = z
  .string()
  .regex(
    SERVICE_NAME_PATTERN,
    "must be 1-64 letters, digits or . _ -, starting with a letter or digit",
  );

/**
 * A cluster name, the one rule for the agent's `--cluster` and a report's `cluster`: the same
 * as a service name (`mesh/mesh.ts` keeps a copy, as mesh/ cannot import this file).
 */
export const ClusterNameSchema = ServiceNameSchema;

/**
 * A worker's human name (an agent's `--name`, by default its hostname): shown in the admin API,
 * logs and the `X-Rollcall-Worker-Name` header, never used to route. Same rule as a service name.
 */
export const WorkerNameSchema = ServiceNameSchema;

/** An http(s) URL without credentials, query or fragment. */
export const HttpUrlSchema = z
  .string()
  .max(2048)
  .refine(isHttpUrl, "must be an http(s) URL without credentials, query or fragment");

/** An optional field that workers of the old coordinator may send as "" for "none": read as absent. */
function blankIsAbsent<T extends z.ZodType>(schema: T) {
  return z.preprocess((v) => (v === "" ? null : v), schema.nullish());
}

const Scalar = z.union([z.string().max(256), z.number(), z.boolean(), z.null()]);
const Amount = z.union([z.number().nonnegative(), z.string().max(64)]);

/** Worker capabilities (known fields typed, other flat fields kept). */
export const CapabilitiesSchema = z
  .object({
    cpu_cores: z.number().nonnegative().nullish(),
    ram: Amount.nullish(),
    storage: Amount.nullish(),
    worker_type: z.string().max(32).nullish(),
    has_gpu: z.boolean().nullish(),
    gpu_memory: Amount.nullish(),
    gpu_type: z.string().max(128).nullish(),
    has_storage: z.boolean().nullish(),
    storage_type: z.string().max(64).nullish(),
  })
  .catchall(Scalar)
  .refine((o) => Object.keys(o).length <= 64, "must have at most 64 fields");

/** Capabilities of a worker. */
export type Capabilities = z.infer<typeof CapabilitiesSchema>;

/** A worker's name from what it sent: `name`, else an old agent's `capabilities.hostname`. */
function workerName(
  name: string | null | undefined,
  capabilities: Capabilities | null | undefined,
) {
  if (name) return name;
  const host = capabilities?.hostname;
  return typeof host === "string" && SERVICE_NAME_PATTERN.test(host) ? host : null;
}

/** A container / service entry of a direct-mode registration. */
const ContainerSchema = z.object({
  name: ServiceNameSchema,
  service_url: blankIsAbsent(HttpUrlSchema),
  url: blankIsAbsent(HttpUrlSchema),
  port: z.number().int().min(1).max(65535).nullish(),
  health_endpoint: z.string().max(256).nullish(),
  version: z.string().max(64).nullish(),
  status: z.string().max(32).nullish(),
});

/** A container / service entry of a direct-mode registration. */
type Container = z.infer<typeof ContainerSchema>;

/** `POST /api/worker/register`. */
export const RegisterBodySchema = z.object({
  worker_id: blankIsAbsent(WorkerIdSchema),
  name: blankIsAbsent(WorkerNameSchema),
  capabilities: CapabilitiesSchema.nullish(),
  ip_address: z.string().max(255).nullish(),
  tunnel_url: blankIsAbsent(HttpUrlSchema),
  services: z
    .array(z.union([ServiceNameSchema, ContainerSchema]))
    .max(64)
    .nullish(),
  containers: z.array(ContainerSchema).max(64).nullish(),
  wants_heartbeat_leadership: z.boolean().nullish(),
});

/** `POST /api/worker/register`. */
type RegisterBody = z.infer<typeof RegisterBodySchema>;

/** `POST /api/worker/register` as an agent may send it (what `RegisterBodySchema` accepts). */
export type RegisterBodyInput = z.input<typeof RegisterBodySchema>;

const StatusWord = z
  .string()
  .regex(/^[A-Za-z][A-Za-z_-]{0,31}$/, "must be a word of at most 32 letters");

/** An informational figure (load, free memory): old agents send numbers, strings ("3.2GB") or null. */
const Info = z.union([z.number().nonnegative(), z.string().max(64), z.null()]).optional();

/** `POST /api/worker/heartbeat`. Unknown fields are ignored (old agents send more). */
export const HeartbeatBodySchema = z.object({
  worker_id: WorkerIdSchema,
  status: StatusWord.default("online"),
  current_load: Info,
  available_memory: Info,
  /** Per-service state of the universal agent, e.g. `{"ocr": "running", "vllm": "stopped"}`. */
  services_status: z.record(z.string(), z.unknown()).nullish(),
});

/** `POST /api/worker/heartbeat`. */
type HeartbeatBody = z.infer<typeof HeartbeatBodySchema>;

/** `POST /api/worker/heartbeat` as an agent may send it (what `HeartbeatBodySchema` accepts). */
export type HeartbeatBodyInput = z.input<typeof HeartbeatBodySchema>;

/** The latest time a JS Date can show (ms since the epoch): later ones cannot be written out. */
const MAX_DATE_MS = 8.64e15;

/** Status of a member in a cluster report. */
const MemberStatusSchema = z.enum(["online", "degraded", "draining", "offline", "left"]);

/** A service of a member in a cluster report. */
const MemberServiceSchema = z.object({
  name: ServiceNameSchema,
  url: HttpUrlSchema.nullish(),
  status: z.enum(["healthy", "unhealthy"]).default("healthy"),
  latency_ms: z.number().nonnegative().nullish(),
});

/** A member of a cluster report. */
export const ClusterMemberSchema = z.object({
  worker_id: WorkerIdSchema,
  name: WorkerNameSchema.nullish(),
  incarnation: z.number().int().nonnegative().default(0),
  status: MemberStatusSchema,
  url: HttpUrlSchema,
  tier: z.union([z.literal(1), z.literal(2), z.literal(3)]).nullish(),
  capabilities: CapabilitiesSchema.nullish(),
  last_seen: z.number().int().nonnegative().max(MAX_DATE_MS).nullish(),
  services: z
    .array(MemberServiceSchema)
    .max(64)
    .default([])
    .refine(
      (list) => new Set(list.map((s) => s.name)).size === list.length,
      "service names must be unique",
    ),
});

/** A member of a cluster report. */
export type ClusterMemberReport = z.infer<typeof ClusterMemberSchema>;

/** `POST /api/cluster/heartbeat` (leader mode); see docs/PROTOCOL.md. */
export const ClusterReportSchema = z.object({
  cluster: ClusterNameSchema.default("default"),
  leader_id: WorkerIdSchema,
  term: z.number().int().nonnegative(),
  sequence: z.number().int().nonnegative(),
  members: z
    .array(ClusterMemberSchema)
    .max(1000)
    .refine(
      (list) => new Set(list.map((m) => m.worker_id)).size === list.length,
      "member worker_ids must be unique",
    ),
  digest: z.string().max(128).nullish(),
});

/** `POST /api/cluster/heartbeat` (leader mode), as parsed (defaults applied). */
type ClusterReport = z.infer<typeof ClusterReportSchema>;

/** `POST /api/cluster/heartbeat` (leader mode), as an agent sends it (defaults optional). */
export type ClusterReportInput = z.input<typeof ClusterReportSchema>;

// Answers: what the coordinator sends back. The coordinator types each answer it builds with
// the schema's `z.input` (a missing or unknown field fails typecheck); the agent, the `rollcall`
// commands and the scripts parse what they receive with the schema and use its `z.output`, so
// a malformed or hostile answer is a clear error there, never a crash or a wrong value. Fields
// the contract (docs/PROTOCOL.md) names are required; where the coordinator this one succeeds
// sent fewer, what this coordinator adds is optional.

/** A worker's tier: 1 GPU, 2 CPU (the default), 3 storage. */
const TierSchema = z.union([z.literal(1), z.literal(2), z.literal(3)]);
const CountSchema = z.number().int().nonnegative();
const IsoTimeSchema = z.iso.datetime();
/** A list of service names as an answer carries it (at most what a worker may register). */
const ServiceNamesSchema = z.array(ServiceNameSchema).max(128);

/**
 * Every error answer: `error` says what failed (sentence case), `message` why, `details` which
 * fields of a body were refused; `request_id` names the log line of a generic 5xx; a signature
 * refused as expired carries the coordinator's `server_time`; the proxy's 502/503/504 add the
 * service, the worker and the services available. Other fields may follow.
 */
export const ErrorAnswerSchema = z.looseObject({
  error: z.string().max(1024),
  message: z.string().max(4096).optional(),
  details: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  request_id: z.string().max(64).optional(),
  server_time: z.number().int().nonnegative().max(MAX_DATE_MS).optional(),
  available_services: ServiceNamesSchema.optional(),
  suggestion: z.string().optional(),
  service: z.string().optional(),
  worker: z.string().optional(),
});

/** Every error answer, as the coordinator builds it. */
type ErrorAnswerInput = z.input<typeof ErrorAnswerSchema>;

/** The answer to `POST /api/worker/register`. */
export const RegisterAnswerSchema = z.object({
  status: z.literal("registered").optional(),
  worker_id: WorkerIdSchema,
  tier: TierSchema,
  /** Seconds between two heartbeats. */
  heartbeat_interval: z.number().positive(),
  is_heartbeat_leader: z.boolean(),
  services_registered: ServiceNamesSchema,
  /** What the universal agent of the old system reads: the services it may run. */
  assigned_services: ServiceNamesSchema.optional(),
  /** Whether the registration cost a store write. */
  written: z.boolean().optional(),
});

/** The answer to `POST /api/worker/register`, as read. */
export type RegisterAnswer = z.output<typeof RegisterAnswerSchema>;

/** The answer to `POST /api/worker/heartbeat`, and to `GET /api/cluster/auth` (no `written`). */
export const OkAnswerSchema = z.object({
  status: z.literal("ok"),
  /** Whether the heartbeat cost a store write. */
  written: z.boolean().optional(),
});

/** The answer to `DELETE /api/worker/unregister/<id>`. */
export const UnregisterAnswerSchema = z.object({
  status: z.literal("ok"),
  worker_id: WorkerIdSchema.optional(),
  removed: z.boolean().optional(),
  written: z.boolean().optional(),
});

/** The answer to `GET /api/worker/find/<service>`: a healthy provider (the old agents' lookup). */
export const FindAnswerSchema = z.object({
  worker_url: HttpUrlSchema,
  worker_id: WorkerIdSchema,
  name: WorkerNameSchema.nullable(),
  service: ServiceNameSchema,
  tier: TierSchema,
});

/** Why a report did or did not cost a write. */
const WriteReasonSchema = z.enum(["changed", "keepalive", "unchanged", "deferred"]);

/** Why a report did or did not cost a write. */
type WriteReason = z.output<typeof WriteReasonSchema>;

/** The answer to `POST /api/cluster/heartbeat`. */
export const ClusterHeartbeatAnswerSchema = z.object({
  status: z.literal("ok"),
  written: z.boolean(),
  reason: WriteReasonSchema,
  writes_today: CountSchema,
  write_budget: CountSchema,
  next_keepalive_at: IsoTimeSchema,
  /** When the leader should report again though nothing changed (its keepalive). */
  next_keepalive_in_s: z.number().nonnegative(),
  digest: z.string().max(128),
});

/** The answer to `POST /api/cluster/heartbeat`, as read. */
export type ClusterHeartbeatAnswer = z.output<typeof ClusterHeartbeatAnswerSchema>;

/**
 * What the coordinator reads of the leader agent's live view (`GET <agent url>/_agent/cluster`,
 * the one answer the agent gives and the coordinator reads): the agent builds it typed by this
 * schema's `z.input`.
 */
export const LiveViewSchema = z.object({
  cluster: z.string().nullish(),
  leader: z.object({ id: z.string(), term: z.number() }).nullish(),
  // `state`: the member's liveness in the leader's mesh (a report leaves it out to save writes).
  members: z.array(ClusterMemberSchema.extend({ state: z.string().max(16).nullish() })).max(1000),
});

/** `GET /health`: what runs and what is open. */
export const HealthAnswerSchema = z.object({
  status: z.literal("healthy"),
  service: z.literal("rollcall-coordinator"),
  version: z.string(),
  mode: z.enum(["secured", "open-local-dev"]),
  auth: z.object({
    cluster_token: z.boolean(),
    admin_token: z.boolean(),
    agent_endpoints: z.enum(["open", "token", "disabled"]),
    admin_endpoints: z.enum(["open", "token", "disabled"]),
    legacy_workers_admitted: z.boolean(),
    signed_ids: z.string(),
    live_view: z.enum(["off", "agent-token", "open"]),
  }),
  store: z.object({ kind: z.string(), persistent: z.boolean() }),
  time: IsoTimeSchema,
});

/** A figure a worker sent as it was (old agents send numbers, strings or null). */
const InfoFigureSchema = z.union([z.number(), z.string()]).nullable();

/** One worker in `GET /api/admin/workers`: its effective status and routing. */
export const WorkerViewSchema = z.object({
  worker_id: WorkerIdSchema,
  /** The worker's human name (its agent's `--name`), or null when it sent none. */
  name: WorkerNameSchema.nullable(),
  tier: TierSchema,
  status: z.string(),
  healthy: z.boolean(),
  last_heartbeat: IsoTimeSchema.nullable(),
  capabilities: CapabilitiesSchema,
  services: ServiceNamesSchema,
  service_urls: z.record(z.string(), z.string().nullable()),
  tunnel_url: z.string().nullable(),
  ip_address: z.string().nullable(),
  is_heartbeat_leader: z.boolean(),
  mode: z.enum(["direct", "cluster"]),
  cluster: ClusterNameSchema.nullable(),
  current_load: InfoFigureSchema,
  available_memory: InfoFigureSchema,
  registered_at: IsoTimeSchema.nullable(),
});

/** `GET /api/admin/workers`. */
export const WorkersAnswerSchema = z.array(WorkerViewSchema);

/** Whether the members shown (and routed to) come from a leader's live view or the store. */
const SourceSchema = z.enum(["live", "stored"]);
const BreakerStateSchema = z.enum(["closed", "open", "half_open"]);
const ScalingSignalSchema = z.object({
  signal: z.enum(["scale_up", "scale_down", "steady"]),
  reason: z.string(),
});

/** `GET /api/admin/services`: each service's providers, their health and routing state. */
export const ServicesAnswerSchema = z.object({
  services: z.record(
    ServiceNameSchema,
    z.object({
      total_workers: CountSchema,
      healthy_workers: CountSchema,
      status: z.enum(["available", "unavailable"]),
      // What this coordinator adds to the contract's services view:
      serving_workers: CountSchema.optional(),
      in_flight: CountSchema.optional(),
      queue_length: CountSchema.optional(),
      scaling: ScalingSignalSchema.optional(),
      workers: z.array(
        z.object({
          worker_id: WorkerIdSchema,
          url: z.string(),
          tier: TierSchema,
          status: z.string(),
          health: z.enum(["healthy", "degraded", "unhealthy"]),
          /** Why the proxy may not call its URL (`ROLLCALL_UPSTREAM_ALLOW`). */
          refused: z.string().optional(),
          breaker: BreakerStateSchema.nullable(),
          ejected: z.boolean(),
          in_flight: CountSchema,
        }),
      ),
    }),
  ),
  total_services: CountSchema,
  source: SourceSchema.optional(),
});

/** `GET /api/admin/services`, as read. */
export type ServicesAnswer = z.output<typeof ServicesAnswerSchema>;

/** `GET /api/admin/breakers`: one row per service and worker. */
export const BreakersAnswerSchema = z.object({
  breakers: z.array(
    z.object({
      service: ServiceNameSchema,
      worker_id: WorkerIdSchema,
      state: BreakerStateSchema,
      open_until: IsoTimeSchema.nullable(),
      trips: CountSchema,
      window: z.object({ requests: z.number().nonnegative(), failures: z.number().nonnegative() }),
      ejected: z.boolean(),
      ejected_until: IsoTimeSchema.nullable(),
      ejections: CountSchema,
      consecutive_failures: CountSchema,
    }),
  ),
  source: SourceSchema,
});

/** `GET /api/admin/budget`: the day's store writes. */
export const BudgetAnswerSchema = z.object({
  day: z.string(),
  used_today: CountSchema,
  cap: CountSchema,
  remaining: CountSchema,
  resets_at: IsoTimeSchema,
  /** Documents this isolate keeps until the budget allows their write. */
  pending_writes: CountSchema,
});

/** `GET /api/admin/budget`, as read. */
export type BudgetAnswer = z.output<typeof BudgetAnswerSchema>;

/** A cluster's leader and lease, as `GET /api/admin/leader` and `/stats` show them. */
export const ClusterSummarySchema = z.object({
  cluster: ClusterNameSchema,
  leader_id: WorkerIdSchema.nullable(),
  term: CountSchema.nullable(),
  /** Each leader's last view (two after a partition). */
  leaders: z.array(
    z.object({
      leader_id: WorkerIdSchema,
      term: CountSchema,
      sequence: CountSchema,
      reported_at: CountSchema,
      members: z.array(WorkerIdSchema),
    }),
  ),
  members: CountSchema,
  stale: z.boolean(),
  last_write_at: IsoTimeSchema.nullable(),
  last_report_at: IsoTimeSchema.nullable(),
  next_keepalive_at: IsoTimeSchema.nullable(),
  digest: z.string(),
  pending_write: z.boolean(),
  /** Where the members shown (and routed to) come from. */
  source: SourceSchema,
  /** The leader's agent URL (its live view is read there). */
  leader_url: z.string().nullable(),
});

/** `GET /api/admin/leader`. */
export const LeaderAnswerSchema = z.object({ clusters: z.array(ClusterSummarySchema) });

/** `GET /api/admin/stats`: counts by health and tier, services, the write budget, leaders. */
export const StatsAnswerSchema = z.object({
  total_workers: CountSchema,
  healthy_workers: CountSchema,
  offline_workers: CountSchema,
  by_tier: z.record(z.string(), CountSchema),
  total_services: CountSchema,
  write_budget: BudgetAnswerSchema,
  leader: z
    .object({
      cluster: ClusterNameSchema,
      leader_id: WorkerIdSchema.nullable(),
      term: CountSchema.nullable(),
      stale: z.boolean(),
    })
    .nullable(),
  clusters: z.array(ClusterSummarySchema),
});

//#endregion

//#region Upstream policy
// Which hosts the proxy may call (addresses, networks, names), pure

/**
 * Which upstream hosts the proxy may call, parsed once from `ROLLCALL_UPSTREAM_ALLOW`: address
 * classes, networks and host names. Link-local and other special addresses never pass.
 */
export interface UpstreamPolicy {
  /** Addresses outside every special range, and host names not otherwise listed. */
  readonly public: boolean;
  /** 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7. */
  readonly private: boolean;
  /** 127/8, ::1, localhost. */
  readonly loopback: boolean;
  /** Networks allowed whatever their class: address bytes and prefix length. */
  readonly cidrs: readonly { bytes: Uint8Array; bits: number }[];
  /** Host names allowed whatever they resolve to (lower case; `*.` matches subdomains). */
  readonly names: readonly string[];
  /** The list as configured. */
  readonly text: string;
}

/** The class of an address: the policy allows the first three by class, never the last. */
type AddressClass = "public" | "private" | "loopback" | "special";

function parseIPv4(text: string): Uint8Array | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i] as string;
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) return null;
    out[i] = Number(part);
  }
  return out;
}

function parseIPv6(text: string): Uint8Array | null {
  const t = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
  if (!t.includes(":") || !/^[0-9a-fA-F:.]+$/.test(t)) return null;
  const halves = t.split("::");
  if (halves.length > 2) return null;
  const groups = (half: string): number[] | null => {
    if (half === "") return [];
    const out: number[] = [];
    const items = half.split(":");
    for (let i = 0; i < items.length; i++) {
      const item = items[i] as string;
      if (i === items.length - 1 && item.includes(".")) {
        const v4 = parseIPv4(item);
        if (!v4) return null;
        out.push(
          ((v4[0] as number) << 8) | (v4[1] as number),
          ((v4[2] as number) << 8) | (v4[3] as number),
        );
      } else if (/^[0-9a-fA-F]{1,4}$/.test(item)) out.push(Number.parseInt(item, 16));
      else return null;
    }
    return out;
  };
  const head = groups(halves[0] as string);
  const tail = halves.length === 2 ? groups(halves[1] as string) : [];
  if (!head || !tail) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...head, ...Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    out[2 * i] = (all[i] as number) >> 8;
    out[2 * i + 1] = (all[i] as number) & 0xff;
  }
  return out;
}

/** An IP literal (IPv4, IPv6 with or without brackets) as 4 or 16 bytes, or null for a name. */
function parseIp(text: string): Uint8Array | null {
  return parseIPv4(text) ?? parseIPv6(text);
}

function inPrefix(bytes: Uint8Array, prefix: readonly number[], bits: number): boolean {
  for (let i = 0; i < bits; i++) {
    const byte = i >> 3;
    const mask = 0x80 >> (i & 7);
    if (((bytes[byte] as number) & mask) !== ((prefix[byte] ?? 0) & mask)) return false;
  }
  return true;
}

/**
 * Cloud metadata services outside link-local, never allowed whatever the list says (like
 * METADATA_NAMES): AWS IMDS over IPv6, Alibaba Cloud, Oracle Cloud Classic, Azure WireServer.
 */
const METADATA_ADDRESSES = ["fd00:ec2::254", "100.100.100.200", "192.0.0.192", "168.63.129.16"].map(
  (a) => (parseIPv4(a) ?? parseIPv6(a)) as Uint8Array,
);

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The class of an address (4 or 16 bytes); IPv4-mapped and NAT64 IPv6 go by their IPv4 part. */
function addressClass(bytes: Uint8Array): AddressClass {
  if (METADATA_ADDRESSES.some((m) => sameBytes(m, bytes))) return "special";
  if (bytes.length === 16) {
    const mapped = inPrefix(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff], 96);
    const nat64 = inPrefix(bytes, [0, 0x64, 0xff, 0x9b], 96);
    if (mapped || nat64) return addressClass(bytes.subarray(12));
    if (bytes.every((b, i) => b === (i === 15 ? 1 : 0))) return "loopback";
    if (bytes.every((b) => b === 0)) return "special"; // ::
    if (inPrefix(bytes, [0xfe, 0x80], 10)) return "special"; // link-local
    if (inPrefix(bytes, [0xff], 8)) return "special"; // multicast
    if (inPrefix(bytes, [0xfc], 7)) return "private";
    return "public";
  }
  const [a, b] = bytes as unknown as [number, number];
  if (a === 0 || a >= 224) return "special"; // this network (0.0.0.0 reaches the host), multicast, reserved
  if (a === 169 && b === 254) return "special"; // link-local: cloud metadata lives here
  if (a === 127) return "loopback";
  if (a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168)) return "private";
  if (a === 100 && b >= 64 && b <= 127) return "private"; // carrier-grade NAT
  return "public";
}

/** Host names that are cloud metadata services whatever they resolve to. */
const METADATA_NAMES = new Set(["metadata", "metadata.google.internal", "instance-data"]);

/** Parses `ROLLCALL_UPSTREAM_ALLOW`; throws CoordinatorConfigError naming a bad entry. @internal */
export function parseUpstreamAllow(text: string): UpstreamPolicy {
  const entries = text
    .split(/[\s,]+/)
    .map((e) => e.trim().toLowerCase())
    .filter(Boolean);
  const policy = {
    public: false,
    private: false,
    loopback: false,
    cidrs: [] as { bytes: Uint8Array; bits: number }[],
    names: [] as string[],
    text: entries.join(","),
  };
  const bad = (entry: string, why: string) =>
    new CoordinatorConfigError(`ROLLCALL_UPSTREAM_ALLOW: ${JSON.stringify(entry)} ${why}`);
  for (const entry of entries) {
    if (entry === "public" || entry === "private" || entry === "loopback") {
      policy[entry] = true;
    } else if (entry === "any") {
      policy.public = policy.private = policy.loopback = true;
    } else if (entry.includes("/")) {
      const [addr = "", len = ""] = entry.split("/");
      const bytes = parseIp(addr);
      const bits = Number(len);
      if (!bytes || !/^\d+$/.test(len) || bits > bytes.length * 8) {
        throw bad(entry, "is not a network like 10.1.0.0/16 or fd00::/8");
      }
      if (addressClass(bytes) === "special" && bits >= 8) {
        throw bad(entry, "is a link-local or special network: never allowed");
      }
      policy.cidrs.push({ bytes, bits });
    } else if (parseIp(entry)) {
      const bytes = parseIp(entry) as Uint8Array;
      if (addressClass(bytes) === "special")
        throw bad(entry, "is a special address: never allowed");
      policy.cidrs.push({ bytes, bits: bytes.length * 8 });
    } else if (
      /^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(entry)
    ) {
      policy.names.push(entry);
    } else {
      throw bad(
        entry,
        "is not public, private, loopback, any, a network, an address or a host name",
      );
    }
  }
  return policy;
}

function nameListed(host: string, names: readonly string[]): boolean {
  for (const n of names) {
    if (n.startsWith("*.") ? host.endsWith(n.slice(1)) : host === n) return true;
  }
  return false;
}

/** Whether the policy allows an address (4 or 16 bytes) by its networks or its class. */
function addressAllowed(bytes: Uint8Array, policy: UpstreamPolicy): boolean {
  const cls = addressClass(bytes);
  if (cls === "special") return false;
  for (const c of policy.cidrs) {
    if (c.bytes.length === bytes.length && inPrefix(bytes, Array.from(c.bytes), c.bits))
      return true;
  }
  return policy[cls];
}

/**
 * Why the proxy may not call `url` under `policy`, or null when it may. An IP literal goes by its
 * networks and class; a name by the names listed, then as `loopback` (localhost) or `public`.
 * What a name resolves to is checked where the connection is made (the Node and Deno starters'
 * upstream client), see `resolvedAllowed`.
 * @internal
 */
export function upstreamRefusal(url: string, policy: UpstreamPolicy): string | null {
  let host: string;
  try {
    host = new URL(url).hostname.toLowerCase();
  } catch {
    return "not a URL";
  }
  if (host.endsWith(".")) host = host.slice(0, -1);
  const bytes = parseIp(host);
  if (bytes) {
    if (addressClass(bytes) === "special")
      return "link-local, metadata and special addresses are never allowed";
    return addressAllowed(bytes, policy)
      ? null
      : `${addressClass(bytes)} addresses are not allowed`;
  }
  if (METADATA_NAMES.has(host)) return "cloud metadata names are never allowed";
  if (nameListed(host, policy.names)) return null;
  if (host === "localhost" || host.endsWith(".localhost")) {
    return policy.loopback ? null : "loopback addresses are not allowed";
  }
  return policy.public ? null : "host names are allowed only when listed or with public";
}

/**
 * Whether a connection to `address` (what `host` resolved to) is allowed: a listed name may
 * resolve anywhere but link-local and special addresses; any other name only where its address
 * is allowed. For an upstream client that resolves names itself (`scripts/node-fetch.ts`).
 */
function resolvedAllowed(host: string, address: string, policy: UpstreamPolicy): boolean {
  const bytes = parseIp(address);
  if (!bytes || addressClass(bytes) === "special") return false;
  const name = host.toLowerCase().replace(/\.$/, "");
  if (!parseIp(name) && nameListed(name, policy.names)) return true;
  return addressAllowed(bytes, policy);
}

//#endregion

//#region Configuration

/** What the proxy does with cookies (see `CoordinatorInit.cookies`). */
export type CookieMode = "pass" | "scope" | "strip";

/**
 * How a setting is read and what it holds: `token` a secret (set but blank is an error),
 * `positive` a number above 0, `count` a whole number from 0, `share` a number from 0 to 1,
 * `text` a string, `url` an http(s) URL or none, `cookies` a `CookieMode`, `aliases` a JSON
 * object of path to service, `upstreams` the `ROLLCALL_UPSTREAM_ALLOW` list.
 */
type SettingKind =
  | "token"
  | "bool"
  | "positive"
  | "count"
  | "share"
  | "text"
  | "url"
  | "cookies"
  | "aliases"
  | "upstreams";

/** One setting: its environment variable (none: code only), kind, default, meaning. */
interface SettingRow {
  env: string | null;
  kind: SettingKind;
  /** In the unit of the init field (ms where the key ends in Ms). */
  default: unknown;
  /** The environment variable's unit times this is the init field's (1000: seconds to ms). */
  scale?: number;
  /** A whole number at least this (the value is rounded down and raised to it). */
  min?: number;
  /** How a secret or URL is named in an error message. */
  label?: string;
  /** Said after the default in docs/DEPLOY.md, e.g. "48 min". */
  note?: string;
  /** The meaning, as docs/DEPLOY.md shows it. */
  doc: string;
}

/**
 * Every setting of the coordinator, written once: `CoordinatorInit`, `Settings`,
 * `resolveSettings`, `configFromEnv` and the settings table of docs/DEPLOY.md
 * (`settingsMarkdown`) follow from it.
 */
export const COORDINATOR_SETTINGS = {
  clusterToken: {
    env: "ROLLCALL_CLUSTER_TOKEN",
    kind: "token",
    default: null,
    label: "The cluster token",
    doc: "Bearer token agents send (`Authorization: Bearer …`) on register, heartbeat, unregister and `/api/cluster/heartbeat`. With no token at all the coordinator runs open (local dev); once any token is set, every guard needs its own (one without answers `403`). Set but empty: a configuration error.",
  },
  adminToken: {
    env: "ROLLCALL_ADMIN_TOKEN",
    kind: "token",
    default: null,
    label: "The admin token",
    doc: "Bearer token for `/api/admin/*` and `/metrics`. The cluster token does not open them; with a cluster token but no admin token they answer `403`.",
  },
  allowLegacyWorkers: {
    env: "ROLLCALL_ALLOW_LEGACY_WORKERS",
    kind: "bool",
    default: false,
    doc: "Admit direct-mode workers that send **no** `Authorization` header (workers written for the old coordinator). They may change only records token-less workers made, and only they may register without a `worker_id`. A wrong token is still refused; leader mode always needs the token.",
  },
  legacyRegisterLimit: {
    env: "ROLLCALL_LEGACY_REGISTER_LIMIT",
    kind: "count",
    default: 20,
    min: 0,
    doc: "New ids a client address may make per hour by registering without a `worker_id` (`429` beyond). The same tunnel URL and capabilities always get the same id back.",
  },
  writeCap: {
    env: "ROLLCALL_WRITE_CAP",
    kind: "positive",
    default: 1000,
    doc: "Hard cap on store writes + deletes per UTC day. Never passed.",
  },
  leaderReserve: {
    env: "ROLLCALL_LEADER_RESERVE",
    kind: "share",
    default: 0.1,
    doc: "Share of the cap only the leader report of a cluster that existed before today (UTC) may spend: a flood of other writes never defers it.",
  },
  maxDocBytes: {
    env: "ROLLCALL_MAX_DOC_BYTES",
    kind: "positive",
    default: 384 * 1024,
    min: 4096,
    doc: "Largest document stored (a worker record or a cluster document, in characters); a report or registration that would pass it gets `413` and changes nothing. Keep it under 400 KiB on Deno KV.",
  },
  keepaliveMs: {
    env: "ROLLCALL_KEEPALIVE_S",
    kind: "positive",
    default: 48 * MINUTE,
    scale: 1000,
    note: "48 min",
    doc: "Leader mode: the cluster document is rewritten at least this often (~30 writes/day).",
  },
  leaseGraceMs: {
    env: "ROLLCALL_LEASE_GRACE_S",
    kind: "positive",
    default: 10 * MINUTE,
    scale: 1000,
    doc: "Leader mode: members show `unknown` (and get no traffic) once the last write/report is older than keepalive + grace.",
  },
  directWriteIntervalMs: {
    env: "ROLLCALL_DIRECT_WRITE_INTERVAL_S",
    kind: "positive",
    default: 5 * MINUTE,
    scale: 1000,
    doc: "Direct mode: a heartbeat rewrites a record older than this.",
  },
  heartbeatIntervalS: {
    env: "ROLLCALL_HEARTBEAT_INTERVAL_S",
    kind: "positive",
    default: 30,
    doc: "Direct mode: the heartbeat interval told to workers.",
  },
  consistencyGraceMs: {
    env: "ROLLCALL_CONSISTENCY_GRACE_S",
    kind: "positive",
    default: MINUTE,
    scale: 1000,
    doc: "How long the store may take to show a write everywhere (Workers KV: 60 s); part of when a direct-mode worker shows offline.",
  },
  recordTtlS: {
    env: "ROLLCALL_RECORD_TTL_S",
    kind: "positive",
    default: 7 * 24 * 3600,
    doc: "Direct-mode records expire from the store after a week without a write (no delete spent).",
  },
  tableTtlMs: {
    env: "ROLLCALL_TABLE_TTL_S",
    kind: "positive",
    default: MINUTE,
    scale: 1000,
    doc: "Documents cached per isolate are re-read after this.",
  },
  listTtlMs: {
    env: "ROLLCALL_LIST_TTL_S",
    kind: "positive",
    default: 5 * MINUTE,
    scale: 1000,
    doc: "The key list cached per isolate is re-listed after this.",
  },
  storeTimeoutMs: {
    env: "ROLLCALL_STORE_TIMEOUT_MS",
    kind: "positive",
    default: 5000,
    doc: "A store call that takes longer fails like a store error (a hanging store holds no request).",
  },
  aliases: {
    env: "ROLLCALL_ALIASES",
    kind: "aliases",
    default: {},
    doc: 'JSON object of old path prefix → service, e.g. `{"/clients": "upload", "/uploads/": "upload"}`; the whole path is forwarded. `/health`, `/metrics` and `/api/...` stay the coordinator\'s.',
  },
  proxyTimeoutMs: {
    env: "ROLLCALL_PROXY_TIMEOUT_MS",
    kind: "positive",
    default: 30_000,
    doc: "Time a worker has to send response headers before the request fails over (idempotent methods) or gets `504`.",
  },
  maxAttempts: {
    env: "ROLLCALL_MAX_ATTEMPTS",
    kind: "positive",
    default: 10,
    doc: "Most providers tried for one request.",
  },
  replayBufferBytes: {
    env: null,
    kind: "positive",
    default: 1024 * 1024,
    doc: "Request bodies up to this size are kept so a failed attempt can be replayed.",
  },
  maxBodyBytes: {
    env: "ROLLCALL_MAX_BODY_BYTES",
    kind: "positive",
    default: 256 * 1024,
    doc: "Largest JSON body on the agent endpoints (`413` beyond).",
  },
  corsOrigin: {
    env: "ROLLCALL_CORS_ORIGIN",
    kind: "text",
    default: "*",
    doc: "`Access-Control-Allow-Origin` on the service routes and `/health`. The agent and admin endpoints send no CORS headers.",
  },
  allowedHosts: {
    env: "ROLLCALL_ALLOWED_HOSTS",
    kind: "text",
    default: null,
    doc: "While no token is set (open, local dev): Host names answered besides loopback ones (`localhost`, `*.localhost`, 127.0.0.0/8, `[::1]`), comma-separated; any other Host gets `421` (a DNS-rebound page). Not checked once a token is set.",
  },
  upstreamAllow: {
    env: "ROLLCALL_UPSTREAM_ALLOW",
    kind: "upstreams",
    default: "public,private",
    doc: "Upstreams the proxy may call, comma-separated: `public`, `private` (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), `loopback` (127/8, ::1, localhost), `any`, networks (`10.1.0.0/16`), addresses, host names (`*.example.com`). Link-local (169.254/16, fe80::/10), `0.0.0.0/8`, multicast, metadata names and addresses never. Refused ones show `refused` in `/api/admin/services`. `npm run dev` sets `loopback`.",
  },
  cookies: {
    env: "ROLLCALL_COOKIES",
    kind: "cookies",
    default: "pass",
    doc: "Upstream cookies: `pass` them (every service on the coordinator's origin shares them), `scope` each `Set-Cookie` to its service's path (`/api/service/<name>`, or the alias) without `Domain`, or `strip` cookies both ways.",
  },
  maxConcurrent: {
    env: "ROLLCALL_MAX_CONCURRENT",
    kind: "positive",
    default: 100,
    min: 1,
    doc: "Requests one worker may have in flight for one service. Beyond it the picker takes another provider; when all are at their limit requests queue.",
  },
  queueSize: {
    env: "ROLLCALL_QUEUE_SIZE",
    kind: "count",
    default: 100,
    min: 0,
    doc: "Requests that may wait per service while every provider is at its limit (`0`: none wait). A full queue answers `503` with `Retry-After: 1` at once.",
  },
  queueTimeoutMs: {
    env: "ROLLCALL_QUEUE_TIMEOUT_MS",
    kind: "positive",
    default: 5000,
    doc: "Longest wait in that queue, then `503` with `Retry-After: 1`.",
  },
  ejectAfterFailures: {
    env: "ROLLCALL_EJECT_AFTER",
    kind: "positive",
    default: 5,
    min: 1,
    doc: "Consecutive failures that eject a worker from a service: refused, dropped or timed-out connections, and 502/503/504 answers the service's other workers do not give (a 500 never counts).",
  },
  ejectBaseMs: {
    env: "ROLLCALL_EJECT_BASE_MS",
    kind: "positive",
    default: 10_000,
    doc: "The n-th ejection lasts n times this (up to `ROLLCALL_EJECT_MAX_MS`). Never more than half of a service's providers are ejected at once.",
  },
  ejectMaxMs: {
    env: "ROLLCALL_EJECT_MAX_MS",
    kind: "positive",
    default: 5 * MINUTE,
    doc: "Longest ejection.",
  },
  breakerFailureRatio: {
    env: "ROLLCALL_BREAKER_RATIO",
    kind: "share",
    default: 0.5,
    doc: "A worker's breaker (per service) opens when at least this share of its recent requests failed...",
  },
  breakerMinRequests: {
    env: "ROLLCALL_BREAKER_MIN_REQUESTS",
    kind: "positive",
    default: 10,
    min: 1,
    doc: "...among at least this many requests in the breaker's window.",
  },
  breakerWindowMs: {
    env: "ROLLCALL_BREAKER_WINDOW_MS",
    kind: "positive",
    default: 10_000,
    doc: "The breaker's window.",
  },
  breakerOpenMs: {
    env: "ROLLCALL_BREAKER_OPEN_MS",
    kind: "positive",
    default: 5000,
    doc: "How long an open breaker refuses requests before it lets one probe through.",
  },
  retryRatio: {
    env: "ROLLCALL_RETRY_RATIO",
    kind: "share",
    default: 0.2,
    doc: "Retry budget per service: retries may add this share of the requests in the retry window...",
  },
  retryMin: {
    env: "ROLLCALL_RETRY_MIN",
    kind: "count",
    default: 10,
    min: 0,
    doc: "...plus this many.",
  },
  retryWindowMs: {
    env: "ROLLCALL_RETRY_WINDOW_MS",
    kind: "positive",
    default: 10_000,
    doc: "The retry budget's window.",
  },
  latencyDecayMs: {
    env: "ROLLCALL_LATENCY_DECAY_MS",
    kind: "positive",
    default: 10_000,
    doc: "Time constant of the picker's latency EWMA.",
  },
  metricsWindowMs: {
    env: "ROLLCALL_METRICS_WINDOW_S",
    kind: "positive",
    default: MINUTE,
    scale: 1000,
    doc: "Window of the percentiles, throughput and scaling signals.",
  },
  liveView: {
    env: "ROLLCALL_LIVE_VIEW",
    kind: "bool",
    default: true,
    doc: "Read the leader agent's live view (`/_agent/cluster`) and route on it while it answers.",
  },
  liveViewTtlMs: {
    env: "ROLLCALL_LIVE_VIEW_TTL_MS",
    kind: "positive",
    default: 2000,
    doc: "How long a live view is used before it is refreshed (in the background).",
  },
  liveViewTimeoutMs: {
    env: "ROLLCALL_LIVE_VIEW_TIMEOUT_MS",
    kind: "positive",
    default: 500,
    doc: "How long the leader's agent has to answer for its live view.",
  },
  agentToken: {
    env: "ROLLCALL_AGENT_TOKEN",
    kind: "token",
    default: null,
    label: "The agent token",
    doc: "The agents' read-only live-view credential (their `--agent-token`), never the cluster or admin token. Sent as an HMAC of the time, never itself. With tokens set and none given, the coordinator does not read live views.",
  },
  scalingWebhook: {
    env: "ROLLCALL_SCALING_WEBHOOK",
    kind: "url",
    default: null,
    label: "Scaling webhook",
    doc: "URL that gets a `POST` (JSON) whenever a service's scaling signal changes.",
  },
  scalingWebhookTimeoutMs: {
    env: "ROLLCALL_SCALING_WEBHOOK_TIMEOUT_MS",
    kind: "positive",
    default: 2000,
    doc: "Time the webhook has to answer; it never holds up a request.",
  },
  scaleUpLatencyMs: {
    env: "ROLLCALL_SCALE_UP_P95_MS",
    kind: "positive",
    default: 1000,
    doc: "Latency (p95) that asks for more providers.",
  },
  scaleDownUtilization: {
    env: "ROLLCALL_SCALE_DOWN_UTILIZATION",
    kind: "share",
    default: 0.25,
    doc: "How busy one provider fewer may be before a service asks for fewer.",
  },
} as const satisfies Record<string, SettingRow>;

type SettingTable = typeof COORDINATOR_SETTINGS;

/** What a setting of a kind holds in `CoordinatorInit`. */
type InitValue<K extends SettingKind> = K extends "token" | "url"
  ? string | null
  : K extends "bool"
    ? boolean
    : K extends "positive" | "count" | "share"
      ? number
      : K extends "cookies"
        ? CookieMode
        : K extends "aliases"
          ? Record<string, string>
          : string;

/** What a setting of a kind holds once resolved. */
type SettingValue<K extends SettingKind> = K extends "upstreams" ? UpstreamPolicy : InitValue<K>;

/** Settings of a coordinator (`COORDINATOR_SETTINGS`); every field has a safe local default. */
export type CoordinatorInit = {
  [K in keyof SettingTable]?: InitValue<SettingTable[K]["kind"]>;
};

/** Resolved settings: every default applied. */
export type Settings = { [K in keyof SettingTable]: SettingValue<SettingTable[K]["kind"]> };

/** A secret setting: absent is null, an empty or blank value is a configuration error. */
function secret(name: string, value: string | null | undefined): string | null {
  if (value === undefined || value === null) return null;
  if (value.trim() === "")
    throw new CoordinatorConfigError(`${name} is set but empty: remove it or set a value`);
  return value;
}

/** Checks aliases: each path starts with / and shadows none of the API's, each target is a name. */
function checkAliases(aliases: Record<string, string>): Record<string, string> {
  for (const [prefix, service] of Object.entries(aliases)) {
    if (
      !prefix.startsWith("/") ||
      prefix.startsWith("/api/") ||
      prefix === "/health" ||
      prefix === "/metrics" ||
      prefix === "/admin" ||
      prefix.startsWith("/admin/")
    ) {
      throw new CoordinatorConfigError(
        `Alias path must start with / and not shadow the API: ${prefix}`,
      );
    }
    if (!SERVICE_NAME_PATTERN.test(service)) {
      throw new CoordinatorConfigError(`Alias target is not a valid service name: ${service}`);
    }
  }
  return aliases;
}

/** One setting's value from an init field (undefined: the default), checked. */
function resolveSetting(key: string, row: SettingRow, given: unknown): unknown {
  const value = given ?? row.default;
  switch (row.kind) {
    case "token":
      return secret(row.label ?? key, given as string | null | undefined);
    case "url": {
      const url = (given as string | null | undefined) || null;
      if (url !== null && !isHttpUrl(url)) {
        throw new CoordinatorConfigError(
          `${row.label ?? key} must be an http(s) URL without credentials`,
        );
      }
      return url;
    }
    case "share":
      if (!((value as number) >= 0 && (value as number) <= 1)) {
        throw new CoordinatorConfigError(`${key} must be between 0 and 1`);
      }
      return value;
    case "positive":
    case "count":
      return row.min === undefined ? value : Math.max(row.min, Math.floor(value as number));
    case "cookies":
      if (value !== "pass" && value !== "scope" && value !== "strip") {
        throw new CoordinatorConfigError("Cookies must be pass, scope or strip");
      }
      return value;
    case "aliases":
      return checkAliases(value as Record<string, string>);
    case "upstreams":
      return parseUpstreamAllow(value as string);
    default:
      return value;
  }
}

/** Applies defaults to an init object, and checks it (a bad value is a `CoordinatorConfigError`). */
export function resolveSettings(init: CoordinatorInit = {}): Settings {
  const given = init as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [key, row] of Object.entries(COORDINATOR_SETTINGS) as [string, SettingRow][]) {
    out[key] = resolveSetting(key, row, given[key]);
  }
  const settings = out as Settings;
  const { agentToken, clusterToken, adminToken } = settings;
  if (clusterToken !== null && clusterToken === adminToken) {
    throw new CoordinatorConfigError(
      "The cluster token must differ from the admin token: every agent holds the cluster token",
    );
  }
  if (agentToken !== null && (agentToken === clusterToken || agentToken === adminToken)) {
    throw new CoordinatorConfigError(
      "The agent token must differ from the cluster and admin tokens: it only reads live views",
    );
  }
  return settings;
}

/** One setting from its environment variable (undefined when unset), checked for its kind. */
function settingFromEnv(name: string, row: SettingRow, raw: unknown): unknown {
  if (row.kind === "token") {
    // A secret: set but blank is an error (an empty token must never mean "open").
    if (raw === undefined || raw === null) return null;
    if (typeof raw !== "string" || raw.trim() === "") {
      throw new CoordinatorConfigError(`${name} is set but empty: remove it or set a value`);
    }
    return raw.trim();
  }
  const v = typeof raw === "string" && raw.trim() !== "" ? raw.trim() : undefined;
  if (v === undefined) return row.kind === "url" ? null : undefined;
  const n = Number(v);
  switch (row.kind) {
    case "positive":
      if (!Number.isFinite(n) || n <= 0)
        throw new CoordinatorConfigError(`${name} must be a positive number`);
      return n * (row.scale ?? 1);
    case "count":
      if (!Number.isInteger(n) || n < 0)
        throw new CoordinatorConfigError(`${name} must be a whole number`);
      return n;
    case "share":
      if (!Number.isFinite(n) || n < 0 || n > 1) {
        throw new CoordinatorConfigError(`${name} must be between 0 and 1`);
      }
      return n;
    case "bool": {
      const word = v.toLowerCase();
      if (["1", "true", "yes", "on"].includes(word)) return true;
      if (["0", "false", "no", "off"].includes(word)) return false;
      throw new CoordinatorConfigError(`${name} must be true or false`);
    }
    case "cookies": {
      const mode = v.toLowerCase();
      if (mode === "pass" || mode === "scope" || mode === "strip") return mode;
      throw new CoordinatorConfigError(`${name} must be pass, scope or strip`);
    }
    case "aliases": {
      let parsed: unknown;
      try {
        parsed = JSON.parse(v);
      } catch {
        parsed = undefined;
      }
      const result = z.record(z.string(), z.string()).safeParse(parsed);
      if (!result.success) {
        throw new CoordinatorConfigError(`${name} must be a JSON object of path to service name`);
      }
      return result.data;
    }
    default:
      return v;
  }
}

/** Reads settings from env vars / Workers bindings (`ROLLCALL_*`); throws CoordinatorConfigError if bad. */
export function configFromEnv(env: Record<string, unknown>): CoordinatorInit {
  const init: Record<string, unknown> = {};
  for (const [key, row] of Object.entries(COORDINATOR_SETTINGS) as [string, SettingRow][]) {
    if (row.env !== null) init[key] = settingFromEnv(row.env, row, env[row.env]);
  }
  resolveSettings(init); // validates tokens, aliases, shares, the upstream list and the webhook URL
  return init as CoordinatorInit;
}

/** A setting's default as docs/DEPLOY.md shows it (in its environment variable's unit). */
function shownDefault(row: SettingRow): string {
  if (row.default === null) return "none";
  const value = typeof row.default === "number" ? row.default / (row.scale ?? 1) : row.default;
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return `\`${text}\`${row.note ? ` (${row.note})` : ""}`;
}

/**
 * The settings table of docs/DEPLOY.md, one row per environment variable (a test keeps the
 * page equal to it).
 * @internal
 */
export function settingsMarkdown(): string {
  const rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"];
  for (const row of Object.values(COORDINATOR_SETTINGS) as SettingRow[]) {
    if (row.env !== null) rows.push(`| \`${row.env}\` | ${shownDefault(row)} | ${row.doc} |`);
  }
  return rows.join("\n");
}

//#endregion

//#region Store
// One small interface, one driver per backend

/** Options of `Store.set`. */
export interface SetOptions {
  /** The key expires after this many seconds (Workers KV rounds up to 60). */
  ttlSeconds?: number;
}

/** The key-value store behind the registry. Values are strings (JSON text). */
export interface Store {
  /** Driver name: "memory", "file", "cloudflare-kv", "deno-kv". */
  readonly kind: string;
  /** Whether the data survives a restart of the process. */
  readonly persistent: boolean;
  /** The backend allows one write per key per this many ms (Workers KV: 1000); none if absent. */
  readonly minWriteIntervalMs?: number;
  /** The value of `key`, or null when absent or expired. */
  get(key: string): Promise<string | null>;
  /** Writes `value` at `key`. */
  set(key: string, value: string, options?: SetOptions): Promise<void>;
  /** Removes `key` (absent is fine). */
  delete(key: string): Promise<void>;
  /** Every key starting with `prefix`, sorted. */
  list(prefix: string): Promise<string[]>;
  /** Atomic write if the current value equals `expected` (null: absent); only where the backend has one. */
  compareAndSet?(
    key: string,
    expected: string | null,
    value: string,
    options?: SetOptions,
  ): Promise<boolean>;
}

/** Thrown when the store backend fails. */
export class StoreError extends Error {
  override name = "StoreError";
}

/**
 * The same store, with every failure turned into a StoreError naming the backend and operation,
 * and a call that takes longer than `timeoutMs` failed the same way (what it does meanwhile is
 * unknown: a write that timed out is kept pending and written again).
 */
function guardedStore(store: Store, timeoutMs: number): Store {
  const guard = async <T>(what: string, run: () => Promise<T>): Promise<T> => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new StoreError(`Store ${what} timed out after ${timeoutMs} ms (${store.kind})`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([run(), timeout]);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(`Store ${what} failed (${store.kind}): ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  };
  const cas = store.compareAndSet?.bind(store);
  return {
    kind: store.kind,
    persistent: store.persistent,
    ...(store.minWriteIntervalMs ? { minWriteIntervalMs: store.minWriteIntervalMs } : {}),
    get: (key) => guard("get", () => store.get(key)),
    set: (key, value, options) => guard("write", () => store.set(key, value, options)),
    delete: (key) => guard("delete", () => store.delete(key)),
    list: (prefix) => guard("list", () => store.list(prefix)),
    ...(cas
      ? {
          compareAndSet: (key, expected, value, options) =>
            guard("compare-and-set", () => cas(key, expected, value, options)),
        }
      : {}),
  };
}

interface Entry {
  v: string;
  e?: number;
}

function expired(entry: Entry | undefined, now: number): boolean {
  return entry?.e !== undefined && entry.e <= now;
}

function entryFor(value: string, options: SetOptions | undefined, now: number): Entry {
  return options?.ttlSeconds ? { v: value, e: now + options.ttlSeconds * 1000 } : { v: value };
}

function mapStore(
  kind: string,
  persistent: boolean,
  clock: ClockLike,
  load: () => Promise<Map<string, Entry>>,
  save: (map: Map<string, Entry>) => Promise<void>,
): Store {
  const get = async (key: string): Promise<string | null> => {
    const map = await load();
    const entry = map.get(key);
    return entry && !expired(entry, clock.now()) ? entry.v : null;
  };
  /** Every write also drops the entries that expired: they would otherwise stay forever. */
  const dropExpired = (map: Map<string, Entry>, now: number) => {
    for (const [k, e] of map) if (expired(e, now)) map.delete(k);
  };
  const set = async (key: string, value: string, options?: SetOptions): Promise<void> => {
    const map = await load();
    dropExpired(map, clock.now());
    map.set(key, entryFor(value, options, clock.now()));
    await save(map);
  };
  return {
    kind,
    persistent,
    get,
    set,
    async delete(key) {
      const map = await load();
      const size = map.size;
      dropExpired(map, clock.now());
      if (map.delete(key) || map.size !== size) await save(map);
    },
    async list(prefix) {
      const map = await load();
      const now = clock.now();
      return [...map.entries()]
        .filter(([k, e]) => k.startsWith(prefix) && !expired(e, now))
        .map(([k]) => k)
        .sort();
    },
    async compareAndSet(key, expected, value, options) {
      // Check and change the map with no await in between: atomic within the process.
      const map = await load();
      const entry = map.get(key);
      const current = entry && !expired(entry, clock.now()) ? entry.v : null;
      if (current !== expected) return false;
      dropExpired(map, clock.now());
      map.set(key, entryFor(value, options, clock.now()));
      await save(map);
      return true;
    },
  };
}

/** An in-memory store (tests, simulation, `bun coordinator.ts`). */
export function memoryStore(
  _init: Record<string, never> = {},
  components: { clock?: ClockLike } = {},
): Store {
  const map = new Map<string, Entry>();
  return mapStore(
    "memory",
    false,
    components.clock ?? systemNow,
    async () => map,
    async () => {},
  );
}

/** The slice of `node:fs/promises` the file store needs (Node, Bun and Deno provide it). */
export interface FileSystemLike {
  readFile(path: string, encoding: "utf8"): Promise<string>;
  writeFile(path: string, data: string, encoding: "utf8"): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  mkdir(path: string, options: { recursive: true }): Promise<unknown>;
}

/**
 * A persistent store in one JSON file, for Node and Bun. Each change rewrites the file through a
 * temporary file and a rename, so a crash leaves the old or the new file. One process per file.
 */
export function fileStore(
  init: { path: string },
  components: { fs: FileSystemLike; clock?: ClockLike },
): Store {
  const { fs } = components;
  const clock = components.clock ?? systemNow;
  let loaded: Promise<Map<string, Entry>> | null = null;
  let chain: Promise<void> = Promise.resolve();
  let counter = 0;
  const load = (): Promise<Map<string, Entry>> => {
    loaded ??= (async () => {
      let text: string;
      try {
        text = await fs.readFile(init.path, "utf8");
      } catch (err) {
        if ((err as { code?: string }).code === "ENOENT") return new Map();
        throw new StoreError(`Reading the store file failed: ${init.path}`);
      }
      try {
        const data = JSON.parse(text) as { entries?: Record<string, Entry> };
        return new Map(Object.entries(data.entries ?? {}));
      } catch {
        throw new StoreError(`The store file is not valid JSON: ${init.path}`);
      }
    })();
    loaded.catch(() => {
      loaded = null;
    });
    return loaded;
  };
  const save = (map: Map<string, Entry>): Promise<void> => {
    const text = JSON.stringify({ version: 1, entries: Object.fromEntries(map) });
    const run = async () => {
      const slash = init.path.lastIndexOf("/");
      if (slash > 0) await fs.mkdir(init.path.slice(0, slash), { recursive: true });
      const tmp = `${init.path}.tmp-${++counter}`;
      await fs.writeFile(tmp, text, "utf8");
      await fs.rename(tmp, init.path);
    };
    const next = chain.then(run, run);
    chain = next.catch(() => {});
    return next.catch((err) => {
      throw new StoreError(`Writing the store file failed: ${(err as Error).message}`);
    });
  };
  return mapStore("file", true, clock, load, save);
}

/** The parts of a Cloudflare `KVNamespace` binding the store uses. */
export interface KvNamespaceLike {
  get(key: string): Promise<string | null>;
  put(key: string, value: string, options?: { expirationTtl?: number }): Promise<void>;
  delete(key: string): Promise<void>;
  list(options: { prefix?: string; cursor?: string | null }): Promise<{
    keys: { name: string }[];
    list_complete: boolean;
    cursor?: string;
  }>;
}

/** Cloudflare Workers KV through its binding. No compare-and-set: KV has none. */
export function cloudflareKvStore(kv: KvNamespaceLike): Store {
  return {
    kind: "cloudflare-kv",
    persistent: true,
    minWriteIntervalMs: 1000, // KV allows one write per key per second
    get: (key) => kv.get(key),
    set: (key, value, options) =>
      kv.put(
        key,
        value,
        options?.ttlSeconds ? { expirationTtl: Math.max(60, Math.ceil(options.ttlSeconds)) } : {},
      ),
    delete: (key) => kv.delete(key),
    async list(prefix) {
      const keys: string[] = [];
      let cursor: string | undefined;
      for (;;) {
        const page = await kv.list(cursor ? { prefix, cursor } : { prefix });
        keys.push(...page.keys.map((k) => k.name));
        if (page.list_complete || !page.cursor) break;
        cursor = page.cursor;
      }
      return keys.sort();
    },
  };
}

/** The parts of `Deno.AtomicOperation` the store uses. */
export interface DenoAtomicLike {
  check(...checks: { key: unknown[]; versionstamp: string | null }[]): DenoAtomicLike;
  set(key: unknown[], value: unknown, options?: { expireIn?: number }): DenoAtomicLike;
  delete(key: unknown[]): DenoAtomicLike;
  commit(): Promise<{ ok: boolean }>;
}

/** The parts of `Deno.Kv` the store uses. */
export interface DenoKvLike {
  get(key: unknown[]): Promise<{ value: unknown; versionstamp: string | null }>;
  list(selector: { prefix: unknown[] }): AsyncIterable<{ key: unknown[]; value: unknown }>;
  atomic(): DenoAtomicLike;
}

interface DenoMeta {
  s?: string; // the value, when small enough to sit inline
  g?: string; // generation of the chunks holding a large value
  n?: number; // number of chunks
  e?: number; // expiry, ms since the epoch
}

const DENO_CHUNK_CHARS = 30_000; // at most 60 KB serialised: under Deno KV's 64 KiB per value

/**
 * Deno KV (local SQLite or Deno Deploy). Values over 30,000 characters are split into chunks
 * written in the same atomic operation; compare-and-set uses the versionstamp check.
 */
export function denoKvStore(kv: DenoKvLike, components: { clock?: ClockLike } = {}): Store {
  const clock = components.clock ?? systemNow;
  const metaKey = (key: string) => ["rollcall", "v", key];
  const chunkKey = (key: string, g: string, i: number) => ["rollcall", "c", key, g, i];
  const read = async (
    key: string,
  ): Promise<{ value: string | null; stamp: string | null; meta: DenoMeta | null }> => {
    for (let attempt = 0; attempt < 5; attempt++) {
      const entry = await kv.get(metaKey(key));
      const meta = entry.value as DenoMeta | null;
      if (!meta || (meta.e !== undefined && meta.e <= clock.now())) {
        return { value: null, stamp: entry.versionstamp, meta };
      }
      if (meta.s !== undefined) return { value: meta.s, stamp: entry.versionstamp, meta };
      const parts: string[] = [];
      for (let i = 0; i < (meta.n ?? 0); i++) {
        const chunk = await kv.get(chunkKey(key, meta.g ?? "", i));
        if (typeof chunk.value !== "string") break;
        parts.push(chunk.value);
      }
      if (parts.length === meta.n)
        return { value: parts.join(""), stamp: entry.versionstamp, meta };
      // A concurrent write replaced the chunks between our reads: read again.
    }
    throw new StoreError(`Deno KV get failed: chunks of ${key} kept changing`);
  };
  const write = async (
    key: string,
    value: string | null,
    options: SetOptions | undefined,
    expected: { stamp: string | null; meta: DenoMeta | null } | null,
  ): Promise<boolean> => {
    for (;;) {
      const current = expected ?? (await read(key));
      const op = kv.atomic().check({ key: metaKey(key), versionstamp: current.stamp });
      const old = current.meta;
      if (old?.g !== undefined) {
        for (let i = 0; i < (old.n ?? 0); i++) op.delete(chunkKey(key, old.g, i));
      }
      if (value === null) {
        op.delete(metaKey(key));
      } else {
        const expireIn = options?.ttlSeconds ? options.ttlSeconds * 1000 : undefined;
        const e = expireIn !== undefined ? clock.now() + expireIn : undefined;
        const opts = expireIn !== undefined ? { expireIn } : undefined;
        if (value.length <= DENO_CHUNK_CHARS) {
          op.set(metaKey(key), e !== undefined ? { s: value, e } : { s: value }, opts);
        } else {
          const g = crypto.randomUUID();
          const n = Math.ceil(value.length / DENO_CHUNK_CHARS);
          for (let i = 0; i < n; i++) {
            const part = value.slice(i * DENO_CHUNK_CHARS, (i + 1) * DENO_CHUNK_CHARS);
            op.set(chunkKey(key, g, i), part, opts);
          }
          op.set(metaKey(key), e !== undefined ? { g, n, e } : { g, n }, opts);
        }
      }
      const { ok } = await op.commit();
      if (ok || expected) return ok;
    }
  };
  return {
    kind: "deno-kv",
    persistent: true,
    get: async (key) => (await read(key)).value,
    set: async (key, value, options) => void (await write(key, value, options, null)),
    delete: async (key) => void (await write(key, null, undefined, null)),
    async list(prefix) {
      const keys: string[] = [];
      const now = clock.now();
      for await (const entry of kv.list({ prefix: ["rollcall", "v"] })) {
        const name = entry.key[2];
        const meta = entry.value as DenoMeta | null;
        if (typeof name !== "string" || !name.startsWith(prefix)) continue;
        if (meta?.e !== undefined && meta.e <= now) continue;
        keys.push(name);
      }
      return keys.sort();
    },
    async compareAndSet(key, expected, value, options) {
      const current = await read(key);
      if (current.value !== expected) return false;
      return write(key, value, options, current);
    },
  };
}

//#endregion

//#region Pure registry logic
// Digest, tiers, merge of cluster reports, write decisions, staleness

/** 53-bit non-cryptographic hash (cyrb53) of a string's UTF-16 code units, as 14 hex digits. */
function hash53(text: string, seed = 0): string {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(16).padStart(14, "0");
}

/** The routing-relevant fields of a member, as both reports and stored members have them. */
interface DigestMember {
  worker_id: string;
  url: string;
  status: string;
  tier?: number | null;
  services: { name: string; url?: string | null; status?: string | null }[];
}

/** The URL a member's service is reached at: its own, or `<member url>/service/<name>`. */
export function serviceUrl(
  memberUrl: string,
  service: { name: string; url?: string | null },
): string {
  return trimSlash(service.url ?? `${trimSlash(memberUrl)}/service/${service.name}`);
}

/**
 * Digest of what routing needs (IDs, URLs, status, tier, services with URL and health), never
 * volatile fields. Canonical JSON (members by ID, services by name) hashed with `hash53`.
 * Members reported "offline" or "left" are not routed to and do not count: that one goes is one
 * change; that its entry is dropped later is none.
 */
export function routingDigest(members: readonly DigestMember[]): string {
  const canonical = members
    .filter((m) => m.status !== "offline" && m.status !== "left")
    .sort((a, b) => (a.worker_id < b.worker_id ? -1 : a.worker_id > b.worker_id ? 1 : 0))
    .map((m) => [
      m.worker_id,
      trimSlash(m.url),
      m.status,
      m.tier ?? 2,
      [...m.services]
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
        .map((s) => [s.name, serviceUrl(m.url, s), s.status ?? "healthy"]),
    ]);
  return hash53(JSON.stringify(canonical));
}

/** Tier of a worker: 1 GPU, 3 storage, 2 CPU and by default. */
export function tierOf(capabilities: Capabilities | null | undefined): 1 | 2 | 3 {
  const type = capabilities?.worker_type?.toLowerCase();
  if (type === "gpu") return 1;
  if (type === "storage") return 3;
  if (type === "cpu") return 2;
  if (capabilities?.has_gpu) return 1;
  if (capabilities?.has_storage) return 3;
  return 2;
}

/** A service as stored: name, resolved URL (or null when unreachable) and health. */
interface StoredService {
  name: string;
  url: string | null;
  status: "healthy" | "unhealthy";
}

/**
 * A service of a cluster member as stored: `url` only when it differs from the member's default
 * `<member url>/service/<name>`, `status` only when it is not "healthy" (documents written
 * before that rule may hold either anyway).
 */
interface StoredMemberService {
  name: string;
  url?: string | null;
  status?: "healthy" | "unhealthy";
}

/** A cluster member as stored in the cluster document. */
interface StoredMember {
  worker_id: string;
  /** Its agent's `--name` (display only; documents written before names have none). */
  name?: string | null;
  incarnation: number;
  status: z.infer<typeof MemberStatusSchema>;
  url: string;
  tier: 1 | 2 | 3;
  capabilities: Capabilities;
  last_seen: number;
  services: StoredMemberService[];
  /** The leader whose report this entry came from. */
  reported_by: string;
}

/** A leader's view: what it reported last. */
interface LeaderView {
  leader_id: string;
  term: number;
  sequence: number;
  reported_at: number;
  members: string[];
}

/** Budget stamp carried inside every written document: the day's write count after it. */
interface BudgetStamp {
  day: string;
  used: number;
}

/** The one document per cluster (leader mode). @internal */
export interface ClusterDoc {
  kind: "cluster";
  v: 1;
  cluster: string;
  rev: number;
  /** When the cluster was first reported (0 in documents older than this field). */
  created_at?: number;
  written_at: number;
  budget: BudgetStamp;
  digest: string;
  leaders: Record<string, LeaderView>;
  members: Record<string, StoredMember>;
  /**
   * Every ID some leader of this cluster listed, oldest first, at most MAX_ROSTER (absent in
   * documents older than this field): who may report the cluster (`admitsLeader`), also after a
   * leader of the other side of a partition left it out of the members.
   */
  roster?: string[];
}

/** Most IDs a cluster's roster keeps (twice a report's member cap); the oldest go first. */
const MAX_ROSTER = 2000;

/** `roster` with the IDs in `ids` it lacks appended, the oldest dropped past MAX_ROSTER. */
function grownRoster(roster: readonly string[] | undefined, ids: Iterable<string>): string[] {
  const all = [...(roster ?? [])];
  const known = new Set(all);
  for (const id of ids) {
    if (known.has(id)) continue;
    known.add(id);
    all.push(id);
  }
  return all.length > MAX_ROSTER ? all.slice(all.length - MAX_ROSTER) : all;
}

/**
 * Who may change a direct-mode worker's record: "key" (only requests signed by the key of its
 * PeerId), "token" (cluster-token holders), "legacy" (also token-less workers of the old kind).
 */
type WorkerOwner = "key" | "token" | "legacy";

/** A direct-mode worker's record (one key per worker). */
interface WorkerRecord {
  kind: "worker";
  v: 1;
  worker_id: string;
  /** Absent in records older than this field: "legacy". */
  owner?: WorkerOwner;
  name?: string | null;
  tier: 1 | 2 | 3;
  status: string;
  capabilities: Capabilities;
  ip_address: string | null;
  tunnel_url: string | null;
  services: StoredService[];
  wants_heartbeat_leadership: boolean;
  is_heartbeat_leader: boolean;
  current_load: number | string | null;
  available_memory: number | string | null;
  registered_at: number;
  written_at: number;
  budget: BudgetStamp;
}

/** An empty cluster document (`now`: when the cluster is first reported). */
function emptyClusterDoc(cluster: string, now = 0): ClusterDoc {
  return {
    kind: "cluster",
    v: 1,
    cluster,
    rev: 0,
    created_at: now,
    written_at: 0,
    budget: { day: "", used: 0 },
    digest: routingDigest([]),
    leaders: {},
    members: {},
  };
}

function storedMember(m: ClusterMemberReport, leader: string, now: number): StoredMember {
  return {
    worker_id: m.worker_id,
    name: m.name ?? null,
    incarnation: m.incarnation,
    status: m.status,
    url: trimSlash(m.url),
    tier: m.tier ?? tierOf(m.capabilities),
    capabilities: m.capabilities ?? {},
    last_seen: m.last_seen ?? now,
    services: m.services.map((s) => {
      // Only what differs from the default is stored: 1,000 members with 64 services each
      // would otherwise store 64,000 URLs that say nothing (docs/SECURITY.md, item 9).
      const url = serviceUrl(m.url, s);
      const stored: StoredMemberService = { name: s.name };
      if (url !== serviceUrl(m.url, { name: s.name })) stored.url = url;
      if (s.status !== "healthy") stored.status = s.status;
      return stored;
    }),
    reported_by: leader,
  };
}

/** Freshness order of two entries for the same member: >0 when `a` is fresher. */
function compareFreshness(
  a: { incarnation: number; last_seen: number },
  b: { incarnation: number; last_seen: number },
): number {
  return a.incarnation !== b.incarnation
    ? a.incarnation - b.incarnation
    : a.last_seen - b.last_seen;
}

/** What orders the views of one leader. */
interface ViewOrder {
  term: number;
  sequence: number;
}

/**
 * The order of two views of one leader: by term, then by sequence (negative: `a` is older). Views
 * of different leaders are not ordered by sequence (each agent counts its own): `leaderOf` picks
 * among them by term, then by when they reported.
 */
function compareViews(a: ViewOrder, b: ViewOrder): number {
  return a.term !== b.term ? a.term - b.term : a.sequence - b.sequence;
}

/**
 * The superseded-leader rule: a view of a higher term that lists another leader as a plain
 * member supersedes that leader's view (it was deposed, and its members pass to `by`'s leader).
 */
function supersedes(
  by: { leader_id: string; term: number; members: readonly string[] | ReadonlySet<string> },
  view: { leader_id: string; term: number },
): boolean {
  if (by.leader_id === view.leader_id || by.term <= view.term) return false;
  return Array.isArray(by.members)
    ? by.members.includes(view.leader_id)
    : (by.members as ReadonlySet<string>).has(view.leader_id);
}

/**
 * Merges one leader's report into a cluster document (pure; returns a new document).
 *
 * Members are taken per member by freshness (incarnation, then last_seen; ties go to the newer
 * report). Members the leader stops listing are removed only by that leader's own newer report,
 * and only if the entry is still its own. Another leader's view is dropped when this report has
 * a higher term and lists that leader as a plain member, or when that view is older than
 * `leaseMs`; its members pass to this leader (its next report removes those it does not list).
 * Entries of a leader with no view at all (taken by a deposed leader's late report) are this
 * leader's at once, so this report removes those it does not list. A report from a leader that
 * a higher-term view lists as a plain member (a deposed leader) still contributes fresher
 * members but gets no view of its own.
 * @internal
 */
export function mergeClusterReport(
  doc: ClusterDoc | null,
  report: ClusterReport,
  init: { now: number; leaseMs: number },
): ClusterDoc {
  const { now, leaseMs } = init;
  const base = doc ?? emptyClusterDoc(report.cluster, now);
  const members: Record<string, StoredMember> = { ...base.members };
  const leaders: Record<string, LeaderView> = { ...base.leaders };
  const L = report.leader_id;
  const prev = leaders[L];
  // Ties go to the report: a report sent again is taken again.
  const newer = !prev || compareViews(report, prev) >= 0;
  const deposed = Object.values(leaders).some((v) =>
    supersedes(v, { leader_id: L, term: report.term }),
  );
  const listed = new Set<string>();
  for (const m of report.members) {
    listed.add(m.worker_id);
    const incoming = storedMember(m, L, now);
    const current = members[m.worker_id];
    const order = current ? compareFreshness(incoming, current) : 1;
    if (order > 0 || (order === 0 && current && (current.reported_by !== L || newer))) {
      members[m.worker_id] = incoming;
    }
  }
  const roster = grownRoster(base.roster, listed);
  if (deposed) {
    return { ...base, members, leaders, roster, digest: routingDigest(Object.values(members)) };
  }
  // Entries of a leader that has no view (a deposed leader's late report took them) are this
  // leader's now, else no report could ever remove them. A newer report removes every entry of
  // its own that it does not list, not only those its last view listed (a late report of its
  // own may have taken others).
  const adopted: string[] = [];
  for (const [id, entry] of Object.entries(members)) {
    if (entry.reported_by !== L && leaders[entry.reported_by] === undefined) {
      members[id] = { ...entry, reported_by: L };
      adopted.push(id);
    }
  }
  if (newer) {
    for (const [id, entry] of Object.entries(members)) {
      if (!listed.has(id) && entry.reported_by === L) delete members[id];
    }
  }
  const view: LeaderView = newer
    ? {
        leader_id: L,
        term: report.term,
        sequence: report.sequence,
        reported_at: now,
        members: [...listed],
      }
    : (prev as LeaderView);
  const viewMembers = new Set(view.members);
  for (const id of adopted) if (members[id]) viewMembers.add(id);
  for (const other of Object.values(leaders)) {
    if (other.leader_id === L) continue;
    const supersededBy =
      newer && supersedes({ leader_id: L, term: report.term, members: listed }, other);
    const lapsed = now - other.reported_at > leaseMs;
    if (!supersededBy && !lapsed) continue;
    delete leaders[other.leader_id];
    for (const [id, member] of Object.entries(members)) {
      if (member.reported_by === other.leader_id) {
        members[id] = { ...member, reported_by: L };
        viewMembers.add(id);
      }
    }
  }
  leaders[L] = { ...view, members: [...viewMembers] };
  return { ...base, members, leaders, roster, digest: routingDigest(Object.values(members)) };
}

/**
 * Merges a document that had to wait (over budget) into what the store holds when it may finally
 * be written: another isolate may have written since (pure; returns a new document). Members go
 * by freshness (ties to the stored entry), each leader's view by (term, sequence), and a view
 * whose leader a higher-term view lists as a plain member is dropped, its members passing to
 * that view's leader, as in `mergeClusterReport`. A member only one side removed stays: its
 * leader's next report removes it (nothing is lost; a stale entry lasts one report).
 * @internal
 */
export function mergeClusterDocs(stored: ClusterDoc, waiting: ClusterDoc): ClusterDoc {
  const members: Record<string, StoredMember> = { ...stored.members };
  for (const [id, entry] of Object.entries(waiting.members)) {
    const current = members[id];
    if (!current || compareFreshness(entry, current) > 0) members[id] = entry;
  }
  const leaders: Record<string, LeaderView> = { ...stored.leaders };
  for (const [id, view] of Object.entries(waiting.leaders)) {
    const current = leaders[id];
    // Ties go to the stored view.
    if (!current || compareViews(view, current) > 0) leaders[id] = view;
  }
  for (const view of Object.values(leaders)) {
    const by = Object.values(leaders).find((other) => supersedes(other, view));
    if (!by) continue;
    delete leaders[view.leader_id];
    const taken = new Set(by.members);
    for (const [id, member] of Object.entries(members)) {
      if (member.reported_by !== view.leader_id) continue;
      members[id] = { ...member, reported_by: by.leader_id };
      taken.add(id);
    }
    leaders[by.leader_id] = { ...by, members: [...taken] };
  }
  return {
    ...waiting,
    rev: Math.max(stored.rev, waiting.rev),
    created_at: Math.min(stored.created_at ?? 0, waiting.created_at ?? 0),
    digest: routingDigest(Object.values(members)),
    leaders,
    members,
    roster: grownRoster(stored.roster, waiting.roster ?? []),
  };
}

/** A key of the leader views (ID and term): a change of leadership is a change worth a write. */
function leadersKey(doc: ClusterDoc | null): string {
  if (!doc) return "";
  return Object.values(doc.leaders)
    .map((v) => `${v.leader_id}@${v.term}`)
    .sort()
    .join(",");
}

/** A write decision. */
interface WriteDecision {
  write: boolean;
  reason: WriteReason;
}

/**
 * Least time between two writes of one cluster's document for a change of its members; a change
 * of its leaders (a failover, an election) is urgent and never waits for it. @internal
 */
export const CLUSTER_PACE_MS = 30_000;

/**
 * Leader-mode write policy: write when the routing content changed or the keepalive is due
 * (with a small slack so a report sent on time counts), never past the daily cap, and a change
 * not before `pacedUntil` (the last write plus CLUSTER_PACE_MS, 0 for a leader change): a flood of
 * changed reports folds into one waiting document.
 * @internal
 */
export function decideClusterWrite(input: {
  changed: boolean;
  lastWriteAt: number | null;
  now: number;
  keepaliveMs: number;
  writesToday: number;
  writeCap: number;
  pacedUntil?: number;
}): WriteDecision {
  const slack = Math.min(60_000, input.keepaliveMs / 10);
  const due =
    input.lastWriteAt === null || input.now >= input.lastWriteAt + input.keepaliveMs - slack;
  if (!input.changed && !due) return { write: false, reason: "unchanged" };
  if (!due && input.now < (input.pacedUntil ?? 0)) return { write: false, reason: "deferred" };
  if (input.writesToday >= input.writeCap) return { write: false, reason: "deferred" };
  return { write: true, reason: input.changed ? "changed" : "keepalive" };
}

/**
 * Direct-mode policy: a heartbeat writes on a status change or when the record is old enough.
 * @internal
 */
export function directHeartbeatDue(input: {
  statusChanged: boolean;
  writtenAt: number;
  now: number;
  writeIntervalMs: number;
}): boolean {
  return input.statusChanged || input.now - input.writtenAt >= input.writeIntervalMs;
}

/**
 * How old a direct-mode record may get before its worker shows offline: the write interval plus
 * two heartbeats plus the store's consistency delay. A worker that keeps heartbeating is
 * rewritten within `writeInterval + heartbeat`, so it never shows offline between two writes.
 * @internal
 */
export function directStaleAfterMs(
  settings: Pick<Settings, "directWriteIntervalMs" | "heartbeatIntervalS" | "consistencyGraceMs">,
): number {
  return (
    settings.directWriteIntervalMs +
    2 * settings.heartbeatIntervalS * 1000 +
    settings.consistencyGraceMs
  );
}

/** Whether a cluster's stored table is stale: its last sign of life is older than the lease. */
function clusterIsStale(
  lastAliveAt: number,
  now: number,
  settings: Pick<Settings, "keepaliveMs" | "leaseGraceMs">,
): boolean {
  return now - lastAliveAt > settings.keepaliveMs + settings.leaseGraceMs;
}

const UNHEALTHY_STATUSES = new Set([
  "offline",
  "unhealthy",
  "error",
  "failed",
  "stopped",
  "stopping",
  "draining",
  "maintenance",
  "left",
  "dead",
  "down",
  "unknown",
]);

/** Whether a worker status admits traffic. */
function isRoutableStatus(status: string): boolean {
  return !UNHEALTHY_STATUSES.has(status.toLowerCase());
}

/** The UTC day (YYYY-MM-DD) of a time. */
function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Start of the next UTC day. */
function nextUtcDay(ms: number): number {
  const d = new Date(ms);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
}

/**
 * Whether a document may spend the leader's reserve: a cluster's that existed before today
 * (UTC), so a cluster created today (a token holder's own, say) never spends it.
 */
function spendsReserve(doc: ClusterDoc | WorkerRecord | null, now: number): boolean {
  return (
    doc?.kind === "cluster" && doc.rev > 0 && (doc.created_at ?? 0) < nextUtcDay(now) - 86_400_000
  );
}

//#endregion

//#region Write budget
// A daily hard cap, counted inside the documents written anyway

/**
 * Counts store writes per UTC day. The count travels in every written document's `budget`
 * stamp, so a new isolate learns it from what it reads: exact in one process, approximate (it
 * may undercount) across Workers isolates that write at the same time.
 * @internal
 */
export class WriteBudget {
  #day = "";
  #used = 0;
  /**
   * @param cap writes (and deletes) per UTC day, never passed
   * @param reserve the last writes of the day, which only `allows(true)` (an existing cluster's
   *   leader report) may spend: a flood of other writes cannot defer the leader's report
   */
  constructor(
    readonly cap: number,
    private readonly clock: ClockLike,
    readonly reserve = 0,
  ) {}

  #roll(): void {
    const today = utcDay(this.clock.now());
    if (today !== this.#day) {
      this.#day = today;
      this.#used = 0;
    }
  }

  /** Learns the count from a document read from the store. */
  observe(stamp: BudgetStamp | undefined): void {
    this.#roll();
    if (stamp && stamp.day === this.#day && stamp.used > this.#used) this.#used = stamp.used;
  }

  /** Writes used today. */
  get used(): number {
    this.#roll();
    return this.#used;
  }

  /** Whether one more write stays within the cap. */
  get available(): boolean {
    return this.used < this.cap;
  }

  /** Whether one more write of this kind stays within the cap: the reserve only when `reserved`. */
  allows(reserved: boolean): boolean {
    return this.used < (reserved ? this.cap : this.cap - this.reserve);
  }

  /** Counts one write and returns the stamp to store with it. */
  spend(): BudgetStamp {
    this.#roll();
    this.#used++;
    return { day: this.#day, used: this.#used };
  }

  /** Gives back a write that did not happen (a lost compare-and-set). */
  refund(): void {
    this.#roll();
    if (this.#used > 0) this.#used--;
  }

  /** The day's figures. */
  snapshot(): {
    day: string;
    used_today: number;
    cap: number;
    remaining: number;
    resets_at: string;
  } {
    const used = this.used;
    return {
      day: this.#day,
      used_today: used,
      cap: this.cap,
      remaining: Math.max(0, this.cap - used),
      resets_at: new Date(nextUtcDay(this.clock.now())).toISOString(),
    };
  }
}

//#endregion

//#region Registry
// Per-isolate state over the store (caches, pending writes, live observations)

const WORKER_PREFIX = "reg/worker/";
const CLUSTER_PREFIX = "reg/cluster/";
const REGISTRY_PREFIX = "reg/";

type Doc = WorkerRecord | ClusterDoc;

function parseDoc(raw: string | null): Doc | null {
  if (raw === null) return null;
  try {
    const doc = JSON.parse(raw) as Doc;
    if (doc && (doc.kind === "worker" || doc.kind === "cluster") && doc.v === 1) return doc;
  } catch {
    // A corrupt value is treated as absent; the next write replaces it.
  }
  return null;
}

/** Effective status and routing of one worker, as the admin API shows it. */
export type WorkerView = z.input<typeof WorkerViewSchema>;

/** A worker that can serve one service. */
export interface Provider {
  worker_id: string;
  name?: string | null;
  service: string;
  url: string;
  tier: 1 | 2 | 3;
  health: "healthy" | "degraded" | "unhealthy";
  /** Why the proxy may not call its URL (`ROLLCALL_UPSTREAM_ALLOW`), or null. */
  refused: string | null;
}

/** A cluster's leader and lease, as the admin API shows them. */
export type ClusterSummary = z.input<typeof ClusterSummarySchema>;

/** The routing table built from the store (cached per isolate). */
export interface RoutingTable {
  builtAt: number;
  workers: WorkerView[];
  providers: Map<string, Provider[]>;
  clusters: ClusterSummary[];
  /** "live" when a cluster's members come from its leader agent's live view, else "stored". */
  source: "live" | "stored";
}

class KeyedMutex {
  #tails = new Map<string, Promise<void>>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = prev.then(() => mine);
    this.#tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

interface LiveWorker {
  at: number;
  current_load: number | string | null;
  available_memory: number | string | null;
}

interface LiveCluster {
  doc: ClusterDoc;
  reportAt: number;
}

function leaderOf(doc: ClusterDoc): LeaderView | null {
  let best: LeaderView | null = null;
  for (const v of Object.values(doc.leaders)) {
    if (!best || v.term > best.term || (v.term === best.term && v.reported_at > best.reported_at))
      best = v;
  }
  return best;
}

/**
 * A request refused on purpose: its status, JSON body and headers (the app's error handler
 * answers it). Thrown by registry operations that find the sender may not do what it asks.
 * @internal
 */
export class Refused extends Error {
  override name = "Refused";
  constructor(
    readonly status: number,
    readonly body: ErrorAnswerInput,
    readonly headers: Record<string, string> = {},
  ) {
    super(body.error);
  }
}

/** Most documents an isolate keeps waiting for the budget (cluster documents always may wait). */
const MAX_PENDING = 1000;
/** Most workers whose heartbeats (not written) an isolate remembers; the oldest go first. */
const MAX_LIVE_WORKERS = 10_000;
/** Most clusters an isolate keeps reports of; a report for one more is refused. */
const MAX_CLUSTERS = 100;
/** Most client addresses the legacy registration limit tracks; the oldest go first. */
const MAX_LIMITED_ADDRESSES = 10_000;

/**
 * Per client address, at most `limit` new ids per hour for id-less (legacy) registrations, in
 * fixed one-hour windows; at most MAX_LIMITED_ADDRESSES addresses, the oldest dropped first.
 */
class AddressLimiter {
  readonly #windows = new Map<string, { start: number; used: number }>();
  constructor(readonly limit: number) {}

  /** Takes one from the address's allowance; false when it is spent (retry after `retryAfterMs`). */
  take(address: string, now: number): boolean {
    let w = this.#windows.get(address);
    if (w === undefined || now - w.start >= 3_600_000) {
      this.#windows.delete(address);
      if (this.#windows.size >= MAX_LIMITED_ADDRESSES) {
        this.#windows.delete(this.#windows.keys().next().value as string);
      }
      w = { start: now, used: 0 };
      this.#windows.set(address, w);
    }
    if (w.used >= this.limit) return false;
    w.used++;
    return true;
  }

  /** Seconds until the address's window ends. */
  retryAfterS(address: string, now: number): number {
    const w = this.#windows.get(address);
    return w ? Math.max(1, Math.ceil((w.start + 3_600_000 - now) / 1000)) : 1;
  }

  /** Forgets windows that ended. */
  prune(now: number): void {
    for (const [address, w] of this.#windows) {
      if (now - w.start >= 3_600_000) this.#windows.delete(address);
    }
  }
}

/** How long an isolate goes on from what it knows, without asking the store, after a failure. */
const STORE_RETRY_MS = 5000;

/**
 * What the registry learns from a cluster's live view: its members (null while no view is fresh
 * enough to route on), the members its leader's mesh does not hear and the status they show, and
 * until when the view holds.
 */
interface LiveSight {
  members: StoredMember[] | null;
  unheard: Map<string, string> | null;
  until: number;
}

/** A cluster's live sight now, or null when there is none (`LiveViews.lookup`). */
type LiveLookup = (cluster: string, now: number) => LiveSight | null;

/** Claims a worker id for a table entry: whether this claim (rank, since) wins. */
type Claim = (id: string, rank: number, since: number) => boolean;

/**
 * One worker id, one entry: a record its own key signed first (rank 0), then whoever claimed the
 * id earlier (a worker's registration, a cluster's creation), so a newer cluster that lists
 * another's worker id cannot take it over.
 */
function claims(): Claim {
  const held = new Map<string, [rank: number, since: number]>();
  return (id, rank, since) => {
    const prior = held.get(id);
    if (prior && (prior[0] < rank || (prior[0] === rank && prior[1] <= since))) return false;
    held.set(id, [rank, since]);
    return true;
  };
}

/**
 * The providers of each service from the workers' views: healthy when the worker is routable,
 * the service reported healthy and its URL allowed (checked here, where the table is built, not
 * per request); a suspect (unheard) member stays routable as a last resort, like a degraded one.
 */
function providersOf(
  views: ReadonlyMap<string, WorkerView>,
  serviceHealth: ReadonlyMap<string, ReadonlyMap<string, StoredService["status"]>>,
  upstreamAllow: UpstreamPolicy,
): Map<string, Provider[]> {
  const providers = new Map<string, Provider[]>();
  for (const view of views.values()) {
    for (const name of view.services) {
      const url = view.service_urls[name] ?? view.tunnel_url;
      const serviceStatus = serviceHealth.get(view.worker_id)?.get(name) ?? "healthy";
      const refused = url ? upstreamRefusal(url, upstreamAllow) : null;
      let health: Provider["health"] = "unhealthy";
      if (url && view.healthy && serviceStatus === "healthy" && refused === null) {
        health = view.status === "degraded" || view.status === "suspect" ? "degraded" : "healthy";
      }
      const list = providers.get(name) ?? [];
      list.push({
        worker_id: view.worker_id,
        name: view.name,
        service: name,
        url: url ?? "",
        tier: view.tier,
        health,
        refused,
      });
      providers.set(name, list);
    }
  }
  return providers;
}

/** Per-isolate registry state over a store. */
class Registry {
  readonly budget: WriteBudget;
  readonly lock = new KeyedMutex();
  readonly legacyLimiter: AddressLimiter;
  #docs = new Map<string, { doc: Doc | null; at: number }>();
  #keys: { keys: Set<string>; at: number } | null = null;
  #pending = new Map<string, Doc | null>();
  #lastWriteAt = new Map<string, number>();
  #live = new Map<string, LiveWorker>();
  #clusters = new Map<string, LiveCluster>();
  #table: RoutingTable | null = null;
  /** After a store failure, what this isolate knows is used until then without asking again. */
  #storeDownUntil = 0;
  /** Counts invalidations: a table whose build saw one is used once, never cached. */
  #generation = 0;
  /** The table is rebuilt after this: the oldest live view it used expires then. */
  #liveUntil = Number.POSITIVE_INFINITY;

  /** The store, every failure a StoreError (answered 503). */
  readonly store: Store;

  constructor(
    readonly settings: Settings,
    store: Store,
    readonly clock: ClockLike,
    /** A cluster's live view, when one is fresh enough to route on (see `LiveViews.lookup`). */
    readonly liveView: LiveLookup = () => null,
  ) {
    this.store = guardedStore(store, settings.storeTimeoutMs);
    const reserve = Math.floor(settings.writeCap * settings.leaderReserve);
    this.budget = new WriteBudget(settings.writeCap, clock, reserve);
    this.legacyLimiter = new AddressLimiter(settings.legacyRegisterLimit);
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  /** Whether a document for a key not yet waiting may wait for the budget (cluster ones always). */
  mayDefer(key: string): boolean {
    return (
      this.#pending.has(key) || key.startsWith(CLUSTER_PREFIX) || this.#pending.size < MAX_PENDING
    );
  }

  /** Clusters this isolate holds reports of. */
  get clusterCount(): number {
    return this.#clusters.size;
  }

  /**
   * Forgets what no longer matters: heartbeats of workers long silent, cached absences, per-key
   * write times older than the store's interval, reports of clusters past their lease, the
   * legacy limiter's ended windows. Run by `start()`'s timer, and now and then by requests
   * where no timer runs (Workers).
   */
  prune(now: number): void {
    const silent = 2 * directStaleAfterMs(this.settings);
    for (const [id, live] of this.#live) if (now - live.at > silent) this.#live.delete(id);
    for (const [key, entry] of this.#docs) {
      if (entry.doc === null && now - entry.at > this.settings.tableTtlMs) this.#docs.delete(key);
    }
    const interval = Math.max(this.store.minWriteIntervalMs ?? 0, 1000);
    for (const [key, at] of this.#lastWriteAt)
      if (now - at > interval) this.#lastWriteAt.delete(key);
    const lease = this.settings.keepaliveMs + this.settings.leaseGraceMs;
    for (const [name, live] of this.#clusters) {
      if (now - live.reportAt > lease && !this.#pending.has(CLUSTER_PREFIX + name)) {
        this.#clusters.delete(name);
      }
    }
    this.legacyLimiter.prune(now);
  }

  invalidate(): void {
    this.#table = null;
    this.#generation++;
  }

  /**
   * Reads a document (from the per-isolate cache when fresh enough, or `fresh` to bypass it).
   * `quiet`: the caller builds the table from what it reads, so the read does not invalidate it.
   */
  async read(key: string, fresh = false, quiet = false): Promise<Doc | null> {
    if (this.#pending.has(key)) return this.#pending.get(key) ?? null;
    const now = this.clock.now();
    const cached = this.#docs.get(key);
    const usable = !fresh && cached !== undefined;
    if (usable && (now - cached.at < this.settings.tableTtlMs || now < this.#storeDownUntil)) {
      return cached.doc;
    }
    const read = await this.#orKnown(() => this.fetch(key), usable);
    if (!read) return cached?.doc ?? null;
    this.#remember(key, read.doc, now, quiet);
    return read.doc;
  }

  /**
   * Runs a store read; when it fails and `fallback` says this isolate knows enough to go on,
   * notes the store as down for STORE_RETRY_MS and resolves null instead of throwing.
   */
  async #orKnown<T>(run: () => Promise<T>, fallback: boolean): Promise<T | null> {
    try {
      return await run();
    } catch (err) {
      if (!(err instanceof StoreError) || !fallback) throw err;
      this.#storeDownUntil = this.clock.now() + STORE_RETRY_MS;
      return null;
    }
  }

  /** Reads a key from the store itself (no cache, no pending): its text and document. */
  async fetch(key: string): Promise<{ raw: string | null; doc: Doc | null }> {
    const raw = await this.store.get(key);
    const doc = parseDoc(raw);
    this.budget.observe(doc?.budget);
    return { raw, doc };
  }

  #remember(key: string, doc: Doc | null, at: number, quiet = false): void {
    const cached = this.#docs.get(key)?.doc;
    // Workers KV may serve an older value for up to 60 s after our own write: keep the newer.
    if (cached && doc && doc.written_at < cached.written_at) return;
    this.#docs.set(key, { doc, at });
    if (this.#keys) {
      if (doc) this.#keys.keys.add(key);
      else this.#keys.keys.delete(key);
    }
    if (!quiet) this.invalidate();
  }

  /**
   * Whether a write to `key` may happen now: within the budget (its reserve only for an existing
   * cluster's document) and the store's per-key rate.
   */
  #mayWrite(key: string, doc: Doc | null): boolean {
    if (!this.budget.allows(spendsReserve(doc, this.clock.now()))) return false;
    const interval = this.store.minWriteIntervalMs;
    if (!interval) return true;
    const last = this.#lastWriteAt.get(key);
    return last === undefined || this.clock.now() - last >= interval;
  }

  /** Writes a document, or keeps it pending when the budget says no. Returns whether it wrote. */
  async write(key: string, doc: Doc, expectedRaw?: string | null): Promise<boolean | "conflict"> {
    if (!this.#mayWrite(key, doc)) {
      if (!this.mayDefer(key)) {
        throw new Refused(
          503,
          {
            error: "Write budget exhausted",
            message: "Today's store writes are spent and too many wait already; retry tomorrow",
          },
          {
            "retry-after": String(
              Math.ceil((nextUtcDay(this.clock.now()) - this.clock.now()) / 1000),
            ),
          },
        );
      }
      this.defer(key, doc);
      return false;
    }
    const now = this.clock.now();
    const stamped = { ...doc, written_at: now, budget: this.budget.spend() } as Doc;
    if (stamped.kind === "cluster") stamped.rev += 1;
    const ttl = stamped.kind === "worker" ? { ttlSeconds: this.settings.recordTtlS } : undefined;
    const text = JSON.stringify(stamped);
    try {
      if (expectedRaw !== undefined && this.store.compareAndSet) {
        if (!(await this.store.compareAndSet(key, expectedRaw, text, ttl))) {
          this.budget.refund();
          return "conflict";
        }
      } else {
        await this.store.set(key, text, ttl);
      }
    } catch (err) {
      this.defer(key, doc);
      throw err;
    }
    this.#lastWriteAt.set(key, now);
    this.#pending.delete(key);
    this.#remember(key, stamped, now);
    if (stamped.kind === "cluster") {
      const live = this.#clusters.get(stamped.cluster);
      if (live) live.doc = stamped;
    }
    return true;
  }

  /** Deletes a key (counts against the cap like a write); pending when the budget says no. */
  async remove(key: string): Promise<boolean> {
    this.#live.delete(key.slice(WORKER_PREFIX.length));
    if (!this.#mayWrite(key, null)) {
      this.defer(key, null);
      return false;
    }
    this.budget.spend();
    try {
      await this.store.delete(key);
    } catch (err) {
      this.defer(key, null);
      throw err;
    }
    this.#lastWriteAt.set(key, this.clock.now());
    this.#pending.delete(key);
    this.#remember(key, null, this.clock.now());
    return true;
  }

  /** Writes what had to wait, as far as the budget allows. */
  async flushPending(): Promise<number> {
    let flushed = 0;
    for (const [key, doc] of [...this.#pending]) {
      if (!this.#mayWrite(key, doc)) continue;
      if (doc?.kind === "cluster" && this.clock.now() < doc.written_at + CLUSTER_PACE_MS) continue;
      await this.lock.run(key, async () => {
        if (!this.#pending.has(key) || this.#pending.get(key) !== doc) return;
        this.#pending.delete(key);
        const ok = doc === null ? await this.remove(key) : await this.#flushDoc(key, doc);
        if (ok === true) flushed++;
      });
    }
    return flushed;
  }

  /**
   * Writes a document that had to wait. A cluster document is merged into what the store holds
   * now (another isolate may have written meanwhile) and written with compare-and-set where the
   * store has it; after repeated conflicts it waits for the next flush.
   */
  async #flushDoc(key: string, doc: Doc): Promise<boolean | "conflict"> {
    if (doc.kind !== "cluster") return this.write(key, doc);
    for (let attempt = 0; attempt < 5; attempt++) {
      let read: { raw: string | null; doc: Doc | null };
      try {
        read = await this.fetch(key);
      } catch (err) {
        this.defer(key, doc);
        throw err;
      }
      const { raw, doc: stored } = read;
      // A waiting document carries the revision it was built on: a higher one stored means
      // another isolate wrote since, so merge; otherwise it already holds everything stored.
      const merged =
        stored?.kind === "cluster" && stored.rev > doc.rev ? mergeClusterDocs(stored, doc) : doc;
      const result = await this.write(key, merged, raw);
      if (result !== "conflict") return result;
    }
    this.defer(key, doc);
    return "conflict";
  }

  /** Keeps a document (null: a delete) to be written by a later flush. */
  defer(key: string, doc: Doc | null): void {
    this.#pending.set(key, doc);
    this.invalidate();
  }

  /** Forgets a waiting document that a newer report showed to be unneeded. */
  dropPending(key: string): void {
    if (this.#pending.delete(key)) this.invalidate();
  }

  /** The newest version of a document this isolate wrote or read (no store access). */
  lastKnown(key: string): Doc | null {
    return this.#docs.get(key)?.doc ?? null;
  }

  hasPending(key: string): boolean {
    return this.#pending.has(key);
  }

  touchWorker(id: string, live: LiveWorker): void {
    // Delete first: the map's order is then the order of the last heartbeat, oldest first.
    this.#live.delete(id);
    if (this.#live.size >= MAX_LIVE_WORKERS)
      this.#live.delete(this.#live.keys().next().value as string);
    this.#live.set(id, live);
    this.invalidate();
  }

  liveCluster(name: string): LiveCluster | undefined {
    return this.#clusters.get(name);
  }

  setLiveCluster(name: string, live: LiveCluster): void {
    this.#clusters.set(name, live);
    this.invalidate();
  }

  /** The cached routing table while it is still good (no await on the proxy's hot path). */
  cachedTable(now: number): RoutingTable | null {
    const t = this.#table;
    return t && now - t.builtAt < this.settings.tableTtlMs && now <= this.#liveUntil ? t : null;
  }

  /**
   * The routing table: cached per isolate, rebuilt after own writes or when the TTLs lapse.
   * While the store fails (errors, time-outs), it is built from the keys and documents this
   * isolate already knows: routing goes on from what it has.
   */
  async table(): Promise<RoutingTable> {
    const now = this.clock.now();
    const cached = this.cachedTable(now);
    if (cached) return cached;
    // A write, heartbeat or live view that lands while this build awaits the store is not in
    // it: such a table answers this call but is not cached (else it hid the change for a TTL).
    const generation = this.#generation;
    if (!this.#keys || now - this.#keys.at >= this.settings.listTtlMs) {
      const known = this.#keys?.keys ?? new Set<string>();
      let listed: string[] | null = null;
      if (now >= this.#storeDownUntil || known.size + this.#docs.size === 0) {
        listed = await this.#orKnown(
          () => this.store.list(REGISTRY_PREFIX),
          known.size + this.#docs.size > 0,
        );
      }
      const set = new Set(listed ?? known);
      for (const [key, entry] of this.#docs) if (entry.doc) set.add(key);
      // Keys known without a listing are listed again once the store answers.
      this.#keys = { keys: set, at: listed ? now : (this.#keys?.at ?? 0) };
    }
    const keys = new Set([...this.#keys.keys, ...this.#pending.keys()]);
    const docs = await Promise.all([...keys].map((key) => this.read(key, false, true)));
    const table = this.#build(
      docs.filter((d): d is Doc => d !== null),
      now,
    );
    if (generation === this.#generation) this.#table = table;
    return table;
  }

  /** The routing table from the documents read: workers, then clusters, then providers. */
  #build(docs: Doc[], now: number): RoutingTable {
    const views = new Map<string, WorkerView>();
    const serviceHealth = new Map<string, Map<string, StoredService["status"]>>();
    const claim = claims();
    for (const doc of docs) {
      if (doc.kind === "worker") this.#addWorker(doc, now, claim, views, serviceHealth);
    }
    const clusters: ClusterSummary[] = [];
    let source: RoutingTable["source"] = "stored";
    this.#liveUntil = Number.POSITIVE_INFINITY;
    for (const doc of docs) {
      if (doc.kind !== "cluster") continue;
      const summary = this.#addCluster(doc, now, claim, views, serviceHealth);
      if (summary.source === "live") source = "live";
      clusters.push(summary);
    }
    const providers = providersOf(views, serviceHealth, this.settings.upstreamAllow);
    return { builtAt: now, workers: [...views.values()], providers, clusters, source };
  }

  /** A direct-mode worker's view, when its id is its own (see `claims`). */
  #addWorker(
    doc: WorkerRecord,
    now: number,
    claim: Claim,
    views: Map<string, WorkerView>,
    serviceHealth: Map<string, Map<string, StoredService["status"]>>,
  ): void {
    if (!claim(doc.worker_id, doc.owner === "key" ? 0 : 1, doc.registered_at)) return;
    // A service its worker reports stopped (`services_status`) gets no traffic.
    serviceHealth.set(doc.worker_id, new Map(doc.services.map((s) => [s.name, s.status])));
    const live = this.#live.get(doc.worker_id);
    const seen = Math.max(doc.written_at, live?.at ?? 0);
    const stale = now - seen > directStaleAfterMs(this.settings);
    const status = stale ? "offline" : doc.status;
    views.set(doc.worker_id, {
      worker_id: doc.worker_id,
      name: doc.name ?? null,
      tier: doc.tier,
      status,
      healthy: isRoutableStatus(status),
      last_heartbeat: new Date(seen).toISOString(),
      capabilities: doc.capabilities,
      services: doc.services.map((s) => s.name),
      service_urls: Object.fromEntries(doc.services.map((s) => [s.name, s.url])),
      tunnel_url: doc.tunnel_url,
      ip_address: doc.ip_address,
      is_heartbeat_leader: doc.is_heartbeat_leader,
      mode: "direct",
      cluster: null,
      current_load: live?.current_load ?? doc.current_load,
      available_memory: live?.available_memory ?? doc.available_memory,
      registered_at: new Date(doc.registered_at).toISOString(),
    });
  }

  /**
   * A cluster's members' views (from its live view while one is fresh, else from the newest
   * document known), and its summary.
   */
  #addCluster(
    stored: ClusterDoc,
    now: number,
    claim: Claim,
    views: Map<string, WorkerView>,
    serviceHealth: Map<string, Map<string, StoredService["status"]>>,
  ): ClusterSummary {
    const live = this.#clusters.get(stored.cluster);
    const doc = live && live.doc.rev >= stored.rev ? live.doc : stored;
    const lastAlive = Math.max(stored.written_at, live?.reportAt ?? 0);
    const seen = this.liveView(stored.cluster, now);
    const view = seen?.members ? seen : null;
    const unheard = seen?.unheard ?? null;
    const stale = view === null && clusterIsStale(lastAlive, now, this.settings);
    const leader = leaderOf(doc);
    const members = view?.members ?? Object.values(doc.members);
    if (view !== null) this.#liveUntil = Math.min(this.#liveUntil, view.until);
    for (const m of members) {
      if (!claim(m.worker_id, 1, doc.created_at ?? 0)) continue;
      const status = stale ? "unknown" : (unheard?.get(m.worker_id) ?? m.status);
      views.set(m.worker_id, {
        worker_id: m.worker_id,
        name: m.name ?? null,
        tier: m.tier,
        status,
        healthy: isRoutableStatus(status),
        // A document stored before last_seen was bounded may hold one no Date can show.
        last_heartbeat: m.last_seen <= MAX_DATE_MS ? new Date(m.last_seen).toISOString() : null,
        capabilities: m.capabilities,
        services: m.services.map((s) => s.name),
        service_urls: Object.fromEntries(m.services.map((s) => [s.name, serviceUrl(m.url, s)])),
        tunnel_url: m.url,
        ip_address: null,
        is_heartbeat_leader: leader?.leader_id === m.worker_id,
        mode: "cluster",
        cluster: doc.cluster,
        current_load: null,
        available_memory: null,
        registered_at: null,
      });
      serviceHealth.set(
        m.worker_id,
        new Map(m.services.map((s) => [s.name, s.status ?? "healthy"])),
      );
    }
    return {
      cluster: doc.cluster,
      leader_id: leader?.leader_id ?? null,
      term: leader?.term ?? null,
      leaders: Object.values(doc.leaders),
      members: Object.keys(doc.members).length,
      stale,
      last_write_at: stored.written_at ? new Date(stored.written_at).toISOString() : null,
      last_report_at: live ? new Date(live.reportAt).toISOString() : null,
      next_keepalive_at: stored.written_at
        ? new Date(stored.written_at + this.settings.keepaliveMs).toISOString()
        : null,
      digest: doc.digest,
      pending_write: this.#pending.has(CLUSTER_PREFIX + doc.cluster),
      source: view !== null ? "live" : "stored",
      leader_url: doc.members[leader?.leader_id ?? ""]?.url ?? null,
    };
  }
}

//#endregion

//#region Registry operations
// Register / heartbeat / unregister (direct), cluster heartbeat (leader)

function servicesFromRegistration(body: RegisterBody): StoredService[] {
  const entries: Container[] = [];
  for (const s of body.services ?? []) entries.push(typeof s === "string" ? { name: s } : s);
  for (const c of body.containers ?? []) entries.push(c);
  const byName = new Map<string, StoredService>();
  for (const c of entries) {
    let url = c.service_url ?? c.url ?? null;
    if (!url && c.port && body.ip_address) {
      const host = body.ip_address.includes(":") ? `[${body.ip_address}]` : body.ip_address;
      url = isHttpUrl(`http://${host}:${c.port}`) ? `http://${host}:${c.port}` : null;
    }
    url ??= body.tunnel_url ?? null;
    byName.set(c.name, { name: c.name, url: url ? trimSlash(url) : null, status: "healthy" });
  }
  return [...byName.values()];
}

function sameRegistration(a: WorkerRecord, b: WorkerRecord): boolean {
  const strip = (r: WorkerRecord) =>
    JSON.stringify([
      r.name,
      r.tier,
      r.status,
      r.capabilities,
      r.ip_address,
      r.tunnel_url,
      r.services,
      r.is_heartbeat_leader,
      r.wants_heartbeat_leadership,
    ]);
  return strip(a) === strip(b);
}

/** Lock key of the heartbeat-leadership decision (no store key looks like it). */
const LEADERSHIP_LOCK = "leadership";

/** How an agent request was admitted, and who signed it (docs/SECURITY.md). */
interface Sender {
  /**
   * "open": no token is configured (local dev); "token": the cluster token; "legacy": no token,
   * admitted by `ROLLCALL_ALLOW_LEGACY_WORKERS`.
   */
  level: "open" | "token" | "legacy";
  /** The PeerId whose key signed the request (verified), or null. */
  signer: string | null;
  /** The client's address as the runtime (or, on Workers, Cloudflare) saw it; "unknown" if none. */
  address: string;
}

/**
 * Checks that `sender` may act as worker `id` before anything is read: a signed request only for
 * its own id, and an id that is a PeerId only with its key's signature. Throws Refused (401).
 */
function checkClaim(id: string, sender: Sender): void {
  if (sender.signer !== null && sender.signer !== id) {
    throw new Refused(401, {
      error: "Signature does not match the worker id",
      message: `The request is signed by ${sender.signer}, not by ${id}`,
    });
  }
  if (sender.signer === null && isPeerId(id)) {
    throw new Refused(401, {
      error: "Signature required",
      message: `Worker id ${id} is a PeerId: only a request signed with its key may use it (docs/PROTOCOL.md)`,
    });
  }
}

/**
 * Checks that `sender` may change the record of `id`: a key-owned record only with its key (see
 * `checkClaim`), a token-owned one not by a token-less (legacy) request. Throws Refused (403).
 */
function checkOwner(id: string, record: WorkerRecord | null, sender: Sender): void {
  if (record?.owner === "token" && sender.level === "legacy") {
    throw new Refused(403, {
      error: "Worker belongs to a token holder",
      message: `Worker ${id} was registered with the cluster token; a request without it may not change it`,
    });
  }
}

/** The owner a registration by `sender` gives a record. */
function ownerFor(sender: Sender): WorkerOwner {
  if (sender.signer !== null) return "key";
  return sender.level === "token" ? "token" : "legacy";
}

/**
 * The id an id-less (old kind of) registration gets: derived from its tunnel URL (or address)
 * and capabilities, so the same worker registering again gets the same id back, not a new
 * record each time.
 */
function legacyWorkerId(body: RegisterBody): string {
  const caps = body.capabilities ?? {};
  const sorted = Object.keys(caps)
    .sort()
    .map((k) => [k, caps[k]]);
  const where = body.tunnel_url ? trimSlash(body.tunnel_url) : (body.ip_address ?? "");
  return `worker-${hash53(JSON.stringify([where, sorted])).slice(2)}`;
}

function tooLarge(what: string, size: number, cap: number): Refused {
  return new Refused(413, {
    error: `${what} is too large`,
    message: `It would be stored as ${size} characters; the cap is ${cap} (ROLLCALL_MAX_DOC_BYTES)`,
  });
}

async function registerWorker(
  reg: Registry,
  body: RegisterBody,
  sender: Sender,
): Promise<z.input<typeof RegisterAnswerSchema>> {
  const idless = !body.worker_id;
  if (idless && sender.level !== "legacy" && sender.level !== "open") {
    throw new Refused(400, {
      error: "worker_id is required",
      message:
        "Only workers of the old kind, admitted without a token (ROLLCALL_ALLOW_LEGACY_WORKERS), may register without one",
    });
  }
  const id = body.worker_id ?? legacyWorkerId(body);
  checkClaim(id, sender);
  const key = WORKER_PREFIX + id;
  const now = reg.clock.now();
  const wants = body.wants_heartbeat_leadership ?? false;
  let leaderTaken = false;
  if (wants) {
    const table = await reg.table();
    leaderTaken = table.workers.some(
      (w) => w.mode === "direct" && w.worker_id !== id && w.is_heartbeat_leader && w.healthy,
    );
  }
  return reg.lock.run(key, async (): Promise<z.input<typeof RegisterAnswerSchema>> => {
    const existing = (await reg.read(key, true)) as WorkerRecord | null;
    checkOwner(id, existing, sender);
    if (existing === null && idless && !reg.legacyLimiter.take(sender.address, now)) {
      throw new Refused(
        429,
        {
          error: "Too many new workers from this address",
          message: `At most ${reg.settings.legacyRegisterLimit} registrations without a worker_id per address per hour`,
        },
        { "retry-after": String(reg.legacyLimiter.retryAfterS(sender.address, now)) },
      );
    }
    const capabilities = body.capabilities ?? {};
    const record: WorkerRecord = {
      kind: "worker",
      v: 1,
      worker_id: id,
      owner: ownerFor(sender),
      name: workerName(body.name, capabilities),
      tier: tierOf(capabilities),
      status: "online",
      capabilities,
      ip_address: body.ip_address ?? null,
      tunnel_url: body.tunnel_url ? trimSlash(body.tunnel_url) : null,
      services: servicesFromRegistration(body),
      wants_heartbeat_leadership: wants,
      is_heartbeat_leader: wants && !leaderTaken,
      current_load: existing?.current_load ?? null,
      available_memory: existing?.available_memory ?? null,
      registered_at: existing?.registered_at ?? now,
      written_at: existing?.written_at ?? now,
      budget: existing?.budget ?? { day: "", used: 0 },
    };
    const size = JSON.stringify(record).length;
    if (size > reg.settings.maxDocBytes) {
      throw tooLarge("The worker record", size, reg.settings.maxDocBytes);
    }
    const fresh =
      existing &&
      !reg.hasPending(key) &&
      existing.owner === record.owner &&
      sameRegistration(existing, record) &&
      now - existing.written_at < reg.settings.directWriteIntervalMs;
    const written = fresh ? false : await reg.write(key, record);
    reg.touchWorker(id, {
      at: now,
      current_load: record.current_load,
      available_memory: record.available_memory,
    });
    return {
      status: "registered",
      worker_id: id,
      tier: record.tier,
      heartbeat_interval: reg.settings.heartbeatIntervalS,
      is_heartbeat_leader: record.is_heartbeat_leader,
      services_registered: record.services.map((s) => s.name),
      // The universal agent of the old system reads the services it may run from here.
      assigned_services: record.services.map((s) => s.name),
      written: written === true,
    };
  });
}

async function register(
  reg: Registry,
  body: RegisterBody,
  sender: Sender,
): Promise<z.input<typeof RegisterAnswerSchema>> {
  // One leadership decision at a time: workers that register at once must not all take it.
  return body.wants_heartbeat_leadership
    ? reg.lock.run(LEADERSHIP_LOCK, () => registerWorker(reg, body, sender))
    : registerWorker(reg, body, sender);
}

/** Service states the universal agent reports (`services_status`) that admit traffic. */
const RUNNING_SERVICE_STATES = new Set(["running", "healthy", "up", "ok", "online", "ready"]);

/**
 * A worker's services after a heartbeat's `services_status`: a named service takes the state
 * it reports ("running" and the like are healthy, "stopped" and anything else unhealthy, so it
 * gets no traffic), a service not registered yet is added at the worker's tunnel URL. Entries
 * with an invalid name or a non-string state are ignored; at most 64 services are kept.
 */
function applyServicesStatus(
  services: readonly StoredService[],
  statuses: Record<string, unknown> | null | undefined,
  tunnelUrl: string | null,
): StoredService[] {
  if (!statuses) return [...services];
  const next = new Map(services.map((s) => [s.name, s]));
  for (const [name, state] of Object.entries(statuses)) {
    if (typeof state !== "string" || !SERVICE_NAME_PATTERN.test(name)) continue;
    const status = RUNNING_SERVICE_STATES.has(state.toLowerCase()) ? "healthy" : "unhealthy";
    const known = next.get(name);
    if (known) next.set(name, { ...known, status });
    else if (next.size < 64) next.set(name, { name, url: tunnelUrl, status });
  }
  return [...next.values()];
}

async function heartbeat(
  reg: Registry,
  body: HeartbeatBody,
  sender: Sender,
): Promise<z.input<typeof OkAnswerSchema> | null> {
  checkClaim(body.worker_id, sender);
  const key = WORKER_PREFIX + body.worker_id;
  return reg.lock.run(key, async (): Promise<z.input<typeof OkAnswerSchema> | null> => {
    const record = (await reg.read(key)) as WorkerRecord | null;
    if (record?.kind !== "worker") return null;
    checkOwner(body.worker_id, record, sender);
    const now = reg.clock.now();
    const live = {
      at: now,
      current_load: body.current_load ?? null,
      available_memory: body.available_memory ?? null,
    };
    reg.touchWorker(body.worker_id, live);
    const services = applyServicesStatus(record.services, body.services_status, record.tunnel_url);
    const due = directHeartbeatDue({
      // A service that stopped (or came back) is a routing change: written at once.
      statusChanged:
        record.status !== body.status ||
        JSON.stringify(services) !== JSON.stringify(record.services),
      writtenAt: record.written_at,
      now,
      writeIntervalMs: reg.settings.directWriteIntervalMs,
    });
    if (!due) return { status: "ok", written: false };
    const next: WorkerRecord = {
      ...record,
      status: body.status,
      services,
      current_load: live.current_load,
      available_memory: live.available_memory,
    };
    const written = await reg.write(key, next);
    return { status: "ok", written: written === true };
  });
}

async function unregister(
  reg: Registry,
  id: string,
  sender: Sender,
): Promise<z.input<typeof UnregisterAnswerSchema> | null> {
  checkClaim(id, sender);
  const key = WORKER_PREFIX + id;
  return reg.lock.run(key, async (): Promise<z.input<typeof UnregisterAnswerSchema> | null> => {
    const record = (await reg.read(key, true)) as WorkerRecord | null;
    if (!record) return null;
    if (record.kind === "worker") checkOwner(id, record, sender);
    const written = await reg.remove(key);
    return { status: "ok", worker_id: id, removed: true, written };
  });
}

/**
 * Whether `leader` may report a cluster whose document is `doc`: anyone may start a cluster
 * (no document, no members); after that only an ID some leader of it listed (the document's
 * `roster`, and its members and leader views), also once another leader left it out: in a
 * partition the big side's leader stops listing the small side, whose leader must still be heard.
 * A key that no leader of the cluster ever listed (its mesh never knew it) cannot take the
 * cluster's members over.
 */
function admitsLeader(doc: ClusterDoc | null, leader: string): boolean {
  if (doc === null) return true;
  if (doc.members[leader] !== undefined || doc.leaders[leader] !== undefined) return true;
  if (doc.roster?.includes(leader)) return true;
  const known = Object.keys(doc.members).length + Object.keys(doc.leaders).length;
  return known === 0 && (doc.roster ?? []).length === 0;
}

/**
 * A cluster's document as the store has it (`read`, `raw` for compare-and-set), the newest
 * version known (`stored`: Workers KV may serve an older value for up to 60 s after this
 * isolate's own write, so "changed" and "keepalive due" are judged against the newest), and
 * `newest` of those and the last report this isolate merged (as new as anything it keeps
 * waiting).
 */
async function newestCluster(reg: Registry, cluster: string) {
  const key = CLUSTER_PREFIX + cluster;
  const { raw, doc: parsed } = await reg.fetch(key);
  const read = parsed?.kind === "cluster" ? parsed : null;
  const known = reg.lastKnown(key);
  const stored = known?.kind === "cluster" && (!read || known.rev > read.rev) ? known : read;
  const live = reg.liveCluster(cluster);
  const newest = live && (!stored || live.doc.rev >= stored.rev) ? live.doc : stored;
  return { raw, read, stored, live, newest };
}

async function clusterHeartbeat(
  reg: Registry,
  report: ClusterReport,
  sender: Sender,
): Promise<z.input<typeof ClusterHeartbeatAnswerSchema>> {
  if (sender.signer !== report.leader_id) {
    throw new Refused(401, {
      error: "Signature required",
      message: "A cluster report must be signed with the key of its leader_id (docs/PROTOCOL.md)",
    });
  }
  const key = CLUSTER_PREFIX + report.cluster;
  const { settings, clock } = reg;
  return reg.lock.run(key, async (): Promise<z.input<typeof ClusterHeartbeatAnswerSchema>> => {
    for (let attempt = 0; ; attempt++) {
      const now = clock.now();
      const { raw, read, stored, live, newest } = await newestCluster(reg, report.cluster);
      let base = newest;
      if (base !== null) {
        // A cluster nobody reported for as long as a direct record lives is abandoned: the
        // next report starts it afresh (its roster too), keeping only its revision.
        const lastAlive = Math.max(base.written_at, live?.reportAt ?? 0);
        if (now - lastAlive > settings.recordTtlS * 1000) {
          base = { ...emptyClusterDoc(report.cluster, now), rev: base.rev, budget: base.budget };
        }
      }
      if (!admitsLeader(base, report.leader_id)) {
        throw new Refused(403, {
          error: "Leader is not a member of this cluster",
          message: `Cluster '${report.cluster}' may be reported only by a member one of its leaders listed. If every member has a new key (data directories wiped), an operator can forget the old cluster: POST /api/admin/clusters/forget (docs/PROTOCOL.md)`,
        });
      }
      if (live === undefined && reg.clusterCount >= MAX_CLUSTERS) {
        throw new Refused(503, {
          error: "Too many clusters",
          message: `This coordinator keeps at most ${MAX_CLUSTERS} clusters`,
        });
      }
      const merged = mergeClusterReport(base, report, {
        now,
        leaseMs: settings.keepaliveMs + settings.leaseGraceMs,
      });
      const size = JSON.stringify(merged).length;
      if (size > settings.maxDocBytes) {
        throw tooLarge("The cluster document", size, settings.maxDocBytes);
      }
      const changed =
        !stored || merged.digest !== stored.digest || leadersKey(merged) !== leadersKey(stored);
      // Only a cluster that existed before today may spend the budget's reserve (WriteBudget).
      const reserved = spendsReserve(merged, now);
      const leaderChanged = !stored || leadersKey(merged) !== leadersKey(stored);
      const pacedUntil = leaderChanged ? 0 : (stored?.written_at ?? 0) + CLUSTER_PACE_MS;
      const decision = decideClusterWrite({
        changed,
        lastWriteAt: stored?.written_at ?? null,
        now,
        keepaliveMs: settings.keepaliveMs,
        writesToday: reg.budget.used,
        writeCap: reserved ? settings.writeCap : settings.writeCap - reg.budget.reserve,
        pacedUntil,
      });
      reg.setLiveCluster(report.cluster, { doc: merged, reportAt: now });
      let written = false;
      let reason = decision.reason;
      if (decision.write) {
        const result = await reg.write(key, merged, stored === read ? raw : undefined);
        if (result === "conflict") {
          if (attempt < 4) continue; // another writer won: merge again on what it wrote
          reg.defer(key, merged); // still contended: the next flush merges it with the store's
        }
        written = result === true;
        if (!written) reason = "deferred";
      } else if (decision.reason === "deferred") {
        reg.defer(key, merged); // over budget: written when allowed
      } else {
        reg.dropPending(key); // the stored document already says what this report says
      }
      const lastWrite = written ? now : (stored?.written_at ?? now);
      const nextAt =
        reason === "deferred"
          ? Math.max(
              now + 1000,
              pacedUntil,
              reg.budget.allows(reserved) ? now + 1000 : nextUtcDay(now),
            )
          : lastWrite + settings.keepaliveMs;
      return {
        status: "ok",
        written,
        reason,
        writes_today: reg.budget.used,
        write_budget: settings.writeCap,
        next_keepalive_at: new Date(nextAt).toISOString(),
        next_keepalive_in_s: Math.max(0, Math.round((nextAt - now) / 1000)),
        digest: merged.digest,
      };
    }
  });
}

/**
 * An operator forgets a cluster (`POST /api/admin/clusters/forget`): its document starts afresh,
 * members, leader views and roster emptied, keeping only its revision and today's budget, the way
 * an abandoned cluster does (clusterHeartbeat). The next leader that reports is admitted and
 * starts a new roster. For a fleet whose members all got new keys (data directories wiped):
 * otherwise the roster refuses them, rightly, until the cluster has been silent for
 * ROLLCALL_RECORD_TTL_S. Null: no such cluster. One write (deferred, like any, past the cap).
 */
async function forgetCluster(
  reg: Registry,
  cluster: string,
): Promise<{ written: boolean; members: number } | null> {
  const key = CLUSTER_PREFIX + cluster;
  return reg.lock.run(key, async () => {
    for (let attempt = 0; ; attempt++) {
      const now = reg.clock.now();
      const { raw, read, stored, newest: base } = await newestCluster(reg, cluster);
      if (base === null) return null;
      const fresh = { ...emptyClusterDoc(cluster, now), rev: base.rev, budget: base.budget };
      reg.setLiveCluster(cluster, { doc: fresh, reportAt: now });
      const result = await reg.write(key, fresh, stored === read ? raw : undefined);
      if (result === "conflict" && attempt < 4) continue;
      if (result === "conflict") reg.defer(key, fresh);
      return { written: result === true, members: Object.keys(base.members).length };
    }
  });
}

//#endregion

//#region Security
// Bearer tokens compared in constant time, guards that fail closed, signed agent requests (Ed25519
// through Web Crypto) against replay, the live view's credential

async function digestBytes(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/**
 * Compares two secrets in time independent of where they differ (SHA-256 of both, then XOR).
 * @internal
 */
export async function tokensEqual(given: string, expected: string): Promise<boolean> {
  const [a, b] = await Promise.all([digestBytes(given), digestBytes(expected)]);
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}

/**
 * The token of an `Authorization: Bearer <token>` header (scheme case-insensitive): null without
 * a header, "" for another scheme. The one bearer rule, the agent gateway's too.
 */
export function bearerOf(header: string | undefined | null): string | null {
  if (!header) return null;
  const match = /^Bearer\s+(.+)$/i.exec(header.trim());
  return match ? (match[1] as string).trim() : "";
}

function bearerToken(c: Context): string | null {
  return bearerOf(c.req.header("authorization"));
}

/** The guard of an endpoint: direct-mode agent calls, leader reports, admin reads. */
type Guard = "worker" | "cluster" | "admin";

/** Whether any token is configured: then every guard needs its own (and one without refuses). */
function isSecured(settings: Settings): boolean {
  return settings.clusterToken !== null || settings.adminToken !== null;
}

/**
 * Admits a request to a guard (how: `Sender.level`) or answers why not. With no token at all
 * everything is open (local dev). Once any token is set every guard needs its own: a guard whose
 * token is not set refuses everyone (403), except token-less direct-mode workers where legacy
 * workers are admitted; a wrong token is always 401.
 */
async function authorize(
  c: Context,
  settings: Settings,
  guard: Guard,
): Promise<Sender["level"] | Response> {
  if (!isSecured(settings)) return "open";
  const given = bearerToken(c);
  if (given === null && guard === "worker" && settings.allowLegacyWorkers) return "legacy";
  const expected = guard === "admin" ? settings.adminToken : settings.clusterToken;
  if (expected === null) {
    const [what, name] =
      guard === "admin"
        ? ["Admin endpoints", "ROLLCALL_ADMIN_TOKEN"]
        : ["Agent endpoints", "ROLLCALL_CLUSTER_TOKEN"];
    return json(
      {
        error: `${what} are disabled`,
        message: `Another token is set, so ${what.toLowerCase()} need their own: set ${name}`,
      },
      403,
    );
  }
  if (given && (await tokensEqual(given, expected))) return "token";
  return json(
    {
      error: given === null ? "Missing token" : "Invalid token",
      message:
        guard === "admin"
          ? "Admin endpoints need 'Authorization: Bearer <admin token>'"
          : "Agents need 'Authorization: Bearer <cluster token>'",
    },
    401,
    { "www-authenticate": 'Bearer realm="rollcall"' },
  );
}

/** Headers of a signed agent request (docs/PROTOCOL.md, "Signed requests"). */
const SIGNATURE_HEADERS = {
  signer: "x-rollcall-signer",
  timestamp: "x-rollcall-timestamp",
  nonce: "x-rollcall-nonce",
  signature: "x-rollcall-signature",
} as const;

/** How far a signed request's timestamp may be from the coordinator's clock. */
const SIGNATURE_SKEW_MS = 5 * MINUTE;

/** What a signed request signs: the scheme, method, path, timestamp, nonce, signer, body digest. */
interface SignedRequestParts {
  method: string;
  /** The path as the coordinator receives it, without the query. */
  path: string;
  /** Milliseconds since the epoch. */
  timestamp: number;
  nonce: string;
  /** The PeerId whose key signs. */
  signer: string;
  /** SHA-256 of the exact body bytes (of nothing when there is no body), lowercase hex. */
  bodySha256: string;
}

/** The text an agent signs for a request (UTF-8), one part per line. */
function signedRequestText(p: SignedRequestParts): string {
  return [
    "rollcall-request-v1",
    p.method.toUpperCase(),
    p.path,
    String(p.timestamp),
    p.nonce,
    p.signer,
    p.bodySha256,
  ].join("\n");
}

/** SHA-256 of bytes (or of a string's UTF-8), lowercase hex. */
async function sha256Hex(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  let hex = "";
  for (const b of digest) hex += b.toString(16).padStart(2, "0");
  return hex;
}

function toBase64url(bytes: Uint8Array): string {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

function fromBase64url(text: string): Uint8Array | null {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return null;
  try {
    const raw = atob(text.replaceAll("-", "+").replaceAll("_", "/"));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

/**
 * Signs a request for the coordinator with the key of `signer` (its PeerId): the headers to send
 * along. `sign` signs bytes with the private key (a libp2p key's `sign`).
 */
export async function signRequest(input: {
  method: string;
  path: string;
  body?: Uint8Array | string | null;
  signer: string;
  sign: (data: Uint8Array) => Uint8Array | Promise<Uint8Array>;
  now: number;
  nonce?: string;
}): Promise<Record<string, string>> {
  const nonce = input.nonce ?? toBase64url(crypto.getRandomValues(new Uint8Array(16)));
  const timestamp = Math.round(input.now);
  const text = signedRequestText({
    method: input.method,
    path: input.path,
    timestamp,
    nonce,
    signer: input.signer,
    bodySha256: await sha256Hex(input.body ?? new Uint8Array(0)),
  });
  const signature = await input.sign(new TextEncoder().encode(text));
  return {
    [SIGNATURE_HEADERS.signer]: input.signer,
    [SIGNATURE_HEADERS.timestamp]: String(timestamp),
    [SIGNATURE_HEADERS.nonce]: nonce,
    [SIGNATURE_HEADERS.signature]: toBase64url(signature),
  };
}

/**
 * Verifies an Ed25519 signature with Web Crypto (Workers, Deno, Bun, Node 20); false on any error.
 * @internal
 */
export async function verifyEd25519(
  publicKey: Uint8Array,
  signature: Uint8Array,
  data: Uint8Array,
): Promise<boolean> {
  try {
    const raw = publicKey as BufferSource;
    const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify(
      { name: "Ed25519" },
      key,
      signature as BufferSource,
      data as BufferSource,
    );
  } catch {
    return false;
  }
}

/**
 * Nonces of the signed requests of the last two skew windows, per isolate: a nonce seen twice
 * is a replay. At most `max` (about 100 bytes each); when full of live ones the oldest goes,
 * counted in `evicted` (docs/SECURITY.md says what that leaves open).
 */
class NonceCache {
  readonly #seen = new Map<string, number>();
  evicted = 0;
  constructor(readonly max = 10_000) {}

  /** Records a nonce; false when it was seen and has not expired. */
  use(key: string, now: number): boolean {
    const until = this.#seen.get(key);
    if (until !== undefined && until > now) return false;
    this.#seen.delete(key);
    if (this.#seen.size >= this.max) {
      this.prune(now);
      if (this.#seen.size >= this.max) {
        this.#seen.delete(this.#seen.keys().next().value as string);
        this.evicted++;
      }
    }
    // Strictly past the last moment a signature made SIGNATURE_SKEW_MS ahead is still good.
    this.#seen.set(key, now + 2 * SIGNATURE_SKEW_MS + 1);
    return true;
  }

  /** Forgets expired nonces (they expire in the order they came). */
  prune(now: number): void {
    for (const [key, until] of this.#seen) {
      if (until > now) break;
      this.#seen.delete(key);
    }
  }
}

function unsigned(error: string, message: string, extra: Record<string, unknown> = {}): Refused {
  return new Refused(401, { error, message, ...extra });
}

/**
 * The verified signer of a request: null when it carries no signature headers; throws Refused
 * (401) when its signature is incomplete, malformed, outside the clock window, replayed or
 * wrong. The nonce is remembered only once the signature is good.
 */
async function verifiedSigner(
  headers: Headers,
  parts: { method: string; path: string; body: Uint8Array },
  nonces: NonceCache,
  now: number,
): Promise<string | null> {
  const signer = headers.get(SIGNATURE_HEADERS.signer);
  const timestamp = headers.get(SIGNATURE_HEADERS.timestamp);
  const nonce = headers.get(SIGNATURE_HEADERS.nonce);
  const signature = headers.get(SIGNATURE_HEADERS.signature);
  if (signer === null && timestamp === null && nonce === null && signature === null) return null;
  if (signer === null || timestamp === null || nonce === null || signature === null) {
    throw unsigned(
      "Incomplete request signature",
      "A signed request needs all four x-rollcall-* signature headers",
    );
  }
  const key = peerIdPublicKey(signer);
  if (key === null)
    throw unsigned("Invalid request signature", "The signer is not an Ed25519 PeerId");
  const ts = Number(timestamp);
  if (!/^\d{1,16}$/.test(timestamp) || Math.abs(now - ts) > SIGNATURE_SKEW_MS) {
    throw unsigned(
      "Request signature expired",
      `The signature's timestamp must be within ${SIGNATURE_SKEW_MS / 1000} s of the coordinator's clock`,
      { server_time: now },
    );
  }
  const sig = fromBase64url(signature);
  if (!/^[A-Za-z0-9_-]{16,64}$/.test(nonce) || sig === null || sig.length !== 64) {
    throw unsigned("Invalid request signature", "The nonce or the signature is malformed");
  }
  const text = signedRequestText({
    method: parts.method,
    path: parts.path,
    timestamp: ts,
    nonce,
    signer,
    bodySha256: await sha256Hex(parts.body),
  });
  if (!(await verifyEd25519(key, sig, new TextEncoder().encode(text)))) {
    throw unsigned(
      "Invalid request signature",
      "The signature does not verify with the signer's key",
    );
  }
  if (!nonces.use(`${signer} ${nonce}`, now)) {
    throw unsigned("Request signature already used", "Each signed request needs a fresh nonce");
  }
  return signer;
}

/** How far a live-view authorization's timestamp may be from the agent's clock. */
export const VIEW_AUTH_SKEW_MS = MINUTE;

/**
 * The text the coordinator signs (HMAC-SHA-256, keyed with the agent token) to read the live
 * view of the agent whose PeerId is `target` (the cluster's leader): that agent checks it
 * against its own id, so a credential sent to one agent opens no other agent's view.
 */
export function viewAuthText(timestamp: number, target = ""): string {
  return `rollcall-view-v2\nGET\n/_agent/cluster\n${target}\n${timestamp}`;
}

/**
 * The `Authorization` value for the live view of agent `target`: `Rollcall-View ts=<ms>,
 * sig=<hex>`, an HMAC of `viewAuthText` with the agent token, so the token itself never travels.
 */
export async function viewAuthorization(token: string, now: number, target = ""): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(token),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const ts = Math.round(now);
  const mac = new Uint8Array(
    await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(viewAuthText(ts, target))),
  );
  let hex = "";
  for (const b of mac) hex += b.toString(16).padStart(2, "0");
  return `Rollcall-View ts=${ts}, sig=${hex}`;
}

//#endregion

//#region Routing health
// Traffic windows, circuit breaker, retry budget, endpoints, latency estimates, the
// power-of-two-choices picker, outlier ejection, service figures and scaling signals. All of it lives per isolate: on Workers each isolate learns on its own (see
// docs/DEPLOY.md).

const HISTOGRAM_BASE_MS = 0.05;
const HISTOGRAM_STEPS_PER_DOUBLING = 4;
const HISTOGRAM_BUCKETS = 84; // 0.05 ms to ~88 s, each bucket ~19 % wide
const WINDOW_SLICES = 6;
const FIELDS = 5; // per slice: requests, errors, retries, rejected, peak in flight
const FAILURE_PENALTY_MS = 1000; // latency a failed attempt counts as, at least
const EWMA_SAMPLE_WEIGHT = 0.3;
const FADE_PER_REQUEST = 0.1; // knowledge of an endpoint fades ~10 % per request served elsewhere
const COST_TIE = 1.3; // costs within 30 % of each other count as equal: the two alternate

/** The histogram bucket of a latency: bucket i holds values up to `0.05 ms * 2^(i/4)`. @internal */
export function latencyBucket(ms: number): number {
  if (!(ms > HISTOGRAM_BASE_MS)) return 0;
  const i = Math.ceil(Math.log2(ms / HISTOGRAM_BASE_MS) * HISTOGRAM_STEPS_PER_DOUBLING);
  return i < HISTOGRAM_BUCKETS ? i : HISTOGRAM_BUCKETS - 1;
}

function bucketTop(i: number): number {
  return HISTOGRAM_BASE_MS * 2 ** (i / HISTOGRAM_STEPS_PER_DOUBLING);
}

/** What a traffic window shows (the last `window_s` seconds). @internal */
export interface WindowSnapshot {
  window_s: number;
  requests: number;
  errors: number;
  retries: number;
  rejected: number;
  peak_in_flight: number;
  throughput_rps: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
}

/** One slice of a traffic window (see `TrafficWindow.series`). */
interface WindowSlice {
  /** When the slice started (ms). */
  at: number;
  requests: number;
  errors: number;
  throughput_rps: number;
  p50_ms: number | null;
  p95_ms: number | null;
}

function percentile(histogram: Float64Array, total: number, q: number): number | null {
  if (total <= 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let b = 0; b < HISTOGRAM_BUCKETS; b++) {
    const n = histogram[b] as number;
    if (n > 0 && seen + n >= rank) {
      const low = b === 0 ? 0 : bucketTop(b - 1);
      const value = low + (bucketTop(b) - low) * Math.min(1, (rank - seen) / n);
      return Math.round(value * 100) / 100;
    }
    seen += n;
  }
  return Math.round(bucketTop(HISTOGRAM_BUCKETS - 1) * 100) / 100;
}

/**
 * The last `windowMs` of traffic in six slices: counts (requests, errors, retries, rejected),
 * the peak in flight, and a log-bucketed latency histogram whose percentiles are within one
 * bucket (about 20 %). Recording is O(1) and allocates nothing.
 * @internal
 */
export class TrafficWindow {
  readonly #sliceMs: number;
  readonly #epochs = new Float64Array(WINDOW_SLICES).fill(-1);
  readonly #counts = new Float64Array(WINDOW_SLICES * FIELDS);
  readonly #histogram = new Uint32Array(WINDOW_SLICES * HISTOGRAM_BUCKETS);

  constructor(
    readonly windowMs: number,
    readonly startedAt: number,
  ) {
    this.#sliceMs = windowMs / WINDOW_SLICES;
  }

  #slice(now: number): number {
    const epoch = Math.floor(now / this.#sliceMs);
    const i = epoch % WINDOW_SLICES;
    if (this.#epochs[i] !== epoch) {
      this.#epochs[i] = epoch;
      this.#counts.fill(0, i * FIELDS, (i + 1) * FIELDS);
      this.#histogram.fill(0, i * HISTOGRAM_BUCKETS, (i + 1) * HISTOGRAM_BUCKETS);
    }
    return i;
  }

  /** Counts one finished request (or attempt), whether it failed, and its latency. */
  record(now: number, latencyMs: number, failed: boolean): void {
    const i = this.#slice(now);
    (this.#counts[i * FIELDS] as number)++;
    if (failed) (this.#counts[i * FIELDS + 1] as number)++;
    (this.#histogram[i * HISTOGRAM_BUCKETS + latencyBucket(latencyMs)] as number)++;
  }

  /** Counts one more error of a request already counted (its answer broke after its headers). */
  error(now: number): void {
    (this.#counts[this.#slice(now) * FIELDS + 1] as number)++;
  }

  /** Counts one retry. */
  retry(now: number): void {
    (this.#counts[this.#slice(now) * FIELDS + 2] as number)++;
  }

  /** Counts one request turned away (queue full or timed out, every breaker open). */
  reject(now: number): void {
    (this.#counts[this.#slice(now) * FIELDS + 3] as number)++;
  }

  /** Notes the number in flight; the window keeps the peak. */
  inFlight(now: number, n: number): void {
    const at = this.#slice(now) * FIELDS + 4;
    if (n > (this.#counts[at] as number)) this.#counts[at] = n;
  }

  /** The window ending at `now` slice by slice, oldest first (the dashboard's sparklines). */
  series(now: number): WindowSlice[] {
    const current = Math.floor(now / this.#sliceMs);
    const out: WindowSlice[] = [];
    for (let epoch = current - WINDOW_SLICES + 1; epoch <= current; epoch++) {
      const i = ((epoch % WINDOW_SLICES) + WINDOW_SLICES) % WINDOW_SLICES;
      const at = epoch * this.#sliceMs;
      const kept = this.#epochs[i] === epoch;
      const requests = kept ? (this.#counts[i * FIELDS] as number) : 0;
      const histogram = new Float64Array(HISTOGRAM_BUCKETS);
      if (kept) {
        for (let b = 0; b < HISTOGRAM_BUCKETS; b++) {
          histogram[b] = this.#histogram[i * HISTOGRAM_BUCKETS + b] as number;
        }
      }
      const span = Math.min(now, at + this.#sliceMs) - Math.max(at, this.startedAt);
      out.push({
        at,
        requests,
        errors: kept ? (this.#counts[i * FIELDS + 1] as number) : 0,
        throughput_rps: span > 0 ? Math.round((requests * 10_000) / span) / 10 : 0,
        p50_ms: percentile(histogram, requests, 0.5),
        p95_ms: percentile(histogram, requests, 0.95),
      });
    }
    return out;
  }

  /** The figures of the window ending at `now`. */
  snapshot(now: number): WindowSnapshot {
    const current = Math.floor(now / this.#sliceMs);
    const sums = [0, 0, 0, 0];
    let peak = 0;
    const merged = new Float64Array(HISTOGRAM_BUCKETS);
    for (let i = 0; i < WINDOW_SLICES; i++) {
      const epoch = this.#epochs[i] as number;
      if (epoch < 0 || epoch > current || epoch <= current - WINDOW_SLICES) continue;
      for (let f = 0; f < 4; f++)
        sums[f] = (sums[f] as number) + (this.#counts[i * FIELDS + f] as number);
      peak = Math.max(peak, this.#counts[i * FIELDS + 4] as number);
      for (let b = 0; b < HISTOGRAM_BUCKETS; b++) {
        merged[b] = (merged[b] as number) + (this.#histogram[i * HISTOGRAM_BUCKETS + b] as number);
      }
    }
    const span = Math.min(
      this.windowMs - this.#sliceMs + (now - current * this.#sliceMs),
      now - this.startedAt,
    );
    const requests = sums[0] as number;
    return {
      window_s: Math.round(this.windowMs / 100) / 10,
      requests,
      errors: sums[1] as number,
      retries: sums[2] as number,
      rejected: sums[3] as number,
      peak_in_flight: peak,
      throughput_rps: span > 0 ? Math.round((requests * 10_000) / span) / 10 : 0,
      p50_ms: percentile(merged, requests, 0.5),
      p95_ms: percentile(merged, requests, 0.95),
      p99_ms: percentile(merged, requests, 0.99),
    };
  }
}

/**
 * A count over a sliding window of `windowMs`, kept in two halves: the current window and the
 * previous one, which counts with the share of it that still overlaps the last `windowMs`
 * (the previous window is forgotten once a whole window passed without a roll).
 * @internal
 */
export class SlidingCount {
  #start = 0;
  #current = 0;
  #previous = 0;

  constructor(readonly windowMs: number) {}

  /** Counts `n` (default 1) at `now`. */
  add(now: number, n = 1): void {
    this.#roll(now);
    this.#current += n;
  }

  /** The count of the last `windowMs` as of `now`. */
  estimate(now: number): number {
    this.#roll(now);
    return this.#current + this.#previous * (1 - (now - this.#start) / this.windowMs);
  }

  /** Forgets everything; a new window starts at `now`. */
  reset(now: number): void {
    this.#start = now;
    this.#current = 0;
    this.#previous = 0;
  }

  #roll(now: number): void {
    const w = this.windowMs;
    const elapsed = now - this.#start;
    if (elapsed < w) return;
    this.#previous = elapsed < 2 * w ? this.#current : 0;
    this.#current = 0;
    this.#start = now - (elapsed % w);
  }
}

/** A circuit breaker's state. */
type BreakerState = "closed" | "open" | "half_open";

/** Settings of a circuit breaker. */
interface BreakerInit {
  failureRatio: number;
  minRequests: number;
  windowMs: number;
  openMs: number;
}

/**
 * A circuit breaker for one worker and service. Closed, it counts outcomes over a sliding
 * window (`SlidingCount`) and opens when at least `failureRatio` of at least
 * `minRequests` requests failed. Open, it refuses requests for `openMs`; then, half-open, it
 * lets exactly one probe through: the probe's success closes it, its failure opens it again.
 * Outcomes of requests sent before it opened are ignored.
 * @internal
 */
export class CircuitBreaker {
  /** The state as of the last call (an open breaker turns half-open in `allows`); `stateAt` tells it for any time. */
  state: BreakerState = "closed";
  /** When an open breaker lets a probe through. */
  openUntil = 0;
  /** Times it opened. */
  trips = 0;
  #probing = false;
  readonly #requests: SlidingCount;
  readonly #failures: SlidingCount;

  constructor(readonly init: BreakerInit) {
    this.#requests = new SlidingCount(init.windowMs);
    this.#failures = new SlidingCount(init.windowMs);
  }

  /** The state at `now`, changing nothing: an open breaker whose time is up is half-open. */
  stateAt(now: number): BreakerState {
    return this.state === "open" && now >= this.openUntil ? "half_open" : this.state;
  }

  /** Whether a request may go now (an open breaker turns half-open once its time is up). */
  allows(now: number): boolean {
    const state = this.stateAt(now);
    if (state === "closed") return true;
    if (state === "open") return false;
    if (this.state === "open") {
      this.state = "half_open";
      this.#probing = false;
    }
    return !this.#probing;
  }

  /** Notes a request sent; returns whether it is the half-open probe. */
  dispatch(): boolean {
    if (this.state !== "half_open") return false;
    this.#probing = true;
    return true;
  }

  /** A request answered well. */
  success(now: number, probe: boolean): void {
    if (this.state === "closed") this.#count(now, false);
    else if (this.state === "half_open" && probe) this.#close(now);
  }

  /** A request failed (refused, dropped, timed out, 5xx). */
  failure(now: number, probe: boolean): void {
    if (this.state === "half_open") {
      if (probe) this.#open(now);
      return;
    }
    if (this.state === "open") return;
    this.#count(now, true);
    this.#tripIfDue(now);
  }

  /**
   * A request counted as answered well failed after all (its answer's body broke): one more
   * failure, not one more request. Only a closed breaker counts it.
   */
  failedAfter(now: number): void {
    if (this.state !== "closed") return;
    this.#failures.add(now);
    this.#tripIfDue(now);
  }

  #tripIfDue(now: number): void {
    const n = this.#requests.estimate(now);
    const f = this.#failures.estimate(now);
    if (n >= this.init.minRequests && f >= this.init.failureRatio * n) this.#open(now);
  }

  /** Closes the breaker at once (an operator's reset); returns whether it was not closed. */
  reset(now: number): boolean {
    const was = this.stateAt(now);
    this.#close(now);
    return was !== "closed";
  }

  /** A request ended without an outcome (the client went away): frees the probe slot. */
  abandon(probe: boolean): void {
    if (probe) this.#probing = false;
  }

  /** Requests and failures the window counts now. */
  counts(now: number): { requests: number; failures: number } {
    return {
      requests: Math.round(this.#requests.estimate(now) * 10) / 10,
      failures: Math.round(this.#failures.estimate(now) * 10) / 10,
    };
  }

  #count(now: number, failed: boolean): void {
    this.#requests.add(now);
    if (failed) this.#failures.add(now);
  }

  #open(now: number): void {
    this.state = "open";
    this.openUntil = now + this.init.openMs;
    this.trips++;
    this.#probing = false;
  }

  #close(now: number): void {
    this.state = "closed";
    this.#probing = false;
    this.#requests.reset(now);
    this.#failures.reset(now);
  }
}

/**
 * A retry budget for one service (the Finagle/Linkerd model): over a sliding window, retries
 * may add at most `ratio` of the requests plus `min` retries. So retries can never multiply
 * the load on a failing service.
 * @internal
 */
export class RetryBudget {
  readonly #requests: SlidingCount;
  readonly #retries: SlidingCount;

  constructor(readonly init: { ratio: number; min: number; windowMs: number }) {
    this.#requests = new SlidingCount(init.windowMs);
    this.#retries = new SlidingCount(init.windowMs);
  }

  /** Counts one original request (it earns `ratio` of a retry). */
  request(now: number): void {
    this.#requests.add(now);
  }

  /** Takes one retry from the budget; false when it is spent. */
  tryRetry(now: number): boolean {
    if (this.available(now) < 1) return false;
    this.#retries.add(now);
    return true;
  }

  /** Retries the budget still allows now. */
  available(now: number): number {
    const earned = this.init.ratio * this.#requests.estimate(now);
    return Math.max(0, this.init.min + earned - this.#retries.estimate(now));
  }
}

/** The settings routing health uses. */
type RoutingSettings = Pick<
  Settings,
  | "maxConcurrent"
  | "queueSize"
  | "ejectAfterFailures"
  | "ejectBaseMs"
  | "ejectMaxMs"
  | "breakerFailureRatio"
  | "breakerMinRequests"
  | "breakerWindowMs"
  | "breakerOpenMs"
  | "retryRatio"
  | "retryMin"
  | "retryWindowMs"
  | "latencyDecayMs"
  | "metricsWindowMs"
>;

const HEALTH_RANK = { healthy: 0, degraded: 1, unhealthy: 2 } as const;

/** One worker serving one service, and what this isolate learned about it. @internal */
export class Endpoint {
  /** The service URL without a trailing slash. */
  base = "";
  /** The worker's human name, sent as `X-Rollcall-Worker-Name` with its answers. */
  name: string | null = null;
  tier: 1 | 2 | 3 = 2;
  health: Provider["health"] = "healthy";
  inFlight = 0;
  /** Latency EWMA in ms (0: nothing known yet), when it was last updated, and the service's sample count then. */
  ewmaMs = 0;
  ewmaAt = 0;
  ewmaSample = 0;
  consecutiveFailures = 0;
  ejectedUntil = 0;
  ejections = 0;
  lastEjectedAt = 0;
  attempts = 0;
  failures = 0;
  /** Latency summed over the attempts that ended with an outcome, and how many they are. */
  latencySumMs = 0;
  latencyCount = 0;
  readonly breaker: CircuitBreaker;
  readonly window: TrafficWindow;
  /** HTTP answers over the breaker window, and those that were 5xx: a worker's answer error ratio. */
  readonly answers: SlidingCount;
  readonly answerErrors: SlidingCount;

  constructor(
    readonly worker_id: string,
    settings: RoutingSettings,
    now: number,
  ) {
    this.breaker = new CircuitBreaker({
      failureRatio: settings.breakerFailureRatio,
      minRequests: settings.breakerMinRequests,
      windowMs: settings.breakerWindowMs,
      openMs: settings.breakerOpenMs,
    });
    this.window = new TrafficWindow(settings.metricsWindowMs, now);
    this.answers = new SlidingCount(settings.breakerWindowMs);
    this.answerErrors = new SlidingCount(settings.breakerWindowMs);
  }

  /** Takes the provider's current URL, tier and health from the routing table. */
  update(provider: Provider): void {
    this.base = trimSlash(provider.url);
    this.name = provider.name ?? null;
    this.tier = provider.tier;
    this.health = provider.health;
  }

  /** Whether it is ejected at `now`. */
  ejected(now: number): boolean {
    return now < this.ejectedUntil;
  }

  /** Ends an ejection at once (an operator's action); returns whether it was ejected. */
  endEjection(now: number): boolean {
    const was = this.ejected(now);
    this.ejectedUntil = 0;
    this.consecutiveFailures = 0;
    return was;
  }
}

/** What a pick needs besides the route: time, randomness, and the workers already tried. */
interface PickOptions {
  now: number;
  random: () => number;
  tried?: readonly Endpoint[] | null;
}

/** Why nothing could be picked: every usable provider is at its limit, or none is usable. */
type Blocked = "busy" | "open" | "none";

/** A waiter in a service's queue. */
interface Waiter {
  wake: (ok: boolean) => void;
  timer: ReturnType<typeof setTimeout> | null;
  done: boolean;
}

/** A bounded first-in first-out queue of requests waiting for a slot. */
class WaitQueue {
  /** Requests waiting now. */
  size = 0;
  #waiters: Waiter[] = [];
  #head = 0;

  /**
   * Waits for `wakeOne`. Resolves false when `cap` are waiting already (at once) or after
   * `timeoutMs`.
   */
  wait(timeoutMs: number, cap: number): Promise<boolean> {
    if (this.size >= cap) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        done: false,
        timer: null,
        wake: (ok) => {
          if (waiter.done) return;
          waiter.done = true;
          this.size--;
          if (waiter.timer !== null) clearTimeout(waiter.timer);
          resolve(ok);
        },
      };
      waiter.timer = setTimeout(() => waiter.wake(false), Math.max(0, timeoutMs));
      this.size++;
      this.#waiters.push(waiter);
    });
  }

  /** Wakes the oldest waiter still waiting, if any. */
  wakeOne(): void {
    while (this.#head < this.#waiters.length) {
      const w = this.#waiters[this.#head++] as Waiter;
      if (!w.done) {
        w.wake(true);
        break;
      }
    }
    if (this.#head > 64 && this.#head * 2 > this.#waiters.length) {
      this.#waiters = this.#waiters.slice(this.#head);
      this.#head = 0;
    }
  }
}

/** A service's scaling signal and why. */
interface ScalingSignal {
  signal: "scale_up" | "scale_down" | "steady";
  reason: string;
}

/**
 * What this isolate knows of a service's latency: a service-wide EWMA of successful attempts
 * and, per endpoint, an EWMA (kept on the `Endpoint`) that fades towards the service's with time
 * (`decayMs`) and with the requests the service served elsewhere since (10 % each), so an
 * endpoint that looked slow once is tried again soon, even at low load.
 * @internal
 */
export class LatencyEstimate {
  /** Service-wide latency EWMA of successful attempts (0: nothing known). */
  ewmaMs = 0;
  /** Attempts settled so far (the clock of the per-request fading). */
  samples = 0;

  constructor(readonly decayMs: number) {}

  /** The latency estimate of `e` at `now` (0: nothing known about the service). */
  of(e: Endpoint, now: number): number {
    if (e.ewmaMs === 0) return this.ewmaMs;
    if (this.ewmaMs === 0) return e.ewmaMs;
    const fade = Math.exp(
      -(now - e.ewmaAt) / this.decayMs - (this.samples - e.ewmaSample) * FADE_PER_REQUEST,
    );
    return this.ewmaMs + (e.ewmaMs - this.ewmaMs) * fade;
  }

  /** Cost of sending one more request to `e`: (in flight + 1) x latency estimate. */
  cost(e: Endpoint, now: number): number {
    return (e.inFlight + 1) * this.of(e, now);
  }

  /**
   * Takes an attempt's latency: into `e`'s EWMA (each sample weighs 30 %; a failure counts as
   * at least 1 s) and, when it did not fail, into the service's (10 %).
   */
  record(e: Endpoint, now: number, latencyMs: number, failed: boolean): void {
    const sample = failed ? Math.max(latencyMs, FAILURE_PENALTY_MS) : latencyMs;
    const base = this.of(e, now) || sample;
    e.ewmaMs = base + (sample - base) * EWMA_SAMPLE_WEIGHT;
    e.ewmaAt = now;
    e.ewmaSample = ++this.samples;
    if (!failed) {
      this.ewmaMs = this.ewmaMs === 0 ? latencyMs : this.ewmaMs + (latencyMs - this.ewmaMs) * 0.1;
    }
  }
}

/**
 * Picks a service's endpoint: endpoints in preference groups (healthy before degraded, then
 * lower tier), power of two choices on cost within the first group with a usable one.
 * @internal
 */
export class Picker {
  /** Routable endpoints, sorted by health, tier and ID. */
  endpoints: Endpoint[] = [];
  /** Start index of each preference group in `endpoints`, then its length. */
  groups: number[] = [0];
  #turn = 0;
  #last: Endpoint | null = null;

  constructor(
    readonly latency: LatencyEstimate,
    readonly maxConcurrent: number,
  ) {}

  /** Replaces the endpoints (after the routing table changed). */
  setEndpoints(endpoints: Endpoint[]): void {
    endpoints.sort(
      (a, b) =>
        HEALTH_RANK[a.health] - HEALTH_RANK[b.health] ||
        a.tier - b.tier ||
        (a.worker_id < b.worker_id ? -1 : a.worker_id > b.worker_id ? 1 : 0),
    );
    const groups = [0];
    for (let i = 1; i < endpoints.length; i++) {
      const a = endpoints[i - 1] as Endpoint;
      const b = endpoints[i] as Endpoint;
      if (a.health !== b.health || a.tier !== b.tier) groups.push(i);
    }
    groups.push(endpoints.length);
    this.endpoints = endpoints;
    this.groups = groups;
  }

  #usable(e: Endpoint, now: number, tried: readonly Endpoint[] | null, strict: boolean): boolean {
    return (
      e.inFlight < this.maxConcurrent &&
      (!strict || !e.ejected(now)) &&
      (tried === null || !tried.includes(e)) &&
      e.breaker.allows(now)
    );
  }

  /**
   * Picks an endpoint: the first preference group with a usable one; within it, power of two
   * choices on cost, costs within 30 % alternating (round-robin while nothing is known about
   * the service's latency), so equal workers share even a sequential load. Ejected
   * endpoints are used only when nothing else is usable. O(1) unless most of a group is
   * unusable. Null when nothing is usable (see `blocked`).
   */
  pick(options: PickOptions): Endpoint | null {
    const tried = options.tried ?? null;
    for (let pass = 0; pass < 2; pass++) {
      const strict = pass === 0;
      for (let g = 0; g + 1 < this.groups.length; g++) {
        const found = this.#pickIn(
          this.groups[g] as number,
          this.groups[g + 1] as number,
          options,
          tried,
          strict,
        );
        if (found) {
          this.#last = found;
          return found;
        }
      }
    }
    return null;
  }

  #pickIn(
    start: number,
    end: number,
    options: PickOptions,
    tried: readonly Endpoint[] | null,
    strict: boolean,
  ): Endpoint | null {
    const { now, random } = options;
    const list = this.endpoints;
    const m = end - start;
    if (m === 0) return null; // every provider unhealthy: the group list is [0, 0]
    if (m === 1) {
      const only = list[start] as Endpoint;
      return this.#usable(only, now, tried, strict) ? only : null;
    }
    if (this.latency.ewmaMs === 0) {
      // Nothing known yet: round-robin over the usable ones.
      for (let k = 0; k < m; k++) {
        const e = list[start + ((this.#turn + k) % m)] as Endpoint;
        if (this.#usable(e, now, tried, strict)) {
          this.#turn = (this.#turn + k + 1) % 1_000_000_007;
          return e;
        }
      }
      return null;
    }
    const i = start + Math.floor(random() * m);
    let j = start + Math.floor(random() * (m - 1));
    if (j >= i) j++;
    const a = list[i] as Endpoint;
    const b = list[j] as Endpoint;
    const okA = this.#usable(a, now, tried, strict);
    const okB = this.#usable(b, now, tried, strict);
    if (okA && okB) return this.#cheaper(a, b, now);
    if (okA) return a;
    if (okB) return b;
    // Both draws unusable: choose among the usable rest (a scan, only on this slow path).
    let usable = 0;
    for (let k = start; k < end; k++) {
      if (this.#usable(list[k] as Endpoint, now, tried, strict)) usable++;
    }
    if (usable === 0) return null;
    const nth = Math.floor(random() * usable);
    let best: Endpoint | null = null;
    let second: Endpoint | null = null;
    const other = usable > 1 ? (nth + 1 + Math.floor(random() * (usable - 1))) % usable : -1;
    for (let k = start, seen = 0; k < end; k++) {
      const e = list[k] as Endpoint;
      if (!this.#usable(e, now, tried, strict)) continue;
      if (seen === nth) best = e;
      if (seen === other) second = e;
      seen++;
    }
    if (best && second) return this.#cheaper(best, second, now);
    return best;
  }

  /** The cheaper of two; when their costs are about equal, not the one picked last. */
  #cheaper(a: Endpoint, b: Endpoint, now: number): Endpoint {
    const ca = this.latency.cost(a, now);
    const cb = this.latency.cost(b, now);
    if (ca > cb * COST_TIE) return b;
    if (cb > ca * COST_TIE) return a;
    return a === this.#last ? b : a;
  }

  /** Why `pick` found nothing: "busy" (some provider is only at its limit), "open", or "none". */
  blocked(now: number, tried: readonly Endpoint[] | null = null): Blocked {
    let open = false;
    for (const e of this.endpoints) {
      if (tried?.includes(e)) continue;
      if (!e.breaker.allows(now)) open = true;
      else if (e.inFlight >= this.maxConcurrent) return "busy";
    }
    return open ? "open" : "none";
  }

  /** Milliseconds until the first open breaker lets a probe through (at least 1 s). */
  retryAfterMs(now: number): number {
    let soonest = Number.POSITIVE_INFINITY;
    for (const e of this.endpoints) {
      if (e.breaker.stateAt(now) === "open") {
        soonest = Math.min(soonest, e.breaker.openUntil - now);
      }
    }
    return Number.isFinite(soonest) ? Math.max(1000, soonest) : 1000;
  }
}

/** Endpoints ejected at `now`. */
function ejectedCount(endpoints: readonly Endpoint[], now: number): number {
  let n = 0;
  for (const e of endpoints) if (e.ejected(now)) n++;
  return n;
}

/**
 * Outlier ejection over a service's endpoints, and whom an error answer blames: an endpoint
 * with `ejectAfterFailures` failures in a row is ejected (never more than half the endpoints at
 * once, each ejection of the same endpoint longer, up to `ejectMaxMs`).
 * @internal
 */
export class Ejection {
  constructor(
    readonly settings: Pick<RoutingSettings, "ejectAfterFailures" | "ejectBaseMs" | "ejectMaxMs">,
  ) {}

  /**
   * Whether a 502/503/504 answer from `e` is the worker's own fault: another worker of the
   * service answers it with at most half `e`'s error ratio (this answer counted). An error every
   * worker gives alike (one bad path, however often a client asks for it) blames none of them,
   * and a service with one provider is never ejected for its answers. O(providers), only on such
   * an answer.
   */
  blames(e: Endpoint, endpoints: readonly Endpoint[], now: number): boolean {
    const mine = (e.answerErrors.estimate(now) + 1) / (e.answers.estimate(now) + 1);
    for (const p of endpoints) {
      if (p === e) continue;
      const n = p.answers.estimate(now);
      if (n >= 1 && p.answerErrors.estimate(now) / n <= mine / 2) return true;
    }
    return false;
  }

  /** `e` answered well: its run of failures ends; its past ejections are forgotten after a while. */
  succeeded(e: Endpoint, now: number): void {
    e.consecutiveFailures = 0;
    if (e.ejections > 0 && now - e.lastEjectedAt > this.settings.ejectMaxMs * 2) e.ejections = 0;
  }

  /** `e` failed: one more in its run; at `ejectAfterFailures` it is ejected if it may be. */
  failed(e: Endpoint, endpoints: readonly Endpoint[], now: number): void {
    e.consecutiveFailures++;
    const s = this.settings;
    if (
      e.consecutiveFailures >= s.ejectAfterFailures &&
      !e.ejected(now) &&
      ejectedCount(endpoints, now) < Math.floor(endpoints.length / 2)
    ) {
      e.ejections++;
      e.ejectedUntil = now + Math.min(s.ejectBaseMs * e.ejections, s.ejectMaxMs);
      e.lastEjectedAt = now;
      e.consecutiveFailures = 0;
    }
  }
}

/**
 * A service's own traffic figures in this isolate (what the metrics and the scaling signal
 * show): totals, requests in flight, the traffic window, and the last scaling signal.
 * @internal
 */
export class ServiceFigures {
  inFlight = 0;
  requests = 0;
  errors = 0;
  retries = 0;
  rejected = 0;
  latencySumMs = 0;
  signal: ScalingSignal = { signal: "steady", reason: "no traffic seen yet" };
  nextEvaluationAt = 0;
  readonly window: TrafficWindow;

  constructor(
    windowMs: number,
    readonly firstSeenAt: number,
  ) {
    this.window = new TrafficWindow(windowMs, firstSeenAt);
  }

  /** Counts an attempt sent. */
  dispatched(now: number): void {
    this.inFlight++;
    this.window.inFlight(now, this.inFlight);
  }

  /** Counts a finished request: its final status and end-to-end latency (ms). */
  finish(now: number, status: number, latencyMs: number): void {
    const failed = status >= 500;
    if (failed) this.errors++;
    this.latencySumMs += latencyMs;
    this.window.record(now, latencyMs, failed);
  }

  /** Counts an error of a finished request whose answer broke after its headers. */
  broke(now: number): void {
    this.errors++;
    this.window.error(now);
  }

  /** Counts a retry taken from the budget. */
  retry(now: number): void {
    this.retries++;
    this.window.retry(now);
  }

  /** Counts a request turned away (queue full, queue timeout, every breaker open). */
  reject(now: number): void {
    this.rejected++;
    this.window.reject(now);
  }
}

/** How an attempt ended, for `ServiceRoute.settle`. */
interface AttemptOutcome {
  now: number;
  latencyMs: number;
  failed: boolean;
  /** It ended without an outcome (the client went away, the URL was this coordinator). */
  abandoned?: boolean;
  /** The worker sent an HTTP answer. */
  answered?: boolean;
  /** An error answer not held against the worker (counted in its metrics, never in its breaker or ejection). */
  excused?: boolean;
  /** It was the half-open breaker's probe. */
  probe: boolean;
}

/**
 * One service's routing state in this isolate: the picker over its endpoints, their latency,
 * outlier ejection, the retry budget, the bounded queue and the service's figures. It ties
 * them together where an attempt starts (`dispatch`) and ends (`settle`).
 * @internal
 */
export class ServiceRoute {
  /** Providers in the routing table, usable or not. */
  providers = 0;
  readonly latency: LatencyEstimate;
  readonly picker: Picker;
  readonly ejection: Ejection;
  readonly figures: ServiceFigures;
  readonly budget: RetryBudget;
  readonly #queue = new WaitQueue();

  constructor(
    readonly name: string,
    readonly settings: RoutingSettings,
    now: number,
  ) {
    this.latency = new LatencyEstimate(settings.latencyDecayMs);
    this.picker = new Picker(this.latency, settings.maxConcurrent);
    this.ejection = new Ejection(settings);
    this.figures = new ServiceFigures(settings.metricsWindowMs, now);
    this.budget = new RetryBudget({
      ratio: settings.retryRatio,
      min: settings.retryMin,
      windowMs: settings.retryWindowMs,
    });
  }

  /** Routable endpoints, sorted by health, tier and ID (the picker's). */
  get endpoints(): Endpoint[] {
    return this.picker.endpoints;
  }

  /** Replaces the endpoints (after the routing table changed). */
  setEndpoints(endpoints: Endpoint[], providers: number): void {
    this.picker.setEndpoints(endpoints);
    this.providers = providers;
  }

  /** Counts an incoming request (it also earns the retry budget). */
  begin(now: number): void {
    this.figures.requests++;
    this.budget.request(now);
  }

  /** Sends an attempt to `e`; returns whether it is the half-open breaker's probe. */
  dispatch(e: Endpoint, now: number): boolean {
    e.inFlight++;
    e.attempts++;
    this.figures.dispatched(now);
    e.window.inFlight(now, e.inFlight);
    return e.breaker.dispatch();
  }

  /** Whether a 502/503/504 answer from `e` is the worker's own fault (`Ejection.blames`). */
  blames(e: Endpoint, now: number): boolean {
    return this.ejection.blames(e, this.picker.endpoints, now);
  }

  /**
   * Records an attempt's outcome and frees its slot (waking the oldest queued request): the
   * endpoint's answers and window, latency, its breaker and run of failures (ejection).
   */
  settle(e: Endpoint, outcome: AttemptOutcome): void {
    const { now, latencyMs, failed, probe } = outcome;
    e.inFlight--;
    this.figures.inFlight--;
    this.#queue.wakeOne();
    if (outcome.abandoned) {
      e.breaker.abandon(probe);
      return;
    }
    const excused = outcome.excused === true;
    if (outcome.answered) {
      e.answers.add(now);
      if (failed || excused) e.answerErrors.add(now);
    }
    e.window.record(now, latencyMs, failed || excused);
    e.latencySumMs += latencyMs;
    e.latencyCount++;
    this.latency.record(e, now, latencyMs, failed);
    if (failed || excused) e.failures++;
    if (failed) {
      e.breaker.failure(now, probe);
      this.ejection.failed(e, this.picker.endpoints, now);
      return;
    }
    if (!excused) this.ejection.succeeded(e, now);
    e.breaker.success(now, probe); // it answered: alive, whatever the answer says
  }

  /**
   * An answer's body broke after its headers (the worker reset mid-response): the attempt,
   * settled as answered, failed after all, and counts as a reset before the headers would: in
   * the endpoint's errors and latency (a failure), its breaker, and its run of failures, which
   * the answer's headers had ended (`streak`: the run before them).
   */
  broke(e: Endpoint, streak: number, now: number): void {
    e.failures++;
    e.window.error(now);
    this.figures.broke(now);
    this.latency.record(e, now, 0, true);
    e.breaker.failedAfter(now);
    if (streak > e.consecutiveFailures) e.consecutiveFailures = streak;
    this.ejection.failed(e, this.picker.endpoints, now);
  }

  /** Endpoints ejected at `now`. */
  ejectedCount(now: number): number {
    return ejectedCount(this.picker.endpoints, now);
  }

  /**
   * Waits for a slot (a finished request wakes the oldest waiter). Resolves false when the
   * queue is full (at once) or after `timeoutMs`.
   */
  wait(timeoutMs: number): Promise<boolean> {
    return this.#queue.wait(timeoutMs, this.settings.queueSize);
  }

  /** Requests waiting in the queue now. */
  get queued(): number {
    return this.#queue.size;
  }
}

/** What a scaling decision looks at. */
interface ScalingInput {
  /** Providers in the routing table. */
  providers: number;
  /** Providers that take traffic now (routable, not ejected, breaker not open). */
  serving: number;
  /** In-flight limit per provider. */
  limit: number;
  /** Requests waiting in the queue now. */
  queued: number;
  window: WindowSnapshot;
  /** How long this isolate has watched the service (ms). */
  observedMs: number;
  windowMs: number;
  scaleUpLatencyMs: number;
  scaleDownUtilization: number;
}

/**
 * The scaling signal of a service (pure). Scale up on queueing or turned-away requests, on
 * saturation (peak in flight >= 80 % of the serving providers' limits), on p95 latency at or
 * over the threshold (with at least 20 requests), or when no provider serves. Scale down when
 * at least two providers serve and, over a whole window, one fewer would have run at most
 * `scaleDownUtilization` busy. Otherwise steady.
 * @internal
 */
export function scalingSignal(input: ScalingInput): ScalingSignal {
  const w = input.window;
  const s = w.window_s;
  if (input.providers > 0 && input.serving === 0) {
    return { signal: "scale_up", reason: "no healthy providers: none takes traffic now" };
  }
  if (input.queued > 0 || w.rejected > 0) {
    return {
      signal: "scale_up",
      reason: `queueing: ${input.queued} waiting now, ${w.rejected} turned away in the last ${s} s`,
    };
  }
  const capacity = input.serving * input.limit;
  if (capacity > 0 && w.peak_in_flight >= 0.8 * capacity) {
    return {
      signal: "scale_up",
      reason: `saturation: peak ${w.peak_in_flight} in flight of ${capacity} (${input.serving} providers x ${input.limit})`,
    };
  }
  if (w.p95_ms !== null && w.requests >= 20 && w.p95_ms >= input.scaleUpLatencyMs) {
    return {
      signal: "scale_up",
      reason: `latency: p95 ${w.p95_ms} ms >= ${input.scaleUpLatencyMs} ms over the last ${s} s`,
    };
  }
  if (input.serving >= 2 && input.observedMs >= input.windowMs) {
    const fewer = (input.serving - 1) * input.limit;
    const load = w.peak_in_flight / fewer;
    if (load <= input.scaleDownUtilization) {
      return {
        signal: "scale_down",
        reason: `idle providers: peak ${w.peak_in_flight} in flight across ${input.serving} providers (limit ${input.limit} each) in the last ${s} s; one fewer would run at ${Math.round(load * 100)} %`,
      };
    }
  }
  return {
    signal: "steady",
    reason: `within limits: peak ${w.peak_in_flight} in flight, p95 ${w.p95_ms ?? "-"} ms, no queueing`,
  };
}

//#endregion

//#region Paths and forwarding
// Path safety, aliases, replayable bodies, one attempt

/** Headers that describe one hop, never forwarded (RFC 9110 7.6.1); the agent's gateway uses them too. */
export const HOP_BY_HOP: readonly string[] = [
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
];
/** Methods the proxy forwards; anything else (TRACE, CONNECT, garbage) is answered 405 at once. */
const PROXY_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);
/**
 * Set on every forwarded request (its value: the coordinator's instance id); one that arrives with it is a loop.
 * @internal
 */
export const HOP_HEADER = "x-rollcall-hop";
/** Set on a 508 answer: the hop value that came in, so the sender learns it called itself. */
const LOOP_HEADER = "x-rollcall-loop";

/** Thrown (and answered 400) when a service path tries to escape its prefix. */
export class UnsafePathError extends Error {
  override name = "UnsafePathError";
}

function decodeRepeatedly(segment: string): string[] {
  const forms = [segment];
  let current = segment;
  for (let i = 0; i < 3 && current.includes("%"); i++) {
    try {
      current = decodeURIComponent(current);
    } catch {
      throw new UnsafePathError("Path contains an invalid percent-encoding");
    }
    forms.push(current);
  }
  return forms;
}

/**
 * Checks a raw (still percent-encoded) path below a service prefix: no `.` or `..` segment, no
 * encoded slash or backslash, no NUL, in any decoding. Throws UnsafePathError.
 */
export function assertSafeRest(rest: string): void {
  if (rest.includes("\\")) throw new UnsafePathError("Path contains a backslash");
  for (const segment of rest.split("/")) {
    for (const form of decodeRepeatedly(segment)) {
      if (form === "." || form === "..") throw new UnsafePathError("Path contains a dot segment");
      if (form !== segment && /[/\\\0]/.test(form)) {
        throw new UnsafePathError("Path contains an encoded slash, backslash or NUL");
      }
      if (form.includes("\0")) throw new UnsafePathError("Path contains NUL");
    }
  }
}

/**
 * The upstream URL for `rest` below a provider's service URL; throws UnsafePathError if it would
 * leave it. `rest` must have passed `assertSafeRest` (checked once per request, not per attempt):
 * only what the URL parser resolves (dot segments) is caught here, not an encoded slash.
 * @internal
 */
export function upstreamUrl(base: string, rest: string | null, search: string): string {
  const root = trimSlash(base);
  const target = `${root}${rest === null ? "" : `/${rest}`}${search}`;
  const rootPath = trimSlash(new URL(root).pathname);
  const path = new URL(target).pathname;
  if (path !== rootPath && !path.startsWith(`${rootPath}/`)) {
    throw new UnsafePathError("Path leaves the service prefix");
  }
  return target;
}

/** Where a request goes: a service name and the raw rest of the path (null: no trailing part). */
interface ServiceTarget {
  service: string;
  rest: string | null;
}

/** Parses `/api/service/<name>[/<rest>]` from a raw pathname; throws UnsafePathError on a bad name. */
export function parseProxyPath(pathname: string): ServiceTarget | null {
  const prefix = "/api/service/";
  if (!pathname.startsWith(prefix)) return null;
  const tail = pathname.slice(prefix.length);
  const slash = tail.indexOf("/");
  const rawName = slash === -1 ? tail : tail.slice(0, slash);
  let name: string;
  try {
    name = decodeURIComponent(rawName);
  } catch {
    throw new UnsafePathError("Service name has an invalid percent-encoding");
  }
  if (!SERVICE_NAME_PATTERN.test(name) || name !== rawName) {
    throw new UnsafePathError("Service name must be 1-64 letters, digits or . _ -");
  }
  return { service: name, rest: slash === -1 ? null : tail.slice(slash + 1) };
}

/** Configured aliases as `[prefix, service]` pairs, longest prefix first (see `aliasList`). */
type AliasList = readonly (readonly [prefix: string, service: string])[];

/** The configured aliases, longest prefix first: sorted once, when a coordinator is built. */
export function aliasList(aliases: Record<string, string>): AliasList {
  return Object.entries(aliases).sort((a, b) => b[0].length - a[0].length);
}

/**
 * Matches a path against the aliases (the longest matching prefix wins): the service, and the
 * whole path forwarded. A prefix ending in `/` also matches the path without it.
 */
export function matchAlias(pathname: string, aliases: AliasList): ServiceTarget | null {
  for (const [prefix, service] of aliases) {
    const hit = prefix.endsWith("/")
      ? pathname.startsWith(prefix) || pathname === prefix.slice(0, -1)
      : pathname === prefix || pathname.startsWith(`${prefix}/`);
    if (hit) return { service, rest: pathname.slice(1) };
  }
  return null;
}

/**
 * Whether the upstream client refused to send the request as given, before anything went out:
 * undici's invalid-argument error, node:http's invalid header character or name (a header
 * value with a NUL or a control character that a lenient server parser let in). The request's
 * fault, never the worker's.
 */
function isRefusedRequest(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return (
    code === "UND_ERR_INVALID_ARG" ||
    code === "ERR_INVALID_CHAR" ||
    code === "ERR_INVALID_HTTP_TOKEN"
  );
}

/**
 * Whether a fetch error means nothing reached the upstream (connection refused, DNS failure).
 * @internal
 */
export function isConnectFailure(err: unknown): boolean {
  const e = err as {
    code?: unknown;
    message?: unknown;
    cause?: { code?: unknown; message?: unknown };
  };
  const text = [
    e?.code,
    e?.message,
    e?.cause?.code,
    e?.cause?.message,
    String(e?.cause ?? ""),
  ].join(" ");
  return /ECONNREFUSED|EUPSTREAMREFUSED|ConnectionRefused|Connection refused|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|Unable to connect|dns error|tcp connect error|connect\)/i.test(
    text,
  );
}

/**
 * A request body that can be sent again: the chunks handed to one attempt are kept (up to a
 * limit), so the next attempt replays them and then continues from the source stream.
 */
class ReplayableBody {
  #chunks: Uint8Array[] = [];
  #bytes = 0;
  #overflow = false;
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #done = false;
  #reading: Promise<Uint8Array | null> | null = null;
  /** `performance.now()` when the client last delivered a chunk (or the body began). */
  progressAt = performance.now();

  constructor(
    source: ReadableStream<Uint8Array>,
    private readonly limit: number,
  ) {
    this.#reader = source.getReader();
  }

  /** Whether a new attempt can send the body from its start. */
  get replayable(): boolean {
    return !this.#overflow;
  }

  /** Whether the client is being waited for: its body has not ended and a read of it is pending. */
  get waitingForClient(): boolean {
    return !this.#done && this.#reading !== null;
  }

  async #next(): Promise<Uint8Array | null> {
    if (this.#done) return null;
    this.#reading ??= this.#reader.read().then(({ done, value }) => {
      this.#reading = null;
      this.progressAt = performance.now();
      if (done || !value) {
        this.#done = true;
        return null;
      }
      if (!this.#overflow) {
        this.#bytes += value.byteLength;
        if (this.#bytes > this.limit) {
          this.#overflow = true;
          this.#chunks = [];
        } else {
          this.#chunks.push(value);
        }
      }
      return value;
    });
    return this.#reading;
  }

  /** A fresh stream for one attempt (replays the kept chunks first). */
  stream(): ReadableStream<Uint8Array> {
    let index = 0;
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        if (!this.#overflow && index < this.#chunks.length) {
          controller.enqueue(this.#chunks[index++] as Uint8Array);
          return;
        }
        const chunk = await this.#next();
        if (chunk === null) {
          controller.close();
          return;
        }
        if (!this.#overflow) index = this.#chunks.length;
        controller.enqueue(chunk);
      },
      // Never cancel the source: a failed attempt must leave it for the next one.
      cancel: () => {},
    });
  }

  /** Stops reading the source (the request is over). */
  release(): void {
    this.#reader.cancel().catch(() => {});
  }
}

interface AttemptFailure {
  failed: true;
  error: unknown;
  timedOut: boolean;
  /** The client went away, so the attempt was abandoned. */
  clientGone: boolean;
  /** The time ran out while the client's upload was stalled: the client's fault, not the worker's. */
  clientSlow: boolean;
}

/** One request as the proxy sees it: the Web request, the runtime's env, Workers' context. */
interface Incoming {
  request: Request;
  env: unknown;
  exec: WaitUntil | null;
}

/** The incoming request of a hono context. */
function incomingOf(c: Context): Incoming {
  let exec: WaitUntil | null = null;
  try {
    exec = c.executionCtx;
  } catch {
    // No ExecutionContext (Node, Bun, Deno).
  }
  return { request: c.req.raw, env: c.env, exec };
}

/**
 * Where a coordinator learns a request's client address: from the runtime's view of the
 * connection, handed in by each starter (like `clientGone`), never from a header a client could
 * set. Only on Workers is a header the answer: Cloudflare sets CF-Connecting-IP itself
 * (`workersClientAddress`). Undefined when unknown.
 */
export type ClientAddress = (request: Request, env: unknown) => string | null | undefined;

/**
 * A request's headers as the runtime's server received them, as one flat list (name, value,
 * name, value, ...; names in any case, a repeated name repeated), where reading that list costs
 * less than `request.headers`: @hono/node-server builds a `Headers` from Node's `rawHeaders` on
 * first use, which is then sorted to be read. Handed in by a starter (`nodeRawHeaders`); none,
 * or null for a request: `request.headers`.
 */
export type RawRequestHeaders = (request: Request, env: unknown) => readonly string[] | null;

/** The client's address by the starter's component; undefined when unknown or when it throws. */
function clientOf(clientAddress: ClientAddress, inc: Incoming): string | undefined {
  try {
    return clientAddress(inc.request, inc.env) || undefined;
  } catch {
    return undefined; // no address known: X-Forwarded-For keeps what it had
  }
}

/**
 * Request headers never sent upstream as the client sent them: hop-by-hop ones, framing (the
 * upstream client frames what it really sends), the hop header, and every header that claims
 * who the client is (rewritten from what the runtime saw, never taken from the client).
 */
const REWRITTEN_REQUEST_HEADERS = new Set([
  ...HOP_BY_HOP,
  "host",
  "accept-encoding", // let the runtime's fetch ask for what it can decode
  "content-length",
  "expect",
  HOP_HEADER,
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "forwarded",
  "x-real-ip",
  "true-client-ip",
  "x-client-ip",
  "cf-connecting-ip",
]);

/**
 * The abort handle an upstream client that says `abortHandle` takes (init `abortable`) instead
 * of a signal: it sets `abort`, the proxy calls it. An AbortController, its signal and the
 * client's listener on it cost more per request on Node than the proxy's routing does.
 */
export interface AbortHandle {
  abort: ((reason: Error) => void) | null;
}

/** The reason an attempt is aborted with, by the shared timer or a client that went away. */
function abortReason(): Error {
  return new DOMException("The operation was aborted", "AbortError");
}

/** One attempt in flight: what aborts it, and when. */
interface Pending {
  /** What aborts the attempt: the upstream client's handle, else a controller of its signal. */
  handle: AbortHandle | null;
  controller: AbortController | null;
  deadline: number;
  started: number;
  inc: Incoming;
  /** The request body being sent, if any: its upload is timed apart from the worker. */
  body: ReplayableBody | null;
  timedOut: boolean;
  clientGone: boolean;
  clientSlow: boolean;
  index: number;
}

/** Aborts an attempt in flight (no closure per attempt: the handle or controller it holds). */
function abortPending(p: Pending): void {
  if (p.handle !== null) p.handle.abort?.(abortReason());
  else p.controller?.abort();
}

/**
 * When an attempt times out: the proxy timeout counts from the start, or, while a body streams
 * from the client, from the client's last chunk (a slow upload is not the worker's delay).
 */
function dueAt(deadline: number, started: number, body: ReplayableBody | null): number {
  return body === null ? deadline : Math.max(deadline, body.progressAt + (deadline - started));
}

/**
 * Deadlines of the attempts in flight, checked by one shared timer (every 100 ms, or a
 * quarter of the timeout) instead of a timer and an abort listener per attempt. An attempt
 * still running after one check is aborted when its client has gone away. An attempt that
 * runs out of time while its client's upload stalls is the client's fault (`clientSlow`).
 */
class Deadlines {
  readonly #items: Pending[] = [];
  #timer: ReturnType<typeof setInterval> | null = null;

  constructor(
    readonly periodMs: number,
    readonly clientGone: (request: Request, env: unknown) => boolean,
  ) {}

  add(p: Pending): void {
    p.index = this.#items.length;
    this.#items.push(p);
    this.#timer ??= setInterval(() => this.#check(), this.periodMs);
  }

  remove(p: Pending): void {
    const items = this.#items;
    const last = items.pop() as Pending;
    if (last !== p) {
      items[p.index] = last;
      last.index = p.index;
    }
    if (items.length === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }

  #check(): void {
    const now = performance.now();
    for (const p of [...this.#items]) {
      if (now >= p.deadline && now >= dueAt(p.deadline, p.started, p.body)) {
        p.timedOut = true;
        p.clientSlow = p.body?.waitingForClient ?? false;
        abortPending(p);
      } else if (now - p.started >= this.periodMs && this.clientGone(p.inc.request, p.inc.env)) {
        p.clientGone = true;
        abortPending(p);
      }
    }
  }
}

//#endregion

//#region Router
// Per-isolate routing state kept across routing-table rebuilds, the live view, signals

/** Most service URLs found to be the coordinator itself that an isolate remembers. */
const MAX_SELF_URLS = 256;

/**
 * The per-isolate router: endpoints and service routes, kept while the table is rebuilt.
 * Routes of services no longer in the table are dropped by `prune` once idle.
 */
class Router {
  readonly routes = new Map<string, ServiceRoute>();
  readonly #endpoints = new Map<string, Endpoint>();
  /** Service URLs that answered with this coordinator's own loop marker: never routed to. */
  readonly #self = new Set<string>();
  #table: RoutingTable | null = null;

  constructor(readonly settings: Settings) {}

  /** Never routes to `base` again (it is this coordinator); the next sync drops it. */
  refuseSelf(base: string): void {
    if (this.#self.size >= MAX_SELF_URLS)
      this.#self.delete(this.#self.values().next().value as string);
    this.#self.add(base);
    this.#table = null;
  }

  /** Whether a service URL was found to be this coordinator. */
  isSelf(base: string): boolean {
    return this.#self.has(base);
  }

  /** Drops the routes of services the table no longer has, once nothing is in flight or queued. */
  prune(): void {
    const table = this.#table;
    if (table === null) return;
    for (const [name, route] of this.routes) {
      if (!table.providers.has(name) && route.figures.inFlight === 0 && route.queued === 0) {
        this.routes.delete(name);
      }
    }
  }

  /** Takes a (re)built routing table: O(1) when it is the one seen last. */
  sync(table: RoutingTable, now: number): void {
    if (table === this.#table) return;
    this.#table = table;
    const seen = new Set<string>();
    for (const [name, providers] of table.providers) {
      let route = this.routes.get(name);
      if (!route) {
        route = new ServiceRoute(name, this.settings, now);
        this.routes.set(name, route);
      }
      const list: Endpoint[] = [];
      for (const p of providers) {
        if (p.health === "unhealthy" || !isHttpUrl(p.url) || this.#self.has(trimSlash(p.url)))
          continue;
        const key = `${name}\u0000${p.worker_id}`;
        seen.add(key);
        let ep = this.#endpoints.get(key);
        if (!ep) {
          ep = new Endpoint(p.worker_id, this.settings, now);
          this.#endpoints.set(key, ep);
        }
        ep.update(p);
        list.push(ep);
      }
      route.setEndpoints(list, providers.length);
    }
    for (const [name, route] of this.routes) {
      if (!table.providers.has(name)) route.setEndpoints([], 0);
    }
    for (const key of [...this.#endpoints.keys()]) if (!seen.has(key)) this.#endpoints.delete(key);
  }
}

/** An admin read refreshes the live view when it is older than this (routing: `liveViewTtlMs`). */
const ADMIN_LIVE_MAX_AGE_MS = 250;

/** The status the admin views show for a member the leader's mesh does not hear (by its liveness). */
const LIVENESS_STATUS: Record<string, string> = { suspect: "suspect", dead: "down" };

/** A cluster's live view as fetched from its leader's agent. */
interface LiveView {
  members: StoredMember[];
  /** Members the mesh does not hear now, and the status they show ("suspect", "down"). */
  unheard: Map<string, string>;
  /** The leader the agent's mesh knows (informative: the reporting leader is asked). */
  leaderId: string | null;
  at: number;
  digest: string;
}

interface LiveState {
  view: LiveView | null;
  nextAt: number;
  /** The fetch in flight, if any, and when the last one started. */
  refreshing: Promise<void> | null;
  startedAt: number;
  fetches: number;
  failures: number;
  /** Failed fetches since the last good one: each doubles the wait (up to a minute). */
  streak: number;
  /**
   * The reporting leader; whether its agent answered since it leads; whether it then gave no
   * answer at all (refused, reset, timed out): a sign it is down.
   */
  leaderId: string | null;
  reached: boolean;
  unreachable: boolean;
  error: string | null;
  url: string | null;
}

/** Most bytes of a live view read: a view of 1,000 members is far below it. */
const MAX_LIVE_VIEW_BYTES = 1 << 20;

/**
 * An answer's body as text, at most `max` bytes: a larger Content-Length is refused before any
 * byte is read, and a body that grows past `max` is cancelled there. Throws on either.
 */
export async function readCapped(res: Response, max: number): Promise<string> {
  const tooLong = () => new Error(`The answer is larger than ${max} bytes`);
  if (Number(res.headers.get("content-length") ?? 0) > max) {
    await res.body?.cancel().catch(() => {});
    throw tooLong();
  }
  if (res.body === null) return "";
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => {});
      throw tooLong();
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

/**
 * Live views of the clusters, fetched from each leader's agent (`GET <leader url>/_agent/cluster`,
 * authorized by an HMAC of the time keyed with the agent token, see `viewAuthorization`), never
 * while a routed request waits (admin reads do wait, see `tick`): refreshed after
 * `liveViewTtlMs`, dropped on a failed fetch or when older than five TTLs, so routing falls
 * back to the stored table; failed fetches back off (doubling, up to a minute). Members the
 * leader's mesh does not hear show as "suspect" at once. Per isolate.
 */
class LiveViews {
  readonly #state = new Map<string, LiveState>();

  constructor(
    readonly settings: Settings,
    readonly components: { fetcher: typeof fetch; clock: ClockLike; onChange: () => void },
  ) {}

  /** The live view of a cluster, when fresh enough to route on. */
  current(cluster: string, now: number): LiveView | null {
    const view = this.#state.get(cluster)?.view ?? null;
    return view !== null && now <= this.expiresAt(view) ? view : null;
  }

  /** What the registry routes on for a cluster now: its fresh view, or who is not heard. */
  lookup(cluster: string, now: number): LiveSight | null {
    const view = this.current(cluster, now);
    if (view !== null) {
      return { members: view.members, unheard: view.unheard, until: this.expiresAt(view) };
    }
    const unheard = this.unheard(cluster);
    return unheard === null ? null : { members: null, unheard, until: Number.POSITIVE_INFINITY };
  }

  /** When a view becomes too old to route on. */
  expiresAt(view: LiveView): number {
    return view.at + 5 * this.settings.liveViewTtlMs;
  }

  /**
   * Starts the refreshes that are due and drops views too old. Returns the fetches in flight:
   * the proxy never waits for them. An admin read passes `maxAgeMs` (ADMIN_LIVE_MAX_AGE_MS) and
   * waits for them (each is bounded by the agent timeout), so it shows what the leader's mesh
   * knew at most that long ago, unless the agent is failing (then its back-off holds).
   */
  tick(
    table: RoutingTable,
    now: number,
    exec: WaitUntil | null,
    maxAgeMs = Number.POSITIVE_INFINITY,
  ): Promise<void>[] {
    const inFlight: Promise<void>[] = [];
    for (const cluster of table.clusters) {
      let state = this.#state.get(cluster.cluster);
      if (state === undefined) {
        state = {
          view: null,
          nextAt: 0,
          refreshing: null,
          startedAt: 0,
          fetches: 0,
          failures: 0,
          streak: 0,
          leaderId: null,
          reached: false,
          unreachable: false,
          error: null,
          url: null,
        };
        this.#state.set(cluster.cluster, state);
      }
      // The leader's URL is an upstream like any other: only an allowed one is asked.
      const leaderUrl = cluster.leader_url;
      const url =
        leaderUrl && upstreamRefusal(leaderUrl, this.settings.upstreamAllow) === null
          ? leaderUrl
          : null;
      if (state.url !== url) {
        // Another leader reports now: what the old one's agent said no longer counts.
        state.url = url;
        state.nextAt = 0;
        state.streak = 0;
        state.reached = false;
        state.unreachable = false;
        if (state.view !== null) {
          state.view = null;
          this.components.onChange();
        }
      }
      if (state.view !== null && now > this.expiresAt(state.view)) {
        state.view = null;
        this.components.onChange();
      }
      if (state.refreshing) inFlight.push(state.refreshing);
      state.leaderId = cluster.leader_id;
      const due = now >= state.nextAt || (state.streak === 0 && now - state.startedAt > maxAgeMs);
      if (!url || state.refreshing || !due) continue;
      state.startedAt = now;
      state.nextAt = now + Math.min(this.settings.liveViewTtlMs * 2 ** state.streak, MINUTE);
      const mine = state;
      const done = this.#refresh(cluster.cluster, url, mine).finally(() => {
        mine.refreshing = null;
      });
      state.refreshing = done;
      inFlight.push(done);
      defer(exec, done);
    }
    return inFlight;
  }

  /**
   * Members to show as not heard while no live view is fresh: the reporting leader, as
   * "suspect", when its agent answered before and now cannot be reached at all (a crashed
   * leader's report stays stored until the next leader reports, 6 s later in a cluster of
   * two). An agent that never answered may just be out of the coordinator's reach.
   */
  unheard(cluster: string): Map<string, string> | null {
    const state = this.#state.get(cluster);
    if (!state?.unreachable || state.leaderId === null) return null;
    return new Map([[state.leaderId, "suspect"]]);
  }

  /** Forgets the views of clusters the routing table no longer has. */
  prune(table: RoutingTable): void {
    if (this.#state.size === 0) return;
    const names = new Set(table.clusters.map((c) => c.cluster));
    for (const name of this.#state.keys()) if (!names.has(name)) this.#state.delete(name);
  }

  /** What the admin API shows about a cluster's live view. */
  status(cluster: string): Record<string, unknown> | null {
    const state = this.#state.get(cluster);
    if (!state) return null;
    return {
      agent_url: state.url,
      fetched_at: state.view ? new Date(state.view.at).toISOString() : null,
      fetches: state.fetches,
      failures: state.failures,
      last_error: state.error,
    };
  }

  async #refresh(cluster: string, url: string, state: LiveState): Promise<void> {
    const { fetcher, clock, onChange } = this.components;
    state.fetches++;
    let answered = false;
    try {
      const headers: Record<string, string> = { accept: "application/json" };
      // An HMAC of the time with the agent token: the token itself never crosses the network.
      const token = this.settings.agentToken;
      // Wall time, not the injected clock: the agent checks it against its own clock.
      // Bound to the leader's PeerId: it opens that agent's view only.
      if (token) {
        headers.authorization = await viewAuthorization(token, Date.now(), state.leaderId ?? "");
      }
      const res = await fetcher(`${trimSlash(url)}/_agent/cluster`, {
        headers,
        signal: AbortSignal.timeout(this.settings.liveViewTimeoutMs),
      });
      answered = true;
      if (res.status !== 200) {
        await res.body?.cancel().catch(() => {});
        throw new Error(`The agent answered ${res.status}`);
      }
      let body: unknown;
      try {
        body = JSON.parse(await readCapped(res, MAX_LIVE_VIEW_BYTES));
      } catch (err) {
        throw err instanceof SyntaxError ? new Error("The agent's live view is not JSON") : err;
      }
      const parsed = LiveViewSchema.safeParse(body);
      if (!parsed.success) throw new Error("The agent's live view does not match the protocol");
      const data = parsed.data;
      if (data.cluster && data.cluster !== cluster) {
        throw new Error(`The agent belongs to cluster ${data.cluster}`);
      }
      if (data.members.length === 0) throw new Error("The agent's live view lists no members");
      const now = clock.now();
      const leaderId = data.leader?.id ?? null;
      const members = data.members.map((m) => storedMember(m, leaderId ?? "live", now));
      const unheard = new Map<string, string>();
      for (const m of data.members) {
        const status = m.state ? LIVENESS_STATUS[m.state] : undefined;
        if (status) unheard.set(m.worker_id, status);
      }
      const digest = `${routingDigest(members)}:${leaderId}:${[...unheard].join()}`;
      const changed = state.view?.digest !== digest;
      if (state.url !== url) return; // the leader changed while this fetch ran
      state.view = { members, unheard, leaderId, at: now, digest };
      state.reached = true;
      state.unreachable = false;
      state.error = null;
      state.streak = 0;
      if (changed) onChange();
    } catch (err) {
      state.failures++;
      state.streak = Math.min(state.streak + 1, 10);
      state.error = (err as Error).message || "The live view could not be fetched";
      if (state.url !== url) return; // the leader changed while this fetch ran
      // No answer at all (refused, reset, timed out) from an agent that answered before.
      const unreachable = state.reached && !answered;
      if (state.view !== null || unreachable !== state.unreachable) {
        state.view = null;
        state.unreachable = unreachable;
        onChange();
      }
    }
  }
}

function endpointMetrics(route: ServiceRoute, e: Endpoint, now: number) {
  const state = e.breaker.stateAt(now);
  return {
    url: e.base,
    tier: e.tier,
    health: e.health,
    requests_total: e.attempts,
    errors_total: e.failures,
    latency_sum_ms: Math.round(e.latencySumMs * 100) / 100,
    /** Attempts with an outcome: the count of latency_sum_ms (requests_total also has those in flight or abandoned). */
    latency_count: e.latencyCount,
    in_flight: e.inFlight,
    latency_ewma_ms: Math.round(route.latency.of(e, now) * 100) / 100,
    consecutive_failures: e.consecutiveFailures,
    ejected: e.ejected(now),
    ejected_until: e.ejected(now) ? iso(e.ejectedUntil) : null,
    ejections: e.ejections,
    breaker: {
      state,
      open_until: state === "open" ? iso(e.breaker.openUntil) : null,
      trips: e.breaker.trips,
      window: e.breaker.counts(now),
    },
    window: e.window.snapshot(now),
  };
}

/** Serving providers: routable, not ejected, breaker not open. */
function servingCount(route: ServiceRoute, now: number): number {
  let n = 0;
  for (const e of route.endpoints) if (!e.ejected(now) && e.breaker.stateAt(now) !== "open") n++;
  return n;
}

function serviceMetrics(route: ServiceRoute, now: number) {
  const workers: Record<string, ReturnType<typeof endpointMetrics>> = {};
  for (const e of route.endpoints) workers[e.worker_id] = endpointMetrics(route, e, now);
  return {
    requests_total: route.figures.requests,
    errors_total: route.figures.errors,
    retries_total: route.figures.retries,
    rejected_total: route.figures.rejected,
    latency_sum_ms: Math.round(route.figures.latencySumMs * 100) / 100,
    in_flight: route.figures.inFlight,
    queue_length: route.queued,
    providers: route.providers,
    serving: servingCount(route, now),
    retry_budget_available: Math.floor(route.budget.available(now)),
    latency_ewma_ms: Math.round(route.latency.ewmaMs * 100) / 100,
    window: route.figures.window.snapshot(now),
    scaling: route.figures.signal,
    workers,
  };
}

/** The metrics JSON (`GET /api/admin/metrics`). @internal */
export type ServiceMetrics = ReturnType<typeof serviceMetrics>;

function promLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/**
 * The Prometheus text format (0.0.4) of the metrics JSON: counters, gauges, and latency
 * summaries whose quantiles cover the metrics window (sums and counts since start).
 * @internal
 */
export function prometheusText(services: Record<string, ServiceMetrics>): string {
  type Worker = ServiceMetrics["workers"][string];
  const out: string[] = [];
  const rows: [ServiceMetrics, string][] = [];
  const workerRows: [Worker, string][] = [];
  for (const name of Object.keys(services).sort()) {
    const s = services[name] as ServiceMetrics;
    const label = `service="${promLabel(name)}"`;
    rows.push([s, label]);
    for (const id of Object.keys(s.workers).sort()) {
      workerRows.push([s.workers[id] as Worker, `${label},worker="${promLabel(id)}"`]);
    }
  }
  const emit = <T>(
    list: [T, string][],
    [name, type, help, get]: [string, string, string, (x: T) => number | string],
  ) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [x, label] of list) out.push(`${name}{${label}} ${get(x)}`);
  };
  const oneHot = <T>(
    list: [T, string][],
    [name, help, key, values, get]: [string, string, string, string[], (x: T) => string],
  ) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
    for (const [x, label] of list) {
      for (const v of values) out.push(`${name}{${label},${key}="${v}"} ${get(x) === v ? 1 : 0}`);
    }
  };
  const summary = <T>(
    list: [T, string][],
    [name, help, window, totals]: [
      string,
      string,
      (x: T) => WindowSnapshot,
      (x: T) => [sumMs: number, count: number],
    ],
  ) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} summary`);
    for (const [x, label] of list) {
      const w = window(x);
      for (const [q, v] of [
        ["0.5", w.p50_ms],
        ["0.95", w.p95_ms],
        ["0.99", w.p99_ms],
      ] as const) {
        out.push(`${name}{${label},quantile="${q}"} ${v === null ? "NaN" : v / 1000}`);
      }
      const [sumMs, count] = totals(x);
      out.push(`${name}_sum{${label}} ${sumMs / 1000}`, `${name}_count{${label}} ${count}`);
    }
  };
  const perService: [string, string, string, (s: ServiceMetrics) => number][] = [
    [
      "rollcall_requests_total",
      "counter",
      "Requests routed to a service.",
      (s) => s.requests_total,
    ],
    ["rollcall_errors_total", "counter", "Requests answered with a 5xx.", (s) => s.errors_total],
    [
      "rollcall_retries_total",
      "counter",
      "Retries taken from the retry budget.",
      (s) => s.retries_total,
    ],
    [
      "rollcall_rejected_total",
      "counter",
      "Requests turned away (queue full or timed out, breakers open).",
      (s) => s.rejected_total,
    ],
    ["rollcall_in_flight", "gauge", "Requests in flight to a service.", (s) => s.in_flight],
    [
      "rollcall_queue_length",
      "gauge",
      "Requests waiting for a free provider.",
      (s) => s.queue_length,
    ],
    ["rollcall_serving_workers", "gauge", "Providers taking traffic now.", (s) => s.serving],
    [
      "rollcall_throughput_rps",
      "gauge",
      "Requests per second over the window.",
      (s) => s.window.throughput_rps,
    ],
  ];
  for (const family of perService) emit(rows, family);
  summary(rows, [
    "rollcall_request_duration_seconds",
    "Time to response headers, queueing and retries included.",
    (s) => s.window,
    (s) => [s.latency_sum_ms, s.requests_total],
  ]);
  oneHot(rows, [
    "rollcall_scaling_signal",
    "The service's scaling signal (1 for the current one).",
    "signal",
    ["scale_up", "scale_down", "steady"],
    (s) => s.scaling.signal,
  ]);
  const perWorker: [string, string, string, (w: Worker) => number][] = [
    [
      "rollcall_worker_requests_total",
      "counter",
      "Attempts sent to a worker for a service.",
      (w) => w.requests_total,
    ],
    [
      "rollcall_worker_errors_total",
      "counter",
      "Failed attempts (refused, dropped, timeout, 5xx).",
      (w) => w.errors_total,
    ],
    ["rollcall_worker_in_flight", "gauge", "Attempts in flight to a worker.", (w) => w.in_flight],
    ["rollcall_worker_ejected", "gauge", "1 while the worker is ejected.", (w) => +w.ejected],
    [
      "rollcall_worker_latency_ewma_seconds",
      "gauge",
      "The picker's latency estimate.",
      (w) => w.latency_ewma_ms / 1000,
    ],
  ];
  for (const family of perWorker) emit(workerRows, family);
  oneHot(workerRows, [
    "rollcall_worker_breaker_state",
    "The breaker's state (1 for the current one).",
    "state",
    ["closed", "open", "half_open"],
    (w) => w.breaker.state,
  ]);
  summary(workerRows, [
    "rollcall_worker_request_duration_seconds",
    "Time to headers per attempt.",
    (w) => w.window,
    (w) => [w.latency_sum_ms, w.latency_count],
  ]);
  return `${out.join("\n")}\n`;
}

/** The admin view of services: each one's providers, their health and routing state. */
function servicesView(
  table: RoutingTable,
  routes: ReadonlyMap<string, ServiceRoute>,
  now: number,
): z.input<typeof ServicesAnswerSchema> {
  const services: z.input<typeof ServicesAnswerSchema>["services"] = {};
  const statusOf = new Map(table.workers.map((w) => [w.worker_id, w.status]));
  for (const name of [...table.providers.keys()].sort()) {
    const list = table.providers.get(name) ?? [];
    const route = routes.get(name);
    const healthy = list.filter((p) => p.health !== "unhealthy").length;
    const routed = new Map(route?.endpoints.map((e) => [e.worker_id, e]) ?? []);
    services[name] = {
      total_workers: list.length,
      healthy_workers: healthy,
      status: healthy > 0 ? "available" : "unavailable",
      serving_workers: route ? servingCount(route, now) : 0,
      in_flight: route?.figures.inFlight ?? 0,
      queue_length: route?.queued ?? 0,
      scaling: route?.figures.signal ?? { signal: "steady", reason: "no traffic seen yet" },
      workers: list.map((p) => {
        const e = routed.get(p.worker_id);
        return {
          worker_id: p.worker_id,
          url: p.url,
          tier: p.tier,
          status: statusOf.get(p.worker_id) ?? "unknown",
          health: p.health,
          ...(p.refused !== null ? { refused: p.refused } : {}),
          breaker: e ? e.breaker.stateAt(now) : null,
          ejected: e ? e.ejected(now) : false,
          in_flight: e?.inFlight ?? 0,
        };
      }),
    };
  }
  return { services, total_services: table.providers.size, source: table.source };
}

/** The admin view of circuit breakers: one row per service and worker, by service name. */
function breakersView(
  table: RoutingTable,
  routes: ReadonlyMap<string, ServiceRoute>,
  now: number,
): z.input<typeof BreakersAnswerSchema> {
  const breakers: z.input<typeof BreakersAnswerSchema>["breakers"] = [];
  for (const name of [...routes.keys()].sort()) {
    const route = routes.get(name) as ServiceRoute;
    for (const e of route.endpoints) {
      const m = endpointMetrics(route, e, now);
      breakers.push({
        service: name,
        worker_id: e.worker_id,
        ...m.breaker,
        ejected: m.ejected,
        ejected_until: m.ejected_until,
        ejections: m.ejections,
        consecutive_failures: m.consecutive_failures,
      });
    }
  }
  return { breakers, source: table.source };
}

/** Every service's metrics, by service name. */
function metricsOf(
  routes: ReadonlyMap<string, ServiceRoute>,
  now: number,
): Record<string, ServiceMetrics> {
  const services: Record<string, ServiceMetrics> = {};
  for (const name of [...routes.keys()].sort()) {
    services[name] = serviceMetrics(routes.get(name) as ServiceRoute, now);
  }
  return services;
}

/** The admin view of counts: workers by health and tier, services, the write budget, leaders. */
function statsView(
  table: RoutingTable,
  budget: z.input<typeof BudgetAnswerSchema>,
): z.input<typeof StatsAnswerSchema> {
  const healthy = table.workers.filter((w) => w.healthy).length;
  const byTier: Record<string, number> = { "1": 0, "2": 0, "3": 0 };
  for (const w of table.workers) byTier[String(w.tier)] = (byTier[String(w.tier)] ?? 0) + 1;
  const first = table.clusters[0];
  return {
    total_workers: table.workers.length,
    healthy_workers: healthy,
    offline_workers: table.workers.length - healthy,
    by_tier: byTier,
    total_services: table.providers.size,
    write_budget: budget,
    leader: first
      ? { cluster: first.cluster, leader_id: first.leader_id, term: first.term, stale: first.stale }
      : null,
    clusters: table.clusters,
  };
}

//#endregion

//#region Routing and proxy
// Admit (pick or queue), forward, retry within the budget, answer

/**
 * Upstream answers that may be retried (idempotent methods only) and may count against the
 * worker (when `Ejection.blames` says so). A 500 is the application's answer: passed on,
 * never retried, never held against the worker.
 */
const FAILED_STATUS = new Set([502, 503, 504]);
/** A rest of path that needs the full safety check (anything else is plain segments). */
const CAREFUL_REST = /[%\\\0]|(?:^|\/)\.\.?(?:\/|$)/;

interface ProxyContext {
  reg: Registry;
  router: Router;
  live: LiveViews | null;
  settings: Settings;
  clock: ClockLike;
  fetcher: typeof fetch;
  /** Whether `fetcher` takes an `AbortHandle` (init `abortable`) instead of a signal. */
  abortHandle: boolean;
  random: () => number;
  deadlines: Deadlines;
  /** Whether upstream responses have mutable headers (Bun, the Node client); null until known. */
  inPlace: boolean | null;
  /**
   * Whether the proxy watches answers' bodies for a break after their headers itself
   * (`checkedAnswer`): when the fetch does not report one (`reportsBodyBreaks`).
   */
  watchBodies: boolean;
  webhook: { sent: number; failed: number; lastError: string | null };
  /** This coordinator's id, the value of the hop header it sets. */
  instanceId: string;
  /** Where details of an error answered generically go (never to the client). */
  log: (line: string) => void;
  /** The client's address as the runtime saw it (the starter's component). */
  clientAddress: ClientAddress;
  /** The request's headers as the server received them, where that is cheaper (a starter's). */
  rawHeaders: RawRequestHeaders | null;
}

/** Removes hop-by-hop headers (and a decoded body's encoding) from upstream response headers. */
function cleanResponseHeaders(headers: Headers): void {
  const named = headers.get("connection");
  if (named) for (const name of named.split(",")) headers.delete(name.trim());
  for (const name of HOP_BY_HOP) headers.delete(name);
  if (headers.has("content-encoding")) {
    // fetch already decoded the body
    headers.delete("content-encoding");
    headers.delete("content-length");
  }
}

/**
 * The headers sent upstream, as a record: the client's, minus hop-by-hop, framing and
 * client-identity ones (and those its Connection header names), plus X-Forwarded-For (the
 * client's chain, then the peer the runtime saw, or Workers' CF-Connecting-IP), -Proto, -Host,
 * the client's Content-Length only when its body goes along (`withBody`), and the hop header.
 * Null when the request already carries a hop header: it came from a coordinator (a loop).
 * One pass over the request's headers, no Headers object built or changed (copying one is
 * slow on Deno, changing a server's request headers in place is not allowed everywhere).
 */
function forwardHeaders(
  inc: Incoming,
  url: string,
  ctx: ProxyContext,
  withBody: boolean,
): Record<string, string> | null {
  // No prototype: a header named __proto__ is a plain entry.
  const out: Record<string, string> = Object.create(null);
  let host: string | null = null;
  let connection: string | null = null;
  let prior: string | null = null;
  let length: string | null = null;
  let looped = false;
  // The server's own list where a starter hands it in (names in any case, repeats apart: joined
  // here with ", " as `Headers` joins them), else the request's Headers (lower case, joined).
  let list = ctx.rawHeaders === null ? null : ctx.rawHeaders(inc.request, inc.env);
  if (list === null) {
    const flat: string[] = [];
    inc.request.headers.forEach((value, name) => {
      flat.push(name, value);
    });
    list = flat;
  }
  for (let i = 0; i + 1 < list.length; i += 2) {
    const name = (list[i] as string).toLowerCase();
    const value = list[i + 1] as string;
    if (name.charCodeAt(0) === 58) continue; // an HTTP/2 pseudo-header (":path")
    if (!REWRITTEN_REQUEST_HEADERS.has(name)) {
      const had = out[name];
      // Cookie lines join with "; " (RFC 6265 5.4; `Headers` does so too): ", " would make the
      // rest of the lines part of the first cookie's value.
      if (had === undefined) out[name] = value;
      else out[name] = `${had}${name === "cookie" ? "; " : ", "}${value}`;
    } else if (name === "host") {
      // The first Host: the one the request's URL (and the open coordinator's Host check) took;
      // a repeated one is no host of this request, never passed on as X-Forwarded-Host.
      if (host === null) host = value;
    } else if (name === "connection")
      connection = connection === null ? value : `${connection}, ${value}`;
    else if (name === "x-forwarded-for") prior = prior === null ? value : `${prior}, ${value}`;
    else if (name === "content-length") length = length === null ? value : `${length}, ${value}`;
    else if (name === HOP_HEADER) looped = true;
  }
  if (looped) return null;
  if (connection !== null) {
    for (const named of connection.split(",")) {
      const name = named.trim().toLowerCase();
      delete out[name];
      if (name === "x-forwarded-for") prior = null;
    }
  }
  const client = clientOf(ctx.clientAddress, inc);
  if (client) out["x-forwarded-for"] = prior ? `${prior}, ${client}` : client;
  else if (prior !== null) out["x-forwarded-for"] = prior;
  const https = url.startsWith("https:");
  out["x-forwarded-proto"] = https ? "https" : "http";
  out["x-forwarded-host"] = host ?? url.slice(https ? 8 : 7, url.indexOf("/", 8));
  if (withBody && length !== null) out["content-length"] = length;
  if (ctx.settings.cookies === "strip") delete out.cookie;
  out[HOP_HEADER] = ctx.instanceId;
  return out;
}

/** Answers up to this size (by Content-Length) are read whole where the fetch reports no break. */
const WHOLE_ANSWER_BYTES = 64 * 1024;
/** Statuses whose answers have no body (a Response with one cannot be built). */
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);

/** What the proxy adds to an upstream fetch's init (the Node client's `ProxyFetchInit`). */
interface UpstreamInit extends RequestInit {
  duplex?: "half";
  /**
   * Called once when the answer's body breaks after its headers by the upstream's doing (never
   * when the reader cancels it); a fetch that calls it says so with `reportsBodyBreaks: true`.
   */
  onBodyBreak?: () => void;
}

/**
 * `body` passed through as it comes, calling `onBreak` when a read fails (the upstream broke
 * it), never after the reader cancelled (the client went away).
 */
function watched(
  body: ReadableStream<Uint8Array>,
  onBreak: () => void,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let cancelled = false;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (cancelled) return;
          onBreak();
          controller.error(err);
          return;
        }
        if (cancelled) return;
        if (chunk.done) controller.close();
        else controller.enqueue(chunk.value);
      },
      cancel(reason) {
        cancelled = true;
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * An upstream answer made to tell a break after its headers, for a fetch that cannot report one
 * (Bun's, workerd's, Deno's and Node's own): one of up to 64 KiB by its Content-Length (and not
 * encoded) is read whole, so a break fails the attempt before anything is answered and an
 * idempotent request goes to another worker; a larger one streams through `watched`.
 */
async function checkedAnswer(res: Response, onBreak: () => void): Promise<Response> {
  const body = res.body;
  const status = res.status;
  if (body === null || status < 200 || status > 599 || NULL_BODY_STATUS.has(status)) return res;
  const headers = res.headers;
  const init = { status, statusText: res.statusText, headers };
  const length = headers.get("content-length");
  if (length !== null && Number(length) <= WHOLE_ANSWER_BYTES && !headers.has("content-encoding")) {
    return new Response(await res.arrayBuffer(), init);
  }
  return new Response(watched(body, onBreak), init);
}

/**
 * One attempt: the upstream fetch under the proxy timeout and the client's presence, its
 * answer checked for a break (`checkedAnswer`) where the fetch cannot report one, else
 * `onBreak` handed to the fetch as init `onBodyBreak`.
 */
async function attempt(
  ctx: ProxyContext,
  inc: Incoming,
  target: string,
  init: UpstreamInit,
  body: ReplayableBody | null,
  onBreak: () => void,
): Promise<Response | AttemptFailure> {
  const timeoutMs = ctx.settings.proxyTimeoutMs;
  if (!ctx.watchBodies) init.onBodyBreak = onBreak;
  if (inc.exec !== null) {
    const controller = new AbortController();
    init.signal = controller.signal;
    // On Workers every timer and listener belongs to its request: one of each per attempt.
    const state = { timedOut: false, clientGone: false, clientSlow: false };
    const started = performance.now();
    const fire = () => {
      const left = dueAt(started + timeoutMs, started, body) - performance.now();
      if (left > 0) {
        timer = setTimeout(fire, left);
        return;
      }
      state.timedOut = true;
      state.clientSlow = body?.waitingForClient ?? false;
      controller.abort();
    };
    let timer = setTimeout(fire, timeoutMs);
    const onClientAbort = () => {
      state.clientGone = true;
      controller.abort();
    };
    const signal = inc.request.signal;
    signal.addEventListener("abort", onClientAbort, { once: true });
    try {
      const res = await ctx.fetcher(target, init);
      return ctx.watchBodies ? await checkedAnswer(res, onBreak) : res;
    } catch (error) {
      return { failed: true, error, ...state };
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onClientAbort);
    }
  }
  let handle: AbortHandle | null = null;
  let controller: AbortController | null = null;
  if (ctx.abortHandle) {
    handle = { abort: null };
    (init as { abortable?: AbortHandle }).abortable = handle;
  } else {
    controller = new AbortController();
    init.signal = controller.signal;
  }
  const started = performance.now();
  const pending: Pending = {
    handle,
    controller,
    deadline: started + timeoutMs,
    started,
    inc,
    body,
    timedOut: false,
    clientGone: false,
    clientSlow: false,
    index: 0,
  };
  ctx.deadlines.add(pending);
  try {
    const res = await ctx.fetcher(target, init);
    return ctx.watchBodies ? await checkedAnswer(res, onBreak) : res;
  } catch (error) {
    const { timedOut, clientGone, clientSlow } = pending;
    return { failed: true, error, timedOut, clientGone, clientSlow };
  } finally {
    ctx.deadlines.remove(pending);
  }
}

function addCors(settings: Settings, request: Request, headers: Headers): void {
  const origin = settings.corsOrigin;
  if (origin === "*") headers.set("access-control-allow-origin", "*");
  else {
    if (request.headers.get("origin") === origin) {
      headers.set("access-control-allow-origin", origin);
    }
    headers.append("vary", "Origin");
  }
  headers.set(
    "access-control-expose-headers",
    "Retry-After,X-Rollcall-Worker,X-Rollcall-Worker-Name",
  );
}

function proxyJson(
  ctx: ProxyContext,
  request: Request,
  body: unknown,
  status: number,
  extra: Record<string, string> = {},
): Response {
  const res = json(body, status, extra);
  addCors(ctx.settings, request, res.headers);
  return res;
}

function availableServices(table: RoutingTable): string[] {
  return [...table.providers.entries()]
    .filter(([, list]) => list.some((p) => p.health !== "unhealthy"))
    .map(([name]) => name)
    .sort();
}

/** Evaluates a service's scaling signal; a change calls the webhook (never awaited). */
function evaluateSignal(
  ctx: ProxyContext,
  route: ServiceRoute,
  now: number,
  exec: WaitUntil | null,
): void {
  route.figures.nextEvaluationAt = now + 1000;
  const next = scalingSignal({
    providers: route.providers,
    serving: servingCount(route, now),
    limit: ctx.settings.maxConcurrent,
    queued: route.queued,
    window: route.figures.window.snapshot(now),
    observedMs: now - route.figures.firstSeenAt,
    windowMs: ctx.settings.metricsWindowMs,
    scaleUpLatencyMs: ctx.settings.scaleUpLatencyMs,
    scaleDownUtilization: ctx.settings.scaleDownUtilization,
  });
  const previous = route.figures.signal;
  route.figures.signal = next;
  const url = ctx.settings.scalingWebhook;
  if (url === null || next.signal === previous.signal) return;
  const payload = JSON.stringify({
    service: route.name,
    signal: next.signal,
    previous: previous.signal,
    reason: next.reason,
    at: new Date(now).toISOString(),
    providers: route.providers,
    serving: servingCount(route, now),
  });
  const post = async () => {
    try {
      const res = await ctx.fetcher(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: payload,
        signal: AbortSignal.timeout(ctx.settings.scalingWebhookTimeoutMs),
      });
      await res.body?.cancel().catch(() => {});
      if (res.status >= 300) throw new Error(`The webhook answered ${res.status}`);
      ctx.webhook.sent++;
    } catch (err) {
      ctx.webhook.failed++;
      ctx.webhook.lastError = (err as Error).message || "The webhook call failed";
    }
  };
  defer(exec, post());
}

/**
 * Applies the cookie setting to an upstream answer's Set-Cookie headers: `strip` drops them,
 * `scope` limits each to the service's public path (`prefix`) and drops its Domain, so services
 * behind one coordinator origin cannot read or set each other's cookies.
 * @internal
 */
export function scopeCookies(headers: Headers, mode: CookieMode, prefix: string): void {
  if (mode === "pass" || !headers.has("set-cookie")) return;
  const cookies = headers.getSetCookie();
  headers.delete("set-cookie");
  if (mode === "strip") return;
  for (const cookie of cookies) {
    const [pair = "", ...attrs] = cookie.split(";");
    const kept = attrs
      .map((a) => a.trim())
      .filter((a) => a !== "" && !/^(path|domain)\s*(=|$)/i.test(a));
    headers.append("set-cookie", [pair.trim(), `Path=${prefix}`, ...kept].join("; "));
  }
}

/** The public path prefix of a proxied request: `/api/service/<name>`, or the alias's. */
function publicPrefix(target: ServiceTarget, url: string): string {
  const at = pathStart(url);
  if (url.startsWith("/api/service/", at)) return `/api/service/${target.service}`;
  const path = pathOf(url, at);
  const rest = target.rest === null ? "" : `/${target.rest}`;
  return path.endsWith(rest) ? path.slice(0, path.length - rest.length) || "/" : "/";
}

function respond(
  ctx: ProxyContext,
  request: Request,
  result: Response,
  ep: Endpoint,
  method: string,
  target: ServiceTarget,
): Response {
  if (ctx.inPlace !== false) {
    // Bun's fetch and the Node starter's client hand back mutable headers: answer with the
    // upstream response itself, no copy.
    try {
      result.headers.set("x-rollcall-worker", ep.worker_id);
      if (ep.name !== null) result.headers.set("x-rollcall-worker-name", ep.name);
      ctx.inPlace = true;
      cleanResponseHeaders(result.headers);
      addCors(ctx.settings, request, result.headers);
      if (ctx.settings.cookies !== "pass") {
        scopeCookies(result.headers, ctx.settings.cookies, publicPrefix(target, request.url));
      }
      return result;
    } catch {
      ctx.inPlace = false; // standard fetch responses have immutable headers
    }
  }
  const headers = new Headers(result.headers);
  cleanResponseHeaders(headers);
  headers.set("x-rollcall-worker", ep.worker_id);
  if (ep.name !== null) headers.set("x-rollcall-worker-name", ep.name);
  addCors(ctx.settings, request, headers);
  if (ctx.settings.cookies !== "pass") {
    scopeCookies(headers, ctx.settings.cookies, publicPrefix(target, request.url));
  }
  const nullBody = method === "HEAD" || result.status === 204 || result.status === 304;
  return new Response(nullBody ? null : result.body, {
    status: result.status,
    statusText: result.statusText,
    headers,
  });
}

/** Counts a finished request and, at most once a second, re-evaluates the scaling signal. */
function finished(
  ctx: ProxyContext,
  route: ServiceRoute,
  inc: Incoming,
  res: Response,
  started: number,
): Response {
  const now = ctx.clock.now();
  route.figures.finish(now, res.status, performance.now() - started);
  if (now >= route.figures.nextEvaluationAt) evaluateSignal(ctx, route, now, inc.exec);
  return res;
}

function turnedAway(
  ctx: ProxyContext,
  inc: Incoming,
  route: ServiceRoute,
  table: RoutingTable,
  why: Blocked,
): Response {
  const name = route.name;
  const now = ctx.clock.now();
  if (why !== "none") route.figures.reject(now);
  if (why === "busy") {
    return proxyJson(
      ctx,
      inc.request,
      {
        error: `All workers for '${name}' are busy`,
        available_services: availableServices(table),
        suggestion: `Every provider of '${name}' is at its limit of ${ctx.settings.maxConcurrent} requests and the queue is full or was too slow; retry later.`,
      },
      503,
      { "retry-after": "1" },
    );
  }
  const open = why === "open";
  return proxyJson(
    ctx,
    inc.request,
    {
      error: `No healthy workers available for '${name}'`,
      available_services: availableServices(table),
      suggestion: open
        ? `The circuit breakers of all ${route.endpoints.length} worker(s) providing '${name}' are open after repeated failures; retry later.`
        : `All ${route.providers} worker(s) providing '${name}' are offline or unhealthy; retry later.`,
    },
    503,
    {
      "retry-after": String(
        open ? Math.ceil(route.picker.retryAfterMs(now) / 1000) : ctx.settings.heartbeatIntervalS,
      ),
    },
  );
}

/** Answers a request that already passed through a coordinator (it carries the hop header). */
function loopAnswer(ctx: ProxyContext, request: Request): Response {
  const hop = request.headers.get(HOP_HEADER) ?? "";
  return proxyJson(
    ctx,
    request,
    {
      error: "Loop detected",
      message: "This request already passed through a rollcall coordinator",
    },
    508,
    { [LOOP_HEADER]: hop.slice(0, 64) },
  );
}

/** A short random id that ties an answer to its log line. */
function newRequestId(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 16);
}

/**
 * The answer when no attempt got a usable answer: 499 (the client left), 408 (the client's
 * upload stalled), 504 (timeout) or 502. What went wrong in detail (an internal address, a
 * system error) is logged with a request id; the client gets the id, never the detail.
 */
function proxyFailure(
  ctx: ProxyContext,
  failure: AttemptFailure | null,
  service: string,
  worker: string,
): { status: number; body: Record<string, unknown> } {
  if (failure?.clientGone) return { status: 499, body: { error: "Client closed the request" } };
  if (failure?.clientSlow) {
    return {
      status: 408,
      body: {
        error: "Request body not received in time",
        message: `The client sent nothing of its body for ${ctx.settings.proxyTimeoutMs} ms`,
      },
    };
  }
  if (failure !== null && isRefusedRequest(failure.error)) {
    return {
      status: 400,
      body: {
        error: "Invalid request header",
        message: "A header of this request cannot be forwarded (a control character in a value)",
      },
    };
  }
  const timedOut = failure?.timedOut ?? false;
  const requestId = newRequestId();
  const detail = (failure?.error as Error | undefined)?.message ?? "unknown error";
  ctx.log(`${requestId} service ${service} worker ${worker}: ${timedOut ? "timeout" : detail}`);
  return {
    status: timedOut ? 504 : 502,
    body: {
      error: "Service proxy failed",
      message: timedOut
        ? `Worker did not answer within ${ctx.settings.proxyTimeoutMs} ms`
        : "Worker could not be reached",
      service,
      worker,
      request_id: requestId,
    },
  };
}

/** 405 for a method the proxy does not forward. */
function methodRefused(ctx: ProxyContext, request: Request): Response {
  const allow = [...PROXY_METHODS].join(", ");
  const body = { error: "Method not allowed", message: `The proxy forwards ${allow}` };
  return proxyJson(ctx, request, body, 405, { allow });
}

/** 503 for a service no worker provides, with the services that are. */
function unavailable(
  ctx: ProxyContext,
  request: Request,
  table: RoutingTable,
  service: string,
): Response {
  return proxyJson(
    ctx,
    request,
    {
      error: `Service '${service}' not available`,
      available_services: availableServices(table),
      suggestion: `No registered worker provides '${service}'. GET /api/admin/services lists what is available.`,
    },
    503,
  );
}

/**
 * Waits in the service's bounded queue while every provider is at its limit, then picks: the
 * endpoint, or the answer that turns the request away (queue full or timed out, breakers open,
 * no provider). The pick and its dispatch (which takes the slot) happen with no await between.
 */
async function queued(
  ctx: ProxyContext,
  inc: Incoming,
  route: ServiceRoute,
  table: RoutingTable,
  started: number,
): Promise<Endpoint | Response> {
  const deadline = started + ctx.settings.queueTimeoutMs;
  for (;;) {
    const now = ctx.clock.now();
    const why = route.endpoints.length === 0 ? "none" : route.picker.blocked(now);
    const left = deadline - performance.now();
    if (why !== "busy" || left <= 0 || !(await route.wait(left))) {
      return finished(ctx, route, inc, turnedAway(ctx, inc, route, table, why), started);
    }
    const ep = route.picker.pick({ now: ctx.clock.now(), random: ctx.random });
    if (ep !== null) return ep;
  }
}

/**
 * The upstream URL of an attempt: the endpoint's base, the rest of the path as sent, the query.
 * A `careful` rest (one `CAREFUL_REST` matches, checked by `assertSafeRest`) goes through
 * `upstreamUrl`; the common one is joined as it is.
 */
function attemptUrl(base: string, rest: string | null, search: string, careful: boolean): string {
  if (careful) return upstreamUrl(base, rest, search);
  return rest === null ? base + search : `${base}/${rest}${search}`;
}

/** One proxied request on its way upstream: what its attempts need and what they left. */
interface Exchange {
  route: ServiceRoute;
  target: ServiceTarget;
  method: string;
  /** The headers sent upstream (`forwardHeaders`) and the body, replayable while it fits. */
  headers: Record<string, string>;
  body: ReplayableBody | null;
  /** The query as sent, and whether the rest of the path needs `upstreamUrl` (`attemptUrl`). */
  search: string;
  careful: boolean;
  /** The endpoint of the last attempt. */
  last: Endpoint;
  /** The last upstream 502/503/504: the answer if nothing better comes. */
  held: Response | null;
  /** The last attempt's failure (no answer), if it was the last word. */
  failure: AttemptFailure | null;
  /** An attempt reached this coordinator itself. */
  looped: boolean;
}

/**
 * Takes an upstream's HTTP answer to an attempt: the answer to give the client, or whether
 * another worker may be tried (a 502/503/504 is held as the answer if nothing better comes;
 * the coordinator's own loop marker refuses that URL from now on).
 */
function takeAnswer(
  ctx: ProxyContext,
  x: Exchange,
  ep: Endpoint,
  result: Response,
  now: number,
  latencyMs: number,
  probe: boolean,
): Response | boolean {
  const route = x.route;
  const status = result.status;
  if (status === 508 && result.headers.get(LOOP_HEADER) === ctx.instanceId) {
    // This URL is the coordinator itself: never again in this isolate; try another.
    result.body?.cancel().catch(() => {});
    route.settle(ep, { now, latencyMs, failed: false, abandoned: true, probe });
    ctx.router.refuseSelf(ep.base);
    x.looped = true;
    return true;
  }
  const failed = FAILED_STATUS.has(status) && route.blames(ep, now);
  const excused = !failed && status >= 500;
  route.settle(ep, { now, latencyMs, failed, answered: true, excused, probe });
  x.held?.body?.cancel().catch(() => {});
  if (!FAILED_STATUS.has(status)) return result;
  x.held = result;
  x.failure = null;
  // The request reached the worker: only an idempotent method may go again.
  return IDEMPOTENT.has(x.method);
}

/** Takes an attempt that got no answer; returns whether another worker may be tried. */
function takeFailure(
  x: Exchange,
  ep: Endpoint,
  result: AttemptFailure,
  now: number,
  latencyMs: number,
  probe: boolean,
): boolean {
  // The client went away, stalled its upload or sent a header the upstream client refuses:
  // nothing the worker did.
  const clientFault = result.clientGone || result.clientSlow || isRefusedRequest(result.error);
  x.route.settle(ep, { now, latencyMs, failed: !clientFault, abandoned: clientFault, probe });
  x.failure = result;
  if (clientFault) return false;
  // Nothing reached the worker when the runtime says the connection was refused or the
  // name did not resolve (Node, Bun, Deno). workerd says "Network connection lost." for
  // a refused and for a dropped connection alike, so there only idempotent methods retry.
  const nothingSent = !result.timedOut && isConnectFailure(result.error);
  return nothingSent || IDEMPOTENT.has(x.method);
}

/**
 * Sends the attempts of an exchange: to `ep` first, then, while an outcome allows it, to
 * another provider not tried yet, within the retry budget and `maxAttempts`. Returns the
 * upstream answer to give (not yet `respond`ed), or null when what the exchange holds
 * (`lastAnswer`) is the answer.
 */
async function forward(
  ctx: ProxyContext,
  inc: Incoming,
  x: Exchange,
  ep: Endpoint,
  now: number,
): Promise<Response | null> {
  const route = x.route;
  const rest = x.target.rest;
  let tried: Endpoint[] | null = null;
  for (let n = 1; ; n++) {
    x.last = ep;
    const to = attemptUrl(ep.base, rest, x.search, x.careful);
    const init: UpstreamInit = { method: x.method, headers: x.headers, redirect: "manual" };
    if (x.body) {
      init.body = x.body.stream();
      init.duplex = "half";
    }
    // A break of the answer's body after its headers fails the attempt after all: blamed on
    // the worker if its answer was taken as good (`streak`: its run of failures before then).
    const sent = ep;
    let streak = -1;
    const probe = route.dispatch(ep, now);
    const t0 = performance.now();
    // (The break callback is an argument, not a named const: under tsx, esbuild's keepNames
    // would name each one with a defineProperty call, per attempt.)
    const result = await attempt(ctx, inc, to, init, x.body, () => {
      if (streak >= 0) route.broke(sent, streak, ctx.clock.now());
    });
    const latencyMs = performance.now() - t0;
    now = ctx.clock.now();
    const before = ep.consecutiveFailures;
    // Not `instanceof Response`: @hono/node-server swaps the global Response class.
    const next =
      "failed" in result
        ? takeFailure(x, ep, result, now, latencyMs, probe)
        : takeAnswer(ctx, x, ep, result, now, latencyMs, probe);
    if (next === false) return null;
    if (next !== true) {
      streak = before;
      return next;
    }
    if ((x.body && !x.body.replayable) || n >= ctx.settings.maxAttempts) return null;
    tried ??= [];
    tried.push(ep);
    const other = route.picker.pick({ now, random: ctx.random, tried });
    if (other === null || !route.budget.tryRetry(now)) return null;
    route.figures.retry(now);
    ep = other;
  }
}

/** The answer when no attempt got a good one: the held 5xx, the loop's, or the failure's. */
function lastAnswer(ctx: ProxyContext, request: Request, x: Exchange): Response {
  if (x.held !== null) return respond(ctx, request, x.held, x.last, x.method, x.target);
  if (x.failure === null && x.looped) return loopAnswer(ctx, request);
  const error = proxyFailure(ctx, x.failure, x.target.service, x.last.worker_id);
  return proxyJson(ctx, request, error.body, error.status);
}

/** Forwards a request to a healthy provider of its service, retrying within the budget. */
async function routeService(
  inc: Incoming,
  ctx: ProxyContext,
  target: ServiceTarget,
): Promise<Response> {
  const request = inc.request;
  const method = request.method.toUpperCase();
  if (!PROXY_METHODS.has(method)) return methodRefused(ctx, request);
  const rest = target.rest;
  const careful = rest !== null && CAREFUL_REST.test(rest);
  if (careful) assertSafeRest(rest as string); // upstreamUrl (attemptUrl) relies on it
  const url = request.url;
  const source = method === "GET" || method === "HEAD" ? null : request.body;
  const headers = forwardHeaders(inc, url, ctx, source !== null);
  if (headers === null) return loopAnswer(ctx, request);
  let now = ctx.clock.now();
  const table = ctx.reg.cachedTable(now) ?? (await ctx.reg.table());
  ctx.router.sync(table, now);
  if (ctx.live !== null && table.clusters.length > 0) ctx.live.tick(table, now, inc.exec);
  const route = ctx.router.routes.get(target.service);
  if (route === undefined || route.providers === 0) {
    return unavailable(ctx, request, table, target.service);
  }
  const started = performance.now();
  route.begin(now);
  let ep = route.picker.pick({ now, random: ctx.random });
  if (ep === null) {
    const got = await queued(ctx, inc, route, table, started);
    if (!(got instanceof Endpoint)) return got;
    ep = got;
    now = ctx.clock.now();
  }
  const q = url.indexOf("?");
  const x: Exchange = {
    route,
    target,
    method,
    headers,
    body: source ? new ReplayableBody(source, ctx.settings.replayBufferBytes) : null,
    search: q === -1 ? "" : url.slice(q),
    careful,
    last: ep,
    held: null,
    failure: null,
    looped: false,
  };
  let answer: Response;
  try {
    const got = await forward(ctx, inc, x, ep, now);
    answer =
      got === null
        ? lastAnswer(ctx, request, x)
        : respond(ctx, request, got, x.last, method, target);
  } finally {
    x.body?.release();
  }
  return finished(ctx, route, inc, answer, started);
}

/**
 * The answer to an error thrown while routing or answering (the app's onError, and the fast
 * path's): a clear 4xx for bad input; for a store failure or anything unexpected a generic
 * message and a request id, the detail (paths, addresses, stacks) only in the log.
 */
function errorAnswer(err: unknown, log: (line: string) => void): Response {
  if (err instanceof UnsafePathError) {
    return json({ error: "Invalid service path", message: err.message }, 400);
  }
  if (err instanceof Refused) return json(err.body, err.status, err.headers);
  const requestId = newRequestId();
  const detail = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  log(`${requestId} ${detail}`);
  if (err instanceof StoreError) {
    return json(
      {
        error: "Store unavailable",
        message: "The registry store failed; retry later",
        request_id: requestId,
      },
      503,
      { "retry-after": "5" },
    );
  }
  return json({ error: "Internal error", request_id: requestId }, 500);
}

/** The service target of a raw request URL's path (`/api/service/<name>/...`), or null. */
function serviceTargetOf(url: string): ServiceTarget | null {
  return parseProxyPath(pathOf(url));
}

//#endregion

//#region Dashboard
// The admin page at /admin, its snapshot, recent events, an operator's actions. It reads the
// per-isolate routing state directly and costs no store access of its own, so it lives in this file
// (see docs/ARCHITECTURE.md). The page is static text (no build step, no framework) under a strict
// CSP; its script renders every value with textContent.

/** How often the page asks for a snapshot while it is visible. */
const DASHBOARD_REFRESH_MS = 1000;
/** Recent events kept per isolate. */
const EVENTS_KEPT = 100;
/** How long a worker or provider that left the view is still shown (as down or gone), and how many. */
const GONE_KEPT_MS = 10 * MINUTE;
const GONE_KEPT = 100;

/** One of the dashboard's recent events. */
interface ClusterEvent {
  at: number;
  kind: "cluster" | "leader" | "member" | "service" | "breaker" | "ejection" | "action";
  text: string;
}

interface EndpointSeen {
  state: BreakerState;
  trips: number;
  ejections: number;
  ejected: boolean;
}

/** The last 8 characters of a long ID (PeerIds share their first ones), as the page shows it. */
function shortId(id: string): string {
  return id.length > 16 ? `…${id.slice(-8)}` : id;
}

/**
 * What this isolate saw of the cluster over time, for the dashboard: leader changes, members up
 * and down, providers' health, breakers opening and closing, ejections. Pure (time passed in;
 * nothing read or written): `observe` diffs each routing table and the router's endpoints
 * against the last ones seen. Bounded: a ring of events; workers and providers that left the
 * view are kept a while (GONE_KEPT_MS, at most GONE_KEPT) so the page can show them as down.
 */
class ClusterWatch {
  readonly #events: ClusterEvent[] = [];
  readonly #leaders = new Map<string, { id: string | null; term: number | null; since: number }>();
  #workers: Map<string, WorkerView> | null = null;
  #providers = new Map<string, Provider>();
  readonly #goneWorkers = new Map<string, { view: WorkerView; at: number }>();
  readonly #goneProviders = new Map<string, { provider: Provider; at: number }>();
  #endpoints = new Map<string, EndpointSeen>();
  #table: RoutingTable | null = null;

  /** Adds an event (the oldest goes beyond EVENTS_KEPT). */
  record(at: number, kind: ClusterEvent["kind"], text: string): void {
    this.#events.push({ at, kind, text });
    if (this.#events.length > EVENTS_KEPT) this.#events.shift();
  }

  /** Recent events, newest first. */
  events(): ClusterEvent[] {
    return [...this.#events].reverse();
  }

  /** Since when this isolate has seen a cluster's current leader (null: not seen yet). */
  leaderSince(cluster: string): number | null {
    return this.#leaders.get(cluster)?.since ?? null;
  }

  /** Workers that left the view recently, newest first. */
  goneWorkers(): { view: WorkerView; at: number }[] {
    return [...this.#goneWorkers.values()].reverse();
  }

  /** Providers that left the view recently (their own, or with their worker). */
  goneProviders(): { provider: Provider; at: number }[] {
    return [...this.#goneProviders.values()].reverse();
  }

  /** Diffs a routing table and the router's endpoints against what was seen last. */
  observe(table: RoutingTable, routes: ReadonlyMap<string, ServiceRoute>, now: number): void {
    if (table !== this.#table) {
      this.#table = table;
      this.#diffTable(table, now);
    }
    this.#diffEndpoints(routes, now);
    for (const gone of [this.#goneWorkers, this.#goneProviders]) {
      for (const [key, entry] of gone) {
        if (now - entry.at > GONE_KEPT_MS || gone.size > GONE_KEPT) gone.delete(key);
      }
    }
  }

  #diffTable(table: RoutingTable, now: number): void {
    const first = this.#workers === null;
    for (const cl of table.clusters) {
      const was = this.#leaders.get(cl.cluster);
      if (was && was.id === cl.leader_id && was.term === cl.term) continue;
      this.#leaders.set(cl.cluster, { id: cl.leader_id, term: cl.term, since: now });
      const who = cl.leader_id ? `${shortId(cl.leader_id)} (term ${cl.term})` : "none";
      if (!was) {
        this.record(now, "cluster", `Watching cluster ${cl.cluster}: leader ${who}`);
      } else if (cl.leader_id !== null && cl.leader_id === was.id) {
        this.record(now, "leader", `Leader of ${cl.cluster}: ${who}, the same again`);
      } else if (cl.leader_id) {
        const before = was.id ? `, was ${shortId(was.id)}` : "";
        this.record(now, "leader", `New leader of ${cl.cluster}: ${who}${before}`);
      } else {
        this.record(now, "leader", `No leader is reporting for ${cl.cluster}`);
      }
    }
    const workers = new Map(table.workers.map((w) => [w.worker_id, w]));
    const providers = new Map<string, Provider>();
    for (const list of table.providers.values()) {
      for (const p of list) providers.set(`${p.service}\u0000${p.worker_id}`, p);
    }
    const before = this.#workers ?? new Map<string, WorkerView>();
    if (!first) {
      for (const [id, w] of workers) {
        const was = before.get(id);
        if (!was) {
          this.#goneWorkers.delete(id);
          this.record(now, "member", `Member up: ${shortId(id)} (${w.status})`);
        } else if (was.status !== w.status) {
          this.record(now, "member", `Member ${shortId(id)}: ${was.status} → ${w.status}`);
        }
      }
      for (const [id, was] of before) {
        if (workers.has(id)) continue;
        this.#goneWorkers.set(id, { view: was, at: now });
        this.record(now, "member", `Member down: ${shortId(id)} left the view (was ${was.status})`);
      }
      for (const [key, p] of providers) {
        const was = this.#providers.get(key);
        this.#goneProviders.delete(key);
        if (was && was.health !== p.health) {
          const text = `${p.service} on ${shortId(p.worker_id)}: ${was.health} → ${p.health}`;
          this.record(now, "service", text);
        } else if (!was && before.has(p.worker_id)) {
          this.record(now, "service", `${p.service} appeared on ${shortId(p.worker_id)}`);
        }
      }
      for (const [key, was] of this.#providers) {
        if (providers.has(key)) continue;
        this.#goneProviders.set(key, { provider: was, at: now });
        if (workers.has(was.worker_id)) {
          this.record(now, "service", `${was.service} left ${shortId(was.worker_id)}`);
        }
      }
    }
    this.#workers = workers;
    this.#providers = providers;
  }

  #diffEndpoints(routes: ReadonlyMap<string, ServiceRoute>, now: number): void {
    const seen = new Map<string, EndpointSeen>();
    for (const [name, route] of routes) {
      for (const e of route.endpoints) {
        const key = `${name}\u0000${e.worker_id}`;
        const state = e.breaker.stateAt(now);
        const mine = {
          state,
          trips: e.breaker.trips,
          ejections: e.ejections,
          ejected: e.ejected(now),
        };
        seen.set(key, mine);
        const was = this.#endpoints.get(key);
        if (!was) continue;
        const where = `${name} on ${shortId(e.worker_id)}`;
        if (mine.trips > was.trips) this.record(now, "breaker", `Breaker opened: ${where}`);
        else if (was.state !== "closed" && state === "closed") {
          this.record(now, "breaker", `Breaker closed: ${where}`);
        }
        if (mine.ejections > was.ejections) {
          const until = Math.max(0, Math.round((e.ejectedUntil - now) / 1000));
          this.record(now, "ejection", `Ejected for ${until} s: ${where}`);
        } else if (was.ejected && !mine.ejected) {
          this.record(now, "ejection", `Ejection ended: ${where}`);
        }
      }
    }
    this.#endpoints = seen;
  }
}

/** What the dashboard reads: the app's per-isolate state (it reads the store no more than the admin API). */
interface DashboardDeps {
  settings: Settings;
  router: Router;
  live: LiveViews | null;
  reg: { store: Pick<Store, "kind" | "persistent"> };
  clock: ClockLike;
  /** The routing table as the admin API reads it (synced into the router, live view fresh). */
  routing(c: Context): Promise<{ table: RoutingTable; now: number }>;
  budget(): z.input<typeof BudgetAnswerSchema>;
  /** What the dashboard remembers of clusters and endpoints (fed by every routing read). */
  watch: ClusterWatch;
  /** The client's address of an operator's action (for the audit line). */
  clientAddress: ClientAddress;
}

function clusterWarnings(cl: ClusterSummary, live: LiveViews | null, settings: Settings): string[] {
  const out: string[] = [];
  if (cl.stale) {
    const min = Math.round((settings.keepaliveMs + settings.leaseGraceMs) / MINUTE);
    out.push(
      `Stale: no report or keepalive for over ${min} min, so members show as unknown and are not routed to.`,
    );
  }
  if (!cl.leader_id) out.push("No leader is reporting for this cluster.");
  if (!live && settings.liveView && isSecured(settings) && settings.agentToken === null) {
    // Fail closed: no agent-view token, no live view. Say what the page then cannot show.
    out.push(
      "The leader's live view is off: no agent-view token is set (ROLLCALL_AGENT_TOKEN here, the same as the agents' --agent-token), so a crashed or unheard member shows only once a leader reports.",
    );
  }
  const status = live?.status(cl.cluster);
  if (live && cl.source === "stored" && status?.last_error) {
    out.push(
      `The leader's live view is unavailable (${status.last_error}): showing the stored table, which changes only when a leader reports.`,
    );
  }
  return out;
}

function workerRow(w: WorkerView, goneAt: number | null) {
  return {
    worker_id: w.worker_id,
    url: w.tunnel_url,
    tier: w.tier,
    status: goneAt === null ? w.status : "down",
    last_heartbeat: w.last_heartbeat,
    services: w.services,
    leader: goneAt === null && w.is_heartbeat_leader,
    mode: w.mode,
    cluster: w.cluster,
    gone_at: goneAt === null ? null : iso(goneAt),
  };
}

function providerRow(p: Provider, route: ServiceRoute | undefined, status: string, now: number) {
  const e = route?.endpoints.find((x) => x.worker_id === p.worker_id);
  const breaker = e ? e.breaker.stateAt(now) : null;
  return {
    worker_id: p.worker_id,
    url: p.url,
    tier: p.tier,
    status,
    health: p.health,
    breaker,
    breaker_open_until: breaker === "open" ? iso(e?.breaker.openUntil ?? 0) : null,
    trips: e?.breaker.trips ?? 0,
    ejected: e ? e.ejected(now) : false,
    ejected_until: e?.ejected(now) ? iso(e.ejectedUntil) : null,
    ejections: e?.ejections ?? 0,
    in_flight: e?.inFlight ?? 0,
    gone_at: null as string | null,
  };
}

/** The snapshot the page shows (`GET /api/admin/dashboard`). */
function dashboardSnapshot(
  deps: DashboardDeps,
  watch: ClusterWatch,
  table: RoutingTable,
  now: number,
) {
  const { settings, router, live } = deps;
  const statusOf = new Map(table.workers.map((w) => [w.worker_id, w.status]));
  const gone = watch.goneWorkers().filter((g) => !statusOf.has(g.view.worker_id));
  const byId = (a: WorkerView, b: WorkerView) => (a.worker_id < b.worker_id ? -1 : 1);
  const workers = [
    ...[...table.workers].sort(byId).map((w) => workerRow(w, null)),
    ...gone.map((g) => workerRow(g.view, g.at)),
  ];
  const goneProviders = watch.goneProviders();
  const names = new Set([
    ...table.providers.keys(),
    ...goneProviders.map((g) => g.provider.service),
  ]);
  const services = [...names].sort().map((name) => {
    const list = table.providers.get(name) ?? [];
    const route = router.routes.get(name);
    const healthy = list.filter((p) => p.health !== "unhealthy").length;
    const rows = list.map((p) =>
      providerRow(p, route, statusOf.get(p.worker_id) ?? "unknown", now),
    );
    for (const g of goneProviders) {
      if (g.provider.service !== name || list.some((p) => p.worker_id === g.provider.worker_id))
        continue;
      const row = providerRow(
        g.provider,
        undefined,
        statusOf.has(g.provider.worker_id) ? "online" : "down",
        now,
      );
      rows.push({ ...row, health: "unhealthy", gone_at: iso(g.at) });
    }
    return {
      name,
      status: healthy > 0 ? "available" : "unavailable",
      total_workers: list.length,
      healthy_workers: healthy,
      serving_workers: route ? servingCount(route, now) : 0,
      in_flight: route?.figures.inFlight ?? 0,
      queue_length: route?.queued ?? 0,
      scaling: route?.figures.signal ?? { signal: "steady", reason: "no traffic seen yet" },
      window: route ? route.figures.window.snapshot(now) : null,
      series: route ? route.figures.window.series(now) : [],
      workers: rows,
    };
  });
  const budget = deps.budget();
  const keepalives = table.clusters.flatMap((cl) =>
    cl.next_keepalive_at ? [cl.next_keepalive_at] : [],
  );
  return {
    generated_at: new Date(now).toISOString(),
    version: COORDINATOR_VERSION,
    mode: !settings.clusterToken && !settings.adminToken ? "open-local-dev" : "secured",
    refresh_ms: DASHBOARD_REFRESH_MS,
    window_s: settings.metricsWindowMs / 1000,
    source: table.source,
    clusters: table.clusters.map((cl) => ({
      cluster: cl.cluster,
      leader_id: cl.leader_id,
      term: cl.term,
      leader_since: iso(watch.leaderSince(cl.cluster) ?? 0),
      source: cl.source,
      members: cl.members,
      last_report_at: cl.last_report_at,
      last_write_at: cl.last_write_at,
      next_keepalive_at: cl.next_keepalive_at,
      pending_write: cl.pending_write,
      stale: cl.stale,
      live_view: live?.status(cl.cluster) ?? null,
      warnings: clusterWarnings(cl, live, settings),
    })),
    workers,
    services,
    store: {
      kind: deps.reg.store.kind,
      persistent: deps.reg.store.persistent,
      ...budget,
      next_keepalive_at: keepalives.sort()[0] ?? null,
    },
    events: watch.events().map((e) => ({ ...e, at: new Date(e.at).toISOString() })),
  };
}

/** The body of an operator's action on one provider. */
const ProviderActionSchema = z.object({ service: ServiceNameSchema, worker_id: WorkerIdSchema });
/** `POST /api/admin/clusters/forget`. */
const ForgetClusterSchema = z.object({ cluster: ClusterNameSchema });

/** The dashboard page: a shell the script fills in (no data in it, so it is served openly). */
const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="referrer" content="no-referrer">
<title>rollcall dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/admin/dashboard.css">
<script src="/admin/dashboard.js" defer></script>
</head>
<body>
<header>
<h1>rollcall</h1>
<span id="conn" role="status" class="muted">Loading…</span>
<button id="signout" type="button" hidden>Sign out</button>
</header>
<p id="banner" class="banner" role="note" hidden></p>
<form id="signin" hidden>
<h2>Sign in</h2>
<p>The coordinator's admin token (<code>ROLLCALL_ADMIN_TOKEN</code>). It stays in this tab (session storage) and goes only in the Authorization header of this page's requests.</p>
<label for="token">Admin token</label>
<input id="token" type="password" autocomplete="current-password" spellcheck="false" required>
<button type="submit">Sign in</button>
<p id="signin-error" class="error" role="alert"></p>
</form>
<main id="app" hidden>
<p id="note" class="note" role="status" hidden></p>
<section><h2>Cluster</h2><div id="clusters" class="grid"></div></section>
<section><h2>Store</h2><div id="store" class="grid"></div></section>
<section><h2>Workers</h2><div id="workers" class="grid"></div></section>
<section><h2>Services</h2><div id="services" class="grid"></div></section>
<section><h2>Recent events</h2><ol id="events" class="events"></ol></section>
</main>
</body>
</html>
`;

/** The page's style: light and dark (prefers-color-scheme), one column on a phone. */
const DASHBOARD_CSS = `:root{color-scheme:light dark;--bg:#f6f7f9;--fg:#1b1f24;--muted:#57606a;--card:#fff;--line:#d0d7de;--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--accent:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;--card:#161b22;--line:#30363d;--ok:#3fb950;--warn:#d29922;--bad:#f85149;--accent:#4493f8}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg);overflow-wrap:anywhere}
header{display:flex;flex-wrap:wrap;gap:.4rem 1rem;align-items:center;padding:.6rem 1rem;border-bottom:1px solid var(--line);background:var(--card)}
h1{font-size:1.15rem;margin:0}
h2{font-size:.85rem;margin:0 0 .5rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
h3{margin:0 0 .4rem;font-size:1rem;display:flex;flex-wrap:wrap;gap:.35rem;align-items:center}
main,form,.banner{max-width:1280px;margin:0 auto;padding:0 1rem}
section{margin:1.1rem 0}
.grid{display:grid;gap:.75rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,21rem),1fr))}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.7rem .8rem;min-width:0}
.wide{grid-column:1/-1}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.1rem .75rem;margin:0}
dt{color:var(--muted)}
dd{margin:0;min-width:0}
.badge{display:inline-block;padding:0 .45rem;border-radius:999px;border:1px solid currentColor;font-size:.78rem;font-weight:600;white-space:nowrap}
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}.muted{color:var(--muted)}
.id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
.warning,.banner,.note{border-left:4px solid var(--warn);padding:.45rem .7rem;margin:.5rem 0 0;background:var(--card)}
.banner{margin:.75rem auto}
.note{border-left-color:var(--accent)}
.error{color:var(--bad);min-height:1.4em}
meter{width:100%;height:1rem}
.sparks{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:.6rem;margin:.5rem 0}
.spark{min-width:0}
.spark svg{display:block;width:100%;height:28px;border-bottom:1px solid var(--line)}
.spark polyline{fill:none;stroke:var(--accent);stroke-width:1.5}
.spark small{display:block;color:var(--muted)}
ul.providers{list-style:none;padding:0;margin:.5rem 0 0}
ul.providers li{border-top:1px solid var(--line);padding:.4rem 0;display:flex;flex-wrap:wrap;gap:.25rem .6rem;align-items:center}
ol.events{list-style:none;padding:0;margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px}
ol.events li{padding:.3rem .8rem;border-top:1px solid var(--line)}
ol.events li:first-child{border-top:0}
time{color:var(--muted);font-variant-numeric:tabular-nums;margin-right:.5rem}
button{font:inherit;padding:.25rem .7rem;border-radius:6px;border:1px solid var(--line);background:var(--bg);color:var(--fg);cursor:pointer}
button:disabled{opacity:.6;cursor:default}
input{display:block;font:inherit;padding:.45rem;margin:.25rem 0 .6rem;width:100%;max-width:26rem;border:1px solid var(--line);border-radius:6px;background:var(--card);color:var(--fg)}
[hidden]{display:none!important}
`;

/** The page's script: signs in, polls the snapshot while visible, renders it as text, acts. */
const DASHBOARD_JS = `"use strict";
(() => {
  const KEY = "rollcall.admin-token";
  const $ = (id) => document.getElementById(id);
  let token = null;
  try {
    token = sessionStorage.getItem(KEY);
  } catch (_) {
    token = null;
  }
  let timer = null;
  let failures = 0;
  let refreshMs = 1000;
  let polling = false;
  let lastOk = 0;
  let serverNow = Date.now();
  let held = null;
  const shown = {};

  // Every value from the coordinator is shown as text (textContent), never parsed as HTML.
  const el = (tag, cls, text) => {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  };
  const add = (parent, ...kids) => {
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      parent.append(typeof k === "object" ? k : String(k));
    }
    return parent;
  };
  const short = (id) => (id && id.length > 16 ? "…" + id.slice(-8) : id || "-");
  const idSpan = (id) => {
    const s = el("span", "id", short(id));
    s.title = id || "";
    return s;
  };
  const TONE = {
    online: "ok", healthy: "ok", closed: "ok", available: "ok", steady: "ok", live: "ok",
    degraded: "warn", suspect: "warn", half_open: "warn", scale_up: "warn", scale_down: "warn",
    stored: "warn", leader: "ok", draining: "warn", maintenance: "warn",
  };
  const MARK = { ok: "✓", warn: "!", bad: "✕" };
  const badge = (word, tone) => {
    const t = tone || TONE[word] || "bad";
    return el("span", "badge " + t, MARK[t] + " " + String(word).replace("_", " "));
  };
  const ago = (iso) => {
    if (!iso) return "never";
    const ms = serverNow - Date.parse(iso);
    const abs = Math.abs(ms);
    const text =
      abs < 1500 ? "now" :
      abs < 90e3 ? Math.round(abs / 1000) + " s" :
      abs < 90 * 60e3 ? Math.round(abs / 60e3) + " min" :
      abs < 48 * 3600e3 ? Math.round(abs / 3600e3) + " h" : Math.round(abs / 86400e3) + " d";
    return text === "now" ? "now" : ms >= 0 ? text + " ago" : "in " + text;
  };
  const when = (iso) => {
    const t = el("time", null, ago(iso));
    if (iso) {
      t.dateTime = iso;
      t.title = iso;
    }
    return t;
  };
  const row = (dl, term, ...value) => {
    add(dl, el("dt", null, term));
    add(dl, add(el("dd"), ...value));
  };
  const TIERS = { 1: "1 (GPU)", 2: "2 (CPU)", 3: "3 (storage)" };

  const spark = (label, values, unit, now) => {
    const box = el("div", "spark");
    const svgNs = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("viewBox", "0 0 100 30");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const text = values.map((v) => (v === null ? "-" : v)).join(", ");
    svg.setAttribute("aria-label", label + " per slice, oldest first: " + text + " " + unit);
    const title = document.createElementNS(svgNs, "title");
    title.textContent = label + ": " + text + " " + unit;
    svg.append(title);
    const max = Math.max(1e-9, ...values.filter((v) => v !== null));
    let run = [];
    const flush = () => {
      // A lone point (its neighbours have no data) is drawn as a short dash.
      if (run.length === 1) run = [[run[0][0] - 2, run[0][1]], [run[0][0] + 2, run[0][1]]];
      if (run.length > 1) {
        const line = document.createElementNS(svgNs, "polyline");
        line.setAttribute("points", run.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "));
        line.setAttribute("vector-effect", "non-scaling-stroke");
        svg.append(line);
      }
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null) return flush();
      run.push([values.length > 1 ? (i / (values.length - 1)) * 100 : 50, 28 - (v / max) * 26]);
    });
    flush();
    add(box, svg, el("small", null, label + ": " + (now === null ? "-" : now + " " + unit)));
    return box;
  };

  const renderClusters = (snap) => {
    const box = $("clusters");
    const cards = snap.clusters.map((cl) => {
      const card = el("div", "card");
      add(card, add(el("h3"), "Cluster " + cl.cluster, badge(cl.source)));
      const dl = el("dl");
      row(dl, "Leader", cl.leader_id ? idSpan(cl.leader_id) : "none", cl.term === null ? "" : " (term " + cl.term + ")");
      row(dl, "Leader seen since", when(cl.leader_since));
      row(dl, "View", cl.source === "live"
        ? "live, from the leader's agent" + (cl.live_view && cl.live_view.fetched_at ? " (fetched " + ago(cl.live_view.fetched_at) + ")" : "")
        : "stored table (last written " + ago(cl.last_write_at) + ")");
      row(dl, "Last report", cl.last_report_at ? when(cl.last_report_at) : "none to this instance yet");
      row(dl, "Members", String(cl.members));
      add(card, dl);
      for (const w of cl.warnings) add(card, el("p", "warning", "⚠ " + w));
      return card;
    });
    if (cards.length === 0) {
      const none = snap.workers.length === 0
        ? "⚠ No worker has registered and no leader has reported yet."
        : "No mesh cluster reports here: every worker is in direct mode.";
      cards.push(el("p", "card warning", none));
    }
    box.replaceChildren(...cards);
  };

  const renderStore = (snap) => {
    const s = snap.store;
    const card = el("div", "card wide");
    const meter = el("meter");
    meter.min = 0;
    meter.max = s.cap;
    meter.value = s.used_today;
    meter.low = s.cap * 0.5;
    meter.high = s.cap * 0.8;
    meter.optimum = 0;
    meter.title = s.used_today + " of " + s.cap;
    const share = s.cap > 0 ? (s.used_today / s.cap) * 100 : 0;
    const pct = share < 10 ? Math.round(share * 10) / 10 : Math.round(share);
    const tone = pct >= 80 ? "bad" : pct >= 50 ? "warn" : "ok";
    add(card, add(el("h3"), "Writes today", badge(pct + " % of the cap", tone)));
    add(card, meter);
    const dl = el("dl");
    row(dl, "Used", s.used_today + " of " + s.cap + " (" + s.remaining + " left, the day ends " + ago(s.resets_at) + ")");
    row(dl, "Next keepalive", s.next_keepalive_at ? when(s.next_keepalive_at) : "none due");
    row(dl, "Deferred writes", s.pending_writes === 0 ? "none" : s.pending_writes + " waiting for the budget");
    row(dl, "Store", s.kind + (s.persistent ? " (persistent)" : " (memory: lost on restart)"));
    add(card, dl);
    $("store").replaceChildren(card);
  };

  const renderWorkers = (snap) => {
    const cards = snap.workers.map((w) => {
      const card = el("div", "card");
      add(card, add(el("h3"), idSpan(w.worker_id), badge(w.status), w.leader ? badge("leader", "ok") : null));
      const dl = el("dl");
      row(dl, "URL", w.url ? el("span", "id", w.url) : "none");
      row(dl, "Tier", TIERS[w.tier] || String(w.tier));
      if (w.gone_at) row(dl, "Left the view", when(w.gone_at));
      else row(dl, "Last heartbeat", when(w.last_heartbeat));
      row(dl, "Services", w.services.length ? w.services.join(", ") : "none");
      row(dl, "Mode", w.mode + (w.cluster ? " (" + w.cluster + ")" : ""));
      add(card, dl);
      return card;
    });
    if (cards.length === 0) cards.push(el("p", "card muted", "No workers."));
    $("workers").replaceChildren(...cards);
  };

  const action = (label, path, service, worker) => {
    const b = el("button", null, label);
    b.type = "button";
    b.dataset.path = path;
    b.dataset.service = service;
    b.dataset.worker = worker;
    return b;
  };

  const renderServices = (snap) => {
    const cards = snap.services.map((s) => {
      const card = el("div", "card");
      add(card, add(el("h3"), s.name, badge(s.status), el("span", "muted", s.healthy_workers + "/" + s.total_workers + " healthy")));
      const dl = el("dl");
      row(dl, "Scaling", badge(s.scaling.signal), " " + s.scaling.reason);
      row(dl, "In flight", s.in_flight + ", queue " + s.queue_length + ", serving " + s.serving_workers);
      add(card, dl);
      const series = s.series || [];
      const w = s.window;
      add(card, add(el("div", "sparks"),
        spark("req/s", series.map((x) => x.throughput_rps), "req/s", w ? w.throughput_rps : null),
        spark("p50", series.map((x) => x.p50_ms), "ms", w ? w.p50_ms : null),
        spark("p95", series.map((x) => x.p95_ms), "ms", w ? w.p95_ms : null)));
      const ul = el("ul", "providers");
      for (const p of s.workers) {
        const li = el("li");
        add(li, idSpan(p.worker_id), badge(p.gone_at ? "gone" : p.health));
        if (p.status !== "online") add(li, el("span", null, "worker " + p.status));
        if (p.breaker) add(li, el("span", null, "breaker "), badge(p.breaker));
        if (p.ejected) add(li, el("span", "bad", "ejected, back " + ago(p.ejected_until)));
        if (p.trips) add(li, el("span", "muted", p.trips + " trip(s)"));
        if (p.ejections) add(li, el("span", "muted", p.ejections + " ejection(s)"));
        add(li, el("span", "muted", p.in_flight + " in flight"));
        if (p.gone_at) add(li, el("span", "muted", "left " + ago(p.gone_at)));
        if (p.breaker && p.breaker !== "closed") add(li, action("Reset breaker", "/api/admin/breakers/reset", s.name, p.worker_id));
        if (p.ejected) add(li, action("End ejection", "/api/admin/ejections/end", s.name, p.worker_id));
        ul.append(li);
      }
      add(card, ul);
      return card;
    });
    if (cards.length === 0) cards.push(el("p", "card muted", "No services."));
    $("services").replaceChildren(...cards);
  };

  const renderEvents = (snap) => {
    const items = snap.events.map((e) => {
      const li = el("li");
      const t = el("time", null, new Date(e.at).toLocaleTimeString());
      t.dateTime = e.at;
      t.title = e.at;
      return add(li, t, e.text);
    });
    if (items.length === 0) items.push(el("li", "muted", "Nothing yet."));
    $("events").replaceChildren(...items);
  };

  const render = (snap) => {
    serverNow = Date.parse(snap.generated_at) || Date.now();
    refreshMs = Math.max(500, snap.refresh_ms || 1000);
    const banner = $("banner");
    banner.hidden = snap.mode !== "open-local-dev";
    banner.textContent = "Open local dev mode: no tokens are set, so anyone who reaches this coordinator can read and change it. Set ROLLCALL_ADMIN_TOKEN and ROLLCALL_CLUSTER_TOKEN before you expose it.";
    const parts = [
      ["clusters", [snap.clusters, snap.workers.length], renderClusters],
      ["store", snap.store, renderStore],
      ["workers", snap.workers, renderWorkers],
      ["services", snap.services, renderServices],
      ["events", snap.events, renderEvents],
    ];
    // A part is rebuilt only when its data changed, and not while a button in it is pressed
    // or focused (the click or the keyboard focus would be lost); relative times are
    // refreshed every 30 s at least.
    const epoch = Math.floor(serverNow / 30000);
    for (const [name, data, fn] of parts) {
      const key = epoch + JSON.stringify(data);
      if (shown[name] === key) continue;
      if (name === held || $(name).contains(document.activeElement)) continue;
      shown[name] = key;
      fn(snap);
    }
  };

  const setConn = (text, tone) => {
    const c = $("conn");
    c.textContent = text;
    c.className = tone || "muted";
  };

  const api = (path, init) => {
    const headers = new Headers((init && init.headers) || {});
    headers.set("accept", "application/json");
    if (token) headers.set("authorization", "Bearer " + token);
    const signal = AbortSignal.timeout(10000);
    return fetch(path, Object.assign({ signal }, init, { headers, cache: "no-store", credentials: "omit" }));
  };

  const showApp = () => {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = !token;
  };

  const showSignin = (message) => {
    stop();
    $("app").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    setConn("Signed out", "muted");
    $("token").focus();
  };

  const forget = () => {
    token = null;
    try {
      sessionStorage.removeItem(KEY);
    } catch (_) {
      // storage unavailable: the token lived in memory only
    }
  };

  const stop = () => {
    polling = false;
    clearTimeout(timer);
  };

  const schedule = (ms) => {
    clearTimeout(timer);
    if (polling) timer = setTimeout(tick, ms);
  };

  const refused = async (res) => {
    const body = await res.json().catch(() => ({}));
    const had = token !== null;
    forget();
    showSignin(had ? "The stored admin token was refused (HTTP " + res.status + "). Sign in again." : body.message || "");
  };

  async function tick() {
    if (!polling) return;
    if (document.hidden) return; // visibilitychange resumes
    try {
      const res = await api("/api/admin/dashboard");
      if (res.status === 401 || res.status === 403) return refused(res);
      if (!res.ok) throw new Error("HTTP " + res.status);
      const snap = await res.json();
      failures = 0;
      lastOk = Date.now();
      showApp();
      render(snap);
      setConn("Live: updated " + new Date(lastOk).toLocaleTimeString(), "ok");
    } catch (err) {
      failures++;
      const age = lastOk ? ", last update " + Math.round((Date.now() - lastOk) / 1000) + " s ago" : "";
      setConn("✕ Coordinator unreachable (" + (err && err.message ? err.message : "error") + ")" + age + "; retrying", "bad");
    }
    schedule(failures ? Math.min(15000, refreshMs * 2 ** failures) : refreshMs);
  }

  const start = () => {
    polling = true;
    schedule(0);
  };

  $("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("token");
    const value = input.value.trim();
    const error = $("signin-error");
    if (!value) {
      error.textContent = "Enter the admin token.";
      return;
    }
    const button = ev.target.querySelector("button");
    button.disabled = true;
    error.textContent = "Checking…";
    try {
      const res = await fetch("/api/admin/dashboard", {
        headers: { accept: "application/json", authorization: "Bearer " + value },
        cache: "no-store",
        credentials: "omit",
      });
      if (res.status === 401 || res.status === 403) {
        error.textContent = "That token was refused (HTTP " + res.status + ").";
        input.select();
        return;
      }
      if (!res.ok) {
        error.textContent = "The coordinator answered HTTP " + res.status + ".";
        return;
      }
      token = value;
      try {
        sessionStorage.setItem(KEY, value);
      } catch (_) {
        // storage unavailable: keep the token in memory for this page only
      }
      input.value = "";
      error.textContent = "";
      const snap = await res.json();
      showApp();
      render(snap);
      start();
    } catch (err) {
      error.textContent = err instanceof TypeError && /header/i.test(err.message)
        ? "That token has characters a header cannot carry."
        : "The coordinator could not be reached.";
    } finally {
      button.disabled = false;
    }
  });

  $("signout").addEventListener("click", () => {
    forget();
    showSignin("Signed out.");
  });

  $("services").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-path]");
    if (!b) return;
    b.disabled = true;
    const note = $("note");
    try {
      const res = await api(b.dataset.path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ service: b.dataset.service, worker_id: b.dataset.worker }),
      });
      if (res.status === 401 || res.status === 403) return refused(res);
      const body = await res.json().catch(() => ({}));
      note.textContent = res.ok
        ? "Done: " + b.textContent.toLowerCase() + " for " + b.dataset.service + " on " + short(b.dataset.worker) + (body.changed ? "." : " (it had already changed).")
        : "Failed: " + (body.message || body.error || "HTTP " + res.status);
    } catch (_) {
      note.textContent = "Failed: the coordinator could not be reached.";
    }
    note.hidden = false;
    b.blur(); // lets the next poll rebuild the list (see render)
    schedule(0);
  });

  $("services").addEventListener("pointerdown", () => {
    held = "services";
  });
  document.addEventListener("pointerup", () => setTimeout(() => (held = null), 0));
  document.addEventListener("pointercancel", () => (held = null));

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && polling) schedule(0);
  });

  // Open local dev mode needs no token; otherwise sign in first (the stored token is tried).
  (async () => {
    let health = null;
    try {
      health = await (await fetch("/health", { cache: "no-store", credentials: "omit" })).json();
    } catch (_) {
      health = null;
    }
    const needsToken = !health || !health.auth || health.auth.admin_token !== false;
    if (needsToken && !token) return showSignin();
    start();
  })();
})();
`;

/** Headers of the page and its files: nothing but this origin's own files, never in a frame. */
const DASHBOARD_HEADERS: Record<string, string> = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "cross-origin-opener-policy": "same-origin",
  "cache-control": "no-store",
};

/** An admin action's body limit: its JSON is a few names. */
const smallBody = bodyLimit({
  maxSize: 4096,
  onError: (c) => c.json({ error: "Request body is larger than 4096 bytes" }, 413),
});

/**
 * Reads an admin action's JSON body against `schema`: 415 unless it says JSON (a cross-site
 * `text/plain` post, which needs no preflight, must not reach the dev cluster), 400 for what
 * does not parse, with the schema's details.
 */
async function adminBody<S extends z.ZodType>(
  c: Context,
  schema: S,
): Promise<{ data: z.output<S> } | { response: Response }> {
  if (!isJsonType(c.req.header("content-type"))) {
    const message = "Admin actions take 'Content-Type: application/json'";
    return { response: c.json({ error: "Unsupported content type", message }, 415) };
  }
  const text = await c.req.text().catch(() => null);
  if (text === null) return { response: c.json({ error: "Request body could not be read" }, 400) };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { response: c.json({ error: "Request body is not valid JSON" }, 400) };
  }
  const body = schema.safeParse(value);
  if (!body.success) {
    const details = body.error.issues.map((i) => ({ path: i.path.join("."), message: i.message }));
    return { response: c.json({ error: "Invalid request body", details }, 400) };
  }
  return { data: body.data };
}

/**
 * Registers the dashboard: the page and its two files on `app` (open: they hold no data), the
 * snapshot and the two actions on `admin`, behind whatever guard the admin API has. Returns the
 * watcher the admin reads and ticks feed.
 */
function mountDashboard(app: Hono, admin: Hono, deps: DashboardDeps): void {
  const { watch } = deps;
  const file = (body: string, type: string) => () =>
    new Response(body, { headers: { ...DASHBOARD_HEADERS, "content-type": type } });
  app.get("/admin", file(DASHBOARD_HTML, "text/html; charset=utf-8"));
  app.get("/admin/", (c) => c.redirect("/admin", 301));
  app.get("/admin/dashboard.js", file(DASHBOARD_JS, "text/javascript; charset=utf-8"));
  app.get("/admin/dashboard.css", file(DASHBOARD_CSS, "text/css; charset=utf-8"));
  admin.get("/dashboard", async (c) => {
    const { table, now } = await deps.routing(c);
    return c.json(dashboardSnapshot(deps, watch, table, now));
  });
  const act = (action: "breaker_reset" | "ejection_end") => async (c: Context) => {
    const body = await adminBody(c, ProviderActionSchema);
    if ("response" in body) return body.response;
    const { service, worker_id } = body.data;
    const { now } = await deps.routing(c);
    const e = deps.router.routes.get(service)?.endpoints.find((x) => x.worker_id === worker_id);
    if (!e) {
      return c.json(
        {
          error: "No such provider",
          message: `${service} has no routable provider ${worker_id} here`,
        },
        404,
      );
    }
    const changed = action === "breaker_reset" ? e.breaker.reset(now) : e.endEjection(now);
    const what = action === "breaker_reset" ? "reset the breaker of" : "ended the ejection of";
    watch.record(
      now,
      "action",
      `Operator ${what} ${service} on ${shortId(worker_id)}${changed ? "" : " (no change)"}`,
    );
    // The audit line: what was done, to what, from where (never a token).
    console.log(
      JSON.stringify({
        audit: action,
        service,
        worker_id,
        changed,
        client: clientOf(deps.clientAddress, incomingOf(c)) ?? null,
        at: new Date(now).toISOString(),
      }),
    );
    return c.json({
      status: "ok",
      action,
      service,
      worker_id,
      changed,
      breaker: e.breaker.stateAt(now),
      ejected: e.ejected(now),
    });
  };
  admin.post("/breakers/reset", smallBody, act("breaker_reset"));
  admin.post("/ejections/end", smallBody, act("ejection_end"));
}

//#endregion

//#region The app

/** Collaborators of a coordinator. */
export interface CoordinatorComponents {
  /** Where the registry lives. */
  store: Store;
  /** Time source (a fake clock in tests and the simulation). */
  clock?: ClockLike;
  /**
   * Upstream client for the proxy (the Node starter may hand in a faster one). One marked
   * `abortHandle: true` is given an `AbortHandle` as init `abortable` instead of a `signal`.
   */
  fetch?: typeof fetch;
  /** Randomness for the picker's two choices (tests pass a seeded one). Default Math.random. */
  random?: () => number;
  /** Whether the client of a request went away. Default: `request.signal.aborted`. */
  clientGone?: (request: Request, env: unknown) => boolean;
  /**
   * The client's address of a request as the runtime saw it (X-Forwarded-For, the legacy
   * register limit, the audit line). Default: none known.
   */
  clientAddress?: ClientAddress;
  /**
   * A request's headers as the server received them, read by the proxy instead of
   * `request.headers` (Node: `nodeRawHeaders` in scripts/client-address.ts). Default: none.
   */
  rawHeaders?: RawRequestHeaders;
  /**
   * Where the details of errors answered generically go (with their request id). Default
   * `console.error`. Never given a secret.
   */
  log?: (line: string) => void;
}

/** A coordinator: the hono app and its parts. */
export interface Coordinator {
  /** The hono app: `app.fetch(request, env)` or `app.request(path, init)`. */
  app: Hono;
  /** Serves a request: `/api/service/*` and alias paths straight to the proxy, everything else through `app`. */
  fetch(request: Request, env?: unknown, ctx?: unknown): Response | Promise<Response>;
  /** The resolved settings. */
  settings: Settings;
  /** The store it writes. */
  store: Store;
  /** Writes what had to wait (deferred by the cap), as far as the budget allows. */
  flush(): Promise<number>;
  /** The current routing table (admin views are built from it). */
  table(): Promise<RoutingTable>;
  /** Today's write budget figures. */
  budget(): z.input<typeof BudgetAnswerSchema>;
  /** Re-evaluates every service's scaling signal (a change calls the webhook); `start()` calls it every 5 s. */
  tick(): void;
  /**
   * Starts the timers of a long-running server: `flush` every minute, `tick` every 5 s. The
   * Node, Bun and Deno starters call it. Workers never does (an isolate runs no timers between
   * requests): there the first request that may write flushes, and traffic and admin reads
   * re-evaluate the signals.
   */
  start(): void;
  /** Clears the timers `start()` set. */
  stop(): void;
  /**
   * Whether the proxy may connect to `address`, what upstream host `host` resolved to
   * (`ROLLCALL_UPSTREAM_ALLOW`): for an upstream client that resolves names itself.
   */
  allowsUpstream(host: string, address: string): boolean;
}

/** An agent request, admitted and read: its body's bytes and who sent it. */
interface AgentRequest {
  bytes: Uint8Array;
  sender: Sender;
}

/**
 * Admits an agent request (its guard's token, or legacy/open), checks that a body is JSON (a
 * `text/plain` form post from any web page is not), reads the body and verifies a signature.
 */
async function agentRequest(
  c: Context,
  settings: Settings,
  guard: Guard,
  nonces: NonceCache,
  now: number,
  clientAddress: ClientAddress,
): Promise<AgentRequest | { response: Response }> {
  const level = await authorize(c, settings, guard);
  if (typeof level !== "string") return { response: level };
  const request = c.req.raw;
  if (request.method !== "DELETE" && !isJsonType(c.req.header("content-type"))) {
    return {
      response: json(
        {
          error: "Unsupported content type",
          message: "Agent endpoints take 'Content-Type: application/json'",
        },
        415,
      ),
    };
  }
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await c.req.arrayBuffer());
  } catch {
    return { response: json({ error: "Request body could not be read" }, 400) };
  }
  const path = pathOf(request.url);
  const signer = await verifiedSigner(
    request.headers,
    { method: request.method, path, body: bytes },
    nonces,
    now,
  );
  const address = clientOf(clientAddress, incomingOf(c)) ?? "unknown";
  return { bytes, sender: { level, signer, address } };
}

/** Parses an agent request's body as JSON against a schema, or answers 400. */
function parseJson<T>(
  bytes: Uint8Array,
  schema: z.ZodType<T>,
): { data: T } | { response: Response } {
  const text = new TextDecoder().decode(bytes);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { response: json({ error: "Request body is not valid JSON" }, 400) };
  }
  const result = schema.safeParse(value);
  if (!result.success) {
    return {
      response: json({ error: "Invalid request body", details: issues(result.error) }, 400),
    };
  }
  return { data: result.data };
}

/**
 * Whether a request is a CORS preflight (answered here for service routes); any other OPTIONS
 * to a service is proxied like every method.
 */
function isPreflight(request: Request): boolean {
  return request.method === "OPTIONS" && request.headers.has("access-control-request-method");
}

/** How often a started coordinator writes what the cap deferred. */
const FLUSH_EVERY_MS = MINUTE;
/** How often a started coordinator re-evaluates the scaling signals (without traffic too). */
const TICK_EVERY_MS = 5000;

/**
 * A coordinator's per-isolate parts, shared by its routes: the proxy's context (registry,
 * router, live views, ...) and what the admin and agent routes add to it.
 */
interface Parts extends ProxyContext {
  nonces: NonceCache;
  watch: ClusterWatch;
  aliases: AliasList;
  /** Prunes every per-isolate collection, at most once a minute. */
  prune(now: number, table: RoutingTable | null): void;
  /** The routing table, synced into the router, live views refreshed when due. */
  routing(c: Context | null): Promise<{ table: RoutingTable; now: number }>;
  /** Writes what the cap deferred, when the budget allows (errors ignored). */
  flushPending(): Promise<void>;
  budget(): z.input<typeof BudgetAnswerSchema>;
}

/** Builds the per-isolate parts from settings and collaborators. */
function coordinatorParts(settings: Settings, components: CoordinatorComponents): Parts {
  const clock = components.clock ?? systemNow;
  const fetcher = components.fetch ?? ((input, reqInit) => fetch(input, reqInit));
  // The live view needs its own credential once tokens are set: never the cluster token.
  const liveOn = settings.liveView && (settings.agentToken !== null || !isSecured(settings));
  const live = liveOn
    ? new LiveViews(settings, { fetcher, clock, onChange: () => reg.invalidate() })
    : null;
  const reg = new Registry(settings, components.store, clock, (cluster, now) =>
    live === null ? null : live.lookup(cluster, now),
  );
  const router = new Router(settings);
  const nonces = new NonceCache();
  let prunedAt = 0;
  const parts: Parts = {
    reg,
    router,
    live,
    settings,
    clock,
    fetcher,
    abortHandle: (fetcher as { abortHandle?: unknown }).abortHandle === true,
    random: components.random ?? Math.random,
    deadlines: new Deadlines(
      Math.max(10, Math.min(100, settings.proxyTimeoutMs / 4)),
      components.clientGone ?? ((request) => request.signal.aborted),
    ),
    inPlace: null,
    watchBodies: !(fetcher as { reportsBodyBreaks?: boolean }).reportsBodyBreaks,
    webhook: { sent: 0, failed: 0, lastError: null },
    instanceId: crypto.randomUUID().replaceAll("-", "").slice(0, 16),
    log: components.log ?? ((line: string) => console.error(`rollcall: ${line}`)),
    clientAddress: components.clientAddress ?? (() => undefined),
    rawHeaders: components.rawHeaders ?? null,
    nonces,
    watch: new ClusterWatch(),
    aliases: aliasList(settings.aliases),
    // From `start()`'s timer on a long-running server, from admin and agent requests where no
    // timer runs (Workers).
    prune(now, table) {
      if (now - prunedAt < MINUTE) return;
      prunedAt = now;
      reg.prune(now);
      router.prune();
      if (table !== null) live?.prune(table);
      nonces.prune(now);
    },
    async routing(c) {
      let table = await reg.table();
      const exec = c ? incomingOf(c).exec : null;
      // An admin read waits for a live view at most ADMIN_LIVE_MAX_AGE_MS old (bounded by the
      // agent timeout): it shows what the leader's mesh knows now, e.g. a worker just suspected.
      const refreshes =
        live?.tick(table, clock.now(), exec, c ? ADMIN_LIVE_MAX_AGE_MS : undefined) ?? [];
      if (c !== null && refreshes.length > 0) {
        await Promise.all(refreshes);
        table = await reg.table();
      }
      const now = clock.now();
      router.sync(table, now);
      for (const route of router.routes.values()) evaluateSignal(parts, route, now, exec);
      parts.watch.observe(table, router.routes, now);
      parts.prune(now, table);
      return { table, now };
    },
    // Opportunistic: what the cap deferred is written on the first request that may write it.
    async flushPending() {
      if (reg.pendingCount > 0 && reg.budget.available) await reg.flushPending().catch(() => 0);
    },
    budget: () => ({ ...reg.budget.snapshot(), pending_writes: reg.pendingCount }),
  };
  return parts;
}

/**
 * Whether the proxy answers a request: "service" for `/api/service/...` (its name is parsed
 * when it is routed), an alias's target for an aliased path outside the API's own paths
 * (`/health`, `/metrics`, `/api/...`), null for the rest and for every CORS preflight.
 */
function proxied(request: Request, aliases: AliasList): ServiceTarget | "service" | null {
  if (isPreflight(request)) return null;
  const url = request.url;
  const at = pathStart(url);
  if (url.startsWith("/api/service/", at)) return "service";
  if (aliases.length === 0) return null;
  const path = pathOf(url, at);
  if (path === "/health" || path === "/metrics" || path.startsWith("/api/")) return null;
  if (path === "/admin" || path.startsWith("/admin/")) return null; // the dashboard
  return matchAlias(path, aliases);
}

/**
 * Answers a request the proxy serves (see `proxied`): writes what waits, routes, and answers
 * every error itself with the CORS headers a browser needs to read it.
 */
async function proxyEntry(
  parts: Parts,
  inc: Incoming,
  target: ServiceTarget | "service",
): Promise<Response> {
  try {
    // Writes that waited go out beside the request, never in front of it.
    if (parts.reg.pendingCount > 0) defer(inc.exec, parts.flushPending());
    // A path under /api/service/ always has a target (or throws on a bad name).
    const to = target === "service" ? (serviceTargetOf(inc.request.url) as ServiceTarget) : target;
    return await routeService(inc, parts, to);
  } catch (err) {
    const res = errorAnswer(err, parts.log);
    addCors(parts.settings, inc.request, res.headers);
    return res;
  }
}

/**
 * The middleware in front of every route. What the proxy serves goes to it before any other
 * (`coordinator.fetch` does the same without hono): it sets the CORS headers on its answers
 * itself, where hono's cors() would wrap every proxied response in a new one (it touches `c.res`
 * before the handler runs) and answer every OPTIONS itself; an OPTIONS that is no preflight goes
 * to the service. CORS headers go on the service routes (a browser app calls them from its own
 * origin) and `/health`, never on the agent and admin endpoints (no web page may read them, and
 * the dashboard is same-origin). Then what the cap deferred is written.
 */
/** The host name of an absolute URL, lower case, without its port (IPv6 keeps its brackets). */
function hostnameOf(url: string): string {
  const from = url.indexOf("//") + 2;
  const end = pathStart(url);
  const host = url.slice(from, end === -1 ? undefined : end).toLowerCase();
  if (host.startsWith("[")) return host.slice(0, host.indexOf("]") + 1);
  const colon = host.indexOf(":");
  return colon === -1 ? host : host.slice(0, colon);
}

/**
 * Which Host names an open coordinator answers: loopback ones (`localhost`, `*.localhost`,
 * 127.0.0.0/8, `[::1]`) and those `ROLLCALL_ALLOWED_HOSTS` lists.
 */
function openHosts(list: string): (host: string) => boolean {
  const listed = new Set(
    list
      .split(",")
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean),
  );
  return (host) => {
    const name = host.endsWith(".") ? host.slice(0, -1) : host;
    if (name === "localhost" || name.endsWith(".localhost") || name === "[::1]") return true;
    if (parseIPv4(name)?.[0] === 127) return true;
    return listed.has(name);
  };
}

function frontMiddleware(app: Hono, parts: Parts): void {
  const { settings, aliases } = parts;
  const corsPath = (path: string): boolean =>
    path === "/health" ||
    path.startsWith("/api/service/") ||
    (aliases.length > 0 &&
      path !== "/metrics" &&
      !path.startsWith("/api/") &&
      matchAlias(path, aliases) !== null);
  const corsHeaders = cors({
    origin: settings.corsOrigin,
    // No fixed list: a preflight gets the headers it asks for (hono echoes them), as services
    // take any header (X-Requested-With, X-File-Name, Range, ...).
    allowMethods: ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"],
    exposeHeaders: ["Retry-After", "X-Rollcall-Worker", "X-Rollcall-Worker-Name"],
  });
  app.onError((err) => errorAnswer(err, parts.log));
  app.notFound((c) => c.json({ error: "Not found", path: new URL(c.req.url).pathname }, 404));
  // Open (no token): a web page whose name was rebound to this address is refused by its Host.
  const allowedHost = isSecured(settings) ? null : openHosts(settings.allowedHosts ?? "");
  app.use("*", (c, next) => {
    if (allowedHost !== null && !allowedHost(hostnameOf(c.req.url))) {
      const message =
        "An open coordinator (no token set) answers loopback Host names only; list others in ROLLCALL_ALLOWED_HOSTS";
      return Promise.resolve(json({ error: "Misdirected request", message }, 421));
    }
    const target = proxied(c.req.raw, aliases);
    if (target !== null) return proxyEntry(parts, incomingOf(c), target);
    return corsPath(c.req.path) ? corsHeaders(c, next) : next();
  });
  app.use("*", async (_c, next) => {
    await parts.flushPending();
    await next();
  });
}

/** `GET /` (a small index of the API, for a person who opens the coordinator's URL) and `/health`. */
function publicRoutes(app: Hono, parts: Parts): void {
  const { settings, live, reg, clock } = parts;
  app.get("/", (c) =>
    c.json({
      service: "rollcall-coordinator",
      version: COORDINATOR_VERSION,
      endpoints: {
        "GET /health": "status, store, and what is open",
        "ANY /api/service/<name>/<path>": "a call routed to a healthy worker providing <name>",
        "GET /api/admin/workers": "workers, their status, name and services (admin token)",
        "GET /api/admin/services": "services and their healthy workers (admin token)",
        "GET /api/admin/stats": "counts by status and tier, write budget, leader (admin token)",
        "GET /api/admin/leader": "each cluster's leader and lease (admin token)",
        "GET /api/admin/budget": "store writes used today (admin token)",
        "GET /api/admin/breakers": "circuit breakers per worker and service (admin token)",
        "GET /api/admin/metrics": "traffic, latency percentiles, scaling signals (admin token)",
        "GET /metrics": "the same in Prometheus text format (admin token)",
        "POST /api/cluster/heartbeat": "a leader agent's report (cluster token)",
        "POST /api/worker/register, /api/worker/heartbeat": "direct mode (cluster token)",
        "DELETE /api/worker/unregister/<id>": "direct mode (cluster token)",
        "GET /api/worker/find/<name>": "a healthy provider's URL (cluster token)",
      },
      docs: "docs/DEPLOY.md and docs/AGENTS.md in the rollcall repository",
    }),
  );
  app.get("/health", (c) => {
    const secured = isSecured(settings);
    const guard = (token: string | null) => (!secured ? "open" : token ? "token" : "disabled");
    return c.json({
      status: "healthy",
      service: "rollcall-coordinator",
      version: COORDINATOR_VERSION,
      mode: secured ? "secured" : "open-local-dev",
      auth: {
        cluster_token: settings.clusterToken !== null,
        admin_token: settings.adminToken !== null,
        agent_endpoints: guard(settings.clusterToken),
        admin_endpoints: guard(settings.adminToken),
        legacy_workers_admitted: settings.allowLegacyWorkers || !secured,
        signed_ids: "required for PeerId worker ids and every cluster report",
        live_view: live === null ? "off" : settings.agentToken ? "agent-token" : "open",
      },
      store: { kind: reg.store.kind, persistent: reg.store.persistent },
      time: new Date(clock.now()).toISOString(),
    } satisfies z.input<typeof HealthAnswerSchema>);
  });
}

/** A healthy (else degraded) provider of a service among the best tier, picked at random. */
function findProvider(table: RoutingTable, service: string, random: () => number) {
  const usable = (table.providers.get(service) ?? []).filter((p) => p.health !== "unhealthy");
  const rank = (p: Provider) => (p.health === "healthy" ? 0 : 10) + p.tier;
  const best = Math.min(...usable.map(rank));
  const top = usable.filter((p) => rank(p) === best);
  return top[Math.floor(random() * top.length)];
}

/** The agents' endpoints: direct mode's register, heartbeat, unregister and find; leader mode's report. */
function agentRoutes(app: Hono, parts: Parts): void {
  const { settings, reg, clock, nonces } = parts;
  const limit = bodyLimit({
    maxSize: settings.maxBodyBytes,
    onError: (c) =>
      c.json({ error: `Request body is larger than ${settings.maxBodyBytes} bytes` }, 413),
  });
  /** Admits, reads and verifies an agent request, then parses its body (or answers why not). */
  const agentBody = async <T>(c: Context, guard: Guard, schema: z.ZodType<T>) => {
    parts.prune(clock.now(), null);
    const got = await agentRequest(c, settings, guard, nonces, clock.now(), parts.clientAddress);
    if ("response" in got) return got;
    const body = parseJson(got.bytes, schema);
    return "response" in body ? body : { data: body.data, sender: got.sender };
  };

  app.post("/api/worker/register", limit, async (c) => {
    const got = await agentBody(c, "worker", RegisterBodySchema);
    if ("response" in got) return got.response;
    return c.json(await register(reg, got.data, got.sender));
  });

  app.post("/api/worker/heartbeat", limit, async (c) => {
    const got = await agentBody(c, "worker", HeartbeatBodySchema);
    if ("response" in got) return got.response;
    const answer = await heartbeat(reg, got.data, got.sender);
    return answer ? c.json(answer) : c.json({ error: "Worker not found" }, 404);
  });

  app.delete("/api/worker/unregister/:id", limit, async (c) => {
    const got = await agentRequest(c, settings, "worker", nonces, clock.now(), parts.clientAddress);
    if ("response" in got) return got.response;
    const id = WorkerIdSchema.safeParse(c.req.param("id"));
    if (!id.success) return c.json({ error: "Invalid worker id", details: issues(id.error) }, 400);
    const answer = await unregister(reg, id.data, got.sender);
    return answer ? c.json(answer) : c.json({ error: "Worker not found" }, 404);
  });

  // The old agents' lookup: a healthy provider of a service, as `{"worker_url": ...}`.
  app.get("/api/worker/find/:service", async (c) => {
    const level = await authorize(c, settings, "worker");
    if (typeof level !== "string") return level;
    const name = ServiceNameSchema.safeParse(c.req.param("service"));
    if (!name.success) {
      return c.json({ error: "Invalid service name", details: issues(name.error) }, 400);
    }
    const table = await reg.table();
    const pick = findProvider(table, name.data, parts.random);
    if (!pick) {
      return c.json(
        {
          error: `No healthy worker provides '${name.data}'`,
          available_services: availableServices(table),
        },
        404,
      );
    }
    return c.json({
      worker_url: pick.url,
      worker_id: pick.worker_id,
      name: pick.name ?? null,
      service: name.data,
      tier: pick.tier,
    } satisfies z.input<typeof FindAnswerSchema>);
  });

  app.post("/api/cluster/heartbeat", limit, async (c) => {
    const got = await agentBody(c, "cluster", ClusterReportSchema);
    if ("response" in got) return got.response;
    return c.json(await clusterHeartbeat(reg, got.data, got.sender));
  });

  // An agent checks its cluster token here before it offers to lead its mesh (no write).
  app.get("/api/cluster/auth", async (c) => {
    const level = await authorize(c, settings, "cluster");
    if (typeof level !== "string") return level;
    return c.json({ status: "ok" } satisfies z.input<typeof OkAnswerSchema>);
  });
}

/**
 * The admin API under `/api/admin` (its views are built by the pure functions beside the
 * metrics), the dashboard at `/admin`, and `/metrics` in Prometheus text format; all behind the
 * admin guard.
 */
function adminRoutes(app: Hono, parts: Parts): void {
  const { settings, router, live, routing } = parts;
  const admin = new Hono();
  admin.use("*", async (c, next) => {
    const level = await authorize(c, settings, "admin");
    if (typeof level !== "string") return level;
    await next();
  });
  admin.get("/workers", async (c) => {
    const { table } = await routing(c);
    c.header("x-rollcall-source", table.source);
    return c.json(table.workers satisfies z.input<typeof WorkersAnswerSchema>);
  });
  admin.get("/services", async (c) => {
    const { table, now } = await routing(c);
    c.header("x-rollcall-source", table.source);
    return c.json(servicesView(table, router.routes, now));
  });
  admin.get("/breakers", async (c) => {
    const { table, now } = await routing(c);
    return c.json(breakersView(table, router.routes, now));
  });
  admin.get("/metrics", async (c) => {
    const { table, now } = await routing(c);
    return c.json({
      source: table.source,
      generated_at: new Date(now).toISOString(),
      window_s: settings.metricsWindowMs / 1000,
      services: metricsOf(router.routes, now),
      scaling_webhook: settings.scalingWebhook ? { ...parts.webhook } : null,
      live_views: Object.fromEntries(
        table.clusters.map((cl) => [
          cl.cluster,
          { source: cl.source, ...live?.status(cl.cluster) },
        ]),
      ),
    });
  });
  admin.get("/stats", async (c) => c.json(statsView((await routing(c)).table, parts.budget())));
  admin.get("/leader", async (c) => {
    const { table } = await routing(c);
    return c.json({ clusters: table.clusters } satisfies z.input<typeof LeaderAnswerSchema>);
  });
  admin.get("/budget", (c) => c.json(parts.budget()));
  admin.post("/clusters/forget", smallBody, async (c) => {
    const got = await adminBody(c, ForgetClusterSchema);
    if ("response" in got) return got.response;
    const { cluster } = got.data;
    const done = await forgetCluster(parts.reg, cluster);
    if (done === null) {
      const message = `This coordinator keeps no cluster '${cluster}'`;
      return c.json({ error: "No such cluster", message }, 404);
    }
    const now = parts.reg.clock.now();
    parts.watch.record(now, "action", `Operator forgot cluster ${cluster}`);
    console.log(
      JSON.stringify({
        audit: "cluster_forget",
        cluster,
        members: done.members,
        client: clientOf(parts.clientAddress, incomingOf(c)) ?? null,
        at: new Date(now).toISOString(),
      }),
    );
    return c.json({ status: "ok", action: "cluster_forget", cluster, ...done });
  });
  mountDashboard(app, admin, parts);
  app.route("/api/admin", admin);

  app.get("/metrics", async (c) => {
    const level = await authorize(c, settings, "admin");
    if (typeof level !== "string") return level;
    const { now } = await routing(c);
    return c.body(prometheusText(metricsOf(router.routes, now)), 200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
    });
  });
}

/** Builds a coordinator from settings and collaborators. */
export function createCoordinator(
  init: CoordinatorInit,
  components: CoordinatorComponents,
): Coordinator {
  const settings = resolveSettings(init);
  const parts = coordinatorParts(settings, components);
  const { reg } = parts;
  const app = new Hono();
  frontMiddleware(app, parts);
  publicRoutes(app, parts);
  agentRoutes(app, parts);
  adminRoutes(app, parts);

  /** Service paths and aliases straight to the proxy (no hono routing or context); the rest to the app. */
  const serve = (request: Request, env?: unknown, exec?: unknown): Promise<Response> | Response => {
    const target = proxied(request, parts.aliases);
    if (target === null) return app.fetch(request, env, exec as never);
    return proxyEntry(
      parts,
      { request, env, exec: (exec as WaitUntil | undefined) ?? null },
      target,
    );
  };

  let timers: ReturnType<typeof setInterval>[] = [];
  const coordinator: Coordinator = {
    app,
    fetch: serve,
    settings,
    store: components.store,
    flush: () => reg.flushPending(),
    table: () => reg.table(),
    budget: parts.budget,
    tick: () => void parts.routing(null).catch(() => {}),
    allowsUpstream: (host, address) => resolvedAllowed(host, address, settings.upstreamAllow),
    start() {
      if (timers.length > 0) return;
      timers = [
        setInterval(() => void coordinator.flush().catch(() => 0), FLUSH_EVERY_MS),
        setInterval(() => coordinator.tick(), TICK_EVERY_MS),
      ];
    },
    stop() {
      for (const timer of timers) clearInterval(timer);
      timers = [];
    },
  };
  return coordinator;
}

//#endregion

//#region Default export
// Cloudflare Workers (`fetch(req, env, ctx)`) and `bun coordinator.ts`

let workerInstance: Coordinator | null = null;

function envRecord(bindings: unknown): Record<string, unknown> {
  const processEnv =
    (globalThis as { process?: { env?: Record<string, unknown> } }).process?.env ?? {};
  return { ...processEnv, ...(bindings && typeof bindings === "object" ? bindings : {}) };
}

/** The client's address on Workers: CF-Connecting-IP, which Cloudflare sets itself. */
export const workersClientAddress: ClientAddress = (request) =>
  request.headers.get("cf-connecting-ip");

/** The client's address on Bun: its server (the second argument of `fetch`) saw the socket. */
export const bunClientAddress: ClientAddress = (request, server) =>
  (server as { requestIP(r: Request): { address?: string } | null }).requestIP(request)?.address;

/**
 * The coordinator for a Workers isolate (or `bun coordinator.ts`): settings from env/bindings,
 * the `ROLLCALL_KV` binding as store when present, memory otherwise (reported by /health).
 */
export function coordinatorFromEnv(
  bindings: unknown,
  clientAddress: ClientAddress = workersClientAddress,
): Coordinator {
  // One coordinator per isolate: the bindings of an isolate do not change between requests.
  if (workerInstance) return workerInstance;
  const vars = envRecord(bindings);
  const kv = vars.ROLLCALL_KV as KvNamespaceLike | undefined;
  const store = kv && typeof kv.get === "function" ? cloudflareKvStore(kv) : memoryStore();
  const coordinator = createCoordinator(configFromEnv(vars), { store, clientAddress });
  workerInstance = coordinator;
  return coordinator;
}

export default {
  fetch(request: Request, env?: unknown, ctx?: unknown): Response | Promise<Response> {
    let coordinator: Coordinator;
    try {
      // Workers hands its bindings and an ExecutionContext; `bun coordinator.ts` hands Bun's
      // server instead (and no context): no bindings then, and Bun tells the client's address.
      coordinator =
        ctx === undefined
          ? coordinatorFromEnv(undefined, bunClientAddress)
          : coordinatorFromEnv(env, workersClientAddress);
    } catch (err) {
      const message =
        err instanceof CoordinatorConfigError ? err.message : "Coordinator failed to start";
      return json({ error: "Coordinator misconfigured", message }, 500);
    }
    return coordinator.fetch(request, env, ctx);
  },
};

//#endregion
