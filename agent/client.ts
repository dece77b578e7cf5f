/**
 * The coordinator's HTTP API as the agent uses it. Every call resolves to a
 * result (never throws): ok with the JSON answer, parsed with the coordinator's own answer
 * schema, or an error that says whether a retry makes sense (429, 5xx, network, an answer
 * that is not what the contract says) and how long the server asked to wait.
 */
import type { z } from "zod";
import {
  ClusterHeartbeatAnswerSchema,
  ErrorAnswerSchema,
  type HeartbeatBodyInput,
  OkAnswerSchema,
  readCapped,
  type RegisterAnswer,
  RegisterAnswerSchema,
  type RegisterBodyInput,
  signRequest,
  UnregisterAnswerSchema,
} from "../coordinator.ts";
import type { SendResult } from "./reporter.ts";
import type { RequestSigner } from "./signer.ts";

/** The outcome of one call. */
export type CallResult<T> =
  | { ok: true; status: number; data: T }
  | { ok: false; status: number; retryable: boolean; retryAfterMs?: number; error: string };

/** Settings of a client. */
export interface ClientInit {
  /** Base URL of the coordinator, without a trailing slash. */
  baseUrl: string;
  /** Cluster token, sent as `Authorization: Bearer`; never logged. */
  token?: string | undefined;
  /** Per-request timeout (default 10 s). */
  timeoutMs?: number;
  /** Signs every request with the agent's key (docs/PROTOCOL.md, "Signed requests"). */
  signer?: RequestSigner | undefined;
}

/** Most bytes of an answer read: every answer of the contract is a few KiB. */
const MAX_ANSWER_BYTES = 1 << 20;

/** Parses Retry-After (seconds or an HTTP date) into milliseconds. */
function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** A small client for the coordinator's agent-facing endpoints. */
export class CoordinatorClient {
  readonly #init: ClientInit;
  readonly #fetch: typeof fetch;
  readonly #now: () => number;
  #signer: RequestSigner | undefined;
  /** The coordinator's clock minus ours, learnt from a signature refused as expired. */
  #offsetMs = 0;

  constructor(init: ClientInit, components: { fetch?: typeof fetch; now?: () => number } = {}) {
    this.#init = init;
    this.#fetch = components.fetch ?? fetch;
    this.#now = components.now ?? Date.now;
    this.#signer = init.signer;
  }

  /** Signs every later request with this key (the agent knows its key once it started). */
  signWith(signer: RequestSigner): void {
    this.#signer = signer;
  }

  /** POST /api/cluster/heartbeat (leader mode). */
  async report(body: unknown): Promise<SendResult> {
    const r = await this.call("POST", "/api/cluster/heartbeat", ClusterHeartbeatAnswerSchema, body);
    return r.ok
      ? { ok: true, answer: r.data }
      : {
          ok: false,
          retryable: r.retryable,
          retryAfterMs: r.retryAfterMs,
          error: r.error,
          status: r.status,
        };
  }

  /** GET /api/cluster/auth: whether the coordinator takes our token (no write). */
  checkToken(): Promise<CallResult<z.output<typeof OkAnswerSchema>>> {
    return this.call("GET", "/api/cluster/auth", OkAnswerSchema);
  }

  /** POST /api/worker/register (direct mode). */
  register(body: RegisterBodyInput): Promise<CallResult<RegisterAnswer>> {
    return this.call("POST", "/api/worker/register", RegisterAnswerSchema, body);
  }

  /** POST /api/worker/heartbeat (direct mode). */
  heartbeat(body: HeartbeatBodyInput): Promise<CallResult<z.output<typeof OkAnswerSchema>>> {
    return this.call("POST", "/api/worker/heartbeat", OkAnswerSchema, body);
  }

  /** DELETE /api/worker/unregister/<id> (direct mode, on a graceful stop). */
  unregister(workerId: string): Promise<CallResult<z.output<typeof UnregisterAnswerSchema>>> {
    const path = `/api/worker/unregister/${encodeURIComponent(workerId)}`;
    return this.call("DELETE", path, UnregisterAnswerSchema);
  }

  /**
   * One JSON call whose successful answer must parse with `answer` (the coordinator's schema of
   * it); maps every failure to a CallResult. A signed call refused because its clock is off by
   * more than the coordinator allows is sent once more on the coordinator's time.
   */
  async call<T>(
    method: string,
    path: string,
    answer: z.ZodType<T>,
    body?: unknown,
  ): Promise<CallResult<T>> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const first = await this.#send(method, path, answer, text);
    if (first.skewedBy === undefined) return first.result;
    this.#offsetMs += first.skewedBy;
    return (await this.#send(method, path, answer, text)).result;
  }

