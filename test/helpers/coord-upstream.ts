/** Real HTTP upstreams on 127.0.0.1 for the coordinator's proxy tests. */
import http from "node:http";
import type { AddressInfo } from "node:net";

/** What an upstream received. */
export interface Received {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** How the upstream answers: echo, hang (never answer), or 500. */
export type EchoMode = "echo" | "hang" | "error500";

/** A running echo upstream. */
export interface EchoUpstream {
  url: string;
  port: number;
  name: string;
  mode: EchoMode;
  received: Received[];
  close(): Promise<void>;
}

/** Starts an upstream that echoes method, raw path, headers and body as JSON. */
export async function startEcho(name: string): Promise<EchoUpstream> {
  const state: { mode: EchoMode; received: Received[] } = { mode: "echo", received: [] };
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
      state.received.push(got);
      if (state.mode === "hang") return;
      res.writeHead(state.mode === "error500" ? 500 : 200, {
        "content-type": "application/json",
        "x-upstream": name,
        connection: "keep-alive, x-secret-hop",
        "x-secret-hop": "must not pass",
      });
      res.end(JSON.stringify({ upstream: name, ...got }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    name,
    get mode() {
      return state.mode;
    },
    set mode(m: EchoMode) {
      state.mode = m;
    },
    received: state.received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A port on 127.0.0.1 where nothing listens (connection refused). */
export async function refusedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
