/**
 * Peer exchange: on every new connection each side asks the other, once, for the addresses of
 * the members it knows (protocol /rollcall/pex/1.0.0), and dials the ones it lacks. Heartbeats
 * are flooded only to direct peers, so this is how a node that joined through one bootstrap
 * peer (or restarted on a new port) reaches everyone within a round trip.
 *
 * Wire: the responder writes one frame (4-byte big-endian length, then a JSON document
 * {"peers":[{"id","addrs":[multiaddr strings]}]}) and closes. An answer is bounded (PEX_LIMITS:
 * bytes, peers, addresses per peer) and only plain TCP addresses are taken; the rest is dropped
 * and counted. What it names is only a hint: the dialer queues it and dials a bounded number
 * per round (mesh/dialer.ts); the answer itself puts nothing in the peer store. The known
 * peers are the live members plus the connected peers.
 */
import type { Connection, PeerId, Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { type Multiaddr, multiaddr } from "@multiformats/multiaddr";
import { fromString, toString as bytesToString } from "uint8arrays";
import type { MeshLibp2p } from "./node.ts";

/** The peer-exchange protocol id. */
export const PEX_PROTOCOL = "/rollcall/pex/1.0.0";
/** What one peer-exchange answer may hold (more is dropped and counted). */
export const PEX_LIMITS = {
  /** Largest answer read. */
  bytes: 32 * 1024,
  /** Peers taken from one answer. */
  peers: 64,
  /** Addresses taken per peer. */
  addrsPerPeer: 4,
} as const;

/** Largest peer-exchange answer accepted. */
export const MAX_PEX_BYTES = PEX_LIMITS.bytes;

/** One peer as exchanged. */
export interface PexPeer {
  id: PeerId;
  addrs: Multiaddr[];
}

/** A parsed answer: the peers taken, and how many peers and addresses were dropped. */
export interface PexAnswer {
  peers: PexPeer[];
  dropped: number;
}

const HOSTS = new Set(["ip4", "ip6", "dns", "dns4", "dns6"]);

/** A plain TCP address (host and port, nothing else), or undefined. */
export function tcpOnly(text: unknown): Multiaddr | undefined {
  if (typeof text !== "string" || text.length > 255) return undefined;
  try {
    const parts = multiaddr(text).getComponents();
    const [host, tcp] = parts;
    if (parts.length !== 2 || !host || !tcp || !HOSTS.has(host.name) || tcp.name !== "tcp") {
      return undefined;
    }
    if (host.value === "0.0.0.0" || host.value === "::" || Number(tcp.value) === 0)
      return undefined;
    return multiaddr(`/${host.name}/${host.value}/tcp/${tcp.value}`);
  } catch {
    return undefined;
  }
}

/**
 * Parses and validates a peer-exchange answer; invalid or surplus entries are dropped (and
 * counted), garbage throws. At most PEX_LIMITS.peers peers with PEX_LIMITS.addrsPerPeer plain
 * TCP addresses each; a peer with no usable address is dropped.
 */
export function parsePex(bytes: Uint8Array): PexAnswer {
  if (bytes.length > MAX_PEX_BYTES) throw new Error("Peer exchange answer is too large");
  const doc = JSON.parse(bytesToString(bytes, "utf8")) as { peers?: unknown };
  if (!Array.isArray(doc?.peers)) throw new Error("Peer exchange answer has no peer list");
  const peers: PexPeer[] = [];
  let dropped = Math.max(0, doc.peers.length - PEX_LIMITS.peers);
  for (const p of doc.peers.slice(0, PEX_LIMITS.peers)) {
    try {
      const { id, addrs } = p as { id: unknown; addrs: unknown };
      if (typeof id !== "string" || !Array.isArray(addrs)) throw new Error("not a peer");
      const taken: Multiaddr[] = [];
      for (const a of addrs) {
        const ma = taken.length < PEX_LIMITS.addrsPerPeer ? tcpOnly(a) : undefined;
        if (ma) taken.push(ma);
        else dropped++;
      }
      if (taken.length === 0) throw new Error("no usable address");
      peers.push({ id: peerIdFromString(id), addrs: taken });
    } catch {
      dropped++; // one bad entry does not spoil the others
    }
  }
  return { peers, dropped };
}

/** Reads one frame: a 4-byte big-endian length, then that many bytes (at most `max`). */
async function readFrame(stream: Stream, max: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  let want = -1;
  for await (const chunk of stream) {
    const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray();
    chunks.push(bytes);
    size += bytes.length;
    if (want < 0 && size >= 4) {
      const head = concat(chunks, size);
      want = new DataView(head.buffer, head.byteOffset).getUint32(0);
      if (want > max) throw new Error("Peer exchange answer is too large");
    }
    if (want >= 0 && size >= 4 + want) return concat(chunks, size).subarray(4, 4 + want);
  }
  throw new Error("Peer exchange answer ended early");
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

function frame(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length);
  out.set(payload, 4);
  return out;
}

/** Closes a stream we are done with, without waiting on the remote for long. */
function done(stream: Stream): void {
  stream.close({ signal: AbortSignal.timeout(2000) }).catch((err) => stream.abort(err as Error));
}

/** Serves and requests peer exchanges for one node. */
export class PeerExchange {
  #node: MeshLibp2p;
  #known: () => Iterable<string>;
  #onPeers: (peers: PexPeer[]) => void;

  #onDropped: (n: number) => void;

  constructor(components: {
    node: MeshLibp2p;
    /** Ids of the members worth telling about. */
    known: () => Iterable<string>;
    /** Receives the peers a neighbour told us about (not in the peer store: only hints). */
    onPeers: (peers: PexPeer[]) => void;
    /** Told how many peers and addresses of an answer were dropped (over the limits, invalid). */
    onDropped?: (n: number) => void;
  }) {
    this.#node = components.node;
    this.#known = components.known;
    this.#onPeers = components.onPeers;
    this.#onDropped = components.onDropped ?? (() => {});
  }

  /** Registers the protocol handler and asks every new connection for its peers. */
  async start(): Promise<void> {
    await this.#node.handle(PEX_PROTOCOL, (stream, conn) => this.#serve(stream, conn), {
      maxInboundStreams: 4,
    });
    this.#node.addEventListener("peer:connect", this.#onConnect);
  }

  async stop(): Promise<void> {
    this.#node.removeEventListener("peer:connect", this.#onConnect);
    await this.#node.unhandle(PEX_PROTOCOL).catch(() => {});
  }

  #onConnect = (e: CustomEvent<PeerId>): void => {
    void this.ask(e.detail).catch(() => {});
  };

  async #serve(stream: Stream, conn: Connection): Promise<void> {
    try {
      const asker = conn.remotePeer.toString();
      const peers: Array<{ id: string; addrs: string[] }> = [];
      for (const id of this.#known()) {
        if (id === asker || peers.length >= PEX_LIMITS.peers) continue;
        const record = await this.#node.peerStore.get(peerIdFromString(id)).catch(() => undefined);
        const addrs = (record?.addresses ?? [])
          .map((a) => tcpOnly(a.multiaddr.toString())?.toString())
          .filter((a) => a !== undefined)
          .slice(0, PEX_LIMITS.addrsPerPeer);
        if (addrs.length > 0) peers.push({ id, addrs });
      }
      stream.send(frame(fromString(JSON.stringify({ peers }), "utf8")));
      done(stream);
    } catch (err) {
      stream.abort(err as Error);
    }
  }

  /** Asks one peer for the peers it knows; merges them into the peer store and reports them. */
  async ask(peer: PeerId): Promise<PexPeer[]> {
    const stream = await this.#node.dialProtocol(peer, PEX_PROTOCOL, {
      signal: AbortSignal.timeout(5000),
    });
    // A neighbour that never answers must not hold the stream (and this call) forever.
    const timer = setTimeout(() => stream.abort(new Error("Peer exchange timed out")), 5000);
    try {
      const { peers, dropped } = parsePex(await readFrame(stream, MAX_PEX_BYTES));
      if (dropped > 0) this.#onDropped(dropped);
      const self = this.#node.peerId.toString();
      const fresh = peers.filter((p) => p.id.toString() !== self);
      this.#onPeers(fresh);
      return fresh;
    } finally {
      clearTimeout(timer);
      done(stream);
    }
  }
}
