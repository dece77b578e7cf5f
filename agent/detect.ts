/**
 * Service detection: probe a manifest of candidate services on start and
 * periodically; a service appears when it answers and disappears when it stops.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { ServiceNameSchema } from "../coordinator.ts";
import { type Clock, systemClock } from "../mesh/clock.ts";
import { ConfigError } from "./config.ts";
import { TypedEventEmitter } from "main-event";

/** A service the agent looks for. */
export interface ServiceCandidate {
  name: string;
  /** Base URL of the local service, e.g. http://127.0.0.1:8103 (no trailing slash). */
  url: string;
  /** Health path probed with GET, e.g. /health. */
  health: string;
  /**
   * Statuses of the health answer that count as healthy: codes (204) or classes ("2xx").
   * Default ["2xx", "3xx"]: a wrong health path answering 404 does not look healthy.
   */
  healthyStatus?: readonly (number | string)[];
}

/** What counts as healthy when a manifest entry does not say. */
const DEFAULT_HEALTHY_STATUS: readonly string[] = ["2xx", "3xx"];

/** Whether an HTTP status is one of `healthy` (codes or classes like "2xx"). */
function isHealthyStatus(
  status: number,
  healthy: readonly (number | string)[] = DEFAULT_HEALTHY_STATUS,
): boolean {
  return healthy.some((h) =>
    typeof h === "number" ? h === status : h === `${Math.floor(status / 100)}xx`,
  );
}

/** The last probe of one manifest entry, for the start report: found or why not. */
export interface ProbeReport {
  name: string;
  url: string;
  state: "healthy" | "unhealthy" | "missing";
  /** e.g. "200 in 3 ms", "connection refused", "timed out after 2000 ms", "answered 404". */
  detail: string;
}

/** A service found running, with its health. */
export interface DetectedService {
  name: string;
  url: string;
  /** Where the gateway connects, parsed from `url` once: host (IPv6 without brackets), port, base path. */
  host: string;
  port: number;
  /** "" or the URL's path without a trailing slash, e.g. "/api". */
  basePath: string;
  status: "healthy" | "unhealthy";
  latency_ms: number;
}

const HTTP_ONLY =
  "must be an http:// URL: the gateway speaks plain HTTP to local services (put TLS in front of the gateway instead)";

/** The connection target of a candidate's URL, parsed once; throws naming the service unless it is http. */
function targetOf(c: ServiceCandidate): Pick<DetectedService, "host" | "port" | "basePath"> {
  const u = new URL(c.url);
  if (u.protocol !== "http:") throw new Error(`Service ${c.name}: url ${HTTP_ONLY}`);
  return {
    host: u.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: Number(u.port || 80),
    basePath: u.pathname.replace(/\/+$/, ""),
  };
}

const manifestSchema = z.object({
  services: z
    .array(
      z
        .object({
          name: ServiceNameSchema, // the coordinator's rule, so it never refuses a name
          port: z.number().int().min(1).max(65535).optional(),
          url: z.url({ protocol: /^https?$/ }).optional(),
          health: z.string().startsWith("/").default("/health"),
          healthy_status: z
            .array(
              z.union([
                z.number().int().min(100).max(599),
                z.enum(["1xx", "2xx", "3xx", "4xx", "5xx"]),
              ]),
            )
            .min(1)
            .max(32)
            .optional(),
        })
        .strict()
        .refine((s) => (s.port === undefined) !== (s.url === undefined), {
          message: "give exactly one of port or url",
        }),
    )
    .max(256),
});

/** Parses a manifest document; throws ConfigError naming the file and the entry. */
export function parseManifest(doc: unknown, source: string): ServiceCandidate[] {
  const r = manifestSchema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new ConfigError(
      `${source}: ${issue?.path.join(".") || "services"}`,
      issue?.message ?? "invalid",
    );
  }
  const seen = new Set<string>();
  return r.data.services.map((s) => {
    if (seen.has(s.name)) throw new ConfigError(`${source}: ${s.name}`, "service listed twice");
    seen.add(s.name);
    if (s.url !== undefined && !s.url.startsWith("http:")) {
      throw new ConfigError(`${source}: ${s.name}`, `url ${JSON.stringify(s.url)} ${HTTP_ONLY}`);
    }
    const url = (s.url ?? `http://127.0.0.1:${s.port}`).replace(/\/+$/, "");
    return {
      name: s.name,
      url,
      health: s.health,
      ...(s.healthy_status ? { healthyStatus: s.healthy_status } : {}),
    };
  });
}

/** Reads and parses a manifest file. */
export function loadManifest(path: string): ServiceCandidate[] {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new ConfigError("--services", `cannot read ${path}: ${(err as Error).message}`);
  }
  return parseManifest(doc, path);
}

/** Settings of a detector. */
export interface DetectorInit {
  candidates: ServiceCandidate[];
  intervalMs?: number;
  timeoutMs?: number;
  /** Consecutive failed probes before a present service is dropped or marked unhealthy. */
  fallAfter?: number;
}

interface Track {
  target: Pick<DetectedService, "host" | "port" | "basePath">;
  present: DetectedService | undefined;
  failures: number;
  last: Outcome | undefined;
}

/**
 * up: answered a healthy status; sick: answered another status or timed out; down: nothing
 * listens (refused, or the host cannot be reached). `why` says it in words for the logs.
 */
