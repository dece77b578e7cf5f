/**
 * Service detection: probe a manifest of candidate services on start and
 * periodically; a service appears when it answers and disappears when it stops.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { ServiceNameSchema } from "../coordinator.ts";
import { type Clock, systemClock } from "../mesh/clock.ts";
import { ConfigError } from "./config.ts";

/** A service the agent looks for. */
export interface ServiceCandidate {
  name: string;
  /** Base URL of the local service, e.g. http://127.0.0.1:8103 (no trailing slash). */
  url: string;
  /** Health path probed with GET, e.g. /health. */
  health: string;
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
    return { name: s.name, url, health: s.health };
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
}

/** up: answered below 500; sick: answered 5xx or timed out; down: nothing listens. */
type Outcome =
  | { kind: "up"; latency: number }
  | { kind: "down" }
  | { kind: "sick"; latency: number; answered: boolean };

/** Probes candidates on a timer; emits "change" when the set of services or their health changes. */
export class ServiceDetector extends EventTarget {
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
      this.#tracks.set(c.name, { target: targetOf(c), present: undefined, failures: 0 });
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
      return res.status < 500 ? { kind: "up", latency } : { kind: "sick", latency, answered: true };
    } catch (err) {
      const name = (err as Error).name;
      // A timeout means something listens but does not answer in time: sick, not gone.
      if (name === "TimeoutError" || name === "AbortError") {
        return { kind: "sick", latency: this.#timeoutMs, answered: false };
      }
      return { kind: "down" };
    }
  }

  /** Folds one probe outcome into the track; true when the visible state changed. */
  #apply(c: ServiceCandidate, o: Outcome): boolean {
    const t = this.#tracks.get(c.name) as Track;
    const before = t.present;
    const found = { name: c.name, url: c.url, ...t.target };
    if (o.kind === "up") {
      t.failures = 0;
      t.present = { ...found, status: "healthy", latency_ms: o.latency };
      return before?.status !== "healthy";
    }
    if (!before) {
      // A service that answers 5xx from the start runs, but unhealthy.
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
