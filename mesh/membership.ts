/**
 * Membership: a pure state machine over received heartbeats and an injected clock.
 * alive -> suspect (no heartbeat for suspectAfterMs, or a hint such as a closed connection)
 * -> dead (suspicion timeout deadAfterMs) -> forgotten (tombstone forgetAfterMs).
 * A graceful leave marks a member left at once. A newer heartbeat (higher incarnation, or the
 * same incarnation with a higher sequence) brings a suspect or dead member back; a left member
 * comes back only with a higher incarnation (a restart). A forgotten member leaves a tombstone
 * (its last incarnation and sequence, a bounded number of them), so a recorded stream of its
 * heartbeats cannot bring it back later. Settling is timed by our clock: a member's own word
 * about its uptime is believed only as far back as we have known of it (`heardOf`), and for
 * uptimeCreditMs at least. Per heartbeat O(1), per tick O(N).
 */
import type { Clock } from "./clock.ts";
import {
  type Accusation,
  type Heartbeat,
  HeartbeatError,
  LIMITS,
  encodeMeta,
  saturate,
  validateServices,
  validateUrl,
} from "./protocol.ts";
import { watchedBy, watchersOf } from "./ring.ts";
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
  /** Most members known at once, self included; heartbeats of further strangers are refused; default 1000. */
  maxMembers?: number;
  /** Most forgotten members whose last incarnation and sequence are remembered; default 4096. */
  maxTombstones?: number;
  /**
   * How much of a member's self-reported uptime we believe when we see it come up, at least;
   * default 1000 ms. Beyond that we believe it only as far back as we have known of the member
   * (`heardOf`: our bootstrap list, peer exchange, a discovery, a connection), so that nodes
   * that started together agree on when each has settled, while a stranger that claims a long
   * uptime still waits out the settle period as WE measure it.
   */
  uptimeCreditMs?: number;
  /**
   * How many members watch each one (the next ones in ID order, mesh/ring.ts); default every
   * other member. Only a watcher judges a member's silence at suspectAfterMs; the others wait
   * `unwatchedSuspectAfterMs` (they hear it only now and then) and take its watchers'
   * accusations (`accuse`).
   */
  watchers?: number;
  /** Silence after which a member we do not watch becomes suspect; default suspectAfterMs. */
  unwatchedSuspectAfterMs?: number;
  /**
   * Least time between two refutations of accusations of us; default suspectAfterMs / 3. A
   * refutation reaches everyone, and a member that heard us within suspectAfterMs / 2 ignores an
   * accusation, so one per window answers every accusation: more would only let an accuser make
   * us flood at its rate.
   */
  refuteEveryMs?: number;
}

/** Default timing of the membership (see docs/BENCHMARKS.md for why). */
export const MEMBERSHIP_DEFAULTS = {
  suspectAfterMs: 3000,
  deadAfterMs: 6000,
  forgetAfterMs: 600_000,
  flapWindowMs: 60_000,
  flapThreshold: 3,
  maxMembers: 1000,
  maxTombstones: 4096,
  uptimeCreditMs: 1000,
  watchers: Number.POSITIVE_INFINITY,
} as const;

/** One change of one member: `from`/`to` null mean unknown before / forgotten now. */
export interface MemberChange {
  id: string;
  from: MemberState | null;
  to: MemberState | null;
  /** Set when a heartbeat of the member refuted an accusation we had taken. */
  refuted?: true;
  /** Set when our own judgement confirmed a suspicion we had taken on one watcher's word. */
  confirmed?: true;
}

/** What became of an accusation (`Membership.accuse`). */
export type AccusationOutcome =
  /** The accused is suspect now. */
  | "taken"
  /** We are the accused: refute it (send a fresh heartbeat to everyone). */
  | "self"
  /** We are the accused, and refuted an accusation less than refuteEveryMs ago: nothing to do. */
  | "refuted"
  /** A second watcher accuses a member we suspect on one watcher's word: confirmed. */
  | "confirmed"
  /** Not one of the accused's watchers in our view: ignored. */
  | "not-watcher"
  /** We heard the accused ourselves a moment ago: ignored. */
  | "heard"
  /** Unknown, not alive, or another incarnation: ignored. */
  | "moot";

