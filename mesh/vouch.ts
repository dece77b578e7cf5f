/**
 * Indirect confirmation before a suspicion (SWIM's ping-req, Lifeguard's lesson): when a member
 * has been quiet for a while on our own link, we ask a few members we do hear when they last
 * heard it themselves (protocol /rollcall/heard/1.0.0). Heartbeats ride TCP: under packet loss
 * one stalled connection can hold a member's heartbeats back for seconds while every other
 * member hears it fine, and one answer that it was heard a moment ago is enough not to suspect
 * it. A member that is really silent (crashed, frozen) is heard by nobody.
 *
 * Wire: the asker writes one request, the peer one answer, then both close.
 *   request: u8 version (1) | varint n (1..VOUCH_LIMITS.ids) | n x (varint len, PeerId bytes)
 *   answer:  u8 version (1) | varint n (the request's n) | n x varint (0: not heard; else
 *            1 + ms since the answerer last took a heartbeat of that member itself, capped)
 * Everything is bounded (ids per request, id length, answer size, one exchange's time), and
 * anything malformed is dropped: a vouch only ever postpones a suspicion by what the answerer
 * says it heard itself (members are trusted to that extent, docs/SECURITY.md).
 */
import type { Connection, Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { fromString, toString as bytesToString } from "uint8arrays";
import type { Clock } from "./clock.ts";
import type { MeshLibp2p } from "./node.ts";

/** The protocol id of the heard-of question. */
export const VOUCH_PROTOCOL = "/rollcall/heard/1.0.0";

/** Bounds of one exchange. */
export const VOUCH_LIMITS = {
  /** Members asked about in one request. */
  ids: 16,
  /** Bytes of one PeerId. */
  idBytes: 128,
  /** Largest age told, in ms (older is as good as never, for a suspicion). */
  ageMs: 600_000,
  /** Largest request or answer, in bytes. */
  bytes: 1 + 3 + 16 * (2 + 128),
  /** How long one exchange may take, in ms. */
  timeoutMs: 1000,
} as const;

const VERSION = 1;

/** A request or answer is malformed. */
export class VouchError extends Error {
  override name = "VouchError";
}

function varint(out: number[], n: number): void {
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

class Cursor {
  #pos = 0;
  constructor(readonly buf: Uint8Array) {}
  get done(): boolean {
    return this.#pos >= this.buf.length;
  }
  byte(): number {
    const b = this.buf[this.#pos++];
    if (b === undefined) throw new VouchError("Message ended early");
    return b;
  }
  varint(max: number): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 4; i++) {
      const b = this.byte();
      value += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (value > max) throw new VouchError(`Number above ${max}`);
        return value;
      }
      scale *= 0x80;
    }
    throw new VouchError("Number too long");
  }
  bytes(max: number): Uint8Array {
    const len = this.varint(max);
    if (this.#pos + len > this.buf.length) throw new VouchError("Message ended early");
    const out = this.buf.subarray(this.#pos, this.#pos + len);
    this.#pos += len;
    return out;
  }
}

/** Encodes a request about `ids` (at most VOUCH_LIMITS.ids PeerId strings). */
export function encodeVouchRequest(ids: readonly string[]): Uint8Array {
  if (ids.length === 0 || ids.length > VOUCH_LIMITS.ids) {
    throw new VouchError(`A request names 1 to ${VOUCH_LIMITS.ids} members`);
  }
  const out: number[] = [VERSION];
  varint(out, ids.length);
  for (const id of ids) {
    const b = fromString(id, "base58btc");
    if (b.length === 0 || b.length > VOUCH_LIMITS.idBytes) throw new VouchError("Bad member id");
    varint(out, b.length);
    for (const x of b) out.push(x);
  }
  return Uint8Array.from(out);
}

/** Decodes a request; throws VouchError on anything malformed. */
export function decodeVouchRequest(buf: Uint8Array): string[] {
  if (buf.length > VOUCH_LIMITS.bytes) throw new VouchError("Request too large");
  const r = new Cursor(buf);
  if (r.byte() !== VERSION) throw new VouchError("Unknown version");
  const n = r.varint(VOUCH_LIMITS.ids);
  if (n === 0) throw new VouchError("Empty request");
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const b = r.bytes(VOUCH_LIMITS.idBytes);
    if (b.length === 0) throw new VouchError("Empty member id");
    ids.push(bytesToString(b, "base58btc"));
  }
  if (!r.done) throw new VouchError("Trailing bytes");
  return ids;
}

/** Encodes an answer: per member asked, ms since heard (capped), or undefined for never. */
export function encodeVouchAnswer(ages: ReadonlyArray<number | undefined>): Uint8Array {
  const out: number[] = [VERSION];
  varint(out, ages.length);
  for (const a of ages) {
    varint(out, a === undefined ? 0 : 1 + Math.min(VOUCH_LIMITS.ageMs, Math.max(0, Math.round(a))));
  }
  return Uint8Array.from(out);
}

/** Decodes an answer to a request about `n` members; throws VouchError on anything malformed. */
export function decodeVouchAnswer(buf: Uint8Array, n: number): Array<number | undefined> {
  if (buf.length > VOUCH_LIMITS.bytes) throw new VouchError("Answer too large");
  const r = new Cursor(buf);
  if (r.byte() !== VERSION) throw new VouchError("Unknown version");
  if (r.varint(VOUCH_LIMITS.ids) !== n) throw new VouchError("Answer does not match the request");
  const ages: Array<number | undefined> = [];
  for (let i = 0; i < n; i++) {
    const v = r.varint(VOUCH_LIMITS.ageMs + 1);
    ages.push(v === 0 ? undefined : v - 1);
  }
  if (!r.done) throw new VouchError("Trailing bytes");
  return ages;
}

/** Reads the whole (bounded) message the other side wrote before closing its end. */
async function readAll(stream: Stream): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray();
    size += bytes.length;
    if (size > VOUCH_LIMITS.bytes) throw new VouchError("Message too large");
    chunks.push(bytes);
  }
  const out = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/** Settings of the heard-of service. */
