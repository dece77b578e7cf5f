/** A real HTTP upstream on 127.0.0.1 for tests: echoes what it got, fails on command. */
import http from "node:http";
import type { AddressInfo } from "node:net";

/** How the upstream answers next. */
export type UpstreamMode = "ok" | "error500" | "hang";

/** A running upstream. */
export interface Upstream {
  url: string;
  port: number;
  name: string;
  requests: number;
  mode: UpstreamMode;
  close(): Promise<void>;
}

/** Starts an upstream that answers /health and echoes method, path, headers and body as JSON. */
export async function startUpstream(name: string, port = 0): Promise<Upstream> {
  const state = { requests: 0, mode: "ok" as UpstreamMode };
  const server = http.createServer((req, res) => {
    state.requests += 1;
    if (state.mode === "hang") return; // never answers; closed with the server
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const status = state.mode === "error500" ? 500 : 200;
      const body = JSON.stringify({
        upstream: name,
        method: req.method,
        url: req.url,
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      });
      res.writeHead(status, { "content-type": "application/json", "x-upstream": name });
      res.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const bound = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${bound}`,
    port: bound,
    name,
    get requests() {
      return state.requests;
    },
    get mode() {
      return state.mode;
    },
    set mode(m: UpstreamMode) {
      state.mode = m;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
