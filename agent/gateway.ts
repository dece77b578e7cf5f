/**
 * The gateway: one HTTP port that fronts the local services at /service/<name>/...
 * (bodies streamed both ways, hop-by-hop headers stripped), plus /_agent/health
 * and the token-protected live view at /_agent/cluster.
 *
 * Limits (GatewayInit, defaults in GATEWAY_LIMITS), so that slow or greedy clients cannot
 * make a service unusable for others: connections in all and per client address, time to
 * send the headers and the whole request, a small body read in full before the request
 * takes one of its service's slots (a slow body holds a connection, not a service), and per
 * service a cap on requests in flight with a bounded queue whose wait ends in a 503.
 */
import { randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import {
  assertSafeRest,
  COORDINATOR_VERSION,
  HOP_BY_HOP as HOP_BY_HOP_LIST,
  ServiceNameSchema,
  UnsafePathError,
} from "../coordinator.ts";
import type { DetectedService } from "./detect.ts";
import {
  type BodyHead,
  ClientCaps,
  ServiceGate,
  readBodyHead,
  refuseConnection,
} from "./limits.ts";
import { bearerMatches, ViewReplayCache, viewAuthorized } from "./view-auth.ts";

const HOP_BY_HOP = new Set(HOP_BY_HOP_LIST);

/** Headers a `Connection` list may not remove: the framing and the target of the message. */
const NEVER_NAMED = new Set(["content-length", "host"]);

/**
 * Copies headers without hop-by-hop ones (and those the Connection header names, except
 * Content-Length and Host: a client must not strip the framing of its own body that way).
 */
export function stripHopByHop(headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const named = new Set(
    String(headers.connection ?? "")
      .split(",")
      .map((s) => s.trim().toLowerCase())
      .filter((s) => s !== "" && !NEVER_NAMED.has(s)),
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

/** Default limits of a gateway (see GatewayInit). */
export const GATEWAY_LIMITS = {
  maxConnections: 1024,
  maxConnectionsPerClient: 256,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 120_000,
  bodyIdleTimeoutMs: 30_000,
  bufferBodyBytes: 64 * 1024,
  maxInflightPerService: 256,
  maxQueuePerService: 256,
  queueTimeoutMs: 10_000,
} as const;

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
  /** Connections open at once at most; more are dropped (default 1024). */
  maxConnections?: number;
  /**
   * Connections one client address may hold (default 256; 0: no cap). Behind a tunnel or the
   * coordinator every request comes from one address: the cap must fit that traffic.
   */
  maxConnectionsPerClient?: number;
  /** Time a client has to send its request headers (default 10 s; then 408). */
  headersTimeoutMs?: number;
  /** Time a client has to send its whole request, body included (default 120 s; then 408). */
  requestTimeoutMs?: number;
  /** Longest pause within a request body (default 30 s; then the request is dropped). */
  bodyIdleTimeoutMs?: number;
  /** Bodies up to this size are read in full before the request takes a service slot (64 KiB). */
  bufferBodyBytes?: number;
  /** Requests in flight per service at most (default 256); more wait in its queue. */
  maxInflightPerService?: number;
  /** Requests waiting per service at most (default 256); more get 503 at once. */
  maxQueuePerService?: number;
  /** Longest wait in a service's queue (default 10 s; then 503 with Retry-After). */
  queueTimeoutMs?: number;
}

/** What the gateway asks the rest of the agent. */
export interface GatewayComponents {
  service(name: string): DetectedService | undefined;
  services(): DetectedService[];
  health(): Record<string, unknown>;
  clusterView(): unknown;
  /** Maintenance mode (agent/drain.ts): `/_agent/drain`, and routed requests counted. */
  drain?: {
    started(): () => void;
    set(on: boolean): void;
    status(): unknown;
  };
  /** This agent's PeerId, which a signed view credential must be made out to ("" if none). */
  selfId?(): string;
  /** Where a failed service call's detail goes (default `console.error`); clients never see it. */
  log?(line: string): void;
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
  readonly #limits: Required<
    Omit<GatewayInit, "host" | "port" | "agentToken" | "viewLocked" | "upstreamTimeoutMs">
  >;
  readonly #c: GatewayComponents;
  readonly #server: http.Server;
  readonly #agent: http.Agent;
  readonly #gate: ServiceGate;
  readonly #clients: ClientCaps;
  /** Signed live-view credentials already used (each opens the view once). */
  readonly #viewSeen = new ViewReplayCache();

  constructor(init: GatewayInit, components: GatewayComponents) {
    this.#init = init;
    this.#c = components;
    const l = { ...GATEWAY_LIMITS };
    for (const k of Object.keys(l) as Array<keyof typeof l>) {
      const v = init[k];
      if (v !== undefined) (l as Record<string, number>)[k] = v;
    }
    this.#limits = l;
    this.#agent = new http.Agent({ keepAlive: true, maxSockets: l.maxInflightPerService });
    this.#gate = new ServiceGate({
      maxInflight: l.maxInflightPerService,
      maxQueue: l.maxQueuePerService,
      queueTimeoutMs: l.queueTimeoutMs,
    });
    this.#clients = new ClientCaps(l.maxConnectionsPerClient);
    this.#server = http.createServer(
      {
        headersTimeout: l.headersTimeoutMs,
        requestTimeout: Math.max(l.requestTimeoutMs, l.headersTimeoutMs),
        // How often Node checks those two timeouts (its default, 30 s, would let them slip).
        connectionsCheckingInterval: Math.max(50, Math.min(1000, l.headersTimeoutMs / 2)),
      },
      (req, res) => this.#handle(req, res),
    );
    this.#server.keepAliveTimeout = 65_000;
    this.#server.maxConnections = l.maxConnections;
    this.#server.on("connection", (socket) => this.#admit(socket));
  }

  /** Counts a new connection against its client's cap; over the cap it gets a 429 and is closed. */
  #admit(socket: Socket): void {
    const address = socket.remoteAddress ?? "";
    if (!this.#clients.admit(address)) {
      refuseConnection(socket);
      return;
    }
    socket.once("close", () => this.#clients.release(address));
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
    // A throw here would escape into Node's HTTP parser and end the process: answer 500.
    try {
      const route = this.#route(req);
      if ("service" in route) {
        const ended = this.#c.drain?.started();
        if (ended) res.once("close", ended);
        this.#admitted(req, res, route.service, route.path).catch(() => res.destroy());
      } else json(res, route.status, route.body);
    } catch {
      if (!res.headersSent) json(res, 500, { error: "Internal error" });
      else res.destroy();
    }
  }

  /**
   * Reads a small body in full (a slow client then holds its connection, not a service slot),
   * waits for a slot of the service (503 when its queue is full or the wait times out), then
   * proxies with whatever was read put back in front of the rest of the body.
   */
  async #admitted(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    svc: DetectedService,
    path: string,
  ): Promise<void> {
    const gone = new AbortController();
    res.once("close", () => gone.abort());
    const head = await readBodyHead(req, {
      maxBytes: this.#limits.bufferBodyBytes,
      idleMs: this.#limits.bodyIdleTimeoutMs,
    });
    if (gone.signal.aborted) return void res.destroy();
    if (head === "idle") {
      res.setHeader("connection", "close");
      return json(res, 408, {
        error: "Request timeout",
        message: `The request body paused for more than ${this.#limits.bodyIdleTimeoutMs} ms`,
      });
    }
    const slot = await this.#gate.acquire(svc.name, gone.signal);
    if (typeof slot === "string") {
      if (slot === "gone") return void res.destroy();
      res.setHeader("retry-after", "1");
      return json(res, 503, {
        error: "Service busy",
        message:
          slot === "full"
            ? `Too many requests are waiting for '${svc.name}' on this worker`
            : `No slot for '${svc.name}' on this worker within ${this.#limits.queueTimeoutMs} ms`,
        service: svc.name,
      });
    }
    res.once("close", slot);
    try {
      this.#proxy(req, res, svc, path, head);
    } catch {
      slot();
      if (!res.headersSent) json(res, 500, { error: "Internal error" });
      else res.destroy();
    }
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
        ? !viewAuthorized(
            req.headers.authorization,
            token,
            Date.now(),
            this.#c.selfId?.() ?? "",
            this.#viewSeen,
          )
        : this.#init.viewLocked === true;
      if (denied) {
        return {
          status: 401,
          body: { error: "Unauthorized", message: "A valid agent token is required" },
        };
      }
      return { status: 200, body: this.#c.clusterView() };
    }
    if (path === "/_agent/drain") return this.#drain(req);
    if (!url.startsWith("/service/")) {
      return {
        status: 404,
        body: {
          error: "Not found",
          message:
            "Use /service/<name>/<path>, /_agent/health, /_agent/cluster or /_agent/drain (GET / lists them)",
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

  /**
   * `/_agent/drain`: GET the drain state, POST to start draining, DELETE to end it. With an
   * agent token it is required; without one (local development) only loopback clients may
   * drain, since the gateway is the address the coordinator (and anyone routed) reaches.
   */
  #drain(req: http.IncomingMessage): { status: number; body: unknown } {
    const drain = this.#c.drain;
    if (!drain) return { status: 404, body: { error: "Not found", message: "No drain here" } };
    const token = this.#init.agentToken;
    const client = req.socket.remoteAddress ?? "";
    const loopback = client.startsWith("127.") || client === "::1" || client === "::ffff:127.0.0.1";
    if (token ? !bearerMatches(req.headers.authorization, token) : !loopback) {
      return {
        status: 401,
        body: {
          error: "Unauthorized",
          message: token
            ? "A valid agent token is required"
            : "Without an agent token only loopback clients may drain this agent",
        },
      };
    }
    if (req.method === "POST" || req.method === "DELETE") drain.set(req.method === "POST");
    else if (req.method !== "GET" && req.method !== "HEAD") {
      return {
        status: 405,
        body: { error: "Method not allowed", message: "Use GET, POST (drain) or DELETE (undrain)" },
      };
    }
    return { status: 200, body: drain.status() };
  }

  /** `GET /`: what this gateway serves. */
  #index(): Record<string, unknown> {
    return {
      service: "rollcall-agent",
      version: COORDINATOR_VERSION,
      endpoints: {
        "GET /_agent/health": "this agent: id, name, mode, leader, its services",
        "GET /_agent/cluster": "the live view of the cluster (Bearer agent token when one is set)",
        "GET|POST|DELETE /_agent/drain":
          "maintenance mode: state, start, end (agent token; loopback only without one)",
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
    head: BodyHead,
  ): void {
    const headers = stripHopByHop(req.headers);
    const client = req.socket.remoteAddress ?? "";
    const prior = req.headers["x-forwarded-for"];
    headers["x-forwarded-for"] = prior ? `${prior}, ${client}` : client;
    // What this gateway saw, never what the client claims.
    headers["x-forwarded-host"] = req.headers.host ?? "";
    headers["x-forwarded-proto"] = "http";
    // The body's framing, set here from the client's: node:http frames nothing by itself for
    // GET, HEAD, DELETE or OPTIONS, so a body sent there unframed is the service's next request.
    if (req.headers["transfer-encoding"] !== undefined) {
      delete headers["content-length"];
      headers["transfer-encoding"] = "chunked";
    }
    const host = svc.host.includes(":") ? `[${svc.host}]` : svc.host;
    headers.host = svc.port === 80 ? host : `${host}:${svc.port}`;
    const timeoutMs = this.#init.upstreamTimeoutMs ?? 30_000;
    const upstream = http.request({
      host: svc.host,
      port: svc.port,
      method: req.method,
      path: svc.basePath + path,
      headers,
      agent: this.#agent,
      timeout: timeoutMs,
    });
    let answered = false;
    upstream.on("response", (up) => {
      try {
        res.writeHead(up.statusCode ?? 502, stripHopByHop(up.headers));
      } catch {
        // a header Node will not send on: drop the call rather than the process
        up.destroy();
        return void res.destroy();
      }
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
    upstream.on("timeout", () => {
      // The service's silence is timed, not the client's: while the client has not taken what
      // it was sent (the answer waits for its connection to drain), nobody reads the service,
      // and cutting the answer then would truncate it and blame the worker for a slow client.
      if (res.headersSent && res.writableNeedDrain) {
        res.once("drain", () => upstream.setTimeout(timeoutMs));
        return;
      }
      upstream.destroy(new Error("upstream timeout"));
    });
    upstream.on("error", (err) => {
      if (answered) return; // the body's rest failed to reach a service that had answered
      if (res.headersSent || res.destroyed) return void res.destroy(err);
      if (!req.complete) {
        req.unpipe(upstream);
        drainRequest(req);
      }
      const timedOut = err.message === "upstream timeout";
      // The system error names the service's address: the log gets it, the client an id.
      const requestId = randomUUID();
      (this.#c.log ?? console.error)(
        `Service '${svc.name}' call failed (request ${requestId}): ${err.message}`,
      );
      json(res, timedOut ? 504 : 502, {
        error: timedOut ? "Upstream timeout" : "Upstream failed",
        message: timedOut
          ? "The service did not answer in time"
          : "The service could not be reached",
        service: svc.name,
        request_id: requestId,
      });
    });
    // The client left (mid-request or mid-response): cancel the upstream call too.
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    for (const c of head.chunks) upstream.write(c);
    if (head.ended) {
      upstream.end();
      return;
    }
    // The rest of a large body streams through; a long pause in it drops the request.
    const idle = () => req.destroy(new Error("request body paused too long"));
    let timer = setTimeout(idle, this.#limits.bodyIdleTimeoutMs);
    req.on("data", () => {
      clearTimeout(timer);
      timer = setTimeout(idle, this.#limits.bodyIdleTimeoutMs);
    });
    req.once("close", () => clearTimeout(timer));
    req.pipe(upstream);
  }
}