export interface VouchInit {
  /** Quiet this long on our own link, a member is asked about; default 1500 ms. */
  quietAfterMs?: number;
  /** How often a quiet member is asked about again; default 500 ms. */
  askEveryMs?: number;
  /** How many members are asked at once; default 3. */
  helpers?: number;
}

/** Collaborators of the heard-of service. */
export interface VouchComponents {
  node: MeshLibp2p;
  clock: Clock;
  /** Ms since we last took a heartbeat of `id` ourselves; undefined if not alive or suspect. */
  heardAgo: (id: string) => number | undefined;
  /** The alive members we have heard nothing of for `ms`. */
  quiet: (ms: number) => string[];
  /** The alive members we hear that are best asked about `about` (candidates to ask). */
  hearing: (about: readonly string[]) => string[];
  /** Someone heard `id` at `at` (our clock); true if that is later than anything we had. */
  onHeard: (id: string, at: number) => boolean;
  /** Whether `id` may ask us at all (the allow-list); default every connected peer. */
  allowed?: (id: string) => boolean;
  /** Called for each answer that told of a member heard later than we had heard of it. */
  onVouch?: () => void;
  /** Randomness for choosing whom to ask; default Math.random. */
  random?: () => number;
}

/** Asks and answers the heard-of question for one node. */
export class Vouches {
  #init: Required<VouchInit>;
  #c: VouchComponents;
  /** When each quiet member was last asked about. */
  #asked = new Map<string, number>();

  constructor(init: VouchInit, components: VouchComponents) {
    this.#init = {
      quietAfterMs: init.quietAfterMs ?? 1500,
      askEveryMs: init.askEveryMs ?? 500,
      helpers: init.helpers ?? 3,
    };
    this.#c = components;
  }

  /**
   * One round (call it on every tick): members quiet for `quietAfterMs` that were not asked
   * about within `askEveryMs` are asked about, in one request, to up to `helpers` members we do
   * hear. Answers arrive later and move the quiet members' silence back (`onHeard`).
   */
  round(): void {
    const now = this.#c.clock.now();
    const quiet = this.#c.quiet(this.#init.quietAfterMs);
    const still = new Set(quiet);
    for (const id of this.#asked.keys()) if (!still.has(id)) this.#asked.delete(id);
    const due = quiet
      .filter(
        (id) => now - (this.#asked.get(id) ?? Number.NEGATIVE_INFINITY) >= this.#init.askEveryMs,
      )
      .slice(0, VOUCH_LIMITS.ids);
    if (due.length === 0) return;
    const random = this.#c.random ?? Math.random;
    const helpers = this.#c
      .hearing(due)
      .filter((id) => !still.has(id))
      .map((id) => ({ id, r: random() }))
      .sort((a, b) => a.r - b.r)
      .slice(0, this.#init.helpers);
    if (helpers.length === 0) return;
    for (const id of due) this.#asked.set(id, now);
    for (const h of helpers) {
      void this.ask(h.id, due).then((ages) => {
        ages.forEach((age, i) => {
          if (age !== undefined && this.#c.onHeard(due[i] as string, now - age)) {
            this.#c.onVouch?.();
          }
        });
      });
    }
  }

  /** Registers the protocol handler. */
  async start(): Promise<void> {
    await this.#c.node.handle(VOUCH_PROTOCOL, (stream, conn) => this.#serve(stream, conn), {
      maxInboundStreams: 2,
    });
  }

  async stop(): Promise<void> {
    await this.#c.node.unhandle(VOUCH_PROTOCOL).catch(() => {});
  }

  async #serve(stream: Stream, conn: Connection): Promise<void> {
    const timer = setTimeout(
      () => stream.abort(new VouchError("Heard-of request timed out")),
      VOUCH_LIMITS.timeoutMs,
    );
    try {
      if (this.#c.allowed && !this.#c.allowed(conn.remotePeer.toString())) {
        throw new VouchError("Peer not allowed");
      }
      const ids = decodeVouchRequest(await readAll(stream));
      stream.send(encodeVouchAnswer(ids.map((id) => this.#c.heardAgo(id))));
      await stream.close({ signal: AbortSignal.timeout(VOUCH_LIMITS.timeoutMs) });
    } catch (err) {
      stream.abort(err as Error);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Asks `peer` when it last heard each of `ids` itself: ms ago per id (undefined: not heard, or
   * no answer in time). Never throws.
   */
  async ask(peer: string, ids: readonly string[]): Promise<Array<number | undefined>> {
    const none = ids.map(() => undefined);
    let stream: Stream | undefined;
    const signal = AbortSignal.timeout(VOUCH_LIMITS.timeoutMs);
    try {
      stream = await this.#c.node.dialProtocol(peerIdFromString(peer), VOUCH_PROTOCOL, {
        signal,
      });
      const s = stream;
      const onAbort = () => s.abort(new VouchError("Heard-of request timed out"));
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        s.send(encodeVouchRequest(ids));
        await s.close({ signal });
        return decodeVouchAnswer(await readAll(s), ids.length);
      } finally {
        signal.removeEventListener("abort", onAbort);
      }
    } catch {
      stream?.abort(new VouchError("Heard-of request failed"));
      return none;
    }
  }
}
