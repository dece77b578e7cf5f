/**
 * Direct mode: no mesh. The agent registers itself, then heartbeats at the
 * interval the coordinator asks for; the coordinator writes only on a status
 * change or when the stored record is older than its write interval.
 * A change of services re-registers; a heartbeat answered 404 (the coordinator forgot us)
 * re-registers at once. Every failed register waits out the backoff.
 */
import type { RegisterAnswer, RegisterBodyInput } from "../coordinator.ts";
import { type Clock, systemClock } from "../mesh/clock.ts";
import { backoffMs } from "./backoff.ts";
import { authFailureHint, type CallResult, type CoordinatorClient } from "./client.ts";

/** First retry delay after a failed call; doubles per failure up to MAX_BACKOFF_MS. */
const MIN_BACKOFF_MS = 1_000;
const MAX_BACKOFF_MS = 60_000;
/** Longest heartbeat interval taken from the coordinator (a timer takes at most ~24.8 days). */
const MAX_INTERVAL_S = 86_400;

/** What the agent registers: the contract's register body, as the coordinator's schema takes it. */
export type Registration = RegisterBodyInput;

/** Load figures sent with each heartbeat. */
export interface LoadSample {
  status: "online" | "busy" | "draining";
  current_load: number;
  available_memory: number;
}

/** Collaborators of the direct reporter. */
export interface DirectComponents {
  client: Pick<CoordinatorClient, "register" | "heartbeat" | "unregister">;
  load: () => LoadSample;
  clock?: Clock;
  /** Jitter source of the retry backoff (default Math.random). */
  random?: () => number;
  log?: (line: string) => void;
}

/** Registers and heartbeats on its own; for single workers and setups without a mesh. */
export class DirectReporter {
  readonly #c: DirectComponents & { clock: Clock; random: () => number };
  #registration: Registration;
  #registered: RegisterAnswer | undefined;
  #intervalMs = 30_000;
  #failures = 0;
  #timer: unknown;
  #running = false;
  #busy = false;
  #dirty = true;
  #authRefused = false;
  /** Counters for tests and the live view. */
  readonly stats = {
    registers: 0,
    heartbeats: 0,
    failures: 0,
    lastError: undefined as string | undefined,
    /** Clock ms when the last call ended (answered or failed). */
    lastAt: undefined as number | undefined,
  };

  constructor(registration: Registration, components: DirectComponents) {
    this.#registration = registration;
    this.#c = {
      ...components,
      clock: components.clock ?? systemClock,
      random: components.random ?? Math.random,
    };
  }

  /** The answer of the last successful register, if any. */
  get registered(): RegisterAnswer | undefined {
    return this.#registered;
  }

  /** Registers at once, then heartbeats until stop(). */
  start(): Promise<void> {
    this.#running = true;
    return this.#tick();
  }

  /** New services or URL: registers again at once, or after the backoff while calls fail. */
  update(registration: Registration): void {
    this.#registration = registration;
    this.#dirty = true;
    if (this.#running && !this.#busy && this.#failures === 0) this.#schedule(0);
  }

  /** Stops heartbeating, clears the timer and unregisters (best effort). */
  async stop(): Promise<void> {
    this.#running = false;
    if (this.#timer !== undefined) this.#c.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#registered) await this.#c.client.unregister(this.#registered.worker_id);
  }

  #schedule(ms: number): void {
    if (!this.#running) return;
    if (this.#timer !== undefined) this.#c.clock.clearTimeout(this.#timer);
    this.#timer = this.#c.clock.setTimeout(() => {
      this.#timer = undefined;
      // A throw of ours must not escape the timer: log it and try again later.
      this.#tick().catch((err) => {
        this.#c.log?.(`direct reporting fault: ${(err as Error).message}`);
        this.#schedule(MAX_BACKOFF_MS);
      });
    }, ms);
  }

  async #tick(): Promise<void> {
    if (!this.#running || this.#busy) return;
    this.#busy = true;
    let result: CallResult<unknown>;
    let forgotten = false;
    try {
      if (this.#dirty || !this.#registered) {
        const sent = this.#registration;
        const r = await this.#c.client.register(sent);
        if (r.ok) {
          this.#registered = r.data;
          this.#dirty = this.#registration !== sent; // an update() meanwhile goes out next
          this.#intervalMs =
            Math.min(Math.max(1, r.data.heartbeat_interval), MAX_INTERVAL_S) * 1000;
          this.stats.registers += 1;
          this.#c.log?.(
            `Registered as ${r.data.worker_id} (tier ${r.data.tier}): ${r.data.services_registered.join(", ") || "no services"}`,
          );
        }
        result = r;
      } else {
        const r = await this.#c.client.heartbeat({
          worker_id: this.#registered.worker_id,
          ...this.#c.load(),
        });
        if (r.ok) this.stats.heartbeats += 1;
        else if (r.status === 404) {
          // The coordinator forgot us (a restart, an unregister): register again at once.
          this.#dirty = true;
          forgotten = true;
        }
        result = r;
      }
    } finally {
      this.#busy = false;
    }
    this.stats.lastAt = this.#c.clock.now();
    if (result.ok) {
      this.#failures = 0;
      this.#authRefused = false;
      this.#schedule(this.#dirty ? 0 : this.#intervalMs);
      return;
    }
    this.stats.failures += 1;
    this.stats.lastError = result.error;
    const hint = authFailureHint(result.status);
    if (hint && !this.#authRefused) this.#c.log?.(hint);
    this.#authRefused = hint !== null;
    if (forgotten) {
      this.#c.log?.(`${result.error}; registering again`);
      this.#schedule(0);
      return;
    }
    this.#failures += 1;
    const delay = backoffMs(this.#failures, {
      minMs: MIN_BACKOFF_MS,
      maxMs: MAX_BACKOFF_MS,
      random: this.#c.random,
      retryAfterMs: result.retryAfterMs,
    });
    this.#c.log?.(`${result.error}; retrying in ${(delay / 1000).toFixed(1)} s`);
    this.#schedule(delay);
  }
}
