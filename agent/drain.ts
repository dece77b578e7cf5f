/**
 * Maintenance mode of one agent (`rollcall-agent drain`, like `consul maint`), pure on an
 * injected clock. Draining, the agent gossips `draining` in its meta and withdraws its offer to
 * lead; the leader reports it as "draining", which the coordinator never routes to (at once
 * through the leader's live view). Requests already on their way still arrive for a moment and
 * are served; the agent counts the routed requests in flight, and it is safe to stop once none
 * is in flight and none has started for `quietMs` since the drain began (the time the
 * coordinator needs to learn of it: a heartbeat, the leader's view, the live view's 2 s).
 */
import type { Clock } from "../mesh/clock.ts";

/** What `GET /_agent/drain` answers. */
export interface DrainStatus {
  draining: boolean;
  /** When the drain began (ISO time), or null. */
  since: string | null;
  /** Routed requests in flight at this agent's gateway. */
  in_flight: number;
  /** When the latest routed request started (ISO time), or null. */
  last_request_at: string | null;
  /** Draining, nothing in flight and nothing new for `quiet_ms`: the agent may be stopped. */
  safe_to_stop: boolean;
  quiet_ms: number;
}

/** Settings of a drain. */
export interface DrainInit {
  /** How long no new request may start before stopping is safe; default 5000 ms. */
  quietMs?: number;
}

/** The drain state of one agent, and its gateway's routed requests in flight. */
export class Drain extends EventTarget {
  readonly quietMs: number;
  #clock: Pick<Clock, "now">;
  #since: number | null = null;
  #inFlight = 0;
  #lastStart: number | null = null;

  constructor(init: DrainInit, clock: Pick<Clock, "now">) {
    super();
    this.quietMs = init.quietMs ?? 5000;
    this.#clock = clock;
  }

  /** Whether the agent is draining. */
  get draining(): boolean {
    return this.#since !== null;
  }

  /** Starts (true) or ends (false) the drain; emits "change" when that changes anything. */
  set(on: boolean): void {
    if (on === this.draining) return;
    this.#since = on ? this.#clock.now() : null;
    this.dispatchEvent(new Event("change"));
  }

  /** A routed request started; call the returned function once when it ends. */
  started(): () => void {
    this.#inFlight++;
    this.#lastStart = this.#clock.now();
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#inFlight--;
    };
  }

  /** The state as `GET /_agent/drain` answers it. */
  status(): DrainStatus {
    const now = this.#clock.now();
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    const since = this.#since;
    const quietFrom = Math.max(since ?? 0, this.#lastStart ?? 0);
    return {
      draining: since !== null,
      since: iso(since),
      in_flight: this.#inFlight,
      last_request_at: iso(this.#lastStart),
      safe_to_stop: since !== null && this.#inFlight === 0 && now - quietFrom >= this.quietMs,
      quiet_ms: this.quietMs,
    };
  }
}
