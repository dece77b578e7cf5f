/**
 * The leader's reporter: sends the cluster aggregate to the coordinator only when
 * it changed (debounced, so a burst of changes is one report) or when the
 * coordinator says a keepalive is due. Errors are retried with backoff and jitter;
 * the latest state is never lost, only superseded. Pure logic on an injected clock:
 * the HTTP call is the injected `send`.
 */
import type { ClusterHeartbeatAnswer } from "../coordinator.ts";
import { type Clock, systemClock } from "../mesh/clock.ts";
import { backoffMs } from "./backoff.ts";

/** Longest wait for a keepalive the coordinator may ask for. */
const MAX_KEEPALIVE_MS = 86_400_000;

/** What the reporter sends: the aggregate plus who sends it. */
export interface ReportState<M = unknown> {
  members: M[];
  digest: string;
}

/** What the reporter reads of the coordinator's answer to a report (docs/PROTOCOL.md). */
export type ReportAnswer = Pick<
  ClusterHeartbeatAnswer,
  "written" | "reason" | "writes_today" | "write_budget" | "next_keepalive_in_s"
>;

/** The outcome of one send. */
export type SendResult =
  | { ok: true; answer: ReportAnswer }
  | { ok: false; retryable: boolean; retryAfterMs?: number; error: string; status?: number };

/** A report as sent: the state plus the leader's term and sequence. */
export interface OutgoingReport<M = unknown> extends ReportState<M> {
  term: number;
  sequence: number;
}

/** Settings of a reporter. */
export interface ReporterInit {
  /** How long a change waits for others before it is sent (default 2 s). */
  debounceMs?: number;
  /** First retry delay after an error (default 1 s); doubles up to maxBackoffMs. */
  minBackoffMs?: number;
  /** Longest delay between retries (default 60 s). */
  maxBackoffMs?: number;
}

/** Collaborators of a reporter. */
export interface ReporterComponents<M> {
  send(report: OutgoingReport<M>): Promise<SendResult>;
  clock?: Clock;
  random?: () => number;
  log?: (line: string) => void;
  /** Called with every answer of the coordinator (for logs and the live view). */
  onAnswer?: (answer: ReportAnswer, report: OutgoingReport<M>) => void;
}

/** Counters for tests, benchmarks and the agent's live view. */
export interface ReporterStats {
  sent: number;
  failed: number;
  written: number;
  lastAnswer: ReportAnswer | undefined;
  lastError: string | undefined;
  /** Clock ms when the last send ended (answered or failed). */
  lastAt: number | undefined;
}

/** Debounced, retrying reporter used while this agent is the leader. */
export class LeaderReporter<M = unknown> {
  readonly #debounceMs: number;
  readonly #minBackoffMs: number;
  readonly #maxBackoffMs: number;
  readonly #c: Required<Omit<ReporterComponents<M>, "log" | "onAnswer">> &
    Pick<ReporterComponents<M>, "log" | "onAnswer">;
  #leader = false;
  #term = 0;
  #sequence = 0;
  #latest: ReportState<M> | undefined;
  #acked: string | undefined;
  #keepaliveAt: number | undefined;
  #failures = 0;
  #inflight = false;
  #timer: unknown;
  #timerAt = Number.POSITIVE_INFINITY;
  readonly stats: ReporterStats = {
    sent: 0,
    failed: 0,
    written: 0,
    lastAnswer: undefined,
    lastError: undefined,
    lastAt: undefined,
  };

