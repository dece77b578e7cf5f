/**
 * The benchmark's reference point (scripts/bench-proxy.ts): a bare hono app that only
 * `fetch`es the upstream, with no routing logic, on Node (@hono/node-server), Bun or Deno.
 *
 *   UPSTREAM=http://127.0.0.1:8080 PORT=8787 [CLIENT=node-http|undici|pool] \
 *     <node --import tsx | bun | deno run -A> scripts/bench-proxy-bare.ts
 *
 * CLIENT picks the upstream client: the runtime's fetch (default), the Node starter's node:http
 * client (scripts/node-fetch.ts, Node and Deno), the undici one (scripts/undici-fetch.ts, on
 * undici's `dispatch`) or undici's `Pool` and `request` (`poolFetch` below).
 */
import { Hono } from "hono";

const env: Record<string, string | undefined> =
  (globalThis as { Deno?: { env: { toObject(): Record<string, string> } } }).Deno?.env.toObject() ??
  process.env;
const upstream = env.UPSTREAM ?? "http://127.0.0.1:8080";
const port = Number(env.PORT ?? 8787);
const prefix = "/api/service/echo";
/**
 * undici's `Pool` (one per origin) and its `request`, the API undici recommends, beside the
 * starter's client on the `dispatch` under them (`CLIENT=pool`: issue 15 asked which is
 * faster). Answers are read whole, as the starter's client reads small ones; bench only.
 */
async function poolFetch(): Promise<typeof fetch> {
  const { Pool } = await import("undici");
  const { flatHeaders } = await import("./undici-fetch.ts");
  const pools = new Map<string, InstanceType<typeof Pool>>();
  return (async (input: string, init: RequestInit = {}) => {
    const url = new URL(input);
    let pool = pools.get(url.origin);
    if (pool === undefined) {
      pool = new Pool(url.origin, { connections: 256, pipelining: 1 });
      pools.set(url.origin, pool);
    }
    const res = await pool.request({
      path: url.pathname + url.search,
      method: (init.method ?? "GET") as "GET",
      headers: flatHeaders(init.headers, init.body),
    });
    const body = Buffer.from(await res.body.arrayBuffer());
    const headers = new Headers();
    for (const [name, value] of Object.entries(res.headers)) {
      if (Array.isArray(value)) for (const v of value) headers.append(name, v);
      else if (value !== undefined) headers.append(name, value);
    }
    return new Response(body, { status: res.statusCode, headers });
  }) as unknown as typeof fetch;
}

const client =
  env.CLIENT === "pool"
    ? await poolFetch()
    : env.CLIENT === "node-http"
      ? (await import("./node-fetch.ts")).createNodeFetch().fetch
      : env.CLIENT === "undici"
        ? (await import("./undici-fetch.ts")).createUndiciFetch().fetch
        : fetch;

const app = new Hono();
app.all(`${prefix}/*`, (c) =>
  client(`${upstream}/service/echo${c.req.path.slice(prefix.length)}`, {
    method: c.req.method,
    headers: c.req.raw.headers,
  }),
);

const G = globalThis as {
  Bun?: { serve(o: { port: number; hostname: string; fetch: typeof app.fetch }): unknown };
  Deno?: {
    serve(o: { port: number; hostname: string; onListen(): void }, h: typeof app.fetch): unknown;
  };
};
if (G.Bun) G.Bun.serve({ port, hostname: "127.0.0.1", fetch: app.fetch });
else if (G.Deno) G.Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, app.fetch);
else {
  const { serve } = await import("@hono/node-server");
  serve({ fetch: app.fetch, port, hostname: "127.0.0.1" });
}
console.log(`bare hono proxy listening on http://127.0.0.1:${port}`);
// A clean exit on SIGINT, so `--cpu-prof` (Node, Bun) writes its profile.
if (!G.Deno) process.once("SIGINT", () => process.exit(0));
