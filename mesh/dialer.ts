/**
 * Keeps the mesh fully connected: dials the bootstrap peers and every known member we have no
 * connection to (addresses come from heartbeats and identify), with per-target backoff, so a
 * healed partition or a restarted peer is reconnected within seconds. Also turns a closed
 * connection into a quick probe: a peer that cannot be re-dialed at once is reported.
 */
import type { PeerId } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { type Multiaddr, multiaddr } from "@multiformats/multiaddr";
import type { Clock } from "./clock.ts";
import type { MeshLibp2p } from "./node.ts";

/** Settings of the dialer. */
export interface DialerInit {
  /** Multiaddrs to join through (with /p2p/<id>, or without: then dialed while we have no peer). */
  bootstrap?: string[];
  /** How often to look for missing connections; default 1000 ms. */
  redialMs?: number;
  /** Longest wait between two dials of one target; default 10000 ms. */
  maxBackoffMs?: number;
  /** How long the probe after a closed connection may take; default 1000 ms. */
  probeTimeoutMs?: number;
}

/** Collaborators of the dialer. */
export interface DialerComponents {
  node: MeshLibp2p;
  clock: Clock;
  log: (line: string) => void;
  /** Ids of the members worth a connection (known and not gone for good). */
  wanted: () => Iterable<string>;
  /** Called when a peer whose connection closed could not be reached again. */
  onUnreachable: (id: string) => void;
}

/** Dials and re-dials the peers the mesh should be connected to. */
export class Dialer {
  #init: Required<DialerInit>;
  #c: DialerComponents;
  #timer: unknown;
  #running = false;
  #backoff = new Map<string, { at: number; delay: number }>();
  #dialing = new Set<string>();

  constructor(init: DialerInit, components: DialerComponents) {
    this.#init = {
      bootstrap: init.bootstrap ?? [],
      redialMs: init.redialMs ?? 1000,
      maxBackoffMs: init.maxBackoffMs ?? 10_000,
      probeTimeoutMs: init.probeTimeoutMs ?? 1000,
    };
    this.#c = components;
  }

  start(): void {
    this.#running = true;
    this.#round();
  }

  stop(): void {
    this.#running = false;
    if (this.#timer !== undefined) this.#c.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** One pass: dial whatever we should be connected to and are not. */
  #round(): void {
    if (!this.#running) return;
    const node = this.#c.node;
    const connected = new Set(node.getPeers().map((p) => p.toString()));
    const self = node.peerId.toString();
    for (const addr of this.#init.bootstrap) {
      let id: string | undefined;
      try {
        id = multiaddr(addr)
          .getComponents()
          .find((c) => c.name === "p2p")?.value;
      } catch {
        this.#c.log(`bootstrap address is not a multiaddr: ${addr}`);
        continue;
      }
      if (id !== self && (id ? !connected.has(id) : connected.size === 0)) this.dial(addr);
    }
    for (const id of this.#c.wanted()) if (id !== self && !connected.has(id)) this.dial(id);
    this.#timer = this.#c.clock.setTimeout(() => this.#round(), this.#init.redialMs);
  }

  /** Dials a PeerId, its string, or a multiaddr string, unless it is backing off. */
  dial(target: PeerId | string): void {
    if (!this.#running) return;
    const key = target.toString();
    const now = this.#c.clock.now();
    const b = this.#backoff.get(key);
    if (this.#dialing.has(key) || (b && now < b.at)) return;
    let dest: PeerId | Multiaddr;
    try {
      dest =
        typeof target !== "string"
          ? target
          : key.startsWith("/")
            ? multiaddr(key)
            : peerIdFromString(key);
    } catch {
      this.#backoff.set(key, { at: now + 60_000, delay: 60_000 });
      this.#c.log(`cannot dial ${key}: not a multiaddr or PeerId`);
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
        // 1 s, 2 s, 4 s... up to maxBackoffMs: quick while a cluster is starting, cheap after.
        const delay = Math.min(this.#init.maxBackoffMs, (b?.delay ?? 500) * 2);
        this.#backoff.set(key, { at: this.#c.clock.now() + delay, delay });
      },
    );
  }

  /**
   * A connection to `peer` closed: dial it back at once. A crashed peer refuses (or the dial
   * times out) and is reported in milliseconds; a live one just gets a new connection.
   */
  probe(peer: PeerId): void {
    if (!this.#running) return;
    const id = peer.toString();
    this.#c.node.dial(peer, { signal: AbortSignal.timeout(this.#init.probeTimeoutMs) }).then(
      () => {},
      () => {
        if (this.#running) this.#c.onUnreachable(id);
      },
    );
  }
}
