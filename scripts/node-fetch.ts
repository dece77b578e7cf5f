/**
 * The Node starter's upstream client: a `fetch` on node:http(s) with keep-alive agents,
 * because Node 20's built-in fetch (undici) is the proxy's bottleneck there. It does what the
 * coordinator asks of fetch: method, headers, a streamed or whole request body, `signal`,
 * redirects not followed, bodies decoded (gzip, deflate, br) as fetch decodes them. Answers
 * with a Content-Length up to `bufferBytes` (64 KiB) are read whole and handed over as bytes,
 * so @hono/node-server writes them out without Web streams; larger ones stream.
 * It frames each request itself: no Content-Length, Transfer-Encoding or Expect goes out that
 * does not match the body really sent (a pooled keep-alive socket must never be desynced), and,
 * given `allowAddress`, it refuses to connect where a name resolves to an address the
 * coordinator's `ROLLCALL_UPSTREAM_ALLOW` does not allow (DNS rebinding to 169.254.169.254).
 * A streamed answer whose body breaks after its headers (the upstream reset mid-response, or
 * sent a corrupt encoding) calls the caller's `onBodyBreak` (the coordinator's `UpstreamInit`),
 * never when the reader stops reading; the fetch says so with `reportsBodyBreaks`, and takes
 * the coordinator's `abortable` handle (cheaper than an AbortSignal on Node) beside `signal`, which
 * it marks with `abortHandle`.
 */
import dns from "node:dns";
import { once } from "node:events";
import http from "node:http";
import https from "node:https";
import { Readable } from "node:stream";
import zlib from "node:zlib";

/** Settings of the Node upstream client. */
export interface NodeFetchInit {
  /** Connections per upstream host and port. Default 256. */
  maxSockets?: number;
  /** Answers with a Content-Length up to this are read whole. Default 64 KiB. */
  bufferBytes?: number;
  /** Whether a connection to `address`, which upstream `host` resolved to, is allowed. */
  allowAddress?: (host: string, address: string) => boolean;
}

/** A fetch on node:http with keep-alive, and a way to close its idle connections. */
export interface NodeFetch {
  fetch: typeof fetch;
  /** Closes every pooled connection. */
  close(): void;
}

/** Statuses whose answers never have a body. */
export const NO_BODY_STATUS = new Set([101, 103, 204, 205, 304]);

/** A decoder for a Content-Encoding fetch decodes (gzip, deflate, br), or null. */
export function decoder(encoding: string): NodeJS.ReadWriteStream | null {
  const e = encoding.trim().toLowerCase();
  if (e === "gzip" || e === "x-gzip") return zlib.createGunzip();
  if (e === "deflate") return zlib.createInflate();
  if (e === "br") return zlib.createBrotliDecompress();
  return null;
}

/** What the coordinator adds to an upstream fetch's init (its `UpstreamInit`). */
export interface ProxyFetchInit extends RequestInit {
  /** Called once when the answer's body breaks after its headers came. */
  onBodyBreak?: () => void;
  /** Given instead of `signal`: the client sets `abort`, which ends the request. */
  abortable?: { abort: ((reason: Error) => void) | null };
}

/**
 * Whether an error of an answer's body is the upstream's doing: node:http's own "aborted"
 * reset (the connection closed before the body ended) or a corrupt encoding (zlib's `Z_`
 * codes), never a reason the reader cancelled with (a client's socket error included).
 */
export function upstreamBodyFault(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException | null;
  if (typeof e?.code !== "string") return false;
  return (e.code === "ECONNRESET" && e.message === "aborted") || e.code.startsWith("Z_");
}

/**
 * Calls `onBodyBreak` (once) when `stream` fails by the upstream's doing. A reader that cancels
 * the answer aborts `req` (how Node's `Readable.toWeb` ends an answer), which then fails with
 * the same "aborted" reset: that one is nobody's fault.
 */
