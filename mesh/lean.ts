/**
 * Two wire-level economies for a mesh whose traffic is many tiny messages (a ~250-byte
 * heartbeat per peer per second), each of which the stock stack turns into 6 TCP packets.
 * Measured on loopback (docs/BENCHMARKS.md), together they cut the packets to 2 and the
 * bytes by about half; they change no protocol, so stock libp2p peers interoperate.
 *
 * - `leanTcp`: @libp2p/tcp writes each buffer of a Uint8ArrayList with its own socket.write,
 *   and Noise hands it [2-byte length, ciphertext]: two TCP segments per frame. We join the
 *   buffers of one send into one write (one segment).
 * - `leanYamux`: @chainsafe/libp2p-yamux 8 answers every data frame with a window update
 *   (another frame, another ACK). We send it only once half the receive window is used, as
 *   go-yamux does; frames that carry flags (SYN/ACK) still go out at once.
 *
 * Both wrap instances (never prototypes). If the internals they rely on are missing (an update
 * of @libp2p/tcp or yamux), they fall back to the stock behaviour and say so once per node
 * through `log`: the traffic goal depends on them. test/mesh-lean.test.ts counts the writes;
 * package.json pins both packages to exact versions, and test/mesh-lean-stream.test.ts fails
 * on a fallback and pushes more than a receive window through a lean stream (bump, then run it).
 */
import { yamux } from "@chainsafe/libp2p-yamux";
import { StreamState } from "@chainsafe/libp2p-yamux/stream";
import type { Stream, StreamMuxerFactory, Transport, Upgrader } from "@libp2p/interface";
import { tcp } from "@libp2p/tcp";
import type { Libp2pOptions } from "libp2p";

type TransportFactory = NonNullable<Libp2pOptions["transports"]>[number];
type MuxerFactory = NonNullable<Libp2pOptions["streamMuxers"]>[number];

/** Collaborators of the lean wrappers. */
export interface LeanComponents {
  /** Where a fallback to the stock behaviour is reported (once per wrapper); default console.warn. */
  log?: (line: string) => void;
}

/** A reporter that passes on its first line only. */
function once(log: (line: string) => void): (line: string) => void {
  let said = false;
  return (line) => {
    if (said) return;
    said = true;
    log(line);
  };
}

interface SendsData {
  sendData?: (
    data: Iterable<Uint8Array> & { byteLength: number; subarray?: () => Uint8Array },
  ) => unknown;
}

/** The sentence logged when the TCP wrapper cannot work: what is missing, what it costs. */
const tcpFallback = (missing: string) =>
  `mesh/lean.ts: @libp2p/tcp changed (${missing}): lean TCP writes are off, each Noise frame now costs two TCP segments`;

/**
 * Makes a TCP connection write each send as one buffer. `fallback` is called if the connection
 * lacks the internals this relies on (it is then left as it is).
 */
export function coalesceWrites<T>(maConn: T, fallback: (line: string) => void): T {
  const conn = maConn as unknown as SendsData;
  const original = conn.sendData;
  if (typeof original !== "function") {
    fallback(tcpFallback("its connection has no sendData()"));
    return maConn;
  }
  conn.sendData = function (this: unknown, data) {
    if (typeof data.subarray !== "function") {
      fallback(tcpFallback("sendData() is not given a Uint8ArrayList"));
      return original.call(this, data);
    }
    return original.call(this, Object.assign([data.subarray()], { byteLength: data.byteLength }));
  };
  return maConn;
}

function leanUpgrader(upgrader: Upgrader, fallback: (line: string) => void): Upgrader {
  const lean = Object.create(upgrader) as Upgrader;
  lean.upgradeInbound = (maConn, opts) =>
    upgrader.upgradeInbound(coalesceWrites(maConn, fallback), opts);
  lean.upgradeOutbound = (maConn, opts) =>
    upgrader.upgradeOutbound(coalesceWrites(maConn, fallback), opts);
  return lean;
}

/** @libp2p/tcp with one socket write per send. */
export function leanTcp(
  init: Parameters<typeof tcp>[0] = {},
  components: LeanComponents = {},
): TransportFactory {
  const stock = tcp(init);
  const fallback = once(components.log ?? console.warn);
  return (libp2pComponents) => {
    const inner = stock(libp2pComponents) as Transport;
    const t = Object.create(inner) as Transport;
    t.dial = (ma, opts) =>
      inner.dial(ma, { ...opts, upgrader: leanUpgrader(opts.upgrader, fallback) });
    t.createListener = (opts) =>
      inner.createListener({ ...opts, upgrader: leanUpgrader(opts.upgrader, fallback) });
    return t;
  };
}

interface YamuxInternals {
  state?: number;
  recvWindow?: number;
  recvWindowCapacity?: number;
  sendWindowUpdate?: () => void;
}

/** The sentence logged when the yamux wrapper cannot work: what is missing, what it costs. */
const yamuxFallback = (missing: string) =>
  `mesh/lean.ts: @chainsafe/libp2p-yamux changed (${missing}): lazy window updates are off, every data frame is now answered by a window update`;

/**
 * Makes a yamux stream send window updates only once half its receive window is used.
 * `fallback` is called if the stream lacks the internals this relies on.
 */
export function lazyWindowUpdates(stream: Stream, fallback: (line: string) => void): Stream {
  const s = stream as unknown as YamuxInternals;
  const original = s.sendWindowUpdate;
  if (
    typeof original !== "function" ||
    typeof s.recvWindow !== "number" ||
    typeof s.recvWindowCapacity !== "number"
  ) {
    fallback(yamuxFallback("a stream has no sendWindowUpdate() or receive window"));
    return stream;
  }
  s.sendWindowUpdate = function (this: YamuxInternals) {
    const cap = this.recvWindowCapacity ?? 0;
    const win = this.recvWindow ?? 0;
    if (this.state === StreamState.Established && cap * 2 > win) return;
    original.call(this);
  };
  return stream;
}

/** @chainsafe/libp2p-yamux with go-yamux-like (lazy) window updates. */
export function leanYamux(
  init: Parameters<typeof yamux>[0] = {},
  components: LeanComponents = {},
): MuxerFactory {
  const stock = yamux(init);
  const fallback = once(components.log ?? console.warn);
  return () => {
    const inner = stock() as StreamMuxerFactory;
    const f = Object.create(inner) as StreamMuxerFactory;
    f.createStreamMuxer = (maConn) => {
      const muxer = inner.createStreamMuxer(maConn) as unknown as {
        _newStream?: (...a: unknown[]) => Stream;
      };
      const create = muxer._newStream;
      // Every stream, inbound or outbound, is born in _newStream (yamux 8).
      if (typeof create === "function") {
        muxer._newStream = function (this: unknown, ...args: unknown[]) {
          return lazyWindowUpdates(create.apply(this, args), fallback);
        };
      } else {
        fallback(yamuxFallback("the muxer has no _newStream()"));
      }
      return muxer as unknown as ReturnType<StreamMuxerFactory["createStreamMuxer"]>;
    };
    return f;
  };
}
