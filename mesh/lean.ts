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
 * Both wrap instances (never prototypes), and fall back to the stock behaviour if the
 * internals they rely on are missing.
 */
import { yamux } from "@chainsafe/libp2p-yamux";
import type { Stream, StreamMuxerFactory, Transport, Upgrader } from "@libp2p/interface";
import { tcp } from "@libp2p/tcp";
import type { Libp2pOptions } from "libp2p";

type TransportFactory = NonNullable<Libp2pOptions["transports"]>[number];
type MuxerFactory = NonNullable<Libp2pOptions["streamMuxers"]>[number];

interface SendsData {
  sendData?: (
    data: Iterable<Uint8Array> & { byteLength: number; subarray?: () => Uint8Array },
  ) => unknown;
}

/** Makes a TCP connection write each send as one buffer. */
function coalesce<T>(maConn: T): T {
  const conn = maConn as unknown as SendsData;
  const original = conn.sendData;
  if (typeof original !== "function") return maConn;
  conn.sendData = function (this: unknown, data) {
    const joined = typeof data.subarray === "function" ? [data.subarray()] : data;
    return original.call(this, Object.assign(joined, { byteLength: data.byteLength }));
  };
  return maConn;
}

function leanUpgrader(upgrader: Upgrader): Upgrader {
  const lean = Object.create(upgrader) as Upgrader;
  lean.upgradeInbound = (maConn, opts) => upgrader.upgradeInbound(coalesce(maConn), opts);
  lean.upgradeOutbound = (maConn, opts) => upgrader.upgradeOutbound(coalesce(maConn), opts);
  return lean;
}

/** @libp2p/tcp with one socket write per send. */
export function leanTcp(init: Parameters<typeof tcp>[0] = {}): TransportFactory {
  const stock = tcp(init);
  return (components) => {
    const inner = stock(components) as Transport;
    const t = Object.create(inner) as Transport;
    t.dial = (ma, opts) => inner.dial(ma, { ...opts, upgrader: leanUpgrader(opts.upgrader) });
    t.createListener = (opts) =>
      inner.createListener({ ...opts, upgrader: leanUpgrader(opts.upgrader) });
    return t;
  };
}

interface YamuxInternals {
  state?: number;
  recvWindow?: number;
  recvWindowCapacity?: number;
  sendWindowUpdate?: () => void;
}

const ESTABLISHED = 3; // StreamState.Established in @chainsafe/libp2p-yamux 8

/** Makes a yamux stream send window updates only once half its receive window is used. */
function lazyWindow(stream: Stream): Stream {
  const s = stream as unknown as YamuxInternals;
  const original = s.sendWindowUpdate;
  if (typeof original !== "function" || typeof s.recvWindow !== "number") return stream;
  s.sendWindowUpdate = function (this: YamuxInternals) {
    const cap = this.recvWindowCapacity ?? 0;
    const win = this.recvWindow ?? 0;
    if (this.state === ESTABLISHED && cap * 2 > win) return;
    original.call(this);
  };
  return stream;
}

/** @chainsafe/libp2p-yamux with go-yamux-like (lazy) window updates. */
export function leanYamux(init: Parameters<typeof yamux>[0] = {}): MuxerFactory {
  const stock = yamux(init);
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
          return lazyWindow(create.apply(this, args));
        };
      }
      return muxer as unknown as ReturnType<StreamMuxerFactory["createStreamMuxer"]>;
    };
    return f;
  };
}
