/**
 * Who may read the live view at /_agent/cluster. The coordinator proves it holds the agent
 * token without sending it: `Authorization: Rollcall-View ts=<ms>, sig=<hex>`, an HMAC-SHA-256 of
 * `viewAuthText(ts)` keyed with the token, within a minute of our clock (coordinator.ts
 * `viewAuthorization`). A person may send the token itself (`Bearer`), at their own risk.
 * The view is read-only: the agent token never writes the registry.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { VIEW_AUTH_SKEW_MS, viewAuthText } from "../coordinator.ts";

/** Compares a request's bearer token with the expected one in constant time. */
export function bearerMatches(header: string | undefined, expected: string): boolean {
  const given = header?.startsWith("Bearer ") ? header.slice(7) : "";
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

const SIGNED = /^Rollcall-View ts=(\d{1,16}), ?sig=([0-9a-f]{64})$/;

/** Whether an `Authorization` header proves the agent token (signed form or bearer). */
export function viewAuthorized(header: string | undefined, token: string, now: number): boolean {
  const m = header ? SIGNED.exec(header.trim()) : null;
  if (!m) return bearerMatches(header, token);
  const ts = Number(m[1]);
  if (Math.abs(now - ts) > VIEW_AUTH_SKEW_MS) return false;
  const mac = createHmac("sha256", token).update(viewAuthText(ts)).digest();
  return timingSafeEqual(mac, Buffer.from(m[2] as string, "hex"));
}
