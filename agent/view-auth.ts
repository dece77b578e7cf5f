/**
 * Who may read the live view at /_agent/cluster. The coordinator proves it holds the agent
 * token without sending it: `Authorization: Rollcall-View ts=<ms>, sig=<hex>`, an HMAC-SHA-256 of
 * `viewAuthText(ts, <this agent's PeerId>)` keyed with the token, within a minute of our clock
 * (coordinator.ts `viewAuthorization`), once (ViewReplayCache): a credential captured on its way
 * to one agent opens no other agent's view, nor this one's again. A person may send the token
 * itself (`Bearer`), at their own risk.
 * The view is read-only: the agent token never writes the registry.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { bearerOf, VIEW_AUTH_SKEW_MS, viewAuthText } from "../coordinator.ts";

/** Compares a request's bearer token (coordinator.ts's `bearerOf` rule) with the expected one in constant time. */
export function bearerMatches(header: string | undefined, expected: string): boolean {
  const given = bearerOf(header) ?? "";
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

const SIGNED = /^Rollcall-View ts=(\d{1,16}), ?sig=([0-9a-f]{64})$/;

/** Signed credentials already used, each kept until its window is over; bounded. */
export class ViewReplayCache {
  readonly #seen = new Map<string, number>();
  constructor(readonly max = 10_000) {}

  /** Records a credential good until `until`; false when it was used and is still good. */
  use(sig: string, until: number, now: number): boolean {
    const seen = this.#seen.get(sig);
    if (seen !== undefined && seen > now) return false;
    this.#seen.delete(sig);
    for (const [key, at] of this.#seen) {
      if (at > now && this.#seen.size < this.max) break;
      this.#seen.delete(key); // expired, or the oldest when full
    }
    this.#seen.set(sig, until);
    return true;
  }
}

/**
 * Whether an `Authorization` header proves the agent token: the signed form made out to `self`
 * (this agent's PeerId) and not used before (`seen`), or the bearer token.
 */
export function viewAuthorized(
  header: string | undefined,
  token: string,
  now: number,
  self = "",
  seen?: ViewReplayCache,
): boolean {
  const m = header ? SIGNED.exec(header.trim()) : null;
  if (!m) return bearerMatches(header, token);
  const ts = Number(m[1]);
  if (Math.abs(now - ts) > VIEW_AUTH_SKEW_MS) return false;
  const mac = createHmac("sha256", token).update(viewAuthText(ts, self)).digest();
  if (!timingSafeEqual(mac, Buffer.from(m[2] as string, "hex"))) return false;
  // Kept strictly past the last moment the window accepts it.
  return seen ? seen.use(m[2] as string, ts + VIEW_AUTH_SKEW_MS + 1, now) : true;
}
