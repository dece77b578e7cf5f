/**
 * Keeps the mesh fully connected: dials the bootstrap peers and every known member we have no
 * connection to (addresses come from heartbeats, identify and peer exchange), with per-target
 * backoff, so a healed partition or a restarted peer is reconnected within seconds. Also:
 *
 * - one dial per pair: the lower ID dials, the higher waits (10 s) for it. Simultaneous dials
 *   leave duplicate connections, and gossipsub loses its streams on them;
 * - repair: a member that stays connected but is no gossipsub subscriber (its identify or stream
 *   setup failed, e.g. under load), or connected but silent, is hung up on (at most every 10 s),
 *   so that a fresh connection sets up;
 * - probe: when a connection closes we try a bare TCP connect to the peer at once (no libp2p
 *   connection, so no duplicate): refused or timed out means suspect, in milliseconds. A refusal
 *   by the peer's host is checked once more (a redial after `confirmAfterMs`): refused twice, the
 *   process is gone (dead, with evidence), which a network cut never produces (it drops). A member
 *   that fell silent is probed too: a host that accepts means its process is silent while the
 *   network works (we are not the one cut off);
 * - introductions (peer exchange, mDNS) of peers that are not members yet wait in a bounded
 *   queue and are dialed at most `introductionsPerRound` per round, so a neighbour's flood of
 *   made-up peers cannot make us dial more than that.
 */
