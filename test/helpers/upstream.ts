/**
 * Real HTTP upstreams on 127.0.0.1 for tests. One echoes what it read as JSON and misbehaves on
 * command: it refuses connections (its listener closed), hangs, answers 500 or 503, answers slowly, or
 * drops the connection after reading the request. A port where nothing listens at all is
 * `freePort()` of `processes.ts`.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";

/** How the upstream behaves. */
export type UpstreamMode = "ok" | "refuse" | "hang" | "error500" | "error503" | "slow" | "reset";

/** One request the upstream read. */
export interface Received {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A running upstream whose behaviour tests switch. */
export interface Upstream {
  name: string;
  url: string;
  port: number;
  readonly mode: UpstreamMode;
  /** Delay of the "slow" mode, ms. */
  slowMs: number;
  /** Every request read, in order (in any mode but "refuse", which reads none); its length counts them. */
  readonly received: Received[];
  /** Requests held by "hang" right now. */
  readonly hanging: number;
  /** Switches the behaviour; "refuse" closes the listener, any other mode opens it again. */
  setMode(mode: UpstreamMode): Promise<void>;
  /** Answers every held request with 200. */
  release(): void;
  close(): Promise<void>;
}

/**
 * Starts an upstream in mode "ok": it answers any path with JSON of who it is and the method,
 * raw path, headers and body it read. Every answer also names a hop-by-hop header of its own
 * (`connection: keep-alive, x-secret-hop`), which a proxy must not pass on.
 */
export async function startUpstream(name: string): Promise<Upstream> {
  let mode: UpstreamMode = "ok";
  const held: http.ServerResponse[] = [];
  const received: Received[] = [];
  const answer = (res: http.ServerResponse, status: number, got: Received) => {
    if (res.destroyed) return;
    res.writeHead(status, {
      "content-type": "application/json",
      "x-upstream": name,
      connection: "keep-alive, x-secret-hop",
      "x-secret-hop": "must not pass",
    });
    res.end(JSON.stringify({ upstream: name, ...got }));
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const got: Received = {
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      };
      received.push(got);
      if (mode === "hang") held.push(res);
      else if (mode === "reset") req.socket.destroy();
      else if (mode === "error500") answer(res, 500, got);
      else if (mode === "error503") answer(res, 503, got);
      else if (mode === "slow") setTimeout(() => answer(res, 200, got), upstream.slowMs);
      else answer(res, 200, got);
    });
  });
  server.keepAliveTimeout = 60_000;
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
  const shut = () =>
    new Promise<void>((resolve) => {
      for (const res of held.splice(0)) res.destroy();
      server.closeAllConnections();
      server.close(() => resolve());
    });
  await listen(0);
  const port = (server.address() as AddressInfo).port;
  const upstream: Upstream = {
    name,
    url: `http://127.0.0.1:${port}`,
    port,
    slowMs: 200,
    received,
    get mode() {
      return mode;
    },
    get hanging() {
      return held.length;
    },
    async setMode(next) {
      if (next === "refuse" && server.listening) await shut();
      if (next !== "refuse" && !server.listening) await listen(port);
      mode = next;
    },
    release() {
      for (const res of held.splice(0)) {
        answer(res, 200, { method: "", url: "", headers: {}, body: "released" });
      }
    },
    close: () => (server.listening ? shut() : Promise.resolve()),
  };
  return upstream;
}

/** Waits until `check` holds, polling, or fails after the deadline with `what`. */
export async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  deadlineMs = 20_000,
): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
