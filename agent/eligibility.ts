/**
 * Whether this agent may offer to lead its mesh: only once the coordinator took its cluster
 * token (an authenticated, successful call). A leader that cannot report would silence the
 * whole cluster, so an agent without a coordinator, or with a token the coordinator refuses,
 * never offers, and the election (mesh/election.ts) passes over it. Pure logic on an injected
 * clock; the HTTP call is the injected `check`.
 *
 * - At start: check at once. Success: offer. 401/403: do not offer, check again with backoff.
 *   Anything else (network, 5xx): no news, check again with backoff.
 * - Afterwards every call the agent makes anyway (the leader's reports) counts: a success
 *   confirms, a 401/403 withdraws the offer (and the checks resume).
 */
import { type Clock, systemClock } from "../mesh/clock.ts";
import { backoffMs } from "./backoff.ts";

/** The outcome of an authenticated call, as far as eligibility cares. */
export interface AuthOutcome {
  ok: boolean;
  /** HTTP status; 0 when the call failed before any answer. */
  status: number;
  error?: string;
}

/** Collaborators of the eligibility check. */
export interface EligibilityComponents {
  /** One authenticated call that writes nothing (GET /api/cluster/auth). */
  check(): Promise<AuthOutcome>;
  /** Told every time the answer changes. */
  onChange(canLead: boolean): void;
  clock?: Clock;
  random?: () => number;
  log?: (line: string) => void;
}

/** Settings of the eligibility check. */
export interface EligibilityInit {
  /** First retry delay (default 1 s), doubling up to maxBackoffMs (default 60 s). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/** Tracks whether the coordinator takes this agent's token. */
export class LeadEligibility {
  readonly #c: EligibilityComponents;
  readonly #clock: Clock;
  readonly #minMs: number;
  readonly #maxMs: number;
  #canLead = false;
  /** What the coordinator last said of the token: unknown until it answered. */
  #said: "unknown" | "took" | "refused" = "unknown";
  #failures = 0;
  #timer: unknown;
  #running = false;

  constructor(init: EligibilityInit, components: EligibilityComponents) {
    this.#c = components;
    this.#clock = components.clock ?? systemClock;
    this.#minMs = init.minBackoffMs ?? 1_000;
    this.#maxMs = init.maxBackoffMs ?? 60_000;
  }

  /** Whether this agent offers to lead now. */
  get canLead(): boolean {
    return this.#canLead;
  }

  /** Checks at once, and again with backoff until the coordinator takes the token. */
  start(): void {
    this.#running = true;
    this.#schedule(0);
  }

  /** Stops checking and clears the timer. */
  stop(): void {
    this.#running = false;
    this.#cancel();
  }

  /** Takes the outcome of any authenticated call the agent made. */
  observe(outcome: AuthOutcome): void {
    if (outcome.ok) {
      this.#failures = 0;
      this.#cancel();
      this.#set("took", "the coordinator took the cluster token");
      return;
    }
    if (outcome.status === 401 || outcome.status === 403) {
      this.#set("refused", `the coordinator refused the cluster token (${outcome.status})`);
    }
    if (!this.#canLead && this.#timer === undefined) this.#retry();
  }

  #set(said: "took" | "refused", why: string): void {
    if (said === this.#said) return;
    this.#said = said;
    this.#c.log?.(
      said === "took"
        ? `Offering to lead the mesh: ${why}`
        : `Not offering to lead the mesh: ${why}; check --token / ROLLCALL_CLUSTER_TOKEN, which must equal the coordinator's ROLLCALL_CLUSTER_TOKEN (checking again with backoff, at most ${Math.round(this.#maxMs / 1000)} s apart)`,
    );
    const canLead = said === "took";
    if (canLead === this.#canLead) return;
    this.#canLead = canLead;
    this.#c.onChange(canLead);
  }

  #retry(): void {
    this.#failures += 1;
    this.#schedule(
      backoffMs(this.#failures, {
        minMs: this.#minMs,
        maxMs: this.#maxMs,
        random: this.#c.random ?? Math.random,
      }),
    );
  }

  #cancel(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(ms: number): void {
    if (!this.#running) return;
    this.#cancel();
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.#c
        .check()
        .catch((err: unknown): AuthOutcome => ({ ok: false, status: 0, error: String(err) }))
        .then((outcome) => {
          if (this.#running) this.observe(outcome);
        })
        .catch((err: unknown) => {
          this.#c.log?.(`eligibility check fault: ${(err as Error).message}`);
          if (this.#running && this.#timer === undefined) this.#retry();
        });
    }, ms);
  }
}