import { connect } from "node:net";
import type { Connection, PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { type Multiaddr, multiaddr } from "@multiformats/multiaddr";
import type { MeshStats } from "./api.ts";
import type { Clock } from "./clock.ts";
import type { MeshLibp2p } from "./node.ts";

/** A bootstrap address is not a multiaddr, or names no valid peer id (a settings error). */
export class BootstrapError extends Error {
  override name = "BootstrapError";
}

/** One bootstrap address, parsed once: the multiaddr and the peer id it names, if any. */
export interface BootstrapPeer {
  addr: Multiaddr;
  id: string | undefined;
}

/** Parses bootstrap multiaddrs; throws BootstrapError naming the first bad one. */
export function parseBootstrap(addrs: readonly string[]): BootstrapPeer[] {
  return addrs.map((text) => {
    try {
      const addr = multiaddr(text);
      const id = addr.getComponents().find((c) => c.name === "p2p")?.value;
      if (id !== undefined) peerIdFromString(id);
      return { addr, id };
    } catch {
      throw new BootstrapError(
        `Bootstrap address is not a multiaddr with a valid /p2p id: ${text}`,
      );
    }
  });
}

/** Settings of the dialer. */
export interface DialerInit {
  /** Peers to join through (with /p2p/<id>, or without: then dialed while we have no peer). */
  bootstrap?: BootstrapPeer[];
  /** How often to look for missing connections; default 1000 ms. */
  redialMs?: number;
  /** Longest wait between two dials of one target; default 10000 ms. */
  maxBackoffMs?: number;
  /** How long the probe after a closed connection may take; default 1000 ms. */
  probeTimeoutMs?: number;
  /** How long after a refused probe the redial that confirms it; default 250 ms. */
  confirmAfterMs?: number;
  /** How long a connected member may go without a gossipsub stream before a reset; default 5000 ms. */
  repairAfterMs?: number;
  /** Introduced peers dialed per round at most; default 16. */
  introductionsPerRound?: number;
  /** Introduced peers waiting for a dial at most (more are dropped and counted); default 64. */
  maxIntroductions?: number;
}

/** Collaborators of the dialer. */
export interface DialerComponents {
  node: MeshLibp2p;
  clock: Clock;
  log: (line: string) => void;
  /** The mesh's counters: each connection reset by the repair counts in `repairs`. */
  stats: MeshStats;
  /** Ids of the members worth a connection (known and not gone for good). */
  wanted: () => Iterable<string>;
  /** Ids of the peers that have a working gossipsub stream with us (subscribers of our topic). */
  subscribers: () => Iterable<string>;
  /** Ids of the members we stopped hearing (suspect), to reset if still connected. */
  silent: () => Iterable<string>;
  /** Called when a peer whose connection closed could not be reached again. */
  onUnreachable: (id: string) => void;
  /** Called when a peer's host refused a connection twice: its process is gone. */
  onRefused?: (id: string) => void;
  /** Called when the host of a silent peer accepts a connection. */
  onReachable?: (id: string) => void;
  /** Whether `id` may be dialed at all (the allow-list); default every peer. */
  allowed?: (id: string) => boolean;
  /** Where a fault of our own (a throw in a timer) is reported instead of thrown. */
  fault?: (what: string, err: unknown) => void;
}

/** Dials and re-dials the peers the mesh should be connected to. */
export class Dialer {
  #init: Required<DialerInit>;
  #c: DialerComponents;
  #timer: unknown;
  #running = false;
  #backoff = new Map<string, { at: number; delay: number }>();
  #dialing = new Set<string>();
  /** When a wanted member was first seen unconnected (higher IDs wait before dialing). */
  #missing = new Map<string, number>();
  /** When a connected member was first seen without a gossipsub stream. */
  #mute = new Map<string, number>();
  /** When each peer's connection was last reset by the repair. */
  #resetAt = new Map<string, number>();
  /** Introduced peers waiting for a dial (with the addresses we were told), oldest first. */
  #introduced = new Map<string, Multiaddr[] | undefined>();
  /** Introductions we may still dial this round. */
  #budget = 0;
  /** The remote IP of each wanted peer's latest connection: the host a probe must hear from. */
  #hosts = new Map<string, string>();

  constructor(init: DialerInit, components: DialerComponents) {
    this.#init = {
      bootstrap: init.bootstrap ?? [],
      redialMs: init.redialMs ?? 1000,
      maxBackoffMs: init.maxBackoffMs ?? 10_000,
      probeTimeoutMs: init.probeTimeoutMs ?? 1000,
      confirmAfterMs: init.confirmAfterMs ?? 250,
      repairAfterMs: init.repairAfterMs ?? 5000,
      introductionsPerRound: init.introductionsPerRound ?? 16,
      maxIntroductions: init.maxIntroductions ?? 64,
    };
    this.#c = components;
  }

  /** Introduced peers waiting for their dial. */
  get pendingIntroductions(): number {
    return this.#introduced.size;
  }

  start(): void {
    this.#running = true;
    this.#c.node.addEventListener("connection:open", this.#onOpen);
    this.#round();
  }

  stop(): void {
    this.#running = false;
    this.#c.node.removeEventListener("connection:open", this.#onOpen);
    if (this.#timer !== undefined) this.#c.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #onOpen = (e: CustomEvent<Connection>): void => {
    try {
      const host = tcpTarget(e.detail.remoteAddr)?.host;
      if (host !== undefined) this.#hosts.set(e.detail.remotePeer.toString(), host);
    } catch (err) {
      this.#c.fault?.("the dialer's connection handler", err);
    }
  };

  /** Whether we should dial `id` now rather than wait for it to dial us. */
  #ours(id: string, now: number): boolean {
    if (this.#c.node.peerId.toString() < id) return true;
    const since = this.#missing.get(id) ?? now;
    this.#missing.set(id, since);
    return now - since >= 10_000;
  }

  /**
   * A peer learned of elsewhere (peer exchange, mDNS), with the addresses we were told if they
   * are not in the peer store: queued, and dialed within this round's budget if the pair's dial
   * is ours. A full queue drops it (counted in `stats.introductionsDropped`).
   */
  introduce(id: string, addrs?: Multiaddr[]): void {
    if (!this.#running || id === this.#c.node.peerId.toString()) return;
    if (this.#c.allowed && !this.#c.allowed(id)) return;
    // Being dialed, or backing off (libp2p announces a peer it dials as discovered).
    const b = this.#backoff.get(id);
    if (this.#dialing.has(id) || (b && this.#c.clock.now() < b.at)) return;
    if (!this.#introduced.has(id)) {
      if (this.#introduced.size >= this.#init.maxIntroductions) {
        this.#c.stats.introductionsDropped++;
        return;
      }
      this.#introduced.set(id, addrs);
    }
    this.#drain(this.#c.clock.now());
  }

  /** Dials queued introductions while this round's budget lasts. */
  #drain(now: number): void {
    for (const [id, addrs] of this.#introduced) {
      if (this.#budget <= 0) return;
      this.#introduced.delete(id);
      if (!this.#ours(id, now)) continue;
      this.#budget--;
      this.#c.stats.introductionsDialed++;
      let target: PeerId | Multiaddr[] | string = id;
      if (addrs && addrs.length > 0) {
        try {
          target = addrs.map((a) => a.encapsulate(`/p2p/${id}`));
        } catch {
          continue;
        }
      }
      this.dial(target, id);
    }
  }

  /** One pass: dial whatever we should be connected to and are not; repair mute peers. */
  #round(): void {
    if (!this.#running) return;
    try {
      this.#pass();
    } catch (err) {
      this.#c.fault?.("the dialer's round", err);
    }
    this.#timer = this.#c.clock.setTimeout(() => this.#round(), this.#init.redialMs);
  }

  #pass(): void {
    const node = this.#c.node;
    const now = this.#c.clock.now();
    // From the connections, not getPeers(): that one round-trips every id through its string.
    const connected = new Set(node.getConnections().map((c) => c.remotePeer.toString()));
    const self = node.peerId.toString();
    for (const { addr, id } of this.#init.bootstrap) {
      if (id !== self && (id ? !connected.has(id) : connected.size === 0)) this.dial(addr);
    }
    const subscribers = new Set(this.#c.subscribers());
    const wanted = new Set(this.#c.wanted());
    for (const id of this.#c.silent()) if (connected.has(id)) this.#reset(id, now, "silent");
    for (const id of wanted) {
      if (id === self) continue;
      if (!connected.has(id)) {
        if (this.#ours(id, now)) this.dial(id);
        continue;
      }
      this.#missing.delete(id);
      if (subscribers.has(id)) {
        this.#mute.delete(id);
        continue;
      }
      const since = this.#mute.get(id) ?? now;
      this.#mute.set(id, since);
      if (now - since >= this.#init.repairAfterMs) this.#reset(id, now, "without a gossip stream");
    }
    for (const id of this.#missing.keys()) if (!wanted.has(id)) this.#missing.delete(id);
    for (const id of this.#mute.keys()) if (!wanted.has(id)) this.#mute.delete(id);
    for (const id of this.#hosts.keys()) {
      if (!wanted.has(id) && !connected.has(id)) this.#hosts.delete(id);
    }
    for (const [id, at] of this.#resetAt) if (now - at > 60_000) this.#resetAt.delete(id);
    for (const [key, b] of this.#backoff) if (now - b.at > 60_000) this.#backoff.delete(key);
    this.#budget = this.#init.introductionsPerRound;
    this.#drain(now);
  }

  #reset(id: string, now: number, why: string): void {
    if (now - (this.#resetAt.get(id) ?? Number.NEGATIVE_INFINITY) < 10_000) return;
    this.#resetAt.set(id, now);
    this.#mute.delete(id);
    this.#c.stats.repairs++;
    this.#c.log(`connected to ${id} but ${why}: reconnecting`);
    this.#c.node.hangUp(peerIdFromString(id)).catch(() => {});
  }

  /**
   * Dials a PeerId (or its string), a multiaddr, or the addresses of one peer (then `key`, its
   * id, names the target for the backoff), unless it is backing off or not allowed.
   */
  dial(target: PeerId | Multiaddr | Multiaddr[] | string, key = target.toString()): void {
    if (!this.#running) return;
    const now = this.#c.clock.now();
    const b = this.#backoff.get(key);
    if (this.#dialing.has(key) || (b && now < b.at)) return;
    let dest: PeerId | Multiaddr | Multiaddr[];
    try {
      dest = typeof target !== "string" ? target : peerIdFromString(key);
    } catch {
      this.#backoff.set(key, { at: now + 60_000, delay: 60_000 });
      this.#c.log(`cannot dial ${key}: not a PeerId`);
      return;
    }
    this.#dialing.add(key);
    this.#c.node.dial(dest, { signal: AbortSignal.timeout(5000) }).then(
      () => {
        this.#dialing.delete(key);
        this.#backoff.delete(key);
      },
      () => {
        this.#dialing.delete(key);
        this.#c.stats.dialFailures++;
        // 1 s, 2 s, 4 s... up to maxBackoffMs: quick while a cluster is starting, cheap after.
        const delay = Math.min(this.#init.maxBackoffMs, (b?.delay ?? 500) * 2);
        this.#backoff.set(key, { at: this.#c.clock.now() + delay, delay });
      },
    );
  }

  /**
   * Checks whether `peer`'s process is still there, with bare TCP connects to its listen
   * addresses (on the host of its latest connection, when we know it):
   *
   * - `closed` (a connection to it closed): a crashed peer refuses (or the connect times out)
   *   and is suspected in milliseconds; a dying process closes its sockets one by one, so an
   *   accepting port is checked twice more (after 300 ms and 1 s) before we believe it;
   * - `silent` (it fell silent): a host that accepts is reported reachable (`onReachable`).
   *
   * Either way a refusal is confirmed by a redial `confirmAfterMs` later: refused twice, the
   * peer is reported gone (`onRefused`); a network cut drops, it never refuses.
   */
  probe(peer: PeerId, why: "closed" | "silent" = "closed"): void {
    if (!this.#running) return;
    const id = peer.toString();
    const sleep = (ms: number) => new Promise((r) => unref(setTimeout(r, ms)));
    void (async () => {
      for (const wait of why === "closed" ? [0, 300, 700] : [0]) {
        if (wait > 0) await sleep(wait);
        if (!this.#running) return;
        const found = await this.check(peer);
        if (!this.#running) return;
        if (found === "accepts") {
          if (why === "silent") this.#c.onReachable?.(id);
          continue;
        }
        if (why === "closed") this.#c.onUnreachable(id);
        if (found !== "refused") return;
        await sleep(this.#init.confirmAfterMs);
        if (this.#running && (await this.check(peer)) === "refused") this.#c.onRefused?.(id);
        return;
      }
    })().catch((err) => this.#c.fault?.("the probe of a peer", err));
  }

  /**
   * One bare TCP connect to each of (at most 4 of) `peer`'s listen addresses, those on the host
   * of its latest connection when there are any: `accepts` if one does, `refused` if every one
   * refused, `unreachable` otherwise (timeouts, no route, no address known).
   */
  async check(peer: PeerId): Promise<ProbeResult> {
    const all = await this.#c.node.peerStore
      .get(peer)
      .then((p) => p.addresses.map((a) => tcpTarget(a.multiaddr)).filter((t) => t !== undefined))
      .catch(() => [] as Array<{ host: string; port: number }>);
    const host = this.#hosts.get(peer.toString());
    const onHost = all.filter((t) => t.host === host);
    const targets = (onHost.length > 0 ? onHost : all).slice(0, 4);
    let refused = 0;
    for (const t of targets) {
      const r = await tcpProbe(t, this.#init.probeTimeoutMs);
      if (r === "accepts") return r;
      if (r === "refused") refused++;
    }
    return targets.length > 0 && refused === targets.length ? "refused" : "unreachable";
  }
}

/** What a bare TCP connect found: a listener, a refusal by the host, or no answer. */
export type ProbeResult = "accepts" | "refused" | "unreachable";

/** Host and port of a /ip4|ip6/.../tcp/... multiaddr, else undefined. */
function tcpTarget(ma: Multiaddr): { host: string; port: number } | undefined {
  const parts = ma.getComponents();
  const host = parts.find((c) => c.name === "ip4" || c.name === "ip6")?.value;
  const port = Number(parts.find((c) => c.name === "tcp")?.value);
  return host && port > 0 ? { host, port } : undefined;
}

/** A bare TCP connect to `t` within `ms` (the socket is closed at once). */
function tcpProbe(t: { host: string; port: number }, ms: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const socket = connect({ host: t.host, port: t.port });
    let settled = false;
    const done = (r: ProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    // A stalled event loop runs due timers before pending I/O: give the connect's answer (a
    // refusal already received) the poll phase first, so a busy process does not miss it.
    const timer = unref(setTimeout(() => setImmediate(() => done("unreachable")), ms));
    socket.once("connect", () => done("accepts"));
    socket.once("error", (err: NodeJS.ErrnoException) =>
      done(err.code === "ECONNREFUSED" ? "refused" : "unreachable"),
    );
  });
}

/** Lets a short-lived probe timer not hold the process open (Node, Bun; a no-op on Deno). */
function unref<T>(timer: T): T {
  (timer as { unref?: () => void }).unref?.();
  return timer;
}
