/**
 * Peer exchange: on every new connection each side asks the other, once, for the addresses of
 * the members it knows (protocol /rollcall/pex/1.0.0), and dials the ones it lacks. Heartbeats
 * are flooded only to direct peers, so this is how a node that joined through one bootstrap
 * peer (or restarted on a new port) reaches everyone within a round trip.
 *
 * Wire: the responder writes one frame (4-byte big-endian length, then a JSON document
 * {"peers":[{"id","addrs":[multiaddr strings]}]}) and closes; at most MAX_PEX_BYTES, 256 peers,
 * 8 addresses each, all validated. The known peers are the live members plus the connected peers.
 */
import type { Connection, PeerId, Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { type Multiaddr, multiaddr } from "@multiformats/multiaddr";
import { fromString, toString as bytesToString } from "uint8arrays";
import type { MeshLibp2p } from "./node.ts";

/** The peer-exchange protocol id. */
export const PEX_PROTOCOL = "/rollcall/pex/1.0.0";
/** Largest peer-exchange answer accepted. */
export const MAX_PEX_BYTES = 64 * 1024;

/** One peer as exchanged. */
export interface PexPeer {
  id: PeerId;
  addrs: Multiaddr[];
}

/** Parses and validates a peer-exchange answer; invalid entries are skipped, garbage throws. */
export function parsePex(bytes: Uint8Array): PexPeer[] {
  if (bytes.length > MAX_PEX_BYTES) throw new Error("Peer exchange answer is too large");
  const doc = JSON.parse(bytesToString(bytes, "utf8")) as { peers?: unknown };
  if (!Array.isArray(doc?.peers)) throw new Error("Peer exchange answer has no peer list");
  const out: PexPeer[] = [];
  for (const p of doc.peers.slice(0, 256)) {
    try {
      const { id, addrs } = p as { id: unknown; addrs: unknown };
      if (typeof id !== "string" || !Array.isArray(addrs)) continue;
      const parsed: Multiaddr[] = [];
      for (const a of addrs.slice(0, 8)) {
        if (typeof a !== "string" || a.length > 255) continue;
        try {
          parsed.push(multiaddr(a));
        } catch {
          // skip an address we cannot parse, keep the others
        }
      }
      out.push({ id: peerIdFromString(id), addrs: parsed });
    } catch {
      // one bad entry does not spoil the others
    }
  }
  return out;
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

  constructor(components: {
    node: MeshLibp2p;
    /** Ids of the members worth telling about. */
    known: () => Iterable<string>;
    /** Receives the peers a neighbour told us about (already in the peer store). */
    onPeers: (peers: PexPeer[]) => void;
  }) {
    this.#node = components.node;
    this.#known = components.known;
    this.#onPeers = components.onPeers;
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
        if (id === asker || peers.length >= 256) continue;
        const record = await this.#node.peerStore.get(peerIdFromString(id)).catch(() => undefined);
        const addrs = (record?.addresses ?? []).slice(0, 8).map((a) => a.multiaddr.toString());
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
    try {
      const peers = parsePex(await readFrame(stream, MAX_PEX_BYTES));
      const self = this.#node.peerId.toString();
      const fresh = peers.filter((p) => p.id.toString() !== self && p.addrs.length > 0);
      for (const p of fresh) await this.#node.peerStore.merge(p.id, { multiaddrs: p.addrs });
      this.#onPeers(fresh);
      return fresh;
    } finally {
      done(stream);
    }
  }
}
