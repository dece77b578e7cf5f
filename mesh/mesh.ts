/**
 * The mesh runtime: one libp2p node gossiping signed heartbeats on a per-cluster topic, feeding
 * the pure membership state machine and election, and emitting "leader", "member-up",
 * "member-down" and "view" events. It owns every timer and clears them all in stop(). Nothing
 * a timer or an event handler does may throw out of it: a fault is logged and counted
 * (`stats().faults`), never fatal.
 */
import "./shim.ts";
import type { PeerId, PeerInfo } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { TypedEventEmitter } from "main-event";
import {
  type Mesh,
  type MeshComponents,
  type MeshEventMap,
  type MeshEvents,
  type MeshInit,
  type MeshStats,
  MeshStateError,
} from "./api.ts";
import { type Clock, systemClock } from "./clock.ts";
import { Dialer, parseBootstrap } from "./dialer.ts";
import { DEFAULT_SETTLE_MS, elect } from "./election.ts";
import { allowListGater, checkExposure } from "./exposure.ts";
import { type Identity, loadIdentity, saveIncarnation } from "./identity.ts";
import { MEMBERSHIP_DEFAULTS, type MemberChange, Membership } from "./membership.ts";
import { type MeshLibp2p, createNode } from "./node.ts";
import { PeerExchange, type PexPeer, tcpOnly } from "./pex.ts";
import { HeartbeatInbox } from "./inbox.ts";
import {
  type Accusation,
  type Heartbeat,
  LIMITS,
  MAX_HEARTBEAT_BYTES,
  directTopic,
  encodeHeartbeat,
  heartbeatTopic,
} from "./protocol.ts";
import { DEFAULT_WATCHERS } from "./ring.ts";
import { signHeartbeat } from "./signing.ts";
import { NAME_PATTERN } from "./schema.ts";
import { Vouches } from "./vouch.ts";
import type { Leader, LocalState, ViewSnapshot } from "./types.ts";

/** Creates a mesh node (not started). */
export function createMesh(init: MeshInit, components: MeshComponents = {}): Mesh {
  return new MeshNode(init, components);
}

