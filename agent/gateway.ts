/**
 * The gateway: one HTTP port that fronts the local services at /service/<name>/...
 * (bodies streamed both ways, hop-by-hop headers stripped), plus /_agent/health
 * and the token-protected live view at /_agent/cluster.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import {
  assertSafeRest,
  COORDINATOR_VERSION,
  HOP_BY_HOP as HOP_BY_HOP_LIST,
  ServiceNameSchema,
  UnsafePathError,
} from "../coordinator.ts";
import type { DetectedService } from "./detect.ts";
import { viewAuthorized } from "./view-auth.ts";

const HOP_BY_HOP = new Set(HOP_BY_HOP_LIST);

/** Copies headers without hop-by-hop ones (and those the Connection header names). */
export function stripHopByHop(headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const named = new Set(
    String(headers.connection ?? "")
      .split(",")
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean),
  );
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || HOP_BY_HOP.has(k) || named.has(k)) continue;
    out[k] = v;
  }
  return out;
}

const SERVICE_PATH = /^\/service\/([^/?#]*)(\/[^?#]*)?(\?.*)?$/;

/** A request path that must not reach a service, and why. */
export interface BadServicePath {
  error: string;
}

/**
 * Splits /service/<name>/<rest>?q, or says why the path is refused: a name the coordinator
 * would refuse (ServiceNameSchema), or a rest its `assertSafeRest` refuses (dot segments,
 * encoded slashes, backslashes or NUL in any decoding, malformed encodings).
 */
export function parseServicePath(
  url: string,
): { name: string; rest: string; query: string } | BadServicePath {
  const m = SERVICE_PATH.exec(url);
  if (!m) return { error: "Use /service/<name>/<path>" };
  const [, name = "", rest = "/", query = ""] = m;
  const valid = ServiceNameSchema.safeParse(name);
  if (!valid.success) return { error: `Service name ${valid.error.issues[0]?.message}` };
  try {
    assertSafeRest(rest);
  } catch (err) {
    if (err instanceof UnsafePathError) return { error: err.message };
    throw err;
  }
  return { name, rest, query };
}

/** Settings of a gateway. */
export interface GatewayInit {
  host: string;
  port: number;
  /**
   * Protects /_agent/cluster (agent/view-auth.ts); when unset the view is open (local
   * development) unless `viewLocked`.
   */
  agentToken?: string | undefined;
  /** No agent token but a cluster token is set: the view is refused to everyone (fail closed). */
  viewLocked?: boolean;
  /** Milliseconds an upstream may take to answer (default 30 s). */
  upstreamTimeoutMs?: number;
}

/** What the gateway asks the rest of the agent. */
export interface GatewayComponents {
  service(name: string): DetectedService | undefined;
  services(): DetectedService[];
  health(): Record<string, unknown>;
  clusterView(): unknown;
}

/** Most bytes of a request body read and dropped after the service answered early. */
const DRAIN_MAX_BYTES = 16 * 1024 * 1024;
/** Longest such drain; past it, or past the bytes, the client's connection is closed. */
const DRAIN_TIMEOUT_MS = 10_000;

/** Reads and drops what is left of a request body, so its keep-alive connection stays usable. */
function drainRequest(req: http.IncomingMessage): void {
  let read = 0;
  const close = () => {
    cleanup();
    req.socket.destroy();
  };
  const onData = (chunk: Buffer) => {
    read += chunk.length;
    if (read > DRAIN_MAX_BYTES) close();
  };
  const timer = setTimeout(close, DRAIN_TIMEOUT_MS);
  timer.unref();
  const cleanup = () => {
    clearTimeout(timer);
    req.off("data", onData);
    req.off("end", cleanup);
    req.off("error", cleanup);
  };
  req.on("data", onData);
  req.once("end", cleanup);
  req.once("error", cleanup);
  req.resume();
}

const json = (res: http.ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
};

/** The agent's HTTP gateway. */
export class Gateway {
  readonly #init: GatewayInit;
  readonly #c: GatewayComponents;
  readonly #server: http.Server;
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

  constructor(init: GatewayInit, components: GatewayComponents) {
    this.#init = init;
    this.#c = components;
    this.#server = http.createServer((req, res) => this.#handle(req, res));
    this.#server.keepAliveTimeout = 65_000;
  }

  /** Listens; resolves with the bound port. */
  start(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(this.#init.port, this.#init.host, () => {
        this.#server.off("error", reject);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  /** Closes the listener, idle connections and the upstream pool. */
  async stop(): Promise<void> {
    this.#agent.destroy();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const route = this.#route(req);
    if ("service" in route) this.#proxy(req, res, route.service, route.path);
    else json(res, route.status, route.body);
  }

  /** Decides what a request gets: a JSON answer, or the local service to proxy to. */
  #route(
    req: http.IncomingMessage,
  ): { status: number; body: unknown } | { service: DetectedService; path: string } {
    const url = req.url ?? "/";
    const path = url.split("?")[0];
    if (path === "/") return { status: 200, body: this.#index() };
    if (path === "/_agent/health") return { status: 200, body: this.#c.health() };
    if (path === "/_agent/cluster") {
      const token = this.#init.agentToken;
      const denied = token
        ? !viewAuthorized(req.headers.authorization, token, Date.now())
        : this.#init.viewLocked === true;
      if (denied) {
        return {
          status: 401,
          body: { error: "Unauthorized", message: "A valid agent token is required" },
        };
      }
      return { status: 200, body: this.#c.clusterView() };
    }
    if (!url.startsWith("/service/")) {
      return {
        status: 404,
        body: {
          error: "Not found",
          message:
            "Use /service/<name>/<path>, /_agent/health or /_agent/cluster (GET / lists them)",
        },
      };
    }
    const parsed = parseServicePath(url);
    if ("error" in parsed) {
      return { status: 400, body: { error: "Bad service path", message: parsed.error } };
    }
    const service = this.#c.service(parsed.name);
    if (!service) {
      return {
        status: 404,
        body: {
          error: `Service '${parsed.name}' not running on this worker`,
          available_services: this.#c.services().map((s) => s.name),
        },
      };
    }
    return { service, path: parsed.rest + parsed.query };
  }

  /** `GET /`: what this gateway serves. */
  #index(): Record<string, unknown> {
    return {
      service: "rollcall-agent",
      version: COORDINATOR_VERSION,
      endpoints: {
        "GET /_agent/health": "this agent: id, name, mode, leader, its services",
        "GET /_agent/cluster": "the live view of the cluster (Bearer agent token when one is set)",
        "ANY /service/<name>/<path>": "a local service, proxied",
      },
      services: this.#c.services().map((s) => s.name),
    };
  }

  #proxy(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    svc: DetectedService,
    path: string,
  ): void {
    const headers = stripHopByHop(req.headers);
    const client = req.socket.remoteAddress ?? "";
    const prior = req.headers["x-forwarded-for"];
    headers["x-forwarded-for"] = prior ? `${prior}, ${client}` : client;
    headers["x-forwarded-host"] ??= req.headers.host ?? "";
    headers["x-forwarded-proto"] ??= "http";
    const host = svc.host.includes(":") ? `[${svc.host}]` : svc.host;
    headers.host = svc.port === 80 ? host : `${host}:${svc.port}`;
    const upstream = http.request({
      host: svc.host,
      port: svc.port,
      method: req.method,
      path: svc.basePath + path,
      headers,
      agent: this.#agent,
      timeout: this.#init.upstreamTimeoutMs ?? 30_000,
    });
    let answered = false;
    upstream.on("response", (up) => {
      res.writeHead(up.statusCode ?? 502, stripHopByHop(up.headers));
      up.pipe(res);
      // The service answered before it read the whole body: the rest is no longer its, but the
      // client's connection needs it read, or its next request there fails.
      up.once("end", () => {
        answered = true;
        if (!req.complete) {
          req.unpipe(upstream);
          upstream.destroy();
          drainRequest(req);
        }
      });
    });
    upstream.on("timeout", () => upstream.destroy(new Error("upstream timeout")));
    upstream.on("error", (err) => {
      if (answered) return; // the body's rest failed to reach a service that had answered
      if (res.headersSent || res.destroyed) return void res.destroy(err);
      if (!req.complete) {
        req.unpipe(upstream);
        drainRequest(req);
      }
      const timedOut = err.message === "upstream timeout";
      json(res, timedOut ? 504 : 502, {
        error: timedOut ? "Upstream timeout" : "Upstream failed",
        message: err.message,
        service: svc.name,
      });
    });
    // The client left (mid-request or mid-response): cancel the upstream call too.
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  }
}
