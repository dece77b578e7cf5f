/**
 * The libp2p node factory: TCP + Noise + Yamux + identify + gossipsub, mDNS when
 * asked, and an optional pnet pre-shared key so that strangers cannot even finish a handshake.
 * Kept thin: the mesh logic lives in membership/election; this file only assembles libp2p.
 */
import "./shim.ts";
import { createHash } from "node:crypto";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import {
  type GossipSub,
  type GossipsubOpts,
  type Message,
  StrictNoSign,
  gossipsub,
} from "@libp2p/gossipsub";
import { identify } from "@libp2p/identify";
import type { ConnectionGater, Libp2p, PrivateKey } from "@libp2p/interface";
import { mdns } from "@libp2p/mdns";
import { preSharedKey } from "@libp2p/pnet";
import { tcp } from "@libp2p/tcp";
import { type Libp2pOptions, createLibp2p } from "libp2p";
import { fromString } from "uint8arrays";
import { leanTcp, leanYamux } from "./lean.ts";

/** The libp2p node the mesh runs on. */
export type MeshLibp2p = Libp2p<{
  identify: ReturnType<ReturnType<typeof identify>>;
  pubsub: GossipSub;
}>;

/** A pre-shared key is not in the swarm.key format. */
export class PskError extends Error {
  override name = "PskError";
}

/**
 * Short message ids: 12 bytes of sha256 of the message (a signed heartbeat, unique per sender,
 * incarnation and sequence) instead of 32: smaller seen-caches and control messages.
 */
export function shortMsgId(msg: Message): Uint8Array {
  return createHash("sha256").update(msg.data).digest().subarray(0, 12);
}

/**
 * Gossipsub tuning for small clusters where every node dials every other (the dialer and peer
 * exchange see to it): the publisher floods each heartbeat straight to every subscribed peer,
 * so each peer gets it exactly once. A thin eager mesh (D=2) exists for relaying, but the topic
 * validator (mesh/inbox.ts) lets a heartbeat through to it only when its author reports fewer direct
 * peers than there are live members; otherwise relays would only send duplicates. No lazy
 * gossip (IHAVE): on a fully connected mesh it is pure overhead. Measured in docs/BENCHMARKS.md.
 */
export const GOSSIP_DEFAULTS: Partial<GossipsubOpts> = {
  floodPublish: true,
  D: 2,
  Dlo: 1,
  // Accept grafts generously: a node that reaches a single peer must not be pruned from it.
  Dhi: 8,
  Dout: 0,
  Dscore: 1,
  Dlazy: 0,
  gossipFactor: 0,
  heartbeatInterval: 1000,
  mcacheLength: 3,
  mcacheGossip: 1,
  seenTTL: 30_000,
  fallbackToFloodsub: false,
  allowPublishToZeroTopicPeers: true,
  ignoreDuplicatePublishError: true,
  msgIdFn: shortMsgId,
  // Peer scoring's IP-colocation penalty graylists everyone once more than 10 peers share an
  // IP: all of a dev cluster, or workers behind one NAT. Members are admitted by the PSK and
  // every heartbeat is signed, so it only does harm here.
  scoreParams: { IPColocationFactorWeight: 0 },
};

/** Settings of the libp2p node. */
export interface NodeInit {
  privateKey: PrivateKey;
  listen: string[];
  mdns?: boolean;
  /** mDNS service tag: nodes only discover nodes with the same tag (the cluster). */
  mdnsTag?: string;
  psk?: string | Uint8Array;
  /** Largest pubsub message accepted at the gossipsub layer. */
  maxMessageBytes?: number;
  gossip?: Partial<GossipsubOpts>;
  /**
   * The wire economies of mesh/lean.ts (one TCP write per Noise frame, lazy yamux window
   * updates); default true. false runs the stock stack, to measure what they save.
   */
  lean?: boolean;
}

/** Collaborators of the libp2p node. */
export interface NodeComponents {
  connectionGater?: ConnectionGater;
  /** Where the node reports a problem of its own (a lean wrapper fell back); default console.warn. */
  log?: (line: string) => void;
}

/** Parses a pre-shared key in the libp2p swarm.key text format into the bytes pnet expects. */
export function parsePsk(psk: string | Uint8Array): Uint8Array {
  const text = typeof psk === "string" ? psk : new TextDecoder().decode(psk);
  const lines = text
    .trim()
    .split(/\r?\n/)
    .map((l) => l.trim());
  if (
    lines[0] !== "/key/swarm/psk/1.0.0/" ||
    lines[1] !== "/base16/" ||
    !/^[0-9a-fA-F]{64}$/.test(lines[2] ?? "")
  ) {
    throw new PskError(
      "Pre-shared key must be a swarm.key: /key/swarm/psk/1.0.0/, /base16/, 64 hex digits",
    );
  }
  return fromString(`${lines.join("\n")}\n`, "utf8");
}

/** Creates (does not start) the libp2p node. */
export async function createNode(
  init: NodeInit,
  components: NodeComponents = {},
): Promise<MeshLibp2p> {
  const peerDiscovery: NonNullable<Libp2pOptions["peerDiscovery"]> = [];
  const lean = init.lean ?? true;
  if (init.mdns) peerDiscovery.push(mdns({ interval: 2000, serviceTag: init.mdnsTag }));
  const options: Libp2pOptions<{
    identify: ReturnType<ReturnType<typeof identify>>;
    pubsub: GossipSub;
  }> = {
    start: false,
    privateKey: init.privateKey,
    addresses: { listen: init.listen },
    transports: [lean ? leanTcp({}, { log: components.log }) : tcp()],
    connectionEncrypters: [noise()],
    // No yamux keep-alive pings (one per connection every 30 s, and the answer): heartbeats
    // already show whether a member is there, and a silent one's link is probed and reset.
    streamMuxers: [
      lean
        ? leanYamux({ enableKeepAlive: false }, { log: components.log })
        : yamux({ enableKeepAlive: false }),
    ],
    peerDiscovery,
    // Heartbeats already prove liveness every second; libp2p's pings would only add bytes.
    connectionMonitor: { enabled: false },
    connectionManager: {
      dialTimeout: 5000,
      // Every member dials every other, and on one machine (a dev cluster, the tests) they all
      // come from one IP: libp2p's defaults (5 inbound per second per host, 10 pending) would
      // refuse most of a 20-member cluster starting at once.
      inboundConnectionThreshold: 100,
      maxIncomingPendingConnections: 100,
    },
    services: {
      identify: identify(),
      pubsub: gossipsub({
        ...GOSSIP_DEFAULTS,
        ...init.gossip,
        // Heartbeats carry their own Ed25519 signature by the claimed id (mesh/signing.ts):
        // gossipsub's envelope (author, seqno, signature, key: 154 bytes) would say it twice.
        globalSignaturePolicy: StrictNoSign,
        maxInboundDataLength: init.maxMessageBytes ?? 16 * 1024,
      }),
    },
  };
  if (init.psk !== undefined)
    options.connectionProtector = preSharedKey({ psk: parsePsk(init.psk) });
  if (components.connectionGater) options.connectionGater = components.connectionGater;
  return createLibp2p(options);
}
