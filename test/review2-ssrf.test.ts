/**
 * Review 2 (attacker's pass over issue 9 item 3): cloud metadata services that live outside
 * link-local, and so pass the default `ROLLCALL_UPSTREAM_ALLOW` ("public,private"). Anyone who
 * may register a provider URL (a cluster token holder; anyone where legacy workers are
 * admitted) then reads the metadata through `/api/service/<name>/...`.
 */
import { describe, expect, it } from "vitest";
import { parseUpstreamAllow, upstreamRefusal } from "../coordinator.ts";

const byDefault = parseUpstreamAllow("public,private");

describe("finding 3: metadata endpoints outside 169.254/16 pass the default allow-list", () => {
  // FINDING review2-3 (high): AWS IMDS over IPv6 (Nitro) is fd00:ec2::254, inside fc00::/7,
  // classed "private"; Alibaba Cloud's metadata is 100.100.100.200, inside 100.64/10 (CGNAT),
  // also "private"; Oracle Cloud Classic's is 192.0.0.192 (192.0.0.0/24, IETF protocol
  // assignments), classed "public"; Azure's WireServer is 168.63.129.16, a "public" address
  // every Azure VM reaches. All four are allowed by default.
  for (const url of [
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://192.0.0.192/latest/",
    "http://168.63.129.16/machine?comp=goalstate",
  ]) {
    it(`refuses ${url} whatever the list says`, () => {
      expect(upstreamRefusal(url, byDefault)).not.toBeNull();
      expect(upstreamRefusal(url, parseUpstreamAllow("any"))).not.toBeNull();
    });
  }

  // Held: every spelling of 169.254.169.254 the URL parser knows, and the mapped forms.
  it("refuses 169.254.169.254 in decimal, octal, hex, with a trailing dot, IPv4-mapped", () => {
    for (const url of [
      "http://2852039166/",
      "http://0251.0376.0251.0376/",
      "http://0xa9.0xfe.0xa9.0xfe/",
      "http://169.254.169.254./",
      "http://[::ffff:169.254.169.254]/",
      "http://[::ffff:a9fe:a9fe]/",
      "http://[64:ff9b::a9fe:a9fe]/",
      "http://0/",
      "http://[::]/",
      "http://metadata.google.internal./",
    ]) {
      expect(upstreamRefusal(url, parseUpstreamAllow("any"))).not.toBeNull();
    }
  });
});