interface Entry {
  view: MemberView;
  seq: number;
  stateVersion: number;
  /** Clock ms of the last heartbeat taken from the member itself (vouches move only lastSeen). */
  heard: number;
  /** Clock ms of the last state transition (suspicion start, death, leave). */
  since: number;
  /** Clock ms of recent downs (alive -> not alive), oldest first, bounded by flapThreshold. */
  downs: number[];
  /** The highest state version the member announced (its heartbeats carry it even without state). */
  announced: number;
  /** Suspect on an accusation (not by our own judgement): a heartbeat refutes it. */
  accused?: boolean;
  /** Who accused it in its current suspicion (the second one confirms it). */
  accusers?: string[];
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
  /** Ask the receiver for its full state. */
  requestState?: boolean;
  /** Members we watch and suspect of silence. */
  accuse?: Accusation[];
}

/** What a forgotten member leaves behind: the newest heartbeat of it we had taken. */
interface Tombstone {
  incarnation: number;
  seq: number;
  /** It had said goodbye: that incarnation never comes back. */
  left: boolean;
}

/** The membership state machine of one node. */
export class Membership {
  readonly self: string;
  readonly settings: Required<Omit<MembershipInit, "local" | "incarnation">>;
  /** Ids of alive and suspect members, self included, sorted (the watch ring); null: stale. */
  #ring: string[] | null = null;
  /** The members we watch (cached with the ring). */
  #watched: Set<string> | null = null;
  #clock: Clock;
  #entries = new Map<string, Entry>();
  /** Forgotten members, oldest first (a Map keeps insertion order), at most maxTombstones. */
  #tombstones = new Map<string, Tombstone>();
  /** When we first heard of each id (before or without seeing it), oldest first, bounded. */
  #heard = new Map<string, number>();
  #sorted: string[] | null = null;
  #me: MemberView;
  #seq = 0;
  #stateVersion = 1;
  #maxTerm = 0;
  /** Clock ms of our last refutation (see refuteEveryMs). */
  #refutedAt = Number.NEGATIVE_INFINITY;

