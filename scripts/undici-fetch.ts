/**
 * The Node starter's upstream client: the same `fetch` contract as
 * scripts/node-fetch.ts (method, headers, a streamed or whole body, `signal`, no redirects,
 * bodies decoded, small answers read whole, framing from the body really sent, the address
 * guard, `onBodyBreak`) on undici's `Agent` (a `Pool` per origin) through its low-level `dispatch`, the layer
 * undici's own `request` is built on. The default since it measured less CPU per request than
 * the node:http client (docs/BENCHMARKS.md, run 6); `ROLLCALL_NODE_FETCH=node-http` selects that.
 */
import { PassThrough, Readable } from "node:stream";
import { Agent, type Dispatcher } from "undici";
import {
  type ProxyFetchInit,
  decoder,
  framedLength,
  guardedLookup,
  NO_BODY_STATUS,
  type NodeFetch,
  type NodeFetchInit,
  upstreamBodyFault,
} from "./node-fetch.ts";

/** The response headers of a dispatch (name, value, name, value, ... as bytes) as Headers. */
function headersOf(raw: Buffer[]): Headers {
  const headers = new Headers();
  for (let i = 0; i < raw.length; i += 2) {
    headers.append(
      (raw[i] as Buffer).toString("latin1"),
      (raw[i + 1] as Buffer).toString("latin1"),
    );
  }
  return headers;
}

/** Framing headers the client sets itself from the body it really sends. */
const FRAMING = new Set(["content-length", "transfer-encoding", "expect"]);

/**
 * The request headers for undici as one flat list (name, value, ...), lower case, without the
 * caller's framing headers, then the framing of the body really sent (as `frame` sets it): the
 * form undici takes with the least work (no object walked, no entry arrays).
 */
export function flatHeaders(headers: HeadersInit | undefined, body: RequestInit["body"]): string[] {
  const out: string[] = [];
  let length: string | undefined;
  if (headers instanceof Headers) {
    headers.forEach((value, name) => {
      if (!FRAMING.has(name)) out.push(name, value);
      else if (name === "content-length") length = value;
    });
  } else if (Array.isArray(headers)) {
    for (const [n, value] of headers) {
      const name = (n as string).toLowerCase();
      if (!FRAMING.has(name)) out.push(name, value as string);
      else if (name === "content-length") length = value as string;
    }
  } else if (headers) {
    const record = headers as Record<string, string>;
    // for-in: the coordinator's record has no prototype; a plain one's has nothing enumerable.
    for (const n in record) {
      const name = n.toLowerCase();
      if (!FRAMING.has(name)) out.push(name, record[n] as string);
      else if (name === "content-length") length = record[n];
    }
  }
  const framed = framedLength(body, length);
  if (framed !== undefined) out.push("content-length", framed);
  return out;
}

/**
 * One request through undici's dispatcher, as the handler of its `dispatch`: its state in
 * fields and its callbacks as methods (one object per request instead of a closure each).
 */
class UndiciCall implements Dispatcher.DispatchHandler {
  /** undici's abort of the request, once connected. */
  abortRequest: ((err: Error) => void) | null = null;
  settled = false;
  stream: PassThrough | null = null;
  resumeRequest: (() => void) | null = null;
  chunks: Buffer[] | null = null;
  meta: ResponseInit = {};
  readerGone = false;
  /** The reason given to the coordinator's abort handle before the request connected. */
  cancelled: Error | null = null;

  constructor(
    readonly method: string,
    readonly bufferBytes: number,
    readonly signal: AbortSignal | undefined,
    readonly onBodyBreak: (() => void) | undefined,
    readonly resolve: (res: Response) => void,
    readonly reject: (err: Error) => void,
  ) {}

  /** Aborts the request (a signal's abort or the coordinator's handle). */
  abort(reason: Error): void {
    if (this.abortRequest === null) this.cancelled = reason;
    else this.abortRequest(reason);
  }

  /** The signal's abort. */
  onAbort(): void {
    this.abort(this.signal?.reason ?? new DOMException("The operation was aborted", "AbortError"));
  }

  done(): void {
    this.signal?.removeEventListener("abort", this);
  }

  /** The signal's "abort" event (this object is its listener: no closure). */
  handleEvent(): void {
    this.onAbort();
  }

  onConnect(abortRequest: (err: Error) => void): void {
    this.abortRequest = abortRequest;
    if (this.signal?.aborted) this.onAbort();
    else if (this.cancelled !== null) abortRequest(this.cancelled);
  }

