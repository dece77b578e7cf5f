/**
 * Membership: a pure state machine over received heartbeats and an injected clock.
 * alive -> suspect (no heartbeat for suspectAfterMs, or a hint such as a closed connection)
 * -> dead (suspicion timeout deadAfterMs) -> forgotten (tombstone forgetAfterMs).
 * A graceful leave marks a member left at once. A newer heartbeat (higher incarnation, or the
 * same incarnation with a higher sequence) brings a suspect or dead member back; a left member
 * comes back only with a higher incarnation (a restart). Per heartbeat O(1), per tick O(N).
 */
import type { Clock } from "./clock.ts";
import {
  type Heartbeat,
  HeartbeatError,
  encodeMeta,
  validateServices,
  validateUrl,
} from "./protocol.ts";
import type { LocalState, MemberState, MemberView, MembershipView } from "./types.ts";

/** Settings of the membership state machine; every one has a default. */
export interface MembershipInit {
  /** The local agent's initial state. */
  local: LocalState;
  /** This run's incarnation (higher than any earlier run of the same ID); default 1. */
  incarnation?: number;
  /** Silence after which an alive member becomes suspect; default 3000 ms. */
  suspectAfterMs?: number;
  /** Suspicion timeout: how long a member stays suspect before it is dead; default 6000 ms. */
  deadAfterMs?: number;
  /** Tombstone period: how long dead/left members are remembered; default 10 min. */
  forgetAfterMs?: number;
  /** Window in which repeated downs mark a member flapping; default 60 s. */
  flapWindowMs?: number;
  /** Downs within the window that make a member flapping; default 3. */
  flapThreshold?: number;
}

/** Default timing of the membership (see docs/BENCHMARKS.md for why). */
export const MEMBERSHIP_DEFAULTS = {
  suspectAfterMs: 3000,
  deadAfterMs: 6000,
  forgetAfterMs: 600_000,
  flapWindowMs: 60_000,
  flapThreshold: 3,
} as const;

/** One change of one member: `from`/`to` null mean unknown before / forgotten now. */
export interface MemberChange {
  id: string;
  from: MemberState | null;
  to: MemberState | null;
}

interface Entry {
  view: MemberView;
  seq: number;
  stateVersion: number;
  /** Clock ms of the last state transition (suspicion start, death, leave). */
  since: number;
  /** Clock ms of recent downs (alive -> not alive), oldest first, bounded by flapThreshold. */
  downs: number[];
}

/** What the local node puts in its next heartbeat besides its own state. */
export interface HeartbeatOptions {
  /** Set when this node is the leader: the term of its leadership. */
  leaderTerm?: number;
  /** Include url/services/meta (otherwise only stateVersion tells peers whether it changed). */
  withState?: boolean;
  /** Announce a graceful leave. */
  leaving?: boolean;
  addrs?: Uint8Array[];
  /** How many peers we are directly connected to. */
  peers?: number;
}

/** The membership state machine of one node. */
export class Membership {
  readonly self: string;
  readonly settings: Required<Omit<MembershipInit, "local" | "incarnation">>;
  #clock: Clock;
  #entries = new Map<string, Entry>();
  #sorted: string[] | null = null;
  #me: MemberView;
  #seq = 0;
  #stateVersion = 1;
  #maxTerm = 0;

