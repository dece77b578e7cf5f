/**
 * The proxy's own cost, in-process, against another version of coordinator.ts: CPU µs per
 * request of `coordinator.fetch` for a GET routed to one provider whose upstream answers at
 * once (an in-memory fetch), with the headers a browser sends. The two versions run
 * interleaved in one process, batch after batch, so the load of a shared machine hits both
 * alike; the figure is the median per-round ratio. The full-stack proxy benchmark
 * (bench-proxy.ts) cannot see a few per cent of the coordinator's share through the noise of a
 * loaded machine; this one can. `--reports-breaks` marks the in-memory fetch as one that reports
 * its answers' body breaks itself, as the Node and Deno starters' client does (Bun's and
 * workerd's fetch do not).
 *
 *   npx tsx scripts/bench-proxy-path.ts --against /path/to/other/coordinator.ts \
 *     [--rounds 15] [--requests 20000] [--reports-breaks]
 *   bun scripts/bench-proxy-path.ts --against ...      deno run -A scripts/bench-proxy-path.ts --against ...
 */
import { cpus, loadavg } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    against: { type: "string" },
    rounds: { type: "string", default: "15" },
    requests: { type: "string", default: "20000" },
    "reports-breaks": { type: "boolean", default: false },
  },
});
if (!values.against) {
  console.error("Usage: bench-proxy-path.ts --against <other coordinator.ts> [--rounds N]");
  process.exit(2);
}
const rounds = Number(values.rounds);
const requests = Number(values.requests);

type Mod = typeof import("../coordinator.ts");
const here = (await import("../coordinator.ts")) as Mod;
const other = (await import(pathToFileURL(path.resolve(values.against)).href)) as Mod;

const HEADERS = {
  accept: "application/json, text/plain, */*",
  "accept-language": "en-GB,en;q=0.9",
  "user-agent": "Mozilla/5.0 (X11; Linux x86_64) rollcall-bench",
  referer: "https://app.example/page",
  cookie: "session=abc123; theme=dark",
  "x-requested-with": "XMLHttpRequest",
  host: "coordinator.example",
};
const ENV = { incoming: { socket: { remoteAddress: "127.0.0.1" } } };

/** A coordinator of version `mod` with one direct-mode worker serving "echo". */
async function setUp(mod: Mod) {
  const upstream = Object.assign(
    async () =>
      new Response('{"ok":true}', {
        status: 200,
        headers: { "content-type": "application/json", "content-length": "11" },
      }),
    { reportsBodyBreaks: values["reports-breaks"], abortHandle: values["reports-breaks"] },
  ) as unknown as typeof fetch;
  const c = mod.createCoordinator(
    // An open coordinator answers only loopback Host names unless told of others.
    { liveView: false, allowedHosts: "coordinator.example" },
    {
      store: mod.memoryStore(),
      fetch: upstream,
      // The Node starter's component (older versions read ENV.incoming themselves).
      clientAddress: (_request: Request, env: unknown) =>
        (env as typeof ENV).incoming.socket.remoteAddress,
    },
  );
  const res = await c.fetch(
    new Request("http://coordinator.example/api/worker/register", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        worker_id: "bench-worker",
        tunnel_url: "http://10.0.0.1:8700",
        services: ["echo"],
      }),
    }),
  );
  if (res.status !== 200) throw new Error(`register answered ${res.status}`);
  const probe = await c.fetch(new Request("http://coordinator.example/api/service/echo/x"), ENV);
  if (probe.status !== 200) throw new Error(`the proxy answered ${probe.status}`);
  return c;
}

/** CPU µs per request of `n` sequential proxied GETs. */
async function batch(c: Awaited<ReturnType<typeof setUp>>, n: number): Promise<number> {
  const before = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const req = new Request(`http://coordinator.example/api/service/echo/items/${i}?q=1`, {
      headers: HEADERS,
    });
    const res = await c.fetch(req, ENV);
    await res.arrayBuffer();
  }
  const used = process.cpuUsage(before);
  return (used.user + used.system) / n;
}

const a = await setUp(other);
const b = await setUp(here);
await batch(a, 2000);
await batch(b, 2000);
const ratios: number[] = [];
const as: number[] = [];
const bs: number[] = [];
for (let r = 0; r < rounds; r++) {
  // Alternate which goes first, so neither always runs on the warmer cache.
  let usA: number;
  let usB: number;
  if (r % 2 === 0) {
    usA = await batch(a, requests);
    usB = await batch(b, requests);
  } else {
    usB = await batch(b, requests);
    usA = await batch(a, requests);
  }
  as.push(usA);
  bs.push(usB);
  ratios.push(usB / usA);
}
const median = (list: number[]) =>
  [...list].sort((p, q) => p - q)[Math.floor(list.length / 2)] as number;
const runtime =
  "Bun" in globalThis ? "bun" : "Deno" in globalThis ? "deno" : `node ${process.version}`;
console.log(
  `${runtime}, ${cpus().length} cores, load ${loadavg()
    .map((l) => l.toFixed(1))
    .join(" ")}: ${rounds} rounds of ${requests} requests`,
);
console.log(`  other (${values.against}): median ${median(as).toFixed(2)} µs/request`);
console.log(`  this tree: median ${median(bs).toFixed(2)} µs/request`);
console.log(
  `  this / other: median ${median(ratios).toFixed(3)} (range ${Math.min(...ratios).toFixed(3)}-${Math.max(...ratios).toFixed(3)})`,
);