function reportBreak(
  stream: Readable,
  req: http.ClientRequest,
  onBodyBreak: (() => void) | undefined,
): void {
  if (onBodyBreak === undefined) return;
  stream.once("error", (err) => {
    if (!req.aborted && upstreamBodyFault(err)) onBodyBreak();
  });
}

/** Framing headers the client sets itself from the body it really sends. */
const FRAMING = new Set(["content-length", "transfer-encoding", "expect"]);

/**
 * The request headers for node:http, lower case, without the caller's framing headers (copied
 * past, not deleted: a plain object stays fast); `length` is the caller's Content-Length.
 */
export function nodeHeaders(headers: HeadersInit | undefined): {
  out: Record<string, string>;
  length: string | undefined;
} {
  const out: Record<string, string> = {};
  let length: string | undefined;
  const put = (name: string, value: string) => {
    if (!FRAMING.has(name)) out[name] = value;
    else if (name === "content-length") length = value;
  };
  if (!headers) return { out, length };
  if (headers instanceof Headers) {
    headers.forEach((value, name) => {
      put(name, value);
    });
  } else if (Array.isArray(headers)) {
    for (const [name, value] of headers) put((name as string).toLowerCase(), value as string);
  } else {
    for (const [name, value] of Object.entries(headers)) put(name.toLowerCase(), value);
  }
  return { out, length };
}

async function pump(body: ReadableStream<Uint8Array>, req: http.ClientRequest): Promise<void> {
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (req.destroyed) return;
      if (done) break;
      if (!req.write(value)) await once(req, "drain");
    }
    req.end();
  } catch (err) {
    req.destroy(err as Error);
  } finally {
    reader.releaseLock();
  }
}

/**
 * Sets the request's framing from its body: none without a body, the exact length of a whole
 * one, the caller's Content-Length (`length`) for a stream only (node:http then sends exactly
 * that many bytes or fails the request); the caller chunks a stream without one.
 */
export function frame(
  headers: Record<string, string>,
  body: RequestInit["body"],
  length: string | undefined,
): void {
  const framed = framedLength(body, length);
  if (framed !== undefined) headers["content-length"] = framed;
}

/** The Content-Length `frame` sets for a body (undefined: none, or chunked). */
export function framedLength(
  body: RequestInit["body"],
  length: string | undefined,
): string | undefined {
  if (body === null || body === undefined) return undefined;
  if (typeof body === "string") return String(Buffer.byteLength(body));
  if (body instanceof Uint8Array) return String(body.byteLength);
  if (body instanceof ReadableStream && length !== undefined && /^\d+$/.test(length)) {
    return length;
  }
  return undefined;
}

/** The callback of a `lookup` for node:http and node:net. */
export type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | dns.LookupAddress[],
  family?: number,
) => void;

/** A `lookup` for node:http that refuses addresses `allow` says no to. */
export function guardedLookup(allow: (host: string, address: string) => boolean) {
  return (hostname: string, options: dns.LookupOptions, callback: LookupCallback) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, "");
      const refused = addresses.find((a) => !allow(hostname, a.address));
      if (refused) {
        const e: NodeJS.ErrnoException = new Error(
          `Upstream address not allowed: ${hostname} resolved to ${refused.address}`,
        );
        e.code = "EUPSTREAMREFUSED";
        return callback(e, "");
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0] as dns.LookupAddress;
      callback(null, first.address, first.family);
    });
  };
}