class MeshNode extends TypedEventEmitter<MeshEventMap> implements Mesh {
  #init: MeshInit;
  #c: MeshComponents;
  #clock: Clock;
  #log: (line: string) => void;
  #cluster: string;
  #topic: string;
  #mdnsTag: string;
  #interval: number;
  #settleMs: number;
  #tickMs: number;
  #identity: Identity | undefined;
  #node: MeshLibp2p | undefined;
  #dialer: Dialer | undefined;
  #pex: PeerExchange | undefined;
  #vouches: Vouches | undefined;
  #m: Membership | undefined;
  #leader: Leader | null = null;
  #running = false;
  #timers = new Map<string, unknown>();
  #lastTick = 0;
  #fullStateBeats = 0;
  #watchers: number;
  /** What our last flood said that others' views use (status, lead, state version). */
  #floodedKey: string | undefined;
  /** When the next occasional flood is due (clock ms). */
  #floodDue = 0;
  /** The largest ring we have been in: the silence we allow unwatched members follows it. */
  #maxRing = 1;
  /** Silent members we watch, to accuse in the next flood. */
  #accusations: Accusation[] = [];
  /** Rounds left in which we flood (with our state) after a start or rejoin: a join is news. */
  #joinRounds = 0;
  /** An accusation of us came: refute it in the next flood. */
  #refute = false;
  /** When we last sent our full state to each member, and asked each for its own. */
  #stateSentAt = new Map<string, number>();
  #stateAskedAt = new Map<string, number>();
  #stats: MeshStats = {
    received: 0,
    accepted: 0,
    stale: 0,
    invalid: 0,
    spoofed: 0,
    sent: 0,
    sendFailed: 0,
    rejoins: 0,
    repairs: 0,
    refused: 0,
    faults: 0,
    pexDropped: 0,
    introductionsDialed: 0,
    introductionsDropped: 0,
    dialFailures: 0,
    refusedTwice: 0,
    reachable: 0,
    vouched: 0,
    direct: 0,
    floods: 0,
    bytesSent: 0,
    accusations: 0,
    accused: 0,
    refuted: 0,
    stateRequests: 0,
  };

  constructor(init: MeshInit, components: MeshComponents) {
    super();
    this.#init = init;
    this.#c = components;
    this.#clock = components.clock ?? systemClock;
    this.#log = components.logger ?? (() => {});
    const cluster = init.cluster ?? "default";
    // The one name rule (mesh/schema.ts's copy of the coordinator's; test/name-rule.test.ts
    // and test/cluster-name.test.ts check they agree).
    if (!NAME_PATTERN.test(cluster)) {
      throw new MeshStateError(
        "Cluster name must be 1-64 letters, digits or . _ -, starting with a letter or digit",
      );
    }
    this.#cluster = cluster;
    this.#topic = heartbeatTopic(cluster);
    this.#mdnsTag = `_rollcall-${cluster.toLowerCase().replace(/[^a-z0-9-]/g, "-")}._udp.local`;
    this.#interval = init.heartbeatIntervalMs ?? 1000;
    this.#settleMs = init.settleMs ?? DEFAULT_SETTLE_MS;
    this.#tickMs = Math.max(20, Math.min(250, Math.floor(this.#interval / 4)));
    // The watch ring by default (DEFAULT_WATCHERS); Infinity: every member floods every
    // heartbeat to every peer (the way before heartbeat version 3's ring, kept for comparison).
    this.#watchers = Math.max(1, Math.floor(init.watchers || DEFAULT_WATCHERS));
  }

  get id(): string {
    if (!this.#identity) throw new MeshStateError("Mesh id is known only after start()");
    return this.#identity.peerId.toString();
  }

  get libp2p(): MeshLibp2p | undefined {
    return this.#node;
  }

  async start(): Promise<void> {
    if (this.#running || this.#node) throw new MeshStateError("Mesh is already started");
    const init = this.#init;
    // A bad address is a settings error: refuse to start rather than log it every second.
    const bootstrap = parseBootstrap(init.bootstrap ?? []);
    const listen = init.listen ?? ["/ip4/127.0.0.1/tcp/0"];
    checkExposure({
      listen,
      psk: init.psk,
      insecureOpenMesh: init.insecureOpenMesh,
      mdns: init.mdns ?? false,
    });
    const allowed = init.allowPeers ? new Set(init.allowPeers.map(checkPeerId)) : undefined;
    const identity = await loadIdentity(init.dataDir, { logger: this.#log });
    this.#identity = identity;
    const self = identity.peerId.toString();
    const m = new Membership(
      self,
      {
        local: init.local,
        incarnation: identity.incarnation,
        suspectAfterMs: init.suspectAfterMs ?? MEMBERSHIP_DEFAULTS.suspectAfterMs,
        deadAfterMs: init.deadAfterMs ?? MEMBERSHIP_DEFAULTS.deadAfterMs,
        forgetAfterMs: init.forgetAfterMs ?? MEMBERSHIP_DEFAULTS.forgetAfterMs,
        watchers: this.#watchers,
      },
      this.#clock,
    );
    this.#m = m;
    this.#leader = null;
    // We know of our bootstrap peers from now: their uptime counts as far back as this.
    for (const b of bootstrap) if (b.id !== undefined) m.heardOf(b.id);
    allowed?.add(self);
    const gater = allowed
      ? allowListGater(allowed, this.#c.connectionGater)
      : this.#c.connectionGater;
    const may = (id: string) => allowed === undefined || allowed.has(id);
    const node = await createNode(
      {
        privateKey: identity.privateKey,
        listen,
        mdns: init.mdns ?? false,
        mdnsTag: this.#mdnsTag,
        psk: init.psk,
        maxMessageBytes: MAX_HEARTBEAT_BYTES * 2,
        gossip: init.gossip,
        lean: init.lean,
      },
      // Without a logger of ours, the node's own warnings still reach the console.
      { connectionGater: gater, log: this.#c.logger },
    );
    this.#node = node;
    const dialer = new Dialer(
      {
        bootstrap,
        probeTimeoutMs: Math.min(1000, Math.floor(m.settings.suspectAfterMs / 2)),
      },
      {
        node,
        clock: this.#clock,
        log: this.#log,
        stats: this.#stats,
        wanted: () => m.ids((x) => !x.self && x.state !== "left"),
        subscribers: () => node.services.pubsub.getSubscribers(this.#topic).map(String),
        silent: () => m.ids((x) => x.state === "suspect"),
        onUnreachable: (id) => this.#apply(m.suspect(id)),
        onRefused: (id) => {
          const changes = m.refused(id);
          if (changes.length > 0) {
            this.#stats.refusedTwice++;
            this.#log(`${id} refused our connection twice: its process is gone`);
          }
          this.#apply(changes);
        },
        onReachable: (id) => {
          const changes = m.reachable(id);
          if (changes.length > 0) this.#stats.reachable++;
          this.#apply(changes);
        },
        allowed: may,
        fault: (what, err) => this.#fault(what, err),
      },
    );
    this.#dialer = dialer;
    // A closed connection to a live or suspect member is a hint worth a probe (Dialer.probe): a
    // member suspect before it died (late heartbeats on a loaded host; its host accepted the
    // silent probe) is otherwise proven dead by nothing but the suspicion timeout.
    node.addEventListener(
      "peer:disconnect",
      this.#guard("peer:disconnect", (e: CustomEvent<PeerId>) => {
        const state = m.member(e.detail.toString())?.state;
        if (state === "alive" || state === "suspect") dialer.probe(e.detail);
      }),
    );
    // mDNS finds, and new entries in the peer store (heartbeat addresses), land here.
    node.addEventListener(
      "peer:discovery",
      this.#guard("peer:discovery", (e: CustomEvent<PeerInfo>) => {
        m.heardOf(e.detail.id.toString());
        dialer.introduce(e.detail.id.toString());
      }),
    );
    node.addEventListener(
      "peer:connect",
      this.#guard("peer:connect", (e: CustomEvent<PeerId>) => m.heardOf(e.detail.toString())),
    );
    await node.start();
    const live = () => m.ids((x) => !x.self && (x.state === "alive" || x.state === "suspect"));
    this.#pex = new PeerExchange({
      node,
      known: () => new Set([...live(), ...node.getPeers().map((p) => p.toString())]),
      onPeers: this.#guard("peer exchange", (peers: PexPeer[]) => {
        for (const p of peers) {
          m.heardOf(p.id.toString());
          dialer.introduce(p.id.toString(), p.addrs);
        }
      }),
      onDropped: (n) => {
        this.#stats.pexDropped += n;
      },
    });
    await this.#pex.start();
    const quietAfterMs = Math.max(1.5 * this.#interval, m.settings.suspectAfterMs / 2);
    this.#vouches = new Vouches(
      { quietAfterMs, askEveryMs: Math.max(2 * this.#tickMs, quietAfterMs / 3) },
      {
        node,
        clock: this.#clock,
        heardAgo: (id) => m.heardAgo(id),
        quiet: (ms) => m.quiet(ms),
        hearing: (about) => this.#helpers(about),
        onHeard: (id, at) => m.vouch(id, at),
        allowed: allowed ? may : undefined,
        onVouch: () => {
          this.#stats.vouched++;
        },
      },
    );
    await this.#vouches.start();
    const pubsub = node.services.pubsub;
    const inbox = new HeartbeatInbox({
      membership: m,
      stats: this.#stats,
      log: this.#log,
      cluster: this.#cluster,
      allowed: allowed ? may : undefined,
      running: () => this.#running,
      onAccepted: (hb, changes) => this.#accepted(hb, changes),
    });
    const mine = directTopic(this.#cluster, self);
    pubsub.topicValidators.set(this.#topic, (_peer, msg) => inbox.receive(msg.data));
    pubsub.topicValidators.set(mine, (_peer, msg) => inbox.receive(msg.data, self));
    // A member we can reach directly now (it subscribed to its own topic on a new connection):
    // if it is new to us, or back, tell it our state and ask for its own. Both ends do it, so a
    // joiner has everyone's state as soon as it is connected to them.
    pubsub.addEventListener(
      "subscription-change",
      this.#guard("subscription-change", (e) => {
        if (!this.#ring) {
          this.#wantFullState(1);
          return;
        }
        const peer = e.detail.peerId.toString();
        const direct = directTopic(this.#cluster, peer);
        if (!e.detail.subscriptions.some((s) => s.subscribe && s.topic === direct)) return;
        if (m.member(peer)?.state === "alive") return;
        this.#tellState(peer, true);
      }),
    );
    pubsub.subscribe(this.#topic);
    pubsub.subscribe(mine);
    this.#running = true;
    this.#log(`mesh ${self} incarnation ${identity.incarnation} on ${this.multiaddrs().join(" ")}`);
    this.#lastTick = this.#clock.now();
    this.#fullStateBeats = 1;
    this.#joinRounds = JOIN_ROUNDS;
    dialer.start();
    this.#beat();
    this.#tick();
  }

  async stop(): Promise<void> {
    const node = this.#node;
    if (!node) return;
    const wasRunning = this.#running;
    this.#running = false;
    for (const handle of this.#timers.values()) this.#clock.clearTimeout(handle);
    this.#timers.clear();
    this.#dialer?.stop();
    await this.#pex?.stop();
    await this.#vouches?.stop();
    if (wasRunning && this.#m && this.#identity) {
      try {
        const body = encodeHeartbeat(this.#m.heartbeat({ leaving: true }));
        const wire = await signHeartbeat(body, this.#identity.privateKey, this.#cluster);
        await withTimeout(node.services.pubsub.publish(this.#topic, wire), 1000);
        this.#stats.sent++;
      } catch {
        this.#stats.sendFailed++;
      }
    }
    await node.stop();
    this.#node = undefined;
    this.#dialer = undefined;
    this.#pex = undefined;
    this.#vouches = undefined;
    this.#log(`mesh ${this.#identity?.peerId.toString()} stopped`);
  }

  setLocalState(update: Partial<LocalState>): void {
    if (!this.#m) {
      this.#init = { ...this.#init, local: { ...this.#init.local, ...update } };
      return;
    }
    if (this.#m.setLocal(update)) {
      this.#wantFullState(2);
      this.#emitView();
    }
  }

  view(): ViewSnapshot {
    if (!this.#m) throw new MeshStateError("Mesh view is available only after start()");
    return { self: this.#m.self, members: this.#m.view().members, leader: this.#leader };
  }

  multiaddrs(): string[] {
    return this.#node ? this.#node.getMultiaddrs().map((a) => a.toString()) : [];
  }

  stats(): MeshStats {
    return { ...this.#stats };
  }

  // --- timers and sending -------------------------------------------------------------------

  #schedule(name: string, ms: number, fn: () => void): void {
    if (!this.#running) return;
    const old = this.#timers.get(name);
    if (old !== undefined) this.#clock.clearTimeout(old);
    const handle = this.#clock.setTimeout(() => {
      this.#timers.delete(name);
      if (!this.#running) return;
      try {
        fn();
      } catch (err) {
        this.#fault(`the ${name} timer`, err);
      }
    }, ms);
    this.#timers.set(name, handle);
  }

  /** Logs and counts a fault of our own: never fatal, never thrown at the caller. */
  #fault(what: string, err: unknown): void {
    this.#stats.faults++;
    this.#log(`fault in ${what}: ${err instanceof Error ? err.message : String(err)}`);
  }

  /** Wraps an event handler so that a throw in it becomes a counted fault. */
  #guard<A extends unknown[]>(what: string, fn: (...args: A) => void): (...args: A) => void {
    return (...args) => {
      try {
        fn(...args);
      } catch (err) {
        this.#fault(what, err);
      }
    };
  }

  #beat(): void {
    // Schedule first: a fault while sending must not end the heartbeat.
    this.#schedule("beat", this.#interval, () => this.#beat());
    this.#round(false);
  }

  /** Sends news shortly (not worth waiting a whole interval for); nothing if there is none. */
  #beatSoon(): void {
    if (!this.#timers.has("soon")) this.#schedule("soon", 20, () => this.#round(true));
  }

  #wantFullState(beats: number): void {
    this.#fullStateBeats = Math.max(this.#fullStateBeats, beats);
    this.#beatSoon();
  }

  /** How often a member floods when nothing changed: every N - 1 intervals (N: the ring). */
  #floodEveryMs(n: number): number {
    return this.#interval * Math.max(1, n - 1);
  }

  /** What our heartbeats say that the others' views use; a change of it is flooded. */
  #newsKey(): string {
    const m = this.#m as Membership;
    const me = m.member(m.self);
    const term = this.#leader?.id === m.self ? this.#leader.term : "";
    return `${me?.status}|${me?.canLead}|${term}|${m.stateVersion}`;
  }

  /**
   * One round: news (a changed state, lead or status, accusations, a refutation) and the
   * occasional heartbeat are flooded to the cluster; otherwise our watchers get a small heartbeat
   * each. `soon`: only news, if any (the ordinary round comes at its time).
   */
  #round(soon: boolean): void {
    const m = this.#m;
    if (!m || !this.#node || !this.#running) return;
    if (!this.#ring) {
      this.#floodAll();
      return;
    }
    const now = this.#clock.now();
    const n = m.ring().length;
    const key = this.#newsKey();
    const news =
      key !== this.#floodedKey ||
      this.#fullStateBeats > 0 ||
      this.#accusations.length > 0 ||
      this.#refute;
    // Everyone watches everyone in a ring this small: the watchers' heartbeats reach them all.
    const due = n - 1 > this.#watchers && now >= this.#floodDue;
    // Not linked to every member yet: our floods carry our state and addresses, so that those
    // who hear us through a relay learn where to dial us.
    const pubsub = this.#node.services.pubsub;
    const partial = pubsub.getSubscribers(this.#topic).length + 1 < n;
    const joining = !soon && this.#joinRounds > 0;
    if (joining) this.#joinRounds--;
    if (news || joining || (!soon && due)) {
      const withState =
        partial ||
        joining ||
        this.#fullStateBeats > 0 ||
        key.split("|")[3] !== this.#floodedKey?.split("|")[3];
      if (this.#fullStateBeats > 0) this.#fullStateBeats--;
      this.#floodedKey = key;
      this.#refute = false;
      const accuse = this.#accusations.splice(0, LIMITS.accusations);
      if (accuse.length > 0) this.#stats.accusations += accuse.length;
      const every = this.#floodEveryMs(n);
      this.#floodDue = now + every * (0.75 + 0.5 * Math.random());
      this.#flood(withState, accuse);
      return;
    }
    if (soon) return;
    // A peer linked to us that is not an alive member in our view (its subscription came before
    // we listened, or it is back): tell it our state and ask for its own.
    for (const p of pubsub.getSubscribers(this.#topic)) {
      const id = p.toString();
      if (m.member(id)?.state !== "alive") this.#tellState(id, true);
    }
    const watchers = m.watchers();
    // A watcher we have no direct link to (a joiner still connecting, a member that reaches only
    // some of us): flood, so that relays carry our heartbeat to it.
    const linked = (w: string) =>
      pubsub.getSubscribers(directTopic(this.#cluster, w)).some((p) => p.toString() === w);
    if (!watchers.every(linked)) {
      this.#floodedKey = key;
      this.#flood(partial, []);
      return;
    }
    for (const w of watchers) this.#direct(w, { withState: false });
  }

  /** Whether the watch ring is on (`watchers` set): else every heartbeat is flooded. */
  get #ring(): boolean {
    return this.#watchers !== Number.POSITIVE_INFINITY;
  }

  /** Without the ring: flood every heartbeat, with our state now and then or after a change. */
  #floodAll(): void {
    const withState = this.#fullStateBeats > 0 || Math.random() * 10 < 1;
    if (this.#fullStateBeats > 0) this.#fullStateBeats--;
    this.#refute = false;
    this.#flood(withState, []);
  }

  /** Our next heartbeat, as options say (the leader's term, our addresses with the state). */
  #heartbeat(opts: {
    withState: boolean;
    requestState?: boolean;
    accuse?: Accusation[];
    flood?: boolean;
  }): Heartbeat {
    const m = this.#m as Membership;
    const node = this.#node as MeshLibp2p;
    const leaderTerm = this.#leader?.id === m.self ? this.#leader.term : undefined;
    const addrs = opts.withState
      ? node
          .getMultiaddrs()
          .map((a) => a.decapsulateCode(421).bytes)
          .filter((b) => b.length <= LIMITS.addrBytes)
          .slice(0, LIMITS.addrs)
      : undefined;
    const peers = opts.flood ? node.services.pubsub.getSubscribers(this.#topic).length : undefined;
    return m.heartbeat({
      leaderTerm,
      withState: opts.withState,
      addrs,
      peers,
      requestState: opts.requestState,
      accuse: opts.accuse,
    });
  }

  #flood(withState: boolean, accuse: Accusation[]): void {
    const node = this.#node;
    const key = this.#identity?.privateKey;
    if (!node || !key) return;
    const body = encodeHeartbeat(this.#heartbeat({ withState, accuse, flood: true }));
    const receivers = node.services.pubsub.getSubscribers(this.#topic).length;
    signHeartbeat(body, key, this.#cluster)
      .then((wire) => {
        this.#stats.bytesSent += wire.length * receivers;
        return node.services.pubsub.publish(this.#topic, wire);
      })
      .then(
        () => {
          this.#stats.sent++;
          this.#stats.floods++;
        },
        () => this.#stats.sendFailed++,
      );
  }

  /** Sends a heartbeat to member `to` alone, signed for it, on its direct topic. */
  #direct(to: string, opts: { withState: boolean; requestState?: boolean }): void {
    const node = this.#node;
    const key = this.#identity?.privateKey;
    if (!node || !key) return;
    const body = encodeHeartbeat(this.#heartbeat(opts));
    signHeartbeat(body, key, this.#cluster, to)
      .then((wire) => {
        this.#stats.bytesSent += wire.length;
        return node.services.pubsub.publish(directTopic(this.#cluster, to), wire);
      })
      .then(
        () => {
          this.#stats.sent++;
          this.#stats.direct++;
        },
        () => this.#stats.sendFailed++,
      );
  }

  /** Sends `to` our full state (at most once an interval), asking for its own if `ask`. */
  #tellState(to: string, ask: boolean): void {
    const now = this.#clock.now();
    if (now - (this.#stateSentAt.get(to) ?? Number.NEGATIVE_INFINITY) < this.#interval) return;
    bounded(this.#stateSentAt).set(to, now);
    if (ask) {
      bounded(this.#stateAskedAt).set(to, now);
      this.#stats.stateRequests++;
    }
    this.#direct(to, { withState: true, requestState: ask });
  }

  /** Whom to ask about quiet members: their other watchers (they hear them), else anyone alive. */
  #helpers(about: readonly string[]): string[] {
    const m = this.#m as Membership;
    const quiet = new Set(about);
    const out = new Set<string>();
    for (const id of about) {
      for (const w of m.watchers(id)) {
        if (w !== m.self && !quiet.has(w) && m.member(w)?.state === "alive") out.add(w);
      }
    }
    if (out.size > 0) return [...out];
    return m.ids((x) => !x.self && x.state === "alive");
  }

  /** A fresh, verified heartbeat was taken. */
  #accepted(hb: Heartbeat, taken: MemberChange[]): void {
    const m = this.#m;
    if (!m) return;
    if (hb.addrs) this.#learnAddrs(hb.id, hb.addrs);
    const changes = [...taken];
    for (const c of changes) if (c.refuted) this.#stats.refuted++;
    const isNew = changes.some((c) => c.from === null);
    if (!this.#ring) {
      if (isNew) this.#wantFullState(1);
    } else if (hb.requestState || isNew) {
      // It asked, or it is new to us: it gets our state (and is asked for its own if we lack it).
      this.#tellState(hb.id, m.needsState(hb.id));
    } else if (m.needsState(hb.id)) {
      const now = this.#clock.now();
      if (now - (this.#stateAskedAt.get(hb.id) ?? Number.NEGATIVE_INFINITY) >= 2 * this.#interval) {
        bounded(this.#stateAskedAt).set(hb.id, now);
        this.#stats.stateRequests++;
        this.#direct(hb.id, { withState: false, requestState: true });
      }
    }
    // Without the ring everyone hears everyone: an accusation tells us nothing (and is ignored).
    for (const a of this.#ring ? (hb.accuse ?? []) : []) {
      const r = m.accuse(hb.id, a.id, a.incarnation);
      if (r.outcome === "self") {
        this.#log(`${hb.id} accused us of silence: refuting`);
        this.#refute = true;
        this.#beatSoon();
      } else if (r.outcome === "taken") {
        this.#stats.accused++;
        changes.push(...r.changes);
        this.#dialer?.probe(peerIdFromString(a.id), "silent");
      } else if (r.outcome === "confirmed") {
        changes.push(...r.changes);
      }
    }
    // No change, no new election: what else moves it (time, for settling) the tick covers.
    if (changes.length > 0) this.#apply(changes);
  }

  #tick(): void {
    const m = this.#m;
    if (!m) return;
    // Schedule first: a fault in this tick must not end the ticking.
    this.#schedule("tick", this.#tickMs, () => this.#tick());
    const now = this.#clock.now();
    const late = now - this.#lastTick - this.#tickMs;
    this.#lastTick = now;
    if (late > Math.max(1000, m.settings.suspectAfterMs / 3)) {
      // We were frozen: the silence we would now blame on peers was ours.
      m.grace(late);
      if (late > m.settings.suspectAfterMs) {
        const inc = m.rejoin();
        saveIncarnation(this.#init.dataDir, inc);
        this.#stats.rejoins++;
        this.#log(`frozen for ${late} ms: rejoining with incarnation ${inc}`);
        this.#joinRounds = JOIN_ROUNDS;
        this.#wantFullState(1);
      }
    }
    const n = m.ring().length;
    this.#maxRing = Math.max(this.#maxRing, n);
    // A member we do not watch floods now and then (every N - 1 intervals, as it counts N):
    // twice that and three rounds is silence worth a suspicion.
    m.setUnwatchedSuspectAfter(2 * this.#floodEveryMs(this.#maxRing) + 3 * this.#interval);
    const changes = m.tick();
    // Fell silent: is its host still there (a frozen process), or gone (refused twice)? If we
    // watch it, tell the others (they do not hear it every interval).
    for (const c of changes) {
      // Suspect now, or on a watcher's word before and on our own judgement now.
      if ((c.from === "alive" && c.to === "suspect") || c.confirmed) {
        this.#dialer?.probe(peerIdFromString(c.id), "silent");
        const incarnation = m.member(c.id)?.incarnation;
        if (this.#ring && m.watching(c.id) && incarnation !== undefined) {
          this.#accusations.push({ id: c.id, incarnation });
          this.#beatSoon();
        }
      }
    }
    this.#apply(changes);
    // Quiet on our link: ask members we hear whether they heard it (not a suspicion yet).
    this.#vouches?.round();
  }

  // --- receiving ----------------------------------------------------------------------------

  #learnAddrs(id: string, addrs: Uint8Array[]): void {
    const multiaddrs = [];
    for (const b of addrs) {
      try {
        const ma = tcpOnly(multiaddr(b).toString());
        if (ma) multiaddrs.push(ma);
      } catch {
        // an address we cannot parse is only a lost hint
      }
    }
    if (multiaddrs.length === 0) return;
    this.#node?.peerStore.merge(peerIdFromString(id), { multiaddrs }).catch(() => {});
  }

  #apply(changes: MemberChange[]): void {
    const m = this.#m;
    if (!m || !this.#running) return;
    for (const c of changes) {
      const member = m.member(c.id);
      if (!member) continue;
      // member-up: became alive (new or back); member-down: each step away (suspect, dead, left).
      if (c.to === "alive" && c.from !== "alive") this.#emit("member-up", member);
      else if (c.to !== null && c.to !== "alive" && c.from !== c.to) {
        this.#emit("member-down", member);
      }
    }
    const v = m.view();
    const prev = this.#leader;
    const next = elect(v, prev, { settleMs: this.#settleMs, now: v.now, maxTerm: v.maxTerm });
    const changed = next?.id !== prev?.id || next?.term !== prev?.term;
    if (changed) {
      this.#leader = next;
      if (next?.id === m.self || prev?.id === m.self) this.#beatSoon();
      this.#log(`leader ${next ? `${next.id} term ${next.term}` : "none"}`);
      this.#emit("leader", next);
    }
    if (changed || changes.length > 0) this.#emitView();
  }

  #emitView(): void {
    if (this.#m && this.#running) this.#emit("view", this.view());
  }

  #emit<K extends keyof MeshEvents>(type: K, detail: MeshEvents[K]): void {
    // A listener that throws does not throw here (EventTarget reports it to the process as an
    // uncaught exception): listeners guard themselves, as the agent's do.
    try {
      this.dispatchEvent(new CustomEvent(type, { detail }));
    } catch (err) {
      this.#fault(`a ${type} listener`, err);
    }
  }
}

/** A PeerId string, or MeshStateError naming the bad allow-list entry. */
function checkPeerId(id: string): string {
  try {
    return peerIdFromString(id).toString();
  } catch {
    throw new MeshStateError(`Allowed peer is not a PeerId: ${JSON.stringify(id.slice(0, 80))}`);
  }
}

/**
 * Rounds a node floods its state after it starts (or rejoins): whoever it is connected to by
 * then relays it to the rest, who learn its addresses and dial it, as a joiner needs.
 */
const JOIN_ROUNDS = 4;

/** A map of per-member times, emptied when it grows past any cluster's size. */
function bounded(map: Map<string, number>): Map<string, number> {
  if (map.size >= 4096) map.clear();
  return map;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
