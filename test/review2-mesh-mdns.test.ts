/**
 * Review 2 (attacker's pass over issue 10 item 2): without a pre-shared key the mesh listens
 * on loopback only, but `--mdns` still finds peers on the LAN and the mesh dials every one it
 * discovers (mesh/mesh.ts, "peer:discovery" -> `dialer.introduce`). A stranger on the LAN
 * answers the mDNS query for `_rollcall-<cluster>._udp.local` (the cluster name is in the
 * tag), the agent dials it, Noise completes without a key, and the stranger gossips on that
 * outbound connection: it joins, advertises services and may claim leadership, as before the
 * fix. Checked on the configuration only: a live proof needs multicast, which these tests
 * send only inside a private network namespace (test/mesh-mdns.test.ts).
 */
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../agent/config.ts";
import { checkExposure, OpenMeshError } from "../mesh/exposure.ts";

const load = (argv: string[]) => loadConfig(argv, {}).config;

describe("finding 10: --mdns without a pre-shared key dials strangers on the LAN", () => {
  // FINDING review2-10 (medium): `checkExposure` (mesh/exposure.ts) looks at the listen
  // addresses only. Suggested: treat `mdns` like a listen address beyond loopback (PSK or
  // --insecure-open-mesh required) in checkExposure and in loadConfig; or, with no PSK, gate
  // outbound dials to loopback addresses (denyDialMultiaddr) so discovery cannot reach out.
  it("refuses --mdns without --psk or --insecure-open-mesh", () => {
    expect(() => load(["--mdns"])).toThrow(ConfigError);
  });

  it("refuses a mesh with mdns and no key where the mesh starts (checkExposure)", () => {
    expect(() => checkExposure({ listen: ["/ip4/127.0.0.1/tcp/0"], mdns: true })).toThrow(
      OpenMeshError,
    );
    expect(() =>
      checkExposure({ listen: ["/ip4/127.0.0.1/tcp/0"], mdns: true, insecureOpenMesh: true }),
    ).not.toThrow();
  });

  it("still takes --mdns with --insecure-open-mesh", () => {
    expect(load(["--mdns", "--insecure-open-mesh"]).mdns).toBe(true);
  });

  it("still takes --mdns with a pre-shared key", () => {
    const psk = `/key/swarm/psk/1.0.0/\n/base16/\n${"ab".repeat(32)}\n`;
    expect(load(["--mdns", "--psk", psk]).mdns).toBe(true);
  });
});
