/**
 * rollcall coordinator: the whole coordinator in one file.
 *
 * A hono app on Web-standard Request/Response. It keeps the registry of workers (direct mode:
 * one record per worker; leader mode: one document per cluster), spends store writes within a
 * daily hard cap, answers the admin API and routes `/api/service/<name>/<rest>` to a healthy
 * worker with failover. It imports only `hono` and `zod`; runtime handles (a KV binding, a
 * Deno.Kv, a file system) are handed in by the starters in `scripts/`.
 *
 * Sections: configuration, store (interface and drivers), wire schemas, pure registry logic,
 * write budget, registry (per-isolate state), routing and proxy, security, app, default export.
 */
import { type Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { cors } from "hono/cors";
import { z } from "zod";

/** Version reported by `/health`. */
export const COORDINATOR_VERSION = "0.1.0";

// ============================================================================================
// Configuration
// ============================================================================================

/** Settings of a coordinator; every field has a safe local default. */
export interface CoordinatorInit {
  /** Bearer token agents send (register, heartbeat, cluster heartbeat). None: agents are open. */
  clusterToken?: string | null;
  /** Bearer token for `/api/admin/*`. None: admin endpoints are open. */
  adminToken?: string | null;
  /** Admit direct-mode workers that send no token at all (workers of the old kind). */
  allowLegacyWorkers?: boolean;
  /** Hard cap on store writes (and deletes) per UTC day. Default 1,000. */
  writeCap?: number;
  /** Leader mode: a cluster document is rewritten at least this often. Default 48 min. */
  keepaliveMs?: number;
  /** Leader mode: members show as unknown this long after a missed keepalive. Default 10 min. */
  leaseGraceMs?: number;
  /** Direct mode: a heartbeat rewrites a record older than this. Default 5 min. */
  directWriteIntervalMs?: number;
  /** Direct mode: the heartbeat interval told to workers, in seconds. Default 30. */
  heartbeatIntervalS?: number;
  /** Time the store may take to show a write everywhere (Workers KV: 60 s). Default 60 s. */
  consistencyGraceMs?: number;
  /** Direct-mode records expire from the store after this many seconds. Default 7 days. */
  recordTtlS?: number;
  /** Store documents cached per isolate are re-read after this. Default 60 s. */
  tableTtlMs?: number;
  /** The list of registry keys cached per isolate is re-listed after this. Default 5 min. */
  listTtlMs?: number;
  /** Old paths routed to a service, e.g. `{"/clients": "upload", "/uploads/": "upload"}`. */
  aliases?: Record<string, string>;
  /** Time an upstream has to answer with headers before failover. Default 30 s. */
  proxyTimeoutMs?: number;
  /** Most providers tried for one request. Default 10. */
  maxAttempts?: number;
  /** Request bodies up to this size are kept so a failed attempt can be replayed. Default 1 MiB. */
  replayBufferBytes?: number;
  /** Largest JSON body accepted by the agent endpoints. Default 256 KiB. */
  maxBodyBytes?: number;
  /** `Access-Control-Allow-Origin`. Default `*`. */
  corsOrigin?: string;
}

/** Resolved settings: every default applied. */
export interface Settings {
  clusterToken: string | null;
  adminToken: string | null;
  allowLegacyWorkers: boolean;
  writeCap: number;
  keepaliveMs: number;
  leaseGraceMs: number;
  directWriteIntervalMs: number;
  heartbeatIntervalS: number;
  consistencyGraceMs: number;
  recordTtlS: number;
  tableTtlMs: number;
  listTtlMs: number;
  aliases: Record<string, string>;
  proxyTimeoutMs: number;
  maxAttempts: number;
  replayBufferBytes: number;
  maxBodyBytes: number;
  corsOrigin: string;
}

/** Thrown when configuration from env/bindings is invalid. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

const MINUTE = 60_000;

/** Applies defaults to an init object. */
export function resolveSettings(init: CoordinatorInit = {}): Settings {
  const aliases = init.aliases ?? {};
  for (const [prefix, service] of Object.entries(aliases)) {
    if (!prefix.startsWith("/") || prefix.startsWith("/api/") || prefix === "/health") {
      throw new ConfigError(`Alias path must start with / and not shadow the API: ${prefix}`);
    }
    if (!SERVICE_NAME_PATTERN.test(service)) {
      throw new ConfigError(`Alias target is not a valid service name: ${service}`);
    }
  }
  return {
    clusterToken: init.clusterToken || null,
    adminToken: init.adminToken || null,
    allowLegacyWorkers: init.allowLegacyWorkers ?? false,
    writeCap: init.writeCap ?? 1000,
    keepaliveMs: init.keepaliveMs ?? 48 * MINUTE,
    leaseGraceMs: init.leaseGraceMs ?? 10 * MINUTE,
    directWriteIntervalMs: init.directWriteIntervalMs ?? 5 * MINUTE,
    heartbeatIntervalS: init.heartbeatIntervalS ?? 30,
    consistencyGraceMs: init.consistencyGraceMs ?? MINUTE,
    recordTtlS: init.recordTtlS ?? 7 * 24 * 3600,
    tableTtlMs: init.tableTtlMs ?? MINUTE,
    listTtlMs: init.listTtlMs ?? 5 * MINUTE,
    aliases,
    proxyTimeoutMs: init.proxyTimeoutMs ?? 30_000,
    maxAttempts: init.maxAttempts ?? 10,
    replayBufferBytes: init.replayBufferBytes ?? 1024 * 1024,
    maxBodyBytes: init.maxBodyBytes ?? 256 * 1024,
    corsOrigin: init.corsOrigin ?? "*",
  };
}

/** Reads settings from env vars / Workers bindings (`ROLLCALL_*`); throws ConfigError if bad. */
export function configFromEnv(env: Record<string, unknown>): CoordinatorInit {
  const str = (name: string): string | undefined => {
    const v = env[name];
    return typeof v === "string" && v.trim() !== "" ? v.trim() : undefined;
  };
  const num = (name: string, scale = 1): number | undefined => {
    const v = str(name);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new ConfigError(`${name} must be a positive number`);
    return n * scale;
  };
  const bool = (name: string): boolean | undefined => {
    const v = str(name)?.toLowerCase();
    if (v === undefined) return undefined;
    if (["1", "true", "yes", "on"].includes(v)) return true;
    if (["0", "false", "no", "off"].includes(v)) return false;
    throw new ConfigError(`${name} must be true or false`);
  };
  let aliases: Record<string, string> | undefined;
  const rawAliases = str("ROLLCALL_ALIASES");
  if (rawAliases !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(rawAliases);
    } catch {
      throw new ConfigError("ROLLCALL_ALIASES must be a JSON object of path to service name");
    }
    const result = z.record(z.string(), z.string()).safeParse(parsed);
    if (!result.success) {
      throw new ConfigError("ROLLCALL_ALIASES must be a JSON object of path to service name");
    }
    aliases = result.data;
  }
  const init: CoordinatorInit = {
    clusterToken: str("ROLLCALL_CLUSTER_TOKEN") ?? null,
    adminToken: str("ROLLCALL_ADMIN_TOKEN") ?? null,
    allowLegacyWorkers: bool("ROLLCALL_ALLOW_LEGACY_WORKERS"),
    writeCap: num("ROLLCALL_WRITE_CAP"),
    keepaliveMs: num("ROLLCALL_KEEPALIVE_S", 1000),
    leaseGraceMs: num("ROLLCALL_LEASE_GRACE_S", 1000),
    directWriteIntervalMs: num("ROLLCALL_DIRECT_WRITE_INTERVAL_S", 1000),
    heartbeatIntervalS: num("ROLLCALL_HEARTBEAT_INTERVAL_S"),
    tableTtlMs: num("ROLLCALL_TABLE_TTL_S", 1000),
    listTtlMs: num("ROLLCALL_LIST_TTL_S", 1000),
    recordTtlS: num("ROLLCALL_RECORD_TTL_S"),
    proxyTimeoutMs: num("ROLLCALL_PROXY_TIMEOUT_MS"),
    maxAttempts: num("ROLLCALL_MAX_ATTEMPTS"),
    maxBodyBytes: num("ROLLCALL_MAX_BODY_BYTES"),
    corsOrigin: str("ROLLCALL_CORS_ORIGIN"),
    aliases,
  };
  resolveSettings(init); // validates aliases
  return init;
}