  constructor(selfId: string, init: MembershipInit, clock: Clock) {
    this.self = selfId;
    this.#clock = clock;
    this.settings = {
      suspectAfterMs: init.suspectAfterMs ?? MEMBERSHIP_DEFAULTS.suspectAfterMs,
      deadAfterMs: init.deadAfterMs ?? MEMBERSHIP_DEFAULTS.deadAfterMs,
      forgetAfterMs: init.forgetAfterMs ?? MEMBERSHIP_DEFAULTS.forgetAfterMs,
      flapWindowMs: init.flapWindowMs ?? MEMBERSHIP_DEFAULTS.flapWindowMs,
      flapThreshold: init.flapThreshold ?? MEMBERSHIP_DEFAULTS.flapThreshold,
    };
    checkLocal(init.local);
    const now = clock.now();
    this.#me = {
      id: selfId,
      self: true,
      state: "alive",
      incarnation: init.incarnation ?? 1,
      flapping: false,
      ...copyLocal(init.local),
      aliveSince: now,
      lastSeen: now,
    };
  }

  /** Replaces parts of the local state; throws HeartbeatError if it breaks the schema. */
  setLocal(update: Partial<LocalState>): boolean {
    const next: LocalState = { ...copyLocal(this.#me), ...update };
    if ("meta" in update && update.meta === undefined) delete next.meta;
    checkLocal(next);
    if (JSON.stringify(copyLocal(next)) === JSON.stringify(copyLocal(this.#me))) return false;
    const fresh = copyLocal(next);
    this.#me.url = fresh.url;
    this.#me.status = fresh.status;
    this.#me.services = fresh.services;
    if (fresh.meta === undefined) delete this.#me.meta;
    else this.#me.meta = fresh.meta;
    this.#stateVersion++;
    return true;
  }

  /**
   * Starts a new incarnation after this process was frozen for longer than peers wait: refutes
   * the suspicion they raised and restarts our own settle period, as they will see it. Returns
   * the new incarnation (persist it: a restart must come back higher).
   */
  rejoin(): number {
    const now = this.#clock.now();
    this.#me.incarnation++;
    this.#seq = 0;
    this.#me.aliveSince = now;
    return this.#me.incarnation;
  }

  /** Builds our next heartbeat (advances our sequence number). */
  heartbeat(opts: HeartbeatOptions = {}): Heartbeat {
    const now = this.#clock.now();
    this.#me.lastSeen = now;
    if (opts.leaderTerm !== undefined) this.#maxTerm = Math.max(this.#maxTerm, opts.leaderTerm);
    this.#me.leaderTerm = opts.leaderTerm;
    if (opts.leaving) this.#me.state = "left";
    const hb: Heartbeat = {
      id: this.self,
      incarnation: this.#me.incarnation,
      seq: ++this.#seq,
      term: opts.leaderTerm ?? this.#maxTerm,
      leader: opts.leaderTerm !== undefined,
      leaving: opts.leaving ?? false,
      status: this.#me.status,
      uptimeMs: Math.max(0, now - this.#me.aliveSince),
      stateVersion: this.#stateVersion,
    };
    if (opts.withState) {
      hb.state = { url: this.#me.url, services: this.#me.services.map((s) => ({ ...s })) };
      if (this.#me.meta) hb.state.meta = this.#me.meta;
    }
    if (opts.addrs && opts.addrs.length > 0) hb.addrs = opts.addrs;
    if (opts.peers !== undefined) hb.peers = opts.peers;
    return hb;
  }

  /**
   * Whether a received heartbeat is stale: a duplicate, older than what we hold (sequence,
   * incarnation), or after a goodbye of the same incarnation. onHeartbeat ignores those.
   */
  isStale(hb: Heartbeat): boolean {
    const e = this.#entries.get(hb.id);
    return e !== undefined && stale(e, hb);
  }

  /** Applies a received heartbeat; returns the resulting changes (none if stale). */
  onHeartbeat(hb: Heartbeat): MemberChange[] {
    if (hb.id === this.self) return [];
    const now = this.#clock.now();
    const e = this.#entries.get(hb.id);
    if (!e) return this.#add(hb, now);
    if (stale(e, hb)) return [];
    const v = e.view;
    const newer = hb.incarnation > v.incarnation;
    this.#maxTerm = Math.max(this.#maxTerm, hb.term);
    v.incarnation = hb.incarnation;
    e.seq = hb.seq;
    v.lastSeen = now;
    // A new status or state (url, services, meta) is news for the view, even without a transition.
    let news = v.status !== hb.status;
    v.status = hb.status;
    // So is a leadership claim that starts, ends or changes its term: the election follows claims.
    const claim = hb.leader ? hb.term : undefined;
    if (v.leaderTerm !== claim) news = true;
    v.leaderTerm = claim;
    if (hb.state) {
      news ||= hb.stateVersion !== e.stateVersion || newer;
      Object.assign(v, copyLocal({ ...hb.state, status: hb.status }));
      if (!hb.state.meta) delete v.meta;
      e.stateVersion = hb.stateVersion;
    }
    if (hb.leaving) return this.#transition(e, "left", now);
    if (v.state === "alive") return news ? [{ id: v.id, from: "alive", to: "alive" }] : [];
    v.aliveSince = newer ? now - hb.uptimeMs : now;
    return this.#transition(e, "alive", now);
  }

  /** A hint that a member may be gone (e.g. every connection to it closed): suspect it now. */
  suspect(id: string): MemberChange[] {
    const e = this.#entries.get(id);
    if (e?.view.state !== "alive") return [];
    return this.#transition(e, "suspect", this.#clock.now());
  }

  /**
   * Forgives `ms` of silence for every member: call it when this process itself was stalled
   * (timers fired late), so that queued heartbeats are not mistaken for missing ones.
   */
  grace(ms: number): void {
    for (const e of this.#entries.values()) {
      if (e.view.state === "alive") e.view.lastSeen += ms;
      else if (e.view.state === "suspect") e.since += ms;
    }
  }

  /** Advances timeouts: suspicion, death, forgetting, flapping decay. O(N). */
  tick(): MemberChange[] {
    const now = this.#clock.now();
    const s = this.settings;
    const changes: MemberChange[] = [];
    for (const e of this.#entries.values()) {
      const v = e.view;
      if (v.state === "alive" && now - v.lastSeen > s.suspectAfterMs) {
        changes.push(...this.#transition(e, "suspect", now));
      } else if (v.state === "suspect" && now - e.since >= s.deadAfterMs) {
        changes.push(...this.#transition(e, "dead", now));
      } else if ((v.state === "dead" || v.state === "left") && now - e.since >= s.forgetAfterMs) {
        this.#entries.delete(v.id);
        this.#sorted = null;
        changes.push({ id: v.id, from: v.state, to: null });
        continue;
      }
      if (v.flapping && this.#recentDowns(e, now) < s.flapThreshold) {
        v.flapping = false;
        changes.push({ id: v.id, from: v.state, to: v.state });
      }
    }
    return changes;
  }

  /** One member as seen now (a copy), or undefined. */
  member(id: string): MemberView | undefined {
    if (id === this.self) return this.#selfView();
    const e = this.#entries.get(id);
    return e ? copyView(e.view) : undefined;
  }

  /** How many members (self included) satisfy `pred`, without copying any. */
  count(pred: (m: Readonly<MemberView>) => boolean): number {
    let n = pred(this.#me) ? 1 : 0;
    for (const e of this.#entries.values()) if (pred(e.view)) n++;
    return n;
  }

  /** The ids of the members (self included) that satisfy `pred`, in no particular order. */
  ids(pred: (m: Readonly<MemberView>) => boolean): string[] {
    const out = pred(this.#me) ? [this.self] : [];
    for (const e of this.#entries.values()) if (pred(e.view)) out.push(e.view.id);
    return out;
  }

  /** Number of members known, self included. */
  get size(): number {
    return this.#entries.size + 1;
  }

  /** The whole view (copies), self included, sorted by id. */
  view(): MembershipView {
    if (!this.#sorted) this.#sorted = [...this.#entries.keys(), this.self].sort();
    const members = this.#sorted.map((id) =>
      id === this.self ? this.#selfView() : copyView((this.#entries.get(id) as Entry).view),
    );
    return { self: this.self, now: this.#clock.now(), maxTerm: this.#maxTerm, members };
  }

  #selfView(): MemberView {
    return copyView(this.#me);
  }

  #add(hb: Heartbeat, now: number): MemberChange[] {
    this.#maxTerm = Math.max(this.#maxTerm, hb.term);
    const view: MemberView = {
      id: hb.id,
      self: false,
      state: hb.leaving ? "left" : "alive",
      incarnation: hb.incarnation,
      flapping: false,
      url: hb.state?.url ?? "",
      status: hb.status,
      services: hb.state?.services ?? [],
      aliveSince: now - hb.uptimeMs,
      lastSeen: now,
      leaderTerm: hb.leader ? hb.term : undefined,
    };
    if (hb.state?.meta) view.meta = hb.state.meta;
    const stateVersion = hb.state ? hb.stateVersion : 0;
    this.#entries.set(hb.id, { view, seq: hb.seq, stateVersion, since: now, downs: [] });
    this.#sorted = null;
    // A stranger's goodbye is only a tombstone (to refuse its stale messages), not news.
    return hb.leaving ? [] : [{ id: hb.id, from: null, to: "alive" }];
  }

  #transition(e: Entry, to: MemberState, now: number): MemberChange[] {
    const from = e.view.state;
    if (from === to) return [];
    e.view.state = to;
    e.since = now;
    if (from === "alive") {
      e.downs.push(now);
      if (e.downs.length > this.settings.flapThreshold) e.downs.shift();
      if (this.#recentDowns(e, now) >= this.settings.flapThreshold) e.view.flapping = true;
    }
    return [{ id: e.view.id, from, to }];
  }

  #recentDowns(e: Entry, now: number): number {
    let n = 0;
    for (const t of e.downs) if (now - t < this.settings.flapWindowMs) n++;
    return n;
  }
}

function stale(e: Entry, hb: Heartbeat): boolean {
  const inc = e.view.incarnation;
  if (hb.incarnation !== inc) return hb.incarnation < inc;
  return hb.seq <= e.seq || e.view.state === "left";
}

function copyLocal(s: LocalState): LocalState {
  const out: LocalState = {
    url: s.url,
    status: s.status,
    services: s.services.map((x) => ({ ...x })),
  };
  if (s.meta !== undefined) out.meta = structuredClone(s.meta);
  return out;
}

function copyView(v: MemberView): MemberView {
  return { ...v, services: v.services.map((s) => ({ ...s })) };
}

/** Validates a local state against the heartbeat schema (throws HeartbeatError). */
export function checkLocal(s: LocalState): void {
  if (s.status !== "online" && s.status !== "degraded") {
    throw new HeartbeatError("Local status must be online or degraded");
  }
  validateUrl(s.url);
  validateServices(s.services);
  encodeMeta(s.meta);
}