  onHeaders(
    status: number,
    raw: Buffer[] | string[] | null,
    resumeRequest: () => void,
    statusText?: string,
  ): boolean {
    if (status < 200) return true; // 1xx: the answer follows
    this.resumeRequest = resumeRequest;
    const headersIn = headersOf(raw as unknown as Buffer[]);
    this.meta = { status, statusText: statusText ?? "", headers: headersIn };
    if (this.method === "HEAD" || NO_BODY_STATUS.has(status)) {
      this.settled = true;
      this.resolve(new Response(null, this.meta));
      return true;
    }
    const encoding = headersIn.get("content-encoding");
    const decode = encoding ? decoder(encoding) : null;
    const size = Number(headersIn.get("content-length") ?? Number.NaN);
    if (decode === null && size <= this.bufferBytes) {
      this.chunks = [];
      return true;
    }
    const stream = new PassThrough();
    this.stream = stream;
    stream.on("drain", () => this.resumeRequest?.());
    let out: Readable = stream;
    if (decode !== null) {
      stream.on("error", (err) => decode.emit("error", err));
      out = stream.pipe(decode) as unknown as Readable;
      // A corrupt encoding is the upstream's doing too.
      decode.once("error", (err) => {
        if (!this.readerGone && upstreamBodyFault(err)) this.onBodyBreak?.();
      });
    }
    // The reader went away (the client left): stop the upstream request too.
    out.on("close", () => {
      if (stream.writableFinished) return;
      if (!stream.destroyed) this.readerGone = true;
      this.abortRequest?.(new Error("The answer's reader went away"));
    });
    this.settled = true;
    this.resolve(new Response(Readable.toWeb(out) as ReadableStream<Uint8Array>, this.meta));
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.chunks !== null) {
      this.chunks.push(chunk);
      return true;
    }
    if (this.stream === null) return true; // a HEAD or bodiless answer
    return this.stream.write(chunk);
  }

  onComplete(): void {
    this.done();
    const chunks = this.chunks;
    if (chunks !== null) {
      const whole = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
      this.settled = true;
      this.resolve(new Response(whole as Uint8Array<ArrayBuffer>, this.meta));
      return;
    }
    this.stream?.end();
  }

  onError(err: Error): void {
    this.done();
    if (!this.settled) {
      this.settled = true;
      this.reject(err);
      return;
    }
    // After the headers: the upstream broke the body, unless its reader went away.
    const stream = this.stream;
    if (stream !== null && !this.readerGone && !stream.destroyed) this.onBodyBreak?.();
    stream?.destroy(err);
  }
}

/** Creates the client. */
export function createUndiciFetch(init: NodeFetchInit = {}): NodeFetch {
  const sockets = init.maxSockets ?? 256;
  const lookup = init.allowAddress ? guardedLookup(init.allowAddress) : undefined;
  const agent = new Agent({
    connections: sockets,
    pipelining: 1,
    ...(lookup ? { connect: { lookup: lookup as never } } : {}),
  });
  const bufferBytes = init.bufferBytes ?? 64 * 1024;

  const undiciFetch = (input: string | URL | Request, reqInit: RequestInit = {}) => {
    if (typeof input !== "string" && !(input instanceof URL)) return fetch(input, reqInit);
    const url = typeof input === "string" ? new URL(input) : input;
    const method = (reqInit.method ?? "GET").toUpperCase();
    return new Promise<Response>((resolve, reject) => {
      const signal = reqInit.signal ?? undefined;
      if (signal?.aborted) {
        reject(signal.reason ?? new DOMException("The operation was aborted", "AbortError"));
        return;
      }
      const source = reqInit.body;
      const headers = flatHeaders(reqInit.headers, source);
      let body: Dispatcher.DispatchOptions["body"] = null;
      if (typeof source === "string" || source instanceof Uint8Array) body = source;
      else if (source instanceof ReadableStream) {
        // Never cancels the source on an early end: the proxy may send it again.
        body = Readable.fromWeb(source as never, { highWaterMark: 0 } as never);
      } else if (source !== null && source !== undefined) {
        reject(new TypeError("Unsupported request body for the undici upstream client"));
        return;
      }
      const call = new UndiciCall(
        method,
        bufferBytes,
        signal,
        (reqInit as ProxyFetchInit).onBodyBreak,
        resolve,
        reject,
      );
      signal?.addEventListener("abort", call, { once: true });
      // The coordinator's handle, instead of a signal: the same abort, without its listeners.
      const handle = (reqInit as ProxyFetchInit).abortable;
      if (handle) handle.abort = (reason) => call.abort(reason);
      agent.dispatch(
        { origin: url.origin, path: url.pathname + url.search, method, headers, body },
        call,
      );
    });
  };

  return {
    fetch: Object.assign(undiciFetch, {
      reportsBodyBreaks: true,
      abortHandle: true,
    }) as unknown as typeof fetch,
    close: () => {
      void agent.destroy().catch(() => {});
    },
  };
}