// ============================================================================================
// Store: one small interface, one driver per backend
// ============================================================================================

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

/** A source of time (ms since the epoch). */
export interface ClockLike {
  now(): number;
}

const systemNow: ClockLike = { now: () => Date.now() };

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
  const set = async (key: string, value: string, options?: SetOptions): Promise<void> => {
    const map = await load();
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
      if (map.delete(key)) await save(map);
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
  const wrap = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw new StoreError(`Workers KV ${what} failed: ${(err as Error).message}`);
    }
  };
  return {
    kind: "cloudflare-kv",
    persistent: true,
    get: (key) => wrap("get", () => kv.get(key)),
    set: (key, value, options) =>
      wrap("put", () =>
        kv.put(
          key,
          value,
          options?.ttlSeconds ? { expirationTtl: Math.max(60, Math.ceil(options.ttlSeconds)) } : {},
        ),
      ),
    delete: (key) => wrap("delete", () => kv.delete(key)),
    list: (prefix) =>
      wrap("list", async () => {
        const keys: string[] = [];
        let cursor: string | undefined;
        for (;;) {
          const page = await kv.list(cursor ? { prefix, cursor } : { prefix });
          keys.push(...page.keys.map((k) => k.name));
          if (page.list_complete || !page.cursor) break;
          cursor = page.cursor;
        }
        return keys.sort();
      }),
  };
}

/** The parts of `Deno.Kv` the store uses. */
export interface DenoKvLike {
  get(key: unknown[]): Promise<{ value: unknown; versionstamp: string | null }>;
  list(selector: { prefix: unknown[] }): AsyncIterable<{ key: unknown[]; value: unknown }>;
  atomic(): DenoAtomicLike;
}

/** The parts of `Deno.AtomicOperation` the store uses. */
export interface DenoAtomicLike {
  check(...checks: { key: unknown[]; versionstamp: string | null }[]): DenoAtomicLike;
  set(key: unknown[], value: unknown, options?: { expireIn?: number }): DenoAtomicLike;
  delete(key: unknown[]): DenoAtomicLike;
  commit(): Promise<{ ok: boolean }>;
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
  const wrap = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(`Deno KV ${what} failed: ${(err as Error).message}`);
    }
  };
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
    get: (key) => wrap("get", async () => (await read(key)).value),
    set: (key, value, options) =>
      wrap("set", async () => void (await write(key, value, options, null))),
    delete: (key) => wrap("delete", async () => void (await write(key, null, undefined, null))),
    list: (prefix) =>
      wrap("list", async () => {
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
      }),
    compareAndSet: (key, expected, value, options) =>
      wrap("compare-and-set", async () => {
        const current = await read(key);
        if (current.value !== expected) return false;
        return write(key, value, options, current);
      }),
  };
}

// ============================================================================================
// Wire schemas (zod): every request body the coordinator accepts
// ============================================================================================

const SERVICE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$/;

/** A worker's stable ID (direct mode: any; leader mode: the libp2p PeerId). */
export const WorkerIdSchema = z
  .string()
  .regex(
    ID_PATTERN,
    "must be 1-128 letters, digits or . _ : @ + = -, starting with a letter or digit",
  );

/** A service name: 1-64 letters, digits, `.`, `_`, `-`, starting with a letter or digit. */
export const ServiceNameSchema = z
  .string()
  .regex(
    SERVICE_NAME_PATTERN,
    "must be 1-64 letters, digits or . _ -, starting with a letter or digit",
  );

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

/** An http(s) URL without credentials, query or fragment. */
export const HttpUrlSchema = z
  .string()
  .max(2048)
  .refine(isHttpUrl, "must be an http(s) URL without credentials, query or fragment");

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

/** A container / service entry of a direct-mode registration. */
export const ContainerSchema = z.object({
  name: ServiceNameSchema,
  service_url: HttpUrlSchema.nullish(),
  url: HttpUrlSchema.nullish(),
  port: z.number().int().min(1).max(65535).nullish(),
  health_endpoint: z.string().max(256).nullish(),
  version: z.string().max(64).nullish(),
  status: z.string().max(32).nullish(),
});

/** A container / service entry of a direct-mode registration. */
export type Container = z.infer<typeof ContainerSchema>;

/** `POST /api/worker/register`. */
export const RegisterBodySchema = z.object({
  worker_id: WorkerIdSchema.nullish(),
  capabilities: CapabilitiesSchema.nullish(),
  ip_address: z.string().max(255).nullish(),
  tunnel_url: HttpUrlSchema.nullish(),
  services: z
    .array(z.union([ServiceNameSchema, ContainerSchema]))
    .max(64)
    .nullish(),
  containers: z.array(ContainerSchema).max(64).nullish(),
  wants_heartbeat_leadership: z.boolean().nullish(),
});

/** `POST /api/worker/register`. */
export type RegisterBody = z.infer<typeof RegisterBodySchema>;

const StatusWord = z
  .string()
  .regex(/^[A-Za-z][A-Za-z_-]{0,31}$/, "must be a word of at most 32 letters");

/** `POST /api/worker/heartbeat`. */
export const HeartbeatBodySchema = z.object({
  worker_id: WorkerIdSchema,
  status: StatusWord.default("online"),
  current_load: z.number().nonnegative().nullish(),
  available_memory: z.number().nonnegative().nullish(),
});

/** `POST /api/worker/heartbeat`. */
export type HeartbeatBody = z.infer<typeof HeartbeatBodySchema>;

/** Status of a member in a cluster report. */
export const MemberStatusSchema = z.enum(["online", "degraded", "offline", "left"]);

