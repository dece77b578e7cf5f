/**
 * The client address of a request as each runtime's server saw it, handed to the coordinator
 * as its `clientAddress` component by the starters (the Workers and bare-Bun ones are in
 * coordinator.ts beside its default export).
 */
import type { ClientAddress, RawRequestHeaders } from "../coordinator.ts";

/** @hono/node-server: the socket in `env.incoming`. */
export const nodeClientAddress: ClientAddress = (_request, env) =>
  (env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket
    ?.remoteAddress;

/**
 * @hono/node-server: the request's headers as Node's parser received them (`env.incoming`'s
 * `rawHeaders`), which the proxy reads instead of `request.headers` (a `Headers` built from this
 * list on first use, then sorted to be read).
 */
export const nodeRawHeaders: RawRequestHeaders = (_request, env) =>
  (env as { incoming?: { rawHeaders?: string[] } } | undefined)?.incoming?.rawHeaders ?? null;

/** `Deno.serve`: the handler's second argument, `info.remoteAddr`. */
export const denoClientAddress: ClientAddress = (_request, info) =>
  (info as { remoteAddr?: { hostname?: string } } | undefined)?.remoteAddr?.hostname;