  constructor(init: ReporterInit, components: ReporterComponents<M>) {
    this.#debounceMs = init.debounceMs ?? 2_000;
    this.#minBackoffMs = init.minBackoffMs ?? 1_000;
    this.#maxBackoffMs = init.maxBackoffMs ?? 60_000;
    this.#c = {
      send: components.send,
      clock: components.clock ?? systemClock,
      random: components.random ?? Math.random,
      log: components.log,
      onAnswer: components.onAnswer,
    };
  }

  /** Whether this agent leads now. A new leadership reports at once. */
  setLeader(leader: boolean, term: number): void {
    const became = leader && (!this.#leader || term !== this.#term);
    this.#leader = leader;
    this.#term = term;
    if (!leader) {
      this.#cancel();
      this.#acked = undefined;
      this.#keepaliveAt = undefined;
      return;
    }
    if (became) {
      this.#acked = undefined;
      this.#failures = 0;
      this.#arm(this.#c.clock.now());
    }
  }

  /** The latest aggregate; sent after the debounce when its digest differs from the last acknowledged. */
  update(state: ReportState<M>): void {
    this.#latest = state;
    if (this.#leader && state.digest !== this.#acked) {
      this.#arm(this.#c.clock.now() + this.#debounceMs);
    }
  }

  /** Stops reporting and clears every timer. */
  stop(): void {
    this.#leader = false;
    this.#cancel();
  }

  #cancel(): void {
    if (this.#timer !== undefined) this.#c.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Number.POSITIVE_INFINITY;
  }

  /** Makes sure a send happens no later than `at` (an earlier timer wins). */
  #arm(at: number): void {
    if (this.#timer !== undefined && this.#timerAt <= at) return;
    this.#cancel();
    this.#timerAt = at;
    this.#timer = this.#c.clock.setTimeout(
      () => {
        this.#timer = undefined;
        this.#timerAt = Number.POSITIVE_INFINITY;
        // A throw of ours (a callback) must not escape the timer: log it, retry later.
        this.#fire().catch((err) => {
          this.#inflight = false;
          this.#c.log?.(`report fault: ${(err as Error).message}`);
          this.#arm(this.#c.clock.now() + this.#maxBackoffMs);
        });
      },
      Math.max(0, at - this.#c.clock.now()),
    );
  }

  async #fire(): Promise<void> {
    const state = this.#latest;
    if (!this.#leader || !state) return;
    if (this.#inflight) return; // the running send re-arms when it ends
    this.#inflight = true;
    const term = this.#term;
    const report: OutgoingReport<M> = { ...state, term, sequence: ++this.#sequence };
    let result: SendResult;
    try {
      result = await this.#c.send(report);
    } catch (err) {
      result = { ok: false, retryable: true, error: (err as Error).message };
    }
    this.#inflight = false;
    if (!this.#leader || term !== this.#term) return;
    this.stats.sent += 1;
    const now = this.#c.clock.now();
    this.stats.lastAt = now;
    if (result.ok) {
      this.#failures = 0;
      this.stats.lastAnswer = result.answer;
      this.#c.onAnswer?.(result.answer, report);
      this.stats.lastError = undefined;
      if (result.answer.written) this.stats.written += 1;
      // At least 1 s, at most a day (a timer takes at most ~24.8 days; a longer one fires at once).
      const keepaliveMs = Math.min(
        Math.max(1_000, result.answer.next_keepalive_in_s * 1000),
        MAX_KEEPALIVE_MS,
      );
      if (result.answer.reason === "deferred") {
        // Over the daily cap: the coordinator stores nothing; offer it again later.
        this.#arm(now + Math.min(this.#maxBackoffMs, keepaliveMs));
        return;
      }
      this.#acked = state.digest;
      this.#keepaliveAt = now + keepaliveMs;
    } else {
      this.stats.failed += 1;
      this.stats.lastError = result.error;
      this.#failures += 1;
      const delay = this.#backoff(result);
      this.#c.log?.(`report failed (${result.error}); retrying in ${(delay / 1000).toFixed(1)} s`);
      this.#arm(now + delay);
      return;
    }
    // A change that arrived while the send was in flight goes out after the debounce.
    const pending = this.#latest && this.#latest.digest !== this.#acked;
    this.#arm(pending ? now + this.#debounceMs : (this.#keepaliveAt ?? now + this.#maxBackoffMs));
  }

  /** Exponential backoff with jitter (backoffMs); honours Retry-After; slow for non-retryable errors. */
  #backoff(result: Extract<SendResult, { ok: false }>): number {
    if (!result.retryable) return this.#maxBackoffMs;
    return backoffMs(this.#failures, {
      minMs: this.#minBackoffMs,
      maxMs: this.#maxBackoffMs,
      random: this.#c.random,
      retryAfterMs: result.retryAfterMs,
    });
  }
}
