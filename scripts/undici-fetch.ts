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
  frame,
  guardedLookup,
  NO_BODY_STATUS,
  type NodeFetch,
  type NodeFetchInit,
  nodeHeaders,
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
      const { out: headers, length } = nodeHeaders(reqInit.headers);
      frame(headers, reqInit.body, length);
      const source = reqInit.body;
      let body: Dispatcher.DispatchOptions["body"] = null;
      if (typeof source === "string" || source instanceof Uint8Array) body = source;
      else if (source instanceof ReadableStream) {
        // Never cancels the source on an early end: the proxy may send it again.
        body = Readable.fromWeb(source as never, { highWaterMark: 0 } as never);
      } else if (source !== null && source !== undefined) {
        reject(new TypeError("Unsupported request body for the undici upstream client"));
        return;
      }
      let abort: ((err: Error) => void) | null = null;
      let settled = false;
      let stream: PassThrough | null = null;
      let resume: (() => void) | null = null;
      let chunks: Buffer[] | null = null;
      let meta: ResponseInit = {};
      let readerGone = false;
      const onBodyBreak = (reqInit as ProxyFetchInit).onBodyBreak;
      const onAbort = () => {
        const reason =
          signal?.reason ?? new DOMException("The operation was aborted", "AbortError");
        abort?.(reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const done = () => signal?.removeEventListener("abort", onAbort);
      // The coordinator's handle, instead of a signal: the same abort, without its listeners.
      let cancelled: Error | null = null;
      const handle = (reqInit as ProxyFetchInit).abortable;
      if (handle) {
        handle.abort = (reason) => {
          cancelled = reason;
          abort?.(reason);
        };
      }
      const fail = (err: Error) => {
        done();
        if (!settled) {
          settled = true;
          reject(err);
        } else {
          // After the headers: the upstream broke the body, unless its reader went away.
          if (stream !== null && !readerGone && !stream.destroyed) onBodyBreak?.();
          stream?.destroy(err);
        }
      };
      const handler: Dispatcher.DispatchHandler = {
        onConnect(abortRequest) {
          abort = abortRequest;
          if (signal?.aborted) onAbort();
          else if (cancelled !== null) abortRequest(cancelled);
        },
        onHeaders(status, raw, resumeRequest, statusText) {
          if (status < 200) return true; // 1xx: the answer follows
          resume = resumeRequest;
          const headersIn = headersOf(raw as unknown as Buffer[]);
          meta = { status, statusText: statusText ?? "", headers: headersIn };
          if (method === "HEAD" || NO_BODY_STATUS.has(status)) {
            settled = true;
            resolve(new Response(null, meta));
            return true;
          }
          const encoding = headersIn.get("content-encoding");
          const decode = encoding ? decoder(encoding) : null;
          const size = Number(headersIn.get("content-length") ?? Number.NaN);
          if (decode === null && size <= bufferBytes) {
            chunks = [];
            return true;
          }
          stream = new PassThrough();
          stream.on("drain", () => resume?.());
          let out: Readable = stream;
          if (decode !== null) {
            stream.on("error", (err) => decode.emit("error", err));
            out = stream.pipe(decode) as unknown as Readable;
            // A corrupt encoding is the upstream's doing too.
            decode.once("error", (err) => {
              if (!readerGone && upstreamBodyFault(err)) onBodyBreak?.();
            });
          }
          // The reader went away (the client left): stop the upstream request too.
          out.on("close", () => {
            if (stream?.writableFinished) return;
            if (!stream?.destroyed) readerGone = true;
            abort?.(new Error("The answer's reader went away"));
          });
          settled = true;
          resolve(new Response(Readable.toWeb(out) as ReadableStream<Uint8Array>, meta));
          return true;
        },
        onData(chunk) {
          if (chunks !== null) {
            chunks.push(chunk);
            return true;
          }
          if (stream === null) return true; // a HEAD or bodiless answer
          return stream.write(chunk);
        },
        onComplete() {
          done();
          if (chunks !== null) {
            const whole = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
            settled = true;
            resolve(new Response(whole as Uint8Array<ArrayBuffer>, meta));
            return;
          }
          stream?.end();
        },
        onError: fail,
      };
      agent.dispatch(
        {
          origin: url.origin,
          path: url.pathname + url.search,
          method,
          headers,
          body,
        },
        handler,
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
