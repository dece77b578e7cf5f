/**
 * Who can reach the mesh: the refusal to listen beyond loopback without a pre-shared key
 * (unless the operator says `insecureOpenMesh`), and the optional allow-list of PeerIds as a
 * libp2p connection gater. Pure apart from the gater's shape; no libp2p is loaded here.
 */
import type { ConnectionGater, PeerId } from "@libp2p/interface";

/** The mesh would listen beyond loopback without a pre-shared key and nobody said it may. */
export class OpenMeshError extends Error {
  override name = "OpenMeshError";
}

const LOOPBACK = [
  /^\/ip4\/127\.\d{1,3}\.\d{1,3}\.\d{1,3}(\/|$)/,
  /^\/ip6\/(0{0,4}:){2,7}0{0,3}1(\/|$)/,
  /^\/dns[46]?\/localhost(\/|$)/,
];

/** Whether a listen multiaddr can be reached from this machine only (127.0.0.0/8, ::1, localhost). */
export function loopbackOnly(addr: string): boolean {
  return LOOPBACK.some((re) => re.test(addr));
}

/**
 * Throws OpenMeshError if the mesh would listen beyond loopback, or find peers by mDNS, with no
 * pre-shared key, unless `insecureOpenMesh`: anyone who reaches such a port could join,
 * advertise services and claim leadership, and mDNS dials whoever on the LAN answers its query
 * (the stranger then gossips on that outbound connection). The message names the way in and
 * the ways out.
 */
export function checkExposure(init: {
  listen: readonly string[];
  psk?: unknown;
  insecureOpenMesh?: boolean;
  mdns?: boolean;
}): void {
  if (init.psk !== undefined || init.insecureOpenMesh) return;
  if (init.mdns) {
    throw new OpenMeshError(
      "Mesh would find peers by mDNS without a pre-shared key (any machine on the LAN could " +
        "answer and join): set a pre-shared key (--psk), leave mDNS off, or accept an open mesh " +
        "(--insecure-open-mesh)",
    );
  }
  const open = init.listen.find((a) => !loopbackOnly(a));
  if (open === undefined) return;
  throw new OpenMeshError(
    `Mesh would listen on ${open} beyond loopback without a pre-shared key: ` +
      "set a pre-shared key (--psk), listen on 127.0.0.1 only, or accept an open mesh " +
      "(--insecure-open-mesh)",
  );
}

/**
 * A connection gater that admits only peers in `allowed` (dialing them, or accepting them once
 * Noise proved who they are) and defers to `inner` (say, a test's partition) for the rest.
 */
export function allowListGater(
  allowed: ReadonlySet<string>,
  inner: ConnectionGater = {},
): ConnectionGater {
  const stranger = (peer: PeerId) => !allowed.has(peer.toString());
  return {
    ...inner,
    denyDialPeer: (peer) => stranger(peer) || (inner.denyDialPeer?.(peer) ?? false),
    denyInboundEncryptedConnection: (peer, conn) =>
      stranger(peer) || (inner.denyInboundEncryptedConnection?.(peer, conn) ?? false),
    denyOutboundEncryptedConnection: (peer, conn) =>
      stranger(peer) || (inner.denyOutboundEncryptedConnection?.(peer, conn) ?? false),
  };
}
