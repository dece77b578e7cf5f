/**
 * The gateway's limits: how many requests one service may have in flight (the rest wait in a
 * bounded queue, each for a bounded time), how many connections one client address may hold
 * (the rest get a 429), and the bounded read of a request body's start. ServiceGate takes its
 * timers from an injected clock.
 */
import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import { type Clock, systemClock } from "../mesh/clock.ts";

/** Gives a slot back; calling it again does nothing. */
export type Release = () => void;

/** Why a request got no slot: the queue was full, the wait timed out, or the client left. */
export type Refusal = "full" | "timeout" | "gone";

/** Settings of a service gate. */
export interface ServiceGateInit {
  /** Requests in flight per service at most. */
  maxInflight: number;
  /** Requests waiting per service at most; more are refused at once. */
  maxQueue: number;
  /** Longest wait for a slot. */
  queueTimeoutMs: number;
}

interface Waiter {
  grant: (release: Release) => void;
  refuse: (why: Refusal) => void;
  timer: unknown;
}

interface Lane {
  inflight: number;
  queue: Waiter[];
}

/** Per-service concurrency limits with bounded, timed queues. */
export class ServiceGate {
  readonly #init: ServiceGateInit;
  readonly #clock: Clock;
  #lanes = new Map<string, Lane>();

  constructor(init: ServiceGateInit, components: { clock?: Clock } = {}) {
    this.#init = init;
    this.#clock = components.clock ?? systemClock;
  }

  /** Requests of `service` in flight and waiting now. */
  load(service: string): { inflight: number; queued: number } {
    const lane = this.#lanes.get(service);
    return { inflight: lane?.inflight ?? 0, queued: lane?.queue.length ?? 0 };
  }

  /**
   * A slot for one request to `service`: at once if one is free, else after waiting in the
   * queue; a Refusal if the queue is full, the wait times out, or `signal` aborts (the client
   * left). Call the Release when the request is done.
   */
  acquire(service: string, signal?: AbortSignal): Promise<Release | Refusal> {
    const lane = this.#lane(service);
    if (lane.inflight < this.#init.maxInflight) return Promise.resolve(this.#take(service, lane));
    if (lane.queue.length >= this.#init.maxQueue) return Promise.resolve("full");
    if (signal?.aborted) return Promise.resolve("gone");
    return new Promise((resolve) => {
      const leave = (why: Refusal) => {
        const i = lane.queue.indexOf(waiter);
        if (i >= 0) lane.queue.splice(i, 1);
        this.#clock.clearTimeout(waiter.timer);
        signal?.removeEventListener("abort", onAbort);
        this.#prune(service, lane);
        resolve(why);
      };
      const onAbort = () => leave("gone");
      const waiter: Waiter = {
        grant: (release) => {
          this.#clock.clearTimeout(waiter.timer);
          signal?.removeEventListener("abort", onAbort);
          resolve(release);
        },
        refuse: leave,
        timer: this.#clock.setTimeout(() => leave("timeout"), this.#init.queueTimeoutMs),
      };
      lane.queue.push(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  #lane(service: string): Lane {
    let lane = this.#lanes.get(service);
    if (!lane) {
      lane = { inflight: 0, queue: [] };
      this.#lanes.set(service, lane);
    }
    return lane;
  }

  #take(service: string, lane: Lane): Release {
    lane.inflight++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      lane.inflight--;
      const next = lane.queue.shift();
      if (next) next.grant(this.#take(service, lane));
      else this.#prune(service, lane);
    };
  }

  #prune(service: string, lane: Lane): void {
    if (lane.inflight === 0 && lane.queue.length === 0) this.#lanes.delete(service);
  }
}

/** Counts open connections per client address against a cap (0: no cap). */
export class ClientCaps {
  readonly #max: number;
  #open = new Map<string, number>();

  constructor(maxPerClient: number) {
    this.#max = maxPerClient;
  }

  /** Counts a new connection from `address`; false (and not counted) if it is over the cap. */
  admit(address: string): boolean {
    const n = this.#open.get(address) ?? 0;
    if (this.#max > 0 && n >= this.#max) return false;
    this.#open.set(address, n + 1);
    return true;
  }

  /** A counted connection from `address` closed. */
  release(address: string): void {
    const n = (this.#open.get(address) ?? 1) - 1;
    if (n <= 0) this.#open.delete(address);
    else this.#open.set(address, n);
  }
}

/** Answers a connection over its client's cap with a 429 and closes it (before any parsing). */
export function refuseConnection(socket: Socket): void {
  const body = JSON.stringify({
    error: "Too many connections",
    message: "This client holds too many connections to the gateway; close some and retry",
  });
  socket.end(
    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n" +
      `connection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/** The start of a request body: all of it (`ended`), or the first chunks with the rest paused. */
export interface BodyHead {
  chunks: Buffer[];
  ended: boolean;
}

/**
 * Reads a request body up to `maxBytes`: all of it when it fits, else the first chunks,
 * leaving the rest paused in `req`. "idle" when the body paused for more than `idleMs` (or
 * the client went away).
 */
export function readBodyHead(
  req: IncomingMessage,
  limits: { maxBytes: number; idleMs: number },
): Promise<BodyHead | "idle"> {
  const chunks: Buffer[] = [];
  let size = 0;
  return new Promise((resolve) => {
    if (req.readableEnded) return resolve({ chunks, ended: true });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => finish("idle"), limits.idleMs);
    };
    const finish = (out: BodyHead | "idle") => {
      clearTimeout(timer);
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onGone);
      req.off("close", onGone);
      if (out !== "idle" && !out.ended) req.pause();
      resolve(out);
    };
    const onData = (c: Buffer) => {
      chunks.push(c);
      size += c.length;
      if (size > limits.maxBytes) finish({ chunks, ended: false });
      else arm();
    };
    const onEnd = () => finish({ chunks, ended: true });
    const onGone = () => finish("idle");
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onGone);
    req.once("close", onGone);
    arm();
  });
}
