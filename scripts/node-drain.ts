/**
 * Keeps a keep-alive connection usable when the coordinator answers before it read the whole
 * request body (a 413, a 401, a 503 for an unknown service): on Node, @hono/node-server turns
 * the body into a Web stream as soon as anything looks at `request.body` (hono's bodyLimit
 * does), and that stream pauses the socket once its queue is full; the server's own drain then
 * stalls and closes the connection it had just announced as keep-alive, so the client's next
 * request on it fails (undici: UND_ERR_SOCKET). Bun and Deno drain by themselves.
 *
 * What is left of the body is read and dropped up to `maxBytes` within `timeoutMs`; past
 * either the connection is closed. A body some reader still holds cannot be drained: that
 * answer says `Connection: close` instead.
 */
import type http from "node:http";

/** Limits of the drain. */
export interface DrainInit {
  /** Most bytes read and dropped after an early answer. Default 16 MiB. */
  maxBytes?: number;
  /** Longest drain. Default 10 s. */
  timeoutMs?: number;
}

type NodeEnv = { incoming?: http.IncomingMessage; outgoing?: http.ServerResponse } | undefined;

/** Wraps a `fetch(request, env)` handler served by @hono/node-server; see the file comment. */
export function drainEarlyAnswers<E>(
  handler: (request: Request, env: E) => Response | Promise<Response>,
  init: DrainInit = {},
): (request: Request, env: E) => Response | Promise<Response> {
  const maxBytes = init.maxBytes ?? 16 * 1024 * 1024;
  const timeoutMs = init.timeoutMs ?? 10_000;
  const drained = async (request: Request, env: E) => {
    const response = await handler(request, env);
    const incoming = (env as NodeEnv)?.incoming;
    if (!incoming || incoming.complete) return response;
    const body = request.body;
    if (!body) return response;
    if (body.locked) {
      const headers = new Headers(response.headers);
      headers.set("connection", "close");
      return new Response(response.body, {
        status: response.status,
        statusText: response.statusText,
        headers,
      });
    }
    void drain(body, incoming, maxBytes, timeoutMs);
    return response;
  };
  // A GET or HEAD has no body to drain: straight to the handler (no extra promise per request).
  return (request, env) => {
    const method = request.method;
    return method === "GET" || method === "HEAD" ? handler(request, env) : drained(request, env);
  };
}

async function drain(
  body: ReadableStream<Uint8Array>,
  incoming: http.IncomingMessage,
  maxBytes: number,
  timeoutMs: number,
): Promise<void> {
  const reader = body.getReader();
  const timer = setTimeout(() => void reader.cancel().catch(() => {}), timeoutMs);
  timer.unref();
  let read = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      read += value.byteLength;
      if (read > maxBytes) {
        await reader.cancel().catch(() => {});
        incoming.socket?.destroySoon();
        return;
      }
    }
  } catch {
    // the client went away, or the timer gave up: the connection is closed either way
  } finally {
    clearTimeout(timer);
  }
}
