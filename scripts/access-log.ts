/**
 * The coordinator's optional access log: one line per request. Web-standard only (no node:*),
 * so the Workers entry uses it as the Node, Bun and Deno starters do.
 */
import type { Logger } from "../agent/log.ts";
import { aliasList, matchAlias, parseProxyPath } from "../coordinator.ts";

/** A coordinator's fetch handler (Request in, Response out, whatever else the runtime passes). */
type FetchHandler = (request: Request, ...rest: never[]) => Response | Promise<Response>;

/**
 * Wraps a fetch handler so each request logs one line: method, path (never the query, which may
 * hold secrets), the service (from `/api/service/<name>/` or an alias), the worker that answered
 * (`X-Rollcall-Worker` and its name), the status and the milliseconds to the response headers.
 */
export function withAccessLog<F extends FetchHandler>(
  handler: F,
  log: Logger,
  aliases: Record<string, string> = {},
): F {
  const list = aliasList(aliases);
  const wrapped = async (request: Request, ...rest: never[]) => {
    const started = performance.now();
    const url = request.url;
    const at = url.indexOf("/", url.indexOf("//") + 2);
    const q = url.indexOf("?", at);
    const path = q === -1 ? url.slice(at) : url.slice(at, q);
    let service: string | null = null;
    try {
      service = path.startsWith("/api/service/")
        ? (parseProxyPath(path)?.service ?? null)
        : (matchAlias(path, list)?.service ?? null);
    } catch {
      // a bad service name: the coordinator answers 400 and the line says service=null
    }
    let status = 500;
    let worker: string | null = null;
    let name: string | null = null;
    try {
      const res = await handler(request, ...rest);
      status = res.status;
      worker = res.headers.get("x-rollcall-worker");
      name = res.headers.get("x-rollcall-worker-name");
      return res;
    } finally {
      log.info("access", {
        method: request.method,
        path: path.length > 512 ? `${path.slice(0, 512)}...` : path,
        service,
        worker,
        worker_name: name,
        status,
        ms: Math.round((performance.now() - started) * 10) / 10,
      });
    }
  };
  return wrapped as unknown as F;
}