  constructor(selfId: string, init: MembershipInit, clock: Clock) {
    this.self = selfId;
    this.#clock = clock;
    this.settings = {
      suspectAfterMs: init.suspectAfterMs ?? MEMBERSHIP_DEFAULTS.suspectAfterMs,
      deadAfterMs: init.deadAfterMs ?? MEMBERSHIP_DEFAULTS.deadAfterMs,
      forgetAfterMs: init.forgetAfterMs ?? MEMBERSHIP_DEFAULTS.forgetAfterMs,
      flapWindowMs: init.flapWindowMs ?? MEMBERSHIP_DEFAULTS.flapWindowMs,
      flapThreshold: init.flapThreshold ?? MEMBERSHIP_DEFAULTS.flapThreshold,
      maxMembers: init.maxMembers ?? MEMBERSHIP_DEFAULTS.maxMembers,
      maxTombstones: init.maxTombstones ?? MEMBERSHIP_DEFAULTS.maxTombstones,
      uptimeCreditMs: init.uptimeCreditMs ?? MEMBERSHIP_DEFAULTS.uptimeCreditMs,
      watchers: init.watchers ?? MEMBERSHIP_DEFAULTS.watchers,
      unwatchedSuspectAfterMs:
        init.unwatchedSuspectAfterMs ?? init.suspectAfterMs ?? MEMBERSHIP_DEFAULTS.suspectAfterMs,
      refuteEveryMs:
        init.refuteEveryMs ?? (init.suspectAfterMs ?? MEMBERSHIP_DEFAULTS.suspectAfterMs) / 3,
    };
    checkLocal(init.local);
    const now = clock.now();
    this.#me = {
      id: selfId,
      self: true,
      state: "alive",
      incarnation: Math.min(LIMITS.incarnation, init.incarnation ?? 1),
      flapping: false,
      ...copyLocal(init.local),
      canLead: init.local.canLead !== false,
      aliveSince: now,
      lastSeen: now,
      since: now,
    };
  }

  /** Our state version: bumped by every real change of our state (heartbeats carry it). */
  get stateVersion(): number {
    return this.#stateVersion;
  }

  /** Replaces parts of the local state; throws HeartbeatError if it breaks the schema. */
  setLocal(update: Partial<LocalState>): boolean {
    const next: LocalState = { ...copyLocal(this.#me), ...update };
    if ("meta" in update && update.meta === undefined) delete next.meta;
    next.canLead = next.canLead !== false;
    checkLocal(next);
    if (JSON.stringify(copyLocal(next)) === JSON.stringify(copyLocal(this.#me))) return false;
    const fresh = copyLocal(next);
    this.#me.url = fresh.url;
    this.#me.status = fresh.status;
    this.#me.services = fresh.services;
    this.#me.canLead = fresh.canLead !== false;
    if (fresh.meta === undefined) delete this.#me.meta;
    else this.#me.meta = fresh.meta;
    this.#stateVersion = saturate(this.#stateVersion, "stateVersion");
    return true;
  }

  /**
   * Starts a new incarnation after this process was frozen for longer than peers wait: refutes
   * the suspicion they raised and restarts our own settle period, as they will see it. Returns
   * the new incarnation (persist it: a restart must come back higher).
   */
  rejoin(): number {
    const now = this.#clock.now();
    this.#me.incarnation = saturate(this.#me.incarnation, "incarnation");
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
    this.#seq = saturate(this.#seq, "seq");
    const hb: Heartbeat = {
      id: this.self,
      incarnation: this.#me.incarnation,
      seq: this.#seq,
      term: Math.min(LIMITS.term, opts.leaderTerm ?? this.#maxTerm),
      leader: opts.leaderTerm !== undefined,
      leaving: opts.leaving ?? false,
      canLead: this.#me.canLead,
      status: this.#me.status,
      uptimeMs: Math.min(LIMITS.uptimeMs, Math.max(0, now - this.#me.aliveSince)),
      stateVersion: this.#stateVersion,
    };
    if (opts.withState) {
      hb.state = { url: this.#me.url, services: this.#me.services.map((s) => ({ ...s })) };
      if (this.#me.meta) hb.state.meta = this.#me.meta;
    }
    if (opts.addrs && opts.addrs.length > 0) hb.addrs = opts.addrs;
    if (opts.peers !== undefined) hb.peers = opts.peers;
    if (opts.requestState) hb.requestState = true;
    if (opts.accuse && opts.accuse.length > 0) hb.accuse = opts.accuse;
    return hb;
  }

  /**
   * Whether a received heartbeat is stale: a duplicate, older than what we hold (sequence,
   * incarnation) or than the tombstone of a forgotten member, or after a goodbye of the same
   * incarnation. onHeartbeat ignores those.
   */
  isStale(hb: Heartbeat): boolean {
    const e = this.#entries.get(hb.id);
    if (e !== undefined) return stale(e.view.incarnation, e.seq, e.view.state === "left", hb);
    const t = this.#tombstones.get(hb.id);
    return t !== undefined && stale(t.incarnation, t.seq, t.left, hb);
  }

  /** Whether a heartbeat of `id` may be taken: a known member, or room for one more. */
  admits(id: string): boolean {
    return id === this.self || this.#entries.has(id) || this.size < this.settings.maxMembers;
  }

  /** Applies a received heartbeat; returns the resulting changes (none if stale or refused). */
  onHeartbeat(hb: Heartbeat): MemberChange[] {
    if (hb.id === this.self || this.isStale(hb) || !this.admits(hb.id)) return [];
    const now = this.#clock.now();
    const e = this.#entries.get(hb.id);
    if (!e) return this.#add(hb, now);
    const v = e.view;
    const newer = hb.incarnation > v.incarnation;
    // How long we had not heard it: an accusation excuses no silence longer than we allow.
    const silentFor = now - e.heard;
    this.#maxTerm = Math.max(this.#maxTerm, hb.term);
    v.incarnation = hb.incarnation;
    e.seq = hb.seq;
    v.lastSeen = now;
    e.heard = now;
    e.announced = newer ? hb.stateVersion : Math.max(e.announced, hb.stateVersion);
    // A new status or state (url, services, meta) is news for the view, even without a transition.
    let news = v.status !== hb.status || v.canLead !== hb.canLead;
    v.status = hb.status;
    v.canLead = hb.canLead;
    // So is a leadership claim that starts, ends or changes its term: the election follows claims.
    const claim = hb.leader ? hb.term : undefined;
    if (v.leaderTerm !== claim) news = true;
    v.leaderTerm = claim;
    if (hb.state) {
      news ||= hb.stateVersion !== e.stateVersion || newer;
      Object.assign(v, copyLocal({ ...hb.state, status: hb.status }));
      v.canLead = hb.canLead;
      if (!hb.state.meta) delete v.meta;
      e.stateVersion = hb.stateVersion;
    } else if (newer) {
      // State versions start again with each run: what we hold is the old run's.
      e.stateVersion = 0;
    }
    if (hb.leaving) return this.#transition(e, "left", now);
    if (v.state === "alive") return news ? [{ id: v.id, from: "alive", to: "alive" }] : [];
    // Refuted: it was suspect only on another member's word, and speaks for itself now. It was
    // alive all along as far as we know: its settle period goes on.
    if (e.accused && !newer && v.state === "suspect" && silentFor <= this.#limit(e)) {
      const changes = this.#transition(e, "alive", now);
      for (const c of changes) c.refuted = true;
      return changes;
    }
    // Suspect on another's word, but silent longer than we allow: a real down after all.
    if (e.accused) this.#countDown(e, now);
    // Back: its settle period starts now, as we see it (a restart: less its credited uptime).
    v.aliveSince = newer ? now - this.#credit(hb, now) : now;
    return this.#transition(e, "alive", now);
  }

  /**
   * Another member (`accuser`) floods that it suspects `id` in its `incarnation`. Taken (the
   * member becomes suspect, as SWIM's suspicion) only if the accuser is one of its watchers in
   * our view of the ring, it is that incarnation, alive, and we have not heard it ourselves
   * within half the suspicion timeout: an accusation alone never overrides what we hear, and the
   * accused refutes it with a fresh heartbeat (it brings it back without a settle period, and an
   * accusation counts as no down for flapping). It still dies after deadAfterMs if no heartbeat
   * of it comes. Suspect on one watcher's word it is `accused` in the view (the election keeps a
   * leader that is only that) until a second watcher accuses it, we judge its silence ourselves,
   * or it dies. Accusations of us are answered at most once per refuteEveryMs ("refuted").
   */
  accuse(
    accuser: string,
    id: string,
    incarnation: number,
  ): { outcome: AccusationOutcome; changes: MemberChange[] } {
    const now = this.#clock.now();
    if (id === this.self) {
      if (incarnation !== this.#me.incarnation) return { outcome: "moot", changes: [] };
      if (now - this.#refutedAt < this.settings.refuteEveryMs) {
        return { outcome: "refuted", changes: [] };
      }
      this.#refutedAt = now;
      return { outcome: "self", changes: [] };
    }
    const e = this.#entries.get(id);
    const state = e?.view.state;
    if (!e || e.view.incarnation !== incarnation) return { outcome: "moot", changes: [] };
    // Suspect on one watcher's word, and another one accuses it too: confirmed.
    const second = state === "suspect" && e.view.accused === true;
    if (state !== "alive" && !second) return { outcome: "moot", changes: [] };
    if (!watchersOf(this.ring(), id, this.settings.watchers).includes(accuser)) {
      return { outcome: "not-watcher", changes: [] };
    }
    if (second) {
      if (e.accusers?.includes(accuser)) return { outcome: "moot", changes: [] };
      delete e.view.accused;
      e.accusers?.push(accuser);
      return { outcome: "confirmed", changes: [{ id, from: "suspect", to: "suspect" }] };
    }
    if (now - e.heard < this.settings.suspectAfterMs / 2) return { outcome: "heard", changes: [] };
    const changes = this.#transition(e, "suspect", now, false);
    e.accused = true;
    e.accusers = [accuser];
    e.view.accused = true;
    return { outcome: "taken", changes };
  }

  /** Whether the member announced a state version newer than the state we hold of it. */
  needsState(id: string): boolean {
    const e = this.#entries.get(id);
    return e !== undefined && e.announced > e.stateVersion;
  }

  /** The ids of alive and suspect members, self included, sorted: the watch ring. */
  ring(): readonly string[] {
    if (!this.#ring) {
      this.#ring = this.ids((x) => x.state === "alive" || x.state === "suspect").sort();
    }
    return this.#ring;
  }

  /** The members that watch `id` (default: us): whom it sends its heartbeat to every interval. */
  watchers(id = this.self): string[] {
    return watchersOf(this.ring(), id, this.settings.watchers);
  }

  /** Whether we watch `id` (judge its silence at suspectAfterMs). */
  watching(id: string): boolean {
    if (!this.#watched)
      this.#watched = new Set(watchedBy(this.ring(), this.self, this.settings.watchers));
    return this.#watched.has(id);
  }

  /** Changes the silence limit of the members we do not watch (it grows with the cluster). */
  setUnwatchedSuspectAfter(ms: number): void {
    (this.settings as { unwatchedSuspectAfterMs: number }).unwatchedSuspectAfterMs = Math.max(
      this.settings.suspectAfterMs,
      ms,
    );
  }

  /** How long `e` may be silent before we suspect it. */
  #limit(e: Entry): number {
    return this.watching(e.view.id)
      ? this.settings.suspectAfterMs
      : this.settings.unwatchedSuspectAfterMs;
  }

  /** A hint that a member may be gone (e.g. every connection to it closed): suspect it now. */
  suspect(id: string): MemberChange[] {
    const e = this.#entries.get(id);
    if (e?.view.state !== "alive") return [];
    return this.#transition(e, "suspect", this.#clock.now());
  }

  /**
   * Proof that a member's process is gone: its host refused a connection, and again on a redial
   * (a network cut refuses nothing, it drops). Dead at once, with `evidence: "refused"`; a newer
   * heartbeat still brings it back.
   */
  refused(id: string): MemberChange[] {
    const e = this.#entries.get(id);
    if (e?.view.state !== "alive" && e?.view.state !== "suspect") return [];
    const changes = this.#transition(e, "dead", this.#clock.now());
    e.view.evidence = "refused";
    return changes;
  }

  /**
   * A suspect member's host accepts connections: its process fell silent while the network
   * between us works, so we are not the one cut off (the election's isolation rule). Reported as
   * a change so that the election runs again.
   */
  reachable(id: string): MemberChange[] {
    const e = this.#entries.get(id);
    if (e?.view.state !== "suspect" || e.view.reachable) return [];
    e.view.reachable = true;
    return [{ id, from: "suspect", to: "suspect" }];
  }

  /**
   * The alive members (self aside) we have heard nothing of, first- or second-hand, for `ms`
   * (plus, for a member we do not watch, the longer silence we allow it).
   */
  quiet(ms: number): string[] {
    const now = this.#clock.now();
    const out: string[] = [];
    for (const e of this.#entries.values()) {
      if (e.view.state !== "alive") continue;
      if (now - e.view.lastSeen >= ms + this.#limit(e) - this.settings.suspectAfterMs) {
        out.push(e.view.id);
      }
    }
    return out;
  }

  /** How long ago we last took a heartbeat of `id` ourselves; undefined unless alive or suspect. */
  heardAgo(id: string): number | undefined {
    const e = this.#entries.get(id);
    if (e?.view.state !== "alive" && e?.view.state !== "suspect") return undefined;
    return Math.max(0, this.#clock.now() - e.heard);
  }

  /**
   * Another member heard `id` at `heardAt` (our clock: the time we asked, less the age it told):
   * an alive member's silence counts from then, so a heartbeat held up on our own link (TCP
   * retransmissions under loss) is not a suspicion. Only the member's own heartbeats count as
   * heard by us (`heardAgo`), so vouches are never passed on. True if it moved the silence.
   */
  vouch(id: string, heardAt: number): boolean {
    const e = this.#entries.get(id);
    const at = Math.min(this.#clock.now(), heardAt);
    if (e?.view.state !== "alive" || at <= e.view.lastSeen) return false;
    e.view.lastSeen = at;
    return true;
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
      if (v.state === "alive" && now - v.lastSeen > this.#limit(e)) {
        changes.push(...this.#transition(e, "suspect", now));
      } else if (v.state === "suspect" && now - e.since >= s.deadAfterMs) {
        changes.push(...this.#transition(e, "dead", now));
      } else if ((v.state === "dead" || v.state === "left") && now - e.since >= s.forgetAfterMs) {
        this.#entries.delete(v.id);
        this.#bury(v.id, { incarnation: v.incarnation, seq: e.seq, left: v.state === "left" });
        this.#sorted = null;
        this.#ring = null;
        this.#watched = null;
        changes.push({ id: v.id, from: v.state, to: null });
        continue;
      } else if (v.accused && now - v.lastSeen > this.#limit(e)) {
        // Suspect on one watcher's word, and now silent longer than we allow: ours too.
        delete v.accused;
        changes.push({ id: v.id, from: "suspect", to: "suspect", confirmed: true });
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

  /**
   * Notes that we know of `id` now (it is in our bootstrap list, a neighbour named it, it was
   * discovered or connected): its uptime is believed as far back as this (see uptimeCreditMs).
   * The first time counts; at most maxTombstones ids are remembered.
   */
  heardOf(id: string): void {
    if (id === this.self || this.#heard.has(id)) return;
    this.#heard.set(id, this.#clock.now());
    if (this.#heard.size > this.settings.maxTombstones) {
      this.#heard.delete(this.#heard.keys().next().value as string);
    }
  }

  /** How much of its uptime a member is believed when we see it come up (see uptimeCreditMs). */
  #credit(hb: Heartbeat, now: number): number {
    const known = now - (this.#heard.get(hb.id) ?? now);
    return Math.min(hb.uptimeMs, Math.max(this.settings.uptimeCreditMs, known));
  }

  /** Remembers a forgotten member's last heartbeat; the oldest tombstone goes when full. */
  #bury(id: string, t: Tombstone): void {
    this.#tombstones.delete(id);
    this.#tombstones.set(id, t);
    while (this.#tombstones.size > this.settings.maxTombstones) {
      const oldest = this.#tombstones.keys().next().value as string;
      this.#tombstones.delete(oldest);
    }
  }

  #add(hb: Heartbeat, now: number): MemberChange[] {
    this.#maxTerm = Math.max(this.#maxTerm, hb.term);
    this.#tombstones.delete(hb.id);
    this.heardOf(hb.id);
    const view: MemberView = {
      id: hb.id,
      self: false,
      state: hb.leaving ? "left" : "alive",
      incarnation: hb.incarnation,
      flapping: false,
      url: hb.state?.url ?? "",
      status: hb.status,
      services: hb.state?.services ?? [],
      canLead: hb.canLead,
      aliveSince: now - this.#credit(hb, now),
      lastSeen: now,
      since: now,
      leaderTerm: hb.leader ? hb.term : undefined,
    };
    if (hb.state?.meta) view.meta = hb.state.meta;
    const stateVersion = hb.state ? hb.stateVersion : 0;
    this.#entries.set(hb.id, {
      view,
      seq: hb.seq,
      stateVersion,
      heard: now,
      since: now,
      downs: [],
      announced: hb.stateVersion,
    });
    this.#sorted = null;
    this.#ring = null;
    this.#watched = null;
    // A stranger's goodbye is only a tombstone (to refuse its stale messages), not news.
    return hb.leaving ? [] : [{ id: hb.id, from: null, to: "alive" }];
  }

  #transition(e: Entry, to: MemberState, now: number, down = true): MemberChange[] {
    const from = e.view.state;
    if (from === to) return [];
    e.view.state = to;
    e.since = now;
    e.view.since = now;
    e.accused = false;
    e.accusers = undefined;
    delete e.view.accused;
    delete e.view.evidence;
    delete e.view.reachable;
    if ((from === "alive" || from === "suspect") !== (to === "alive" || to === "suspect")) {
      this.#ring = null;
      this.#watched = null;
    }
    if (from === "alive" && down) this.#countDown(e, now);
    return [{ id: e.view.id, from, to }];
  }

  /** One down of the member, for flapping. */
  #countDown(e: Entry, now: number): void {
    e.downs.push(now);
    if (e.downs.length > this.settings.flapThreshold) e.downs.shift();
    if (this.#recentDowns(e, now) >= this.settings.flapThreshold) e.view.flapping = true;
  }

  #recentDowns(e: Entry, now: number): number {
    let n = 0;
    for (const t of e.downs) if (now - t < this.settings.flapWindowMs) n++;
    return n;
  }
}

/** Whether `hb` is no newer than the last one taken (incarnation, seq), or follows a goodbye. */
function stale(incarnation: number, seq: number, left: boolean, hb: Heartbeat): boolean {
  if (hb.incarnation !== incarnation) return hb.incarnation < incarnation;
  return hb.seq <= seq || left;
}

function copyLocal(s: LocalState): LocalState {
  const out: LocalState = {
    url: s.url,
    status: s.status,
    services: s.services.map((x) => ({ ...x })),
  };
  if (s.meta !== undefined) out.meta = structuredClone(s.meta);
  if (s.canLead !== undefined) out.canLead = s.canLead;
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
