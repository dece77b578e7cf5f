/**
 * The mesh runtime: one libp2p node gossiping heartbeats on a per-cluster topic, feeding the
 * pure membership state machine and election, and emitting "leader", "member-up",
 * "member-down" and "view" events. It owns every timer and clears them all in stop().
 */
import "./shim.ts";
import { type Message, TopicValidatorResult } from "@libp2p/gossipsub";
import type { ConnectionGater, PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { type Clock, systemClock } from "./clock.ts";
import { DEFAULT_SETTLE_MS, elect } from "./election.ts";
import { type Identity, loadIdentity, saveIncarnation } from "./identity.ts";
import { MEMBERSHIP_DEFAULTS, type MemberChange, Membership } from "./membership.ts";
import { type MeshLibp2p, type NodeInit, createNode } from "./node.ts";
import { MAX_HEARTBEAT_BYTES, decodeHeartbeat, encodeHeartbeat } from "./protocol.ts";
import type { Leader, LocalState, MemberView, ViewSnapshot } from "./types.ts";

/** Settings of a mesh node; everything but dataDir and local has a default. */
export interface MeshInit {
  /** The key is persisted at <dataDir>/peer.key (0600), created on first start. */
  dataDir: string;
  /** Cluster name: topic rollcall/<cluster>/heartbeat/1, and the mDNS tag; default "default". */
  cluster?: string;
  /** Listen multiaddrs; default ["/ip4/127.0.0.1/tcp/0"]. */
  listen?: string[];
  /** Multiaddrs of peers to join through, with /p2p/<id>. */
  bootstrap?: string[];
  /** Discover peers on the LAN by mDNS; default false. */
  mdns?: boolean;
  /** pnet pre-shared key in the swarm.key text format: strangers without it cannot connect. */
  psk?: string | Uint8Array;
  local: LocalState;
  /** Default 1000 ms. */
  heartbeatIntervalMs?: number;
  /** Silence before a member is suspected (and replaced if it leads); default 3000 ms. */
  suspectAfterMs?: number;
  /** Suspicion timeout before a member is dead; default 6000 ms. */
  deadAfterMs?: number;
  /** Tombstone period of dead/left members; default 600000 ms. */
  forgetAfterMs?: number;
  /** How long a member must be alive before it may lead; default 5000 ms. */
  settleMs?: number;
  /** Every how many heartbeats the full state (url, services, meta, addrs) rides along; default 10. */
  fullStateEvery?: number;
  /** Advanced: gossipsub overrides (see GOSSIP_DEFAULTS). */
  gossip?: NodeInit["gossip"];
}

/** Collaborators of a mesh node. */
export interface MeshComponents {
  clock?: Clock;
  logger?: (line: string) => void;
  /** Decides which connections are allowed (tests use it to make partitions). */
  connectionGater?: ConnectionGater;
}

/** Counters of what the node received and sent. */
export interface MeshStats {
  received: number;
  accepted: number;
  /** Duplicates or older than what we hold (replays, restarts' old incarnations). */
  stale: number;
  /** Failed to decode or validate, unsigned, or too large. */
  invalid: number;
  /** Claimed an id other than the signed sender's. */
  spoofed: number;
  sent: number;
  sendFailed: number;
  /** Times this process found itself frozen for longer than peers wait, and rejoined. */
  rejoins: number;
}

/** Event name -> detail type. */
export interface MeshEvents {
  leader: Leader | null;
  "member-up": MemberView;
  "member-down": MemberView;
  view: ViewSnapshot;
}

/** A running mesh node. Events: "leader", "member-up", "member-down", "view" (CustomEvent). */
export interface Mesh extends EventTarget {
  /** Our PeerId string; available once start() resolved. */
  readonly id: string;
  /** The libp2p node underneath (diagnostics and tests); undefined before start(). */
  readonly libp2p: MeshLibp2p | undefined;
  start(): Promise<void>;
  /** Announces leaving, closes libp2p, clears every timer. */
  stop(): Promise<void>;
  /** Changes the local state; gossiped at once and on the next heartbeats. Bumps nothing. */
  setLocalState(update: Partial<LocalState>): void;
  view(): ViewSnapshot;
  multiaddrs(): string[];
  stats(): MeshStats;
  addEventListener<K extends keyof MeshEvents>(
    type: K,
    listener: (event: CustomEvent<MeshEvents[K]>) => void,
    options?: AddEventListenerOptions | boolean,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: AddEventListenerOptions | boolean,
  ): void;
  removeEventListener<K extends keyof MeshEvents>(
    type: K,
    listener: (event: CustomEvent<MeshEvents[K]>) => void,
    options?: EventListenerOptions | boolean,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: EventListenerOptions | boolean,
  ): void;
}

/** The mesh was used in a way its lifecycle does not allow. */
export class MeshStateError extends Error {
  override name = "MeshStateError";
}

/** Creates a mesh node (not started). */
export function createMesh(init: MeshInit, components: MeshComponents = {}): Mesh {
  // MeshNode is a plain EventTarget; the Mesh interface only adds typed listener overloads.
  return new MeshNode(init, components) as unknown as Mesh;
}

class MeshNode extends EventTarget {
  #init: MeshInit;
  #clock: Clock;
  #log: (line: string) => void;
  #gater: ConnectionGater | undefined;
  #topic: string;
  #interval: number;
  #settleMs: number;
  #tickMs: number;
  #identity: Identity | undefined;
  #node: MeshLibp2p | undefined;
  #m: Membership | undefined;
  #leader: Leader | null = null;
  #running = false;
  #timers = new Map<string, unknown>();
  #lastTick = 0;
  #fullStateBeats = 0;
  #backoff = new Map<string, { at: number; delay: number }>();
  #dialing = new Set<string>();
  #stats: MeshStats = {
    received: 0,
    accepted: 0,
    stale: 0,
    invalid: 0,
    spoofed: 0,
    sent: 0,
    sendFailed: 0,
    rejoins: 0,
  };

  constructor(init: MeshInit, components: MeshComponents) {
    super();
    this.#init = init;
    this.#clock = components.clock ?? systemClock;
    this.#log = components.logger ?? (() => {});
    this.#gater = components.connectionGater;
    const cluster = init.cluster ?? "default";
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(cluster))
      throw new MeshStateError("Cluster name must be 1-64 of A-Z a-z 0-9 . _ -");
    this.#topic = `rollcall/${cluster}/heartbeat/1`;
    this.#interval = init.heartbeatIntervalMs ?? 1000;
    this.#settleMs = init.settleMs ?? DEFAULT_SETTLE_MS;
    this.#tickMs = Math.max(20, Math.min(250, Math.floor(this.#interval / 4)));
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
    this.#identity = await loadIdentity(init.dataDir, { logger: this.#log });
    const self = this.#identity.peerId.toString();
    this.#m = new Membership(
      self,
      {
        local: init.local,
        incarnation: this.#identity.incarnation,
        suspectAfterMs: init.suspectAfterMs ?? MEMBERSHIP_DEFAULTS.suspectAfterMs,
        deadAfterMs: init.deadAfterMs ?? MEMBERSHIP_DEFAULTS.deadAfterMs,
        forgetAfterMs: init.forgetAfterMs ?? MEMBERSHIP_DEFAULTS.forgetAfterMs,
      },
      this.#clock,
    );
    const node = await createNode(
      {
        privateKey: this.#identity.privateKey,
        listen: init.listen ?? ["/ip4/127.0.0.1/tcp/0"],
        mdns: init.mdns ?? false,
        mdnsTag: `_rollcall-${(init.cluster ?? "default").toLowerCase().replace(/[^a-z0-9-]/g, "-")}._udp.local`,
        psk: init.psk,
        maxMessageBytes: MAX_HEARTBEAT_BYTES * 2,
        gossip: init.gossip,
      },
      { connectionGater: this.#gater },
    );
    this.#node = node;
    node.addEventListener("peer:disconnect", (e) => this.#onDisconnect(e.detail));
    node.addEventListener("peer:discovery", (e) => this.#dial(e.detail.id));
    await node.start();
    const pubsub = node.services.pubsub;
    pubsub.topicValidators.set(this.#topic, (_peer, msg) => this.#onMessage(msg));
    pubsub.addEventListener("subscription-change", () => this.#wantFullState(1));
    pubsub.subscribe(this.#topic);
    this.#running = true;
    this.#log(
      `mesh ${self} incarnation ${this.#identity.incarnation} on ${this.multiaddrs().join(" ")}`,
    );
    this.#lastTick = this.#clock.now();
    this.#fullStateBeats = 1;
    this.#beat();
    this.#tick();
    this.#redial();
  }

  async stop(): Promise<void> {
    const node = this.#node;
    if (!node) return;
    const wasRunning = this.#running;
    this.#running = false;
    for (const handle of this.#timers.values()) this.#clock.clearTimeout(handle);
    this.#timers.clear();
    if (wasRunning && this.#m) {
      const hb = this.#m.heartbeat({ leaving: true });
      try {
        await withTimeout(node.services.pubsub.publish(this.#topic, encodeHeartbeat(hb)), 1000);
        this.#stats.sent++;
      } catch {
        this.#stats.sendFailed++;
      }
    }
    await node.stop();
    this.#node = undefined;
    this.#log(`mesh ${this.#identity?.peerId.toString()} stopped`);
  }

  setLocalState(update: Partial<LocalState>): void {
    if (!this.#m) {
      const next = { ...this.#init.local, ...update };
      this.#init = { ...this.#init, local: next };
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

  // --- timers -------------------------------------------------------------------------------

  #schedule(name: string, ms: number, fn: () => void): void {
    if (!this.#running) return;
    const old = this.#timers.get(name);
    if (old !== undefined) this.#clock.clearTimeout(old);
    this.#timers.set(
      name,
      this.#clock.setTimeout(() => {
        this.#timers.delete(name);
        if (this.#running) fn();
      }, ms),
    );
  }

  #beat(): void {
    this.#send();
    this.#schedule("beat", this.#interval, () => this.#beat());
  }

  /** Sends a heartbeat shortly (news worth not waiting a whole interval for). */
  #beatSoon(): void {
    if (!this.#timers.has("soon")) this.#schedule("soon", 20, () => this.#send());
  }

  #wantFullState(beats: number): void {
    this.#fullStateBeats = Math.max(this.#fullStateBeats, beats);
    this.#beatSoon();
  }

  #send(): void {
    const m = this.#m;
    const node = this.#node;
    if (!m || !node || !this.#running) return;
    const every = this.#init.fullStateEvery ?? 10;
    const withState = this.#fullStateBeats > 0 || Math.random() * every < 1;
    if (this.#fullStateBeats > 0) this.#fullStateBeats--;
    const mine = this.#leader?.id === m.self ? this.#leader.term : undefined;
    const addrs = withState ? this.#addrBytes(node) : undefined;
    const bytes = encodeHeartbeat(m.heartbeat({ leaderTerm: mine, withState, addrs }));
    node.services.pubsub.publish(this.#topic, bytes).then(
      () => this.#stats.sent++,
      () => this.#stats.sendFailed++,
    );
  }

  #addrBytes(node: MeshLibp2p): Uint8Array[] {
    return node
      .getMultiaddrs()
      .slice(0, 8)
      .map((a) => a.decapsulateCode(421).bytes);
  }

  #tick(): void {
    const m = this.#m;
    if (!m) return;
    const now = this.#clock.now();
    const late = now - this.#lastTick - this.#tickMs;
    this.#lastTick = now;
    if (late > Math.max(1000, m.settings.suspectAfterMs / 3)) {
      // We were frozen: the silence we would now blame on peers was ours.
      m.grace(late);
      if (late > m.settings.suspectAfterMs && this.#identity) {
        const inc = m.rejoin();
        saveIncarnation(this.#init.dataDir, inc);
        this.#stats.rejoins++;
        this.#log(`frozen for ${late} ms: rejoining with incarnation ${inc}`);
        this.#wantFullState(1);
      }
    }
    this.#apply(m.tick());
    this.#schedule("tick", this.#tickMs, () => this.#tick());
  }

  // --- receiving ----------------------------------------------------------------------------

  #onMessage(msg: Message): TopicValidatorResult {
    const m = this.#m;
    this.#stats.received++;
    try {
      if (!m || msg.type !== "signed" || msg.data.length > MAX_HEARTBEAT_BYTES) {
        this.#stats.invalid++;
        return TopicValidatorResult.Reject;
      }
      const hb = decodeHeartbeat(msg.data);
      if (hb.id !== msg.from.toString()) {
        this.#stats.spoofed++;
        this.#log(`dropped a heartbeat claiming ${hb.id} signed by ${msg.from.toString()}`);
        return TopicValidatorResult.Reject;
      }
      const staleBefore = m.stale;
      const changes = m.onHeartbeat(hb);
      if (m.stale > staleBefore) {
        this.#stats.stale++;
        return TopicValidatorResult.Ignore;
      }
      this.#stats.accepted++;
      if (hb.addrs && this.#node) this.#learnAddrs(msg.from, hb.addrs);
      if (changes.some((c) => c.from === null)) this.#wantFullState(1);
      this.#apply(changes);
      return TopicValidatorResult.Accept;
    } catch {
      this.#stats.invalid++;
      return TopicValidatorResult.Reject;
    }
  }

  #learnAddrs(peer: PeerId, addrs: Uint8Array[]): void {
    try {
      const multiaddrs = addrs.map((b) => multiaddr(b));
      this.#node?.peerStore.merge(peer, { multiaddrs }).catch(() => {});
    } catch {
      // an address we cannot parse is only a lost hint
    }
  }

  #onDisconnect(peer: PeerId): void {
    const id = peer.toString();
    const node = this.#node;
    if (!this.#running || !node || this.#m?.member(id)?.state !== "alive") return;
    // A closed connection is a hint: probe at once; a refused or slow dial means suspect now
    // (a crash is caught in milliseconds), while a live peer just gets its connection back.
    const timeout = Math.min(1000, Math.floor((this.#m?.settings.suspectAfterMs ?? 3000) / 2));
    node.dial(peer, { signal: AbortSignal.timeout(timeout) }).then(
      () => {},
      () => {
        if (this.#running && this.#m) this.#apply(this.#m.suspect(id));
      },
    );
  }

  #apply(changes: MemberChange[]): void {
    const m = this.#m;
    if (!m || !this.#running) return;
    for (const c of changes) {
      const member = m.member(c.id);
      if (!member) continue;
      // member-up: became alive (new or back); member-down: each step away (suspect, dead, left).
      if (c.to === "alive" && c.from !== "alive") this.#emit("member-up", member);
      else if (c.to !== null && c.to !== "alive" && c.from !== c.to)
        this.#emit("member-down", member);
    }
    const v = m.view();
    const next = elect(v, this.#leader, {
      settleMs: this.#settleMs,
      now: v.now,
      maxTerm: v.maxTerm,
    });
    const prev = this.#leader;
    const leaderChanged = next?.id !== prev?.id || next?.term !== prev?.term;
    if (leaderChanged) {
      this.#leader = next;
      if (next?.id === m.self || prev?.id === m.self) this.#beatSoon();
      this.#log(`leader ${next ? `${next.id} term ${next.term}` : "none"}`);
      this.#emit("leader", next);
    }
    if (leaderChanged || changes.length > 0) this.#emitView();
  }

  #emitView(): void {
    if (this.#m && this.#running) this.#emit("view", this.view());
  }

  #emit<K extends keyof MeshEvents>(type: K, detail: MeshEvents[K]): void {
    try {
      this.dispatchEvent(new CustomEvent(type, { detail }));
    } catch (err) {
      this.#log(`a ${type} listener threw: ${(err as Error).message}`);
    }
  }

  // --- dialing ------------------------------------------------------------------------------

  #redial(): void {
    const node = this.#node;
    const m = this.#m;
    if (node && m) {
      const connected = new Set(node.getPeers().map((p) => p.toString()));
      for (const addr of this.#init.bootstrap ?? []) {
        const id = multiaddr(addr)
          .getComponents()
          .find((c) => c.name === "p2p")?.value;
        if (id === m.self) continue;
        if (id ? !connected.has(id) : connected.size === 0) this.#dial(addr);
      }
      for (const member of m.view().members) {
        if (!member.self && member.state !== "left" && !connected.has(member.id))
          this.#dial(member.id);
      }
    }
    this.#schedule("redial", 2000, () => this.#redial());
  }

  /** Dials a peer (PeerId, its string, or a multiaddr string) with per-target backoff. */
  #dial(target: PeerId | string): void {
    const node = this.#node;
    if (!node || !this.#running) return;
    const key = target.toString();
    const now = this.#clock.now();
    const b = this.#backoff.get(key);
    if (this.#dialing.has(key) || (b && now < b.at)) return;
    this.#dialing.add(key);
    let dest: PeerId | ReturnType<typeof multiaddr>;
    try {
      dest =
        typeof target !== "string"
          ? target
          : key.startsWith("/")
            ? multiaddr(key)
            : peerIdFromString(key);
    } catch {
      this.#dialing.delete(key);
      this.#log(`cannot dial ${key}: not a multiaddr or PeerId`);
      this.#backoff.set(key, { at: now + 60_000, delay: 60_000 });
      return;
    }
    node.dial(dest, { signal: AbortSignal.timeout(5000) }).then(
      () => {
        this.#dialing.delete(key);
        this.#backoff.delete(key);
      },
      () => {
        this.#dialing.delete(key);
        const delay = Math.min(10_000, (b?.delay ?? 1000) * 2);
        this.#backoff.set(key, { at: this.#clock.now() + delay, delay });
      },
    );
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