  async #send<T>(
    method: string,
    path: string,
    answer: z.ZodType<T>,
    text: string | undefined,
  ): Promise<{ result: CallResult<T>; skewedBy?: number }> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (text !== undefined) headers["content-type"] = "application/json";
    if (this.#init.token) headers.authorization = `Bearer ${this.#init.token}`;
    const signer = this.#signer;
    const now = this.#now() + this.#offsetMs;
    if (signer) {
      const path0 = new URL(this.#init.baseUrl + path).pathname;
      Object.assign(
        headers,
        await signRequest({
          method,
          path: path0,
          body: text,
          signer: signer.id,
          sign: (d) => signer.sign(d),
          now,
        }),
      );
    }
    const result = await this.#fetchResult(method, path, answer, headers, text);
    const data = result.ok ? undefined : result.serverTime;
    if (signer && !result.ok && result.status === 401 && data !== undefined) {
      return { result, skewedBy: data - now };
    }
    return { result };
  }

  async #fetchResult<T>(
    method: string,
    path: string,
    answer: z.ZodType<T>,
    headers: Record<string, string>,
    text: string | undefined,
  ): Promise<CallResult<T> & { serverTime?: number }> {
    let res: Response;
    try {
      res = await this.#fetch(this.#init.baseUrl + path, {
        method,
        headers,
        body: text,
        signal: AbortSignal.timeout(this.#init.timeoutMs ?? 10_000),
      });
    } catch (err) {
      const e = err as Error;
      const cause = (e.cause as Error | undefined)?.message;
      return {
        ok: false,
        status: 0,
        retryable: true,
        error: `${method} ${path} failed: ${e.name === "TimeoutError" ? "timed out" : (cause ?? e.message)}`,
      };
    }
    let data: unknown;
    let json = true;
    try {
      data = JSON.parse(await readCapped(res, MAX_ANSWER_BYTES));
    } catch (err) {
      if (res.ok && !(err instanceof SyntaxError)) {
        // Larger than any answer of the contract, or it broke off: never buffered whole.
        const why = (err as Error).name === "TimeoutError" ? "timed out" : (err as Error).message;
        return {
          ok: false,
          status: res.status,
          retryable: true,
          error: `${method} ${path} answered ${res.status}: ${why}`,
        };
      }
      json = false;
    }
    if (res.ok) {
      const parsed = json ? answer.safeParse(data) : null;
      if (parsed?.success) return { ok: true, status: res.status, data: parsed.data };
      // Not the contract's answer (a proxy's page, another server, a hostile one): an error
      // worth a retry with backoff, as the next answer may be the coordinator's again.
      return {
        ok: false,
        status: res.status,
        retryable: true,
        error: `${method} ${path} answered ${res.status} with ${parsed ? `an unexpected body (${answerIssue(parsed.error)})` : "something that is not JSON"}`,
      };
    }
    const refusal = ErrorAnswerSchema.safeParse(data);
    const message = refusal.success ? refusal.data.error : res.statusText;
    const serverTime = refusal.success ? refusal.data.server_time : undefined;
    return {
      ok: false,
      status: res.status,
      retryable: res.status === 429 || res.status === 408 || res.status >= 500,
      retryAfterMs: parseRetryAfter(res.headers.get("retry-after")),
      error: `${method} ${path} answered ${res.status}: ${message}`,
      ...(serverTime !== undefined ? { serverTime } : {}),
    };
  }
}

/** The first thing an answer's schema refused, e.g. `heartbeat_interval: Too small...`. */
function answerIssue(err: z.ZodError): string {
  const first = err.issues[0];
  if (!first) return "refused";
  const where = first.path.map(String).join(".");
  return `${where || "the body"}: ${first.message}`.slice(0, 200);
}

/**
 * What to check when the coordinator refused the agent's credentials (401/403), said once per
 * streak of refusals; null for any other status. `error` is the call's error line: a leader the
 * cluster's roster does not list gets its own hint (its token is fine).
 */
export function authFailureHint(status: number, error = ""): string | null {
  if (status !== 401 && status !== 403) return null;
  if (status === 403 && error.includes("not a member of this cluster")) {
    return (
      "The coordinator does not list this leader as a member of its cluster (403): stepping " +
      "aside so a member it lists can lead and list this one, which ends it. If it goes on " +
      "because every member has a new key (data directories wiped), an operator can forget " +
      "the old cluster: POST /api/admin/clusters/forget with the admin token (docs/PROTOCOL.md)."
    );
  }
  return (
    `The coordinator refused this agent's cluster token (${status}): check --token / ` +
    "ROLLCALL_CLUSTER_TOKEN, which must equal the coordinator's ROLLCALL_CLUSTER_TOKEN. " +
    "Retrying with backoff (at most 60 s apart)."
  );
}