/** Creates the client. */
export function createNodeFetch(init: NodeFetchInit = {}): NodeFetch {
  const sockets = init.maxSockets ?? 256;
  const options = { keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets };
  const httpAgent = new http.Agent({ ...options, scheduling: "lifo" });
  const httpsAgent = new https.Agent({ ...options, scheduling: "lifo" });
  const bufferBytes = init.bufferBytes ?? 64 * 1024;
  const lookup = init.allowAddress ? guardedLookup(init.allowAddress) : undefined;

  const nodeFetch = (input: string | URL | Request, reqInit: RequestInit = {}) => {
    if (typeof input !== "string" && !(input instanceof URL)) return fetch(input, reqInit);
    const url = typeof input === "string" ? input : input.href;
    const method = (reqInit.method ?? "GET").toUpperCase();
    const secure = url.startsWith("https:");
    return new Promise<Response>((resolve, reject) => {
      const signal = reqInit.signal ?? undefined;
      if (signal?.aborted) {
        reject(signal.reason ?? new DOMException("The operation was aborted", "AbortError"));
        return;
      }
      const { out: headers, length } = nodeHeaders(reqInit.headers);
      frame(headers, reqInit.body, length);
      // node:http chunks a body of unknown length for POST/PUT/PATCH only: for GET, DELETE,
      // OPTIONS it would send the bytes unframed, the next request on the socket to the upstream.
      if (reqInit.body instanceof ReadableStream && headers["content-length"] === undefined) {
        headers["transfer-encoding"] = "chunked";
      }
      const req = (secure ? https : http).request(url, {
        method,
        headers,
        agent: secure ? httpsAgent : httpAgent,
        signal,
        ...(lookup ? { lookup: lookup as never } : {}),
      });
      // A stream that yields more or fewer bytes than its Content-Length fails the request
      // instead of leaving the pooled socket out of step with the upstream.
      if (headers["content-length"] !== undefined) {
        (req as unknown as { strictContentLength: boolean }).strictContentLength = true;
      }
      const handle = (reqInit as ProxyFetchInit).abortable;
      if (handle) handle.abort = (reason) => req.destroy(reason);
      req.on("error", reject);
      req.on("response", (res) => {
        const status = res.statusCode ?? 502;
        const headers = new Headers();
        const raw = res.rawHeaders;
        // Hop-by-hop headers stay: the coordinator drops them and those `Connection` names.
        for (let i = 0; i < raw.length; i += 2)
          headers.append(raw[i] as string, raw[i + 1] as string);
        const meta = { status, statusText: res.statusMessage ?? "", headers };
        if (method === "HEAD" || NO_BODY_STATUS.has(status)) {
          res.resume();
          resolve(new Response(null, meta));
          return;
        }
        const encoding = res.headers["content-encoding"];
        const decode = encoding ? decoder(encoding) : null;
        const length = Number(res.headers["content-length"] ?? Number.NaN);
        if (decode === null && length <= bufferBytes) {
          const chunks: Buffer[] = [];
          res.on("data", (chunk: Buffer) => chunks.push(chunk));
          res.on("error", reject);
          res.on("end", () => {
            const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
            resolve(new Response(body as Uint8Array<ArrayBuffer>, meta));
          });
          return;
        }
        let stream: Readable = res;
        if (decode !== null) {
          res.on("error", (err) => decode.emit("error", err));
          stream = res.pipe(decode) as unknown as Readable;
        }
        reportBreak(stream, req, (reqInit as ProxyFetchInit).onBodyBreak);
        resolve(new Response(Readable.toWeb(stream) as ReadableStream<Uint8Array>, meta));
      });
      const body = reqInit.body;
      if (body === null || body === undefined) req.end();
      else if (typeof body === "string" || body instanceof Uint8Array) req.end(body);
      else if (body instanceof ReadableStream) void pump(body, req);
      else req.destroy(new TypeError("Unsupported request body for the Node upstream client"));
    });
  };

  return {
    fetch: Object.assign(nodeFetch, {
      reportsBodyBreaks: true,
      abortHandle: true,
    }) as unknown as typeof fetch,
    close: () => {
      httpAgent.destroy();
      httpsAgent.destroy();
    },
  };
}

/** Whether a @hono/node-server client went away before its answer ended. */
export function nodeClientGone(_request: Request, env: unknown): boolean {
  const outgoing = (env as { outgoing?: http.ServerResponse } | undefined)?.outgoing;
  return (
    outgoing !== undefined && !outgoing.writableFinished && outgoing.socket?.destroyed !== false
  );
}