/** A service of a member in a cluster report. */
export const MemberServiceSchema = z.object({
  name: ServiceNameSchema,
  url: HttpUrlSchema.nullish(),
  status: z.enum(["healthy", "unhealthy"]).default("healthy"),
  latency_ms: z.number().nonnegative().nullish(),
});

/** A member of a cluster report. */
export const ClusterMemberSchema = z.object({
  worker_id: WorkerIdSchema,
  incarnation: z.number().int().nonnegative().default(0),
  status: MemberStatusSchema,
  url: HttpUrlSchema,
  tier: z.union([z.literal(1), z.literal(2), z.literal(3)]).nullish(),
  capabilities: CapabilitiesSchema.nullish(),
  last_seen: z.number().int().nonnegative().nullish(),
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
  cluster: ServiceNameSchema.default("default"),
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
export type ClusterReport = z.infer<typeof ClusterReportSchema>;

/** `POST /api/cluster/heartbeat` (leader mode), as an agent sends it (defaults optional). */
export type ClusterReportInput = z.input<typeof ClusterReportSchema>;

/** The answer to `POST /api/cluster/heartbeat`. */
export interface ClusterHeartbeatAnswer {
  status: "ok";
  written: boolean;
  reason: WriteReason;
  writes_today: number;
  write_budget: number;
  next_keepalive_at: string;
  next_keepalive_in_s: number;
  digest: string;
}

// ============================================================================================
// Pure registry logic: digest, tiers, merge of cluster reports, write decisions, staleness
// ============================================================================================

/** 53-bit non-cryptographic hash (cyrb53) of a string's UTF-16 code units, as 14 hex digits. */
export function hash53(text: string, seed = 0): string {
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
export interface DigestMember {
  worker_id: string;
  url: string;
  status: string;
  tier?: number | null;
  services: { name: string; url?: string | null; status?: string | null }[];
}

function trimSlash(url: string): string {
  return url.endsWith("/") ? url.slice(0, -1) : url;
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
 */
export function routingDigest(members: readonly DigestMember[]): string {
  const canonical = [...members]
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
export interface StoredService {
  name: string;
  url: string | null;
  status: "healthy" | "unhealthy";
}

/** A cluster member as stored in the cluster document. */
export interface StoredMember {
  worker_id: string;
  incarnation: number;
  status: z.infer<typeof MemberStatusSchema>;
  url: string;
  tier: 1 | 2 | 3;
  capabilities: Capabilities;
  last_seen: number;
  services: StoredService[];
  /** The leader whose report this entry came from. */
  reported_by: string;
}

/** A leader's view: what it reported last. */
export interface LeaderView {
  leader_id: string;
  term: number;
  sequence: number;
  reported_at: number;
  members: string[];
}

/** Budget stamp carried inside every written document: the day's write count after it. */
export interface BudgetStamp {
  day: string;
  used: number;
}

/** The one document per cluster (leader mode). */
export interface ClusterDoc {
  kind: "cluster";
  v: 1;
  cluster: string;
  rev: number;
  written_at: number;
  budget: BudgetStamp;
  digest: string;
  leaders: Record<string, LeaderView>;
  members: Record<string, StoredMember>;
}

/** A direct-mode worker's record (one key per worker). */
export interface WorkerRecord {
  kind: "worker";
  v: 1;
  worker_id: string;
  tier: 1 | 2 | 3;
  status: string;
  capabilities: Capabilities;
  ip_address: string | null;
  tunnel_url: string | null;
  services: StoredService[];
  wants_heartbeat_leadership: boolean;
  is_heartbeat_leader: boolean;
  current_load: number | null;
  available_memory: number | null;
  registered_at: number;
  written_at: number;
  budget: BudgetStamp;
}

/** An empty cluster document. */
export function emptyClusterDoc(cluster: string): ClusterDoc {
  return {
    kind: "cluster",
    v: 1,
    cluster,
    rev: 0,
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
    incarnation: m.incarnation,
    status: m.status,
    url: trimSlash(m.url),
    tier: m.tier ?? tierOf(m.capabilities),
    capabilities: m.capabilities ?? {},
    last_seen: m.last_seen ?? now,
    services: m.services.map((s) => ({
      name: s.name,
      url: serviceUrl(m.url, s),
      status: s.status,
    })),
    reported_by: leader,
  };
}

/** Freshness order of two entries for the same member: >0 when `a` is fresher. */
export function compareFreshness(
  a: { incarnation: number; last_seen: number },
  b: { incarnation: number; last_seen: number },
): number {
  return a.incarnation !== b.incarnation
    ? a.incarnation - b.incarnation
    : a.last_seen - b.last_seen;
}

/**
 * Merges one leader's report into a cluster document (pure; returns a new document).
 *
 * Members are taken per member by freshness (incarnation, then last_seen; ties go to the newer
 * report). Members the leader stops listing are removed only by that leader's own newer report,
 * and only if the entry is still its own. Another leader's view is dropped when this report has
 * a higher term and lists that leader as a plain member, or when that view is older than
 * `leaseMs`; its members pass to this leader (its next report removes those it does not list).
 * A report from a leader that a higher-term view lists as a plain member (a deposed leader)
 * still contributes fresher members but gets no view of its own.
 */
export function mergeClusterReport(
  doc: ClusterDoc | null,
  report: ClusterReport,
  init: { now: number; leaseMs: number },
): ClusterDoc {
  const { now, leaseMs } = init;
  const base = doc ?? emptyClusterDoc(report.cluster);
  const members: Record<string, StoredMember> = { ...base.members };
  const leaders: Record<string, LeaderView> = { ...base.leaders };
  const L = report.leader_id;
  const prev = leaders[L];
  const newer =
    !prev ||
    report.term > prev.term ||
    (report.term === prev.term && report.sequence >= prev.sequence);
  const deposed = Object.values(leaders).some(
    (v) => v.leader_id !== L && v.term > report.term && v.members.includes(L),
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
  if (deposed) {
    return { ...base, members, leaders };
  }
  if (newer && prev) {
    for (const id of prev.members) {
      if (!listed.has(id) && members[id]?.reported_by === L) delete members[id];
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
  for (const other of Object.values(leaders)) {
    if (other.leader_id === L) continue;
    const supersededBy = listed.has(other.leader_id) && report.term > other.term && newer;
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
  return { ...base, members, leaders };
}

/** A key of the leader views (ID and term): a change of leadership is a change worth a write. */
export function leadersKey(doc: ClusterDoc | null): string {
  if (!doc) return "";
  return Object.values(doc.leaders)
    .map((v) => `${v.leader_id}@${v.term}`)
    .sort()
    .join(",");
}

/** Why a report did or did not cost a write. */
export type WriteReason = "changed" | "keepalive" | "unchanged" | "deferred";

/** A write decision. */
export interface WriteDecision {
  write: boolean;
  reason: WriteReason;
}

/**
 * Leader-mode write policy: write when the routing content changed or the keepalive is due
 * (with a small slack so a report sent on time counts), never past the daily cap.
 */
export function decideClusterWrite(input: {
  changed: boolean;
  lastWriteAt: number | null;
  now: number;
  keepaliveMs: number;
  writesToday: number;
  writeCap: number;
}): WriteDecision {
  const slack = Math.min(60_000, input.keepaliveMs / 10);
  const due =
    input.lastWriteAt === null || input.now >= input.lastWriteAt + input.keepaliveMs - slack;
  if (!input.changed && !due) return { write: false, reason: "unchanged" };
  if (input.writesToday >= input.writeCap) return { write: false, reason: "deferred" };
  return { write: true, reason: input.changed ? "changed" : "keepalive" };
}

/** Direct-mode policy: a heartbeat writes on a status change or when the record is old enough. */
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
export function clusterIsStale(
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
export function isRoutableStatus(status: string): boolean {
  return !UNHEALTHY_STATUSES.has(status.toLowerCase());
}

/** The UTC day (YYYY-MM-DD) of a time. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Start of the next UTC day. */
export function nextUtcDay(ms: number): number {
  const d = new Date(ms);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
}

// ============================================================================================
// Write budget: a daily hard cap, counted inside the documents written anyway
// ============================================================================================

/**
 * Counts store writes per UTC day. The count travels in every written document's `budget`
 * stamp, so a new isolate learns it from what it reads: exact in one process, approximate (it
 * may undercount) across Workers isolates that write at the same time.
 */
export class WriteBudget {
  #day = "";
  #used = 0;
  constructor(
    readonly cap: number,
    private readonly clock: ClockLike,
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

// ============================================================================================
// Registry: per-isolate state over the store (caches, pending writes, live observations)
// ============================================================================================

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
export interface WorkerView {
  worker_id: string;
  tier: 1 | 2 | 3;
  status: string;
  healthy: boolean;
  last_heartbeat: string | null;
  capabilities: Capabilities;
  services: string[];
  service_urls: Record<string, string | null>;
  tunnel_url: string | null;
  ip_address: string | null;
  is_heartbeat_leader: boolean;
  mode: "direct" | "cluster";
  cluster: string | null;
  current_load: number | null;
  available_memory: number | null;
  registered_at: string | null;
}

/** A worker that can serve one service. */
export interface Provider {
  worker_id: string;
  service: string;
  url: string;
  tier: 1 | 2 | 3;
  health: "healthy" | "degraded" | "unhealthy";
}

/** The routing table built from the store (cached per isolate). */
export interface RoutingTable {
  builtAt: number;
  workers: WorkerView[];
  providers: Map<string, Provider[]>;
  clusters: ClusterSummary[];
}

/** A cluster's leader and lease, as the admin API shows them. */
export interface ClusterSummary {
  cluster: string;
  leader_id: string | null;
  term: number | null;
  leaders: LeaderView[];
  members: number;
  stale: boolean;
  last_write_at: string | null;
  last_report_at: string | null;
  next_keepalive_at: string | null;
  digest: string;
  pending_write: boolean;
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
  current_load: number | null;
  available_memory: number | null;
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

/** Per-isolate registry state over a store. */
class Registry {
  readonly budget: WriteBudget;
  readonly lock = new KeyedMutex();
  #docs = new Map<string, { doc: Doc | null; at: number }>();
  #keys: { keys: Set<string>; at: number } | null = null;
  #pending = new Map<string, Doc | null>();
  #lastWriteAt = new Map<string, number>();
  #live = new Map<string, LiveWorker>();
  #clusters = new Map<string, LiveCluster>();
  #table: RoutingTable | null = null;

  constructor(
    readonly settings: Settings,
    readonly store: Store,
    readonly clock: ClockLike,
  ) {
    this.budget = new WriteBudget(settings.writeCap, clock);
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  invalidate(): void {
    this.#table = null;
  }

  /** Reads a document (from the per-isolate cache when fresh enough, or `fresh` to bypass it). */
  async read(key: string, fresh = false): Promise<Doc | null> {
    if (this.#pending.has(key)) return this.#pending.get(key) ?? null;
    const now = this.clock.now();
    const cached = this.#docs.get(key);
    if (!fresh && cached && now - cached.at < this.settings.tableTtlMs) return cached.doc;
    const doc = await this.#get(key);
    this.#remember(key, doc, now);
    return doc;
  }

  async #get(key: string): Promise<Doc | null> {
    let raw: string | null;
    try {
      raw = await this.store.get(key);
    } catch (err) {
      throw err instanceof StoreError
        ? err
        : new StoreError(`Store get failed: ${(err as Error).message}`);
    }
    const doc = parseDoc(raw);
    this.budget.observe(doc?.budget);
    return doc;
  }

  #remember(key: string, doc: Doc | null, at: number): void {
    const cached = this.#docs.get(key)?.doc;
    // Workers KV may serve an older value for up to 60 s after our own write: keep the newer.
    if (cached && doc && doc.written_at < cached.written_at) return;
    this.#docs.set(key, { doc, at });
    if (this.#keys) {
      if (doc) this.#keys.keys.add(key);
      else this.#keys.keys.delete(key);
    }
    this.invalidate();
  }

  /** Whether a write to `key` may happen now: within the budget (and 1 write/s per key on Workers KV). */
  #mayWrite(key: string): boolean {
    if (!this.budget.available) return false;
    if (this.store.kind !== "cloudflare-kv") return true;
    const last = this.#lastWriteAt.get(key);
    return last === undefined || this.clock.now() - last >= 1000;
  }

  /** Writes a document, or keeps it pending when the budget says no. Returns whether it wrote. */
  async write(key: string, doc: Doc, expectedRaw?: string | null): Promise<boolean | "conflict"> {
    if (!this.#mayWrite(key)) {
      this.#pending.set(key, doc);
      this.invalidate();
      return false;
    }
    const now = this.clock.now();
    const stamped = { ...doc, written_at: now, budget: this.budget.spend() } as Doc;
    if (stamped.kind === "cluster") stamped.rev = doc.kind === "cluster" ? doc.rev + 1 : 1;
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
      this.#pending.set(key, doc);
      this.invalidate();
      throw err instanceof StoreError
        ? err
        : new StoreError(`Store write failed: ${(err as Error).message}`);
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
    if (!this.#mayWrite(key)) {
      this.#pending.set(key, null);
      this.invalidate();
      return false;
    }
    this.budget.spend();
    try {
      await this.store.delete(key);
    } catch (err) {
      this.#pending.set(key, null);
      throw err instanceof StoreError
        ? err
        : new StoreError(`Store delete failed: ${(err as Error).message}`);
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
      if (!this.#mayWrite(key)) continue;
      await this.lock.run(key, async () => {
        if (!this.#pending.has(key) || this.#pending.get(key) !== doc) return;
        this.#pending.delete(key);
        const ok = doc === null ? await this.remove(key) : await this.write(key, doc);
        if (ok === true) flushed++;
      });
    }
    return flushed;
  }

  /** The newest version of a document this isolate wrote or read (no store access). */
  lastKnown(key: string): Doc | null {
    return this.#docs.get(key)?.doc ?? null;
  }

  hasPending(key: string): boolean {
    return this.#pending.has(key);
  }

  touchWorker(id: string, live: LiveWorker): void {
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

  /** The routing table: cached per isolate, rebuilt after own writes or when the TTLs lapse. */
  async table(): Promise<RoutingTable> {
    const now = this.clock.now();
    if (this.#table && now - this.#table.builtAt < this.settings.tableTtlMs) return this.#table;
    if (!this.#keys || now - this.#keys.at >= this.settings.listTtlMs) {
      let keys: string[];
      try {
        keys = await this.store.list(REGISTRY_PREFIX);
      } catch (err) {
        throw err instanceof StoreError
          ? err
          : new StoreError(`Store list failed: ${(err as Error).message}`);
      }
      const set = new Set(keys);
      for (const [key, entry] of this.#docs) if (entry.doc) set.add(key);
      this.#keys = { keys: set, at: now };
    }
    const keys = new Set([...this.#keys.keys, ...this.#pending.keys()]);
    const docs = await Promise.all([...keys].map((key) => this.read(key)));
    this.#table = this.#build(
      docs.filter((d): d is Doc => d !== null),
      now,
    );
    return this.#table;
  }

  #build(docs: Doc[], now: number): RoutingTable {
    const views = new Map<string, WorkerView>();
    const clusters: ClusterSummary[] = [];
    const staleAfter = directStaleAfterMs(this.settings);
    for (const doc of docs) {
      if (doc.kind !== "worker") continue;
      const live = this.#live.get(doc.worker_id);
      const seen = Math.max(doc.written_at, live?.at ?? 0);
      const stale = now - seen > staleAfter;
      const status = stale ? "offline" : doc.status;
      views.set(doc.worker_id, {
        worker_id: doc.worker_id,
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
    const serviceHealth = new Map<string, Map<string, StoredService["status"]>>();
    for (const stored of docs) {
      if (stored.kind !== "cluster") continue;
      const live = this.#clusters.get(stored.cluster);
      const doc = live && live.doc.rev >= stored.rev ? live.doc : stored;
      const lastAlive = Math.max(stored.written_at, live?.reportAt ?? 0);
      const stale = clusterIsStale(lastAlive, now, this.settings);
      const leader = leaderOf(doc);
      for (const m of Object.values(doc.members)) {
        const status = stale ? "unknown" : m.status;
        views.set(m.worker_id, {
          worker_id: m.worker_id,
          tier: m.tier,
          status,
          healthy: isRoutableStatus(status),
          last_heartbeat: new Date(m.last_seen).toISOString(),
          capabilities: m.capabilities,
          services: m.services.map((s) => s.name),
          service_urls: Object.fromEntries(m.services.map((s) => [s.name, s.url])),
          tunnel_url: m.url,
          ip_address: null,
          is_heartbeat_leader: leader?.leader_id === m.worker_id,
          mode: "cluster",
          cluster: doc.cluster,
          current_load: null,
          available_memory: null,
          registered_at: null,
        });
        serviceHealth.set(m.worker_id, new Map(m.services.map((s) => [s.name, s.status])));
      }
      clusters.push({
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
      });
    }
    const providers = new Map<string, Provider[]>();
    for (const view of views.values()) {
      for (const name of view.services) {
        const url = view.service_urls[name] ?? view.tunnel_url;
        const serviceStatus = serviceHealth.get(view.worker_id)?.get(name) ?? "healthy";
        let health: Provider["health"] = "unhealthy";
        if (url && view.healthy && serviceStatus === "healthy") {
          health = view.status === "degraded" ? "degraded" : "healthy";
        }
        const list = providers.get(name) ?? [];
        list.push({
          worker_id: view.worker_id,
          service: name,
          url: url ?? "",
          tier: view.tier,
          health,
        });
        providers.set(name, list);
      }
    }
    return { builtAt: now, workers: [...views.values()], providers, clusters };
  }
}

// ============================================================================================
// Registry operations: register / heartbeat / unregister (direct), cluster heartbeat (leader)
// ============================================================================================

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

async function register(reg: Registry, body: RegisterBody) {
  const id = body.worker_id ?? `worker-${crypto.randomUUID().slice(0, 13).replace("-", "")}`;
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
  return reg.lock.run(key, async () => {
    const existing = (await reg.read(key, true)) as WorkerRecord | null;
    const capabilities = body.capabilities ?? {};
    const record: WorkerRecord = {
      kind: "worker",
      v: 1,
      worker_id: id,
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
    const fresh =
      existing &&
      !reg.hasPending(key) &&
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
      written: written === true,
    };
  });
}

async function heartbeat(reg: Registry, body: HeartbeatBody) {
  const key = WORKER_PREFIX + body.worker_id;
  return reg.lock.run(key, async () => {
    const record = (await reg.read(key)) as WorkerRecord | null;
    if (record?.kind !== "worker") return null;
    const now = reg.clock.now();
    const live = {
      at: now,
      current_load: body.current_load ?? null,
      available_memory: body.available_memory ?? null,
    };
    reg.touchWorker(body.worker_id, live);
    const due = directHeartbeatDue({
      statusChanged: record.status !== body.status,
      writtenAt: record.written_at,
      now,
      writeIntervalMs: reg.settings.directWriteIntervalMs,
    });
    if (!due) return { status: "ok", written: false };
    const next: WorkerRecord = {
      ...record,
      status: body.status,
      current_load: live.current_load,
      available_memory: live.available_memory,
    };
    const written = await reg.write(key, next);
    return { status: "ok", written: written === true };
  });
}

async function unregister(reg: Registry, id: string) {
  const key = WORKER_PREFIX + id;
  return reg.lock.run(key, async () => {
    const record = await reg.read(key, true);
    if (!record) return null;
    const written = await reg.remove(key);
    return { status: "ok", worker_id: id, removed: true, written };
  });
}

async function clusterHeartbeat(
  reg: Registry,
  report: ClusterReport,
): Promise<ClusterHeartbeatAnswer> {
  const key = CLUSTER_PREFIX + report.cluster;
  const { settings, clock } = reg;
  return reg.lock.run(key, async () => {
    for (let attempt = 0; ; attempt++) {
      const now = clock.now();
      let raw: string | null;
      try {
        raw = await reg.store.get(key);
      } catch (err) {
        throw err instanceof StoreError
          ? err
          : new StoreError(`Store get failed: ${(err as Error).message}`);
      }
      const parsed = parseDoc(raw);
      const read = parsed?.kind === "cluster" ? parsed : null;
      reg.budget.observe(read?.budget);
      // Workers KV may serve an older value for up to 60 s after this isolate's own write:
      // judge "changed" and "keepalive due" against the newest version known.
      const known = reg.lastKnown(key);
      const stored = known?.kind === "cluster" && (!read || known.rev > read.rev) ? known : read;
      const live = reg.liveCluster(report.cluster);
      const pending = reg.hasPending(key) ? ((await reg.read(key)) as ClusterDoc | null) : null;
      let base = stored;
      if (live && (!stored || live.doc.rev >= stored.rev)) base = live.doc;
      if (pending && (!base || pending.rev >= base.rev)) base = pending;
      const merged = mergeClusterReport(base, report, {
        now,
        leaseMs: settings.keepaliveMs + settings.leaseGraceMs,
      });
      merged.digest = routingDigest(Object.values(merged.members));
      if (stored) merged.rev = Math.max(merged.rev, stored.rev);
      const changed =
        !stored || merged.digest !== stored.digest || leadersKey(merged) !== leadersKey(stored);
      const decision = decideClusterWrite({
        changed,
        lastWriteAt: stored?.written_at ?? null,
        now,
        keepaliveMs: settings.keepaliveMs,
        writesToday: reg.budget.used,
        writeCap: settings.writeCap,
      });
      reg.setLiveCluster(report.cluster, { doc: merged, reportAt: now });
      let written = false;
      let reason = decision.reason;
      if (decision.write) {
        let result = await reg.write(key, merged, stored === read ? raw : undefined);
        if (result === "conflict") {
          if (attempt < 4) continue; // another writer won: merge again on what it wrote
          result = await reg.write(key, merged);
        }
        written = result === true;
        if (!written) reason = "deferred";
      } else if (decision.reason === "deferred") {
        await reg.write(key, merged); // over budget: kept pending, written when allowed
      }
      const lastWrite = written ? now : (stored?.written_at ?? now);
      const nextAt =
        reason === "deferred"
          ? Math.max(now + 1000, reg.budget.available ? now + 1000 : nextUtcDay(now))
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

// ============================================================================================
// Routing and proxy: pick providers, forward with failover
// ============================================================================================

const HOP_BY_HOP = [
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
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);

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

/** The upstream URL for `rest` below a provider's service URL; throws UnsafePathError if it would leave it. */
export function upstreamUrl(base: string, rest: string | null, search: string): string {
  if (rest !== null) assertSafeRest(rest);
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
export interface ServiceTarget {
  service: string;
  rest: string | null;
}

/** Parses `/api/service/<name>[/<rest>]` from a raw pathname; throws UnsafePathError on a bad name. */
export function parseServicePath(pathname: string): ServiceTarget | null {
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

/** Matches a path against the configured aliases: the service, and the whole path forwarded. */
export function matchAlias(
  pathname: string,
  aliases: Record<string, string>,
): ServiceTarget | null {
  let best: [string, string] | null = null;
  for (const [prefix, service] of Object.entries(aliases)) {
    const hit = prefix.endsWith("/")
      ? pathname.startsWith(prefix) || pathname === prefix.slice(0, -1)
      : pathname === prefix || pathname.startsWith(`${prefix}/`);
    if (hit && (!best || prefix.length > best[0].length)) best = [prefix, service];
  }
  return best ? { service: best[1], rest: pathname.slice(1) } : null;
}

/**
 * Orders a service's providers for one request: healthy before degraded, lower tier first,
 * round-robin within a tier. Unhealthy providers are left out. (Issue 5 swaps this for a
 * least-request / EWMA picker with outlier ejection.)
 */
export function orderProviders(providers: readonly Provider[], turn: number): Provider[] {
  const out: Provider[] = [];
  for (const health of ["healthy", "degraded"] as const) {
    const usable = providers.filter((p) => p.health === health);
    for (const tier of [1, 2, 3] as const) {
      const group = usable
        .filter((p) => p.tier === tier)
        .sort((a, b) => (a.worker_id < b.worker_id ? -1 : 1));
      if (group.length === 0) continue;
      const k = turn % group.length;
      out.push(...group.slice(k), ...group.slice(0, k));
    }
  }
  return out;
}

/** Whether a fetch error means nothing reached the upstream (connection refused, DNS failure). */
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
  return /ECONNREFUSED|ConnectionRefused|Connection refused|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|Unable to connect|dns error|tcp connect error|connect\)/i.test(
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

  async #next(): Promise<Uint8Array | null> {
    if (this.#done) return null;
    this.#reading ??= this.#reader.read().then(({ done, value }) => {
      this.#reading = null;
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
}

function clientAddress(c: Context): string | undefined {
  const header = c.req.header("cf-connecting-ip");
  if (header) return header;
  const env = c.env as Record<string, unknown> | undefined;
  try {
    const incoming = (env?.incoming as { socket?: { remoteAddress?: string } } | undefined)?.socket;
    if (incoming?.remoteAddress) return incoming.remoteAddress; // @hono/node-server
    const requestIP = env?.requestIP as ((r: Request) => { address?: string } | null) | undefined;
    if (typeof requestIP === "function") return requestIP.call(env, c.req.raw)?.address; // Bun
    const remote = env?.remoteAddr as { hostname?: string } | undefined;
    if (remote?.hostname) return remote.hostname; // Deno.serve's info
  } catch {
    // No address known: X-Forwarded-For keeps what it had.
  }
  return undefined;
}

function forwardHeaders(c: Context, url: URL): Headers {
  const headers = new Headers(c.req.raw.headers);
  const named = headers.get("connection");
  if (named) for (const name of named.split(",")) headers.delete(name.trim());
  for (const name of HOP_BY_HOP) headers.delete(name);
  headers.delete("host");
  headers.delete("accept-encoding"); // let the runtime's fetch ask for what it can decode
  const client = clientAddress(c);
  const prior = headers.get("x-forwarded-for");
  if (client) headers.set("x-forwarded-for", prior ? `${prior}, ${client}` : client);
  headers.set("x-forwarded-proto", url.protocol.replace(":", ""));
  headers.set("x-forwarded-host", c.req.header("host") ?? url.host);
  return headers;
}

function responseHeaders(upstream: Headers): Headers {
  const headers = new Headers(upstream);
  const named = headers.get("connection");
  if (named) for (const name of named.split(",")) headers.delete(name.trim());
  for (const name of HOP_BY_HOP) headers.delete(name);
  if (headers.has("content-encoding")) {
    // fetch already decoded the body
    headers.delete("content-encoding");
    headers.delete("content-length");
  }
  return headers;
}

async function attempt(
  fetcher: typeof fetch,
  target: string,
  init: RequestInit,
  timeoutMs: number,
  clientSignal: AbortSignal,
): Promise<Response | AttemptFailure> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  const onClientAbort = () => controller.abort();
  clientSignal.addEventListener("abort", onClientAbort, { once: true });
  try {
    return await fetcher(target, { ...init, signal: controller.signal });
  } catch (error) {
    return { failed: true, error, timedOut };
  } finally {
    clearTimeout(timer);
    clientSignal.removeEventListener("abort", onClientAbort);
  }
}

function json(body: unknown, status: number, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=UTF-8", ...extra },
  });
}

interface ProxyContext {
  reg: Registry;
  fetcher: typeof fetch;
  turns: Map<string, number>;
}

async function routeService(
  c: Context,
  ctx: ProxyContext,
  target: ServiceTarget,
): Promise<Response> {
  const { reg, fetcher, turns } = ctx;
  if (target.rest !== null) assertSafeRest(target.rest);
  const table = await reg.table();
  const all = table.providers.get(target.service) ?? [];
  const available = [...table.providers.entries()]
    .filter(([, list]) => list.some((p) => p.health !== "unhealthy"))
    .map(([name]) => name)
    .sort();
  if (all.length === 0) {
    return json(
      {
        error: `Service '${target.service}' not available`,
        available_services: available,
        suggestion: `No registered worker provides '${target.service}'. GET /api/admin/services lists what is available.`,
      },
      503,
    );
  }
  const turn = turns.get(target.service) ?? 0;
  turns.set(target.service, turn + 1);
  const ordered = orderProviders(all, turn).slice(0, reg.settings.maxAttempts);
  if (ordered.length === 0) {
    return json(
      {
        error: `No healthy workers available for '${target.service}'`,
        available_services: available,
        suggestion: `All ${all.length} worker(s) providing '${target.service}' are offline or unhealthy; retry later.`,
      },
      503,
      { "retry-after": String(reg.settings.heartbeatIntervalS) },
    );
  }
  const incoming = new URL(c.req.url);
  const method = c.req.method.toUpperCase();
  const headers = forwardHeaders(c, incoming);
  const source = method === "GET" || method === "HEAD" ? null : c.req.raw.body;
  const body = source ? new ReplayableBody(source, reg.settings.replayBufferBytes) : null;
  let failure: AttemptFailure | null = null;
  let worker = ordered[0] as Provider;
  try {
    for (const provider of ordered) {
      worker = provider;
      let url: string;
      try {
        url = upstreamUrl(provider.url, target.rest, incoming.search);
      } catch (err) {
        if (err instanceof UnsafePathError) throw err;
        continue; // a provider with a malformed URL: try the next
      }
      const init: RequestInit & { duplex?: "half" } = { method, headers, redirect: "manual" };
      if (body) {
        init.body = body.stream();
        init.duplex = "half";
      }
      const result = await attempt(
        fetcher,
        url,
        init,
        reg.settings.proxyTimeoutMs,
        c.req.raw.signal,
      );
      // Not `instanceof Response`: @hono/node-server swaps the global Response class.
      if (!("failed" in result)) {
        const out = responseHeaders(result.headers);
        out.set("x-rollcall-worker", provider.worker_id);
        const nullBody = method === "HEAD" || result.status === 204 || result.status === 304;
        return new Response(nullBody ? null : result.body, {
          status: result.status,
          statusText: result.statusText,
          headers: out,
        });
      }
      failure = result;
      if (c.req.raw.signal.aborted) break;
      // Nothing reached the worker when the runtime says the connection was refused or the
      // name did not resolve (Node, Bun, Deno). workerd says "Network connection lost." for a
      // refused and for a dropped connection alike, so there only idempotent methods fail over.
      const nothingSent = !result.timedOut && isConnectFailure(result.error);
      const replayable = !body || body.replayable;
      if (!replayable || !(nothingSent || IDEMPOTENT.has(method))) break;
    }
  } finally {
    body?.release();
  }
  const timedOut = failure?.timedOut ?? false;
  return json(
    {
      error: "Service proxy failed",
      message: timedOut
        ? `Worker did not answer within ${reg.settings.proxyTimeoutMs} ms`
        : `Worker could not be reached: ${(failure?.error as Error | undefined)?.message ?? "unknown error"}`,
      service: target.service,
      worker: worker.worker_id,
    },
    timedOut ? 504 : 502,
  );
}

// ============================================================================================
// Security: tokens compared in constant time
// ============================================================================================

async function digestBytes(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/** Compares two secrets in time independent of where they differ (SHA-256 of both, then XOR). */
export async function tokensEqual(given: string, expected: string): Promise<boolean> {
  const [a, b] = await Promise.all([digestBytes(given), digestBytes(expected)]);
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}

function bearerToken(c: Context): string | null {
  const header = c.req.header("authorization");
  if (!header) return null;
  const match = /^Bearer\s+(.+)$/i.exec(header.trim());
  return match ? (match[1] as string).trim() : "";
}

type Guard = "worker" | "cluster" | "admin";

async function authorize(c: Context, settings: Settings, guard: Guard): Promise<Response | null> {
  const expected = guard === "admin" ? settings.adminToken : settings.clusterToken;
  if (!expected) return null;
  const given = bearerToken(c);
  if (given === null && guard === "worker" && settings.allowLegacyWorkers) return null;
  if (given && (await tokensEqual(given, expected))) return null;
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

// ============================================================================================
// The app
// ============================================================================================

/** Collaborators of a coordinator. */
export interface CoordinatorComponents {
  /** Where the registry lives. */
  store: Store;
  /** Time source (a fake clock in tests and the simulation). */
  clock?: ClockLike;
  /** Upstream client for the proxy (the Node starter may hand in a faster one). */
  fetch?: typeof fetch;
}

/** A coordinator: the hono app and its parts. */
export interface Coordinator {
  /** The hono app: `app.fetch(request, env)` or `app.request(path, init)`. */
  app: Hono;
  /** The resolved settings. */
  settings: Settings;
  /** The store it writes. */
  store: Store;
  /** Writes what had to wait (deferred by the cap), as far as the budget allows. */
  flush(): Promise<number>;
  /** The current routing table (admin views are built from it). */
  table(): Promise<RoutingTable>;
  /** Today's write budget figures. */
  budget(): ReturnType<WriteBudget["snapshot"]> & { pending_writes: number };
}

function issues(err: z.ZodError): { path: string; message: string }[] {
  return err.issues
    .slice(0, 10)
    .map((i) => ({ path: i.path.map(String).join("."), message: i.message }));
}

async function readJson<T>(
  c: Context,
  schema: z.ZodType<T>,
): Promise<{ data: T } | { response: Response }> {
  let text: string;
  try {
    text = await c.req.text();
  } catch {
    return { response: json({ error: "Request body could not be read" }, 400) };
  }
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

/** Builds a coordinator from settings and collaborators. */
export function createCoordinator(
  init: CoordinatorInit,
  components: CoordinatorComponents,
): Coordinator {
  const settings = resolveSettings(init);
  const clock = components.clock ?? systemNow;
  const fetcher = components.fetch ?? ((input, reqInit) => fetch(input, reqInit));
  const reg = new Registry(settings, components.store, clock);
  const proxy: ProxyContext = { reg, fetcher, turns: new Map() };
  const app = new Hono();
  const limit = bodyLimit({
    maxSize: settings.maxBodyBytes,
    onError: (c) =>
      c.json({ error: `Request body is larger than ${settings.maxBodyBytes} bytes` }, 413),
  });
  const budget = () => ({ ...reg.budget.snapshot(), pending_writes: reg.pendingCount });

  app.onError((err, c) => {
    if (err instanceof UnsafePathError)
      return c.json({ error: "Invalid service path", message: err.message }, 400);
    if (err instanceof StoreError)
      return c.json({ error: "Store unavailable", message: err.message }, 503);
    return c.json({ error: "Internal error" }, 500);
  });
  app.notFound((c) => {
    const alias = matchAlias(new URL(c.req.url).pathname, settings.aliases);
    if (alias) return routeService(c, proxy, alias);
    return c.json({ error: "Not found", path: new URL(c.req.url).pathname }, 404);
  });
  app.use(
    "*",
    cors({
      origin: settings.corsOrigin,
      allowHeaders: ["Authorization", "Content-Type"],
      allowMethods: ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"],
      exposeHeaders: ["Retry-After", "X-Rollcall-Worker"],
    }),
  );
  // Opportunistic: what the cap deferred is written on the first request that may write it.
  app.use("*", async (_c, next) => {
    if (reg.pendingCount > 0 && reg.budget.available) await reg.flushPending().catch(() => 0);
    await next();
  });

  app.get("/health", (c) => {
    const open = !settings.clusterToken && !settings.adminToken;
    return c.json({
      status: "healthy",
      service: "rollcall-coordinator",
      version: COORDINATOR_VERSION,
      mode: open ? "open-local-dev" : "secured",
      auth: {
        cluster_token: settings.clusterToken !== null,
        admin_token: settings.adminToken !== null,
        legacy_workers_admitted: settings.allowLegacyWorkers || !settings.clusterToken,
      },
      store: { kind: reg.store.kind, persistent: reg.store.persistent },
      time: new Date(clock.now()).toISOString(),
    });
  });

  app.post("/api/worker/register", limit, async (c) => {
    const denied = await authorize(c, settings, "worker");
    if (denied) return denied;
    const body = await readJson(c, RegisterBodySchema);
    if ("response" in body) return body.response;
    return c.json(await register(reg, body.data));
  });

  app.post("/api/worker/heartbeat", limit, async (c) => {
    const denied = await authorize(c, settings, "worker");
    if (denied) return denied;
    const body = await readJson(c, HeartbeatBodySchema);
    if ("response" in body) return body.response;
    const answer = await heartbeat(reg, body.data);
    return answer ? c.json(answer) : c.json({ error: "Worker not found" }, 404);
  });

  app.delete("/api/worker/unregister/:id", async (c) => {
    const denied = await authorize(c, settings, "worker");
    if (denied) return denied;
    const id = WorkerIdSchema.safeParse(c.req.param("id"));
    if (!id.success) return c.json({ error: "Invalid worker id", details: issues(id.error) }, 400);
    const answer = await unregister(reg, id.data);
    return answer ? c.json(answer) : c.json({ error: "Worker not found" }, 404);
  });

  app.post("/api/cluster/heartbeat", limit, async (c) => {
    const denied = await authorize(c, settings, "cluster");
    if (denied) return denied;
    const body = await readJson(c, ClusterReportSchema);
    if ("response" in body) return body.response;
    return c.json(await clusterHeartbeat(reg, body.data));
  });

  const admin = new Hono();
  admin.use("*", async (c, next) => {
    const denied = await authorize(c, settings, "admin");
    if (denied) return denied;
    await next();
  });
  admin.get("/workers", async (c) => c.json((await reg.table()).workers));
  admin.get("/services", async (c) => {
    const table = await reg.table();
    const services: Record<string, unknown> = {};
    for (const name of [...table.providers.keys()].sort()) {
      const list = table.providers.get(name) ?? [];
      const healthy = list.filter((p) => p.health !== "unhealthy").length;
      services[name] = {
        total_workers: list.length,
        healthy_workers: healthy,
        status: healthy > 0 ? "available" : "unavailable",
        workers: list.map((p) => ({
          worker_id: p.worker_id,
          url: p.url,
          tier: p.tier,
          health: p.health,
        })),
      };
    }
    return c.json({ services, total_services: table.providers.size });
  });
  admin.get("/stats", async (c) => {
    const table = await reg.table();
    const healthy = table.workers.filter((w) => w.healthy).length;
    const byTier: Record<string, number> = { "1": 0, "2": 0, "3": 0 };
    for (const w of table.workers) byTier[String(w.tier)] = (byTier[String(w.tier)] ?? 0) + 1;
    const first = table.clusters[0];
    return c.json({
      total_workers: table.workers.length,
      healthy_workers: healthy,
      offline_workers: table.workers.length - healthy,
      by_tier: byTier,
      total_services: table.providers.size,
      write_budget: budget(),
      leader: first
        ? {
            cluster: first.cluster,
            leader_id: first.leader_id,
            term: first.term,
            stale: first.stale,
          }
        : null,
      clusters: table.clusters,
    });
  });
  admin.get("/leader", async (c) => c.json({ clusters: (await reg.table()).clusters }));
  admin.get("/budget", (c) => c.json(budget()));
  app.route("/api/admin", admin);

  app.all("/api/service/*", async (c) => {
    const target = parseServicePath(new URL(c.req.url).pathname);
    if (!target) return c.json({ error: "Not found" }, 404);
    return routeService(c, proxy, target);
  });

  return {
    app,
    settings,
    store: components.store,
    flush: () => reg.flushPending(),
    table: () => reg.table(),
    budget,
  };
}

// ============================================================================================
// Default export: Cloudflare Workers (`fetch(req, env, ctx)`) and `bun coordinator.ts`
// ============================================================================================

let workerInstance: Coordinator | null = null;

function envRecord(env: unknown): Record<string, unknown> {
  const processEnv =
    (globalThis as { process?: { env?: Record<string, unknown> } }).process?.env ?? {};
  const bindings =
    env && typeof env === "object" && !("requestIP" in env) ? (env as Record<string, unknown>) : {};
  return { ...processEnv, ...bindings };
}

/**
 * The coordinator for a Workers isolate (or `bun coordinator.ts`): settings from env/bindings,
 * the `ROLLCALL_KV` binding as store when present, memory otherwise (reported by /health).
 */
export function coordinatorFromEnv(env: unknown): Coordinator {
  // One coordinator per isolate: the bindings of an isolate do not change between requests.
  if (workerInstance) return workerInstance;
  const vars = envRecord(env);
  const kv = vars.ROLLCALL_KV as KvNamespaceLike | undefined;
  const store = kv && typeof kv.get === "function" ? cloudflareKvStore(kv) : memoryStore();
  const coordinator = createCoordinator(configFromEnv(vars), { store });
  workerInstance = coordinator;
  return coordinator;
}

export default {
  fetch(request: Request, env?: unknown, ctx?: unknown): Response | Promise<Response> {
    let coordinator: Coordinator;
    try {
      coordinator = coordinatorFromEnv(env);
    } catch (err) {
      const message = err instanceof ConfigError ? err.message : "Coordinator failed to start";
      return json({ error: "Coordinator misconfigured", message }, 500);
    }
    return coordinator.app.fetch(request, env, ctx as never);
  },
};