type Outcome =
  | { kind: "up"; latency: number; why: string }
  | { kind: "down"; why: string }
  | { kind: "sick"; latency: number; answered: boolean; why: string };

/** Words for a failed connection: refused, no such host, or the error's own code. */
function connectFailure(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  const code = cause?.code ?? "";
  if (code === "ECONNREFUSED") return "connection refused";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "host not found";
  if (code) return `unreachable (${code})`;
  return `unreachable (${cause?.message ?? (err as Error).message})`;
}

/** Probes candidates on a timer; emits "change" when the set of services or their health changes. */
export class ServiceDetector extends TypedEventEmitter<{ change: Event }> {
  readonly #candidates: ServiceCandidate[];
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  readonly #fallAfter: number;
  readonly #clock: Clock;
  readonly #fetch: typeof fetch;
  readonly #tracks = new Map<string, Track>();
  #timer: unknown;
  #running = false;

  constructor(init: DetectorInit, components: { clock?: Clock; fetch?: typeof fetch } = {}) {
    super();
    this.#candidates = init.candidates;
    this.#intervalMs = init.intervalMs ?? 10_000;
    this.#timeoutMs = init.timeoutMs ?? 2_000;
    this.#fallAfter = init.fallAfter ?? 2;
    this.#clock = components.clock ?? systemClock;
    this.#fetch = components.fetch ?? fetch;
    for (const c of this.#candidates) {
      this.#tracks.set(c.name, {
        target: targetOf(c),
        present: undefined,
        failures: 0,
        last: undefined,
      });
    }
  }

  /** Probes once, then keeps probing every interval until stop(). */
  async start(): Promise<void> {
    this.#running = true;
    await this.probeOnce();
    this.#schedule();
  }

  /** Stops probing and clears the timer. */
  stop(): void {
    this.#running = false;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The services found running, sorted by name. */
  services(): DetectedService[] {
    return [...this.#tracks.values()]
      .flatMap((t) => (t.present ? [t.present] : []))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** What the last probe of each manifest entry found, in manifest order. */
  report(): ProbeReport[] {
    return this.#candidates.map((c) => {
      const t = this.#tracks.get(c.name) as Track;
      const state = t.present?.status ?? "missing";
      return { name: c.name, url: c.url + c.health, state, detail: t.last?.why ?? "not probed" };
    });
  }

  /** Looks up a running service by name. */
  get(name: string): DetectedService | undefined {
    return this.#tracks.get(name)?.present;
  }

  /** Probes every candidate once; returns whether anything routing-relevant changed. */
  async probeOnce(): Promise<boolean> {
    const outcomes = await Promise.all(this.#candidates.map((c) => this.#probe(c)));
    let changed = false;
    this.#candidates.forEach((c, i) => {
      if (this.#apply(c, outcomes[i] as Outcome)) changed = true;
    });
    if (changed) this.dispatchEvent(new Event("change"));
    return changed;
  }

  #schedule(): void {
    if (!this.#running) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.probeOnce()
        .catch(() => {})
        .finally(() => this.#schedule());
    }, this.#intervalMs);
  }

  async #probe(c: ServiceCandidate): Promise<Outcome> {
    const started = performance.now();
    try {
      const res = await this.#fetch(c.url + c.health, {
        signal: AbortSignal.timeout(this.#timeoutMs),
        redirect: "manual",
      });
      await res.body?.cancel();
      const latency = Math.round(performance.now() - started);
      if (isHealthyStatus(res.status, c.healthyStatus)) {
        return { kind: "up", latency, why: `${res.status} in ${latency} ms` };
      }
      const hint =
        res.status >= 500
          ? ""
          : ` (not a healthy status: check the health path ${c.health}, or list ${res.status} in healthy_status)`;
      return { kind: "sick", latency, answered: true, why: `answered ${res.status}${hint}` };
    } catch (err) {
      const name = (err as Error).name;
      // A timeout means something listens but does not answer in time: sick, not gone.
      if (name === "TimeoutError" || name === "AbortError") {
        return {
          kind: "sick",
          latency: this.#timeoutMs,
          answered: false,
          why: `timed out after ${this.#timeoutMs} ms`,
        };
      }
      return { kind: "down", why: connectFailure(err) };
    }
  }

  /** Folds one probe outcome into the track; true when the visible state changed. */
  #apply(c: ServiceCandidate, o: Outcome): boolean {
    const t = this.#tracks.get(c.name) as Track;
    t.last = o;
    const before = t.present;
    const found = { name: c.name, url: c.url, ...t.target };
    if (o.kind === "up") {
      t.failures = 0;
      t.present = { ...found, status: "healthy", latency_ms: o.latency };
      return before?.status !== "healthy";
    }
    if (!before) {
      // A service that answers an unhealthy status from the start runs, but unhealthy.
      if (o.kind !== "sick" || !o.answered) return false;
      t.present = { ...found, status: "unhealthy", latency_ms: o.latency };
      return true;
    }
    t.failures += 1;
    if (t.failures < this.#fallAfter) return false;
    if (o.kind === "down") {
      t.present = undefined;
      return true;
    }
    t.present = { ...before, status: "unhealthy", latency_ms: o.latency };
    return before.status !== "unhealthy";
  }
}
