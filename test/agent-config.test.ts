import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, helpText, loadConfig } from "../agent/config.ts";

const load = (argv: string[], env: Record<string, string> = {}) => loadConfig(argv, env).config;

function settingOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.setting;
    throw err;
  }
  throw new Error("expected a ConfigError");
}

describe("loadConfig", () => {
  it("has sane defaults", () => {
    const c = load([]);
    expect(c).toMatchObject({
      coordinator: undefined,
      cluster: "default",
      listen: { host: "127.0.0.1", port: 8700 },
      publicUrl: "http://127.0.0.1:8700",
      mode: "mesh",
      mdns: false,
      probeIntervalMs: 10_000,
      bootstrap: [],
    });
  });

  it("takes flags over env over the config file", () => {
    const dir = mkdtempSync(join(tmpdir(), "rollcall-cfg-"));
    const file = join(dir, "agent.json");
    writeFileSync(
      file,
      JSON.stringify({
        cluster: "fromfile",
        listen: "127.0.0.1:9000",
        mdns: true,
        "insecure-open-mesh": true, // mDNS without a key needs it (review2-mesh-mdns)
        bootstrap: ["/ip4/127.0.0.1/tcp/1/p2p/QmX"],
      }),
    );
    const c = load(["--config", file, "--listen", "127.0.0.1:9100"], {
      ROLLCALL_CLUSTER: "fromenv",
    });
    expect(c.cluster).toBe("fromenv");
    expect(c.listen.port).toBe(9100);
    expect(c.mdns).toBe(true);
    expect(c.bootstrap).toEqual(["/ip4/127.0.0.1/tcp/1/p2p/QmX"]);
  });

  it("reads lists and the token from the environment", () => {
    const c = load([], {
      ROLLCALL_COORDINATOR: "http://127.0.0.1:8787/",
      ROLLCALL_CLUSTER_TOKEN: "t",
      ROLLCALL_MESH_LISTEN: "/ip4/127.0.0.1/tcp/7401, /ip4/127.0.0.1/tcp/7402",
    });
    expect(c.coordinator).toBe("http://127.0.0.1:8787");
    expect(c.token).toBe("t");
    // The live view's credential is its own: the cluster token never travels to read it.
    expect(c.agentToken).toBeUndefined();
    expect(c.meshListen).toHaveLength(2);
  });

  it.each([
    [["--coordinator", "ftp://x"], {}, "--coordinator"],
    [[], { ROLLCALL_COORDINATOR: "not a url" }, "ROLLCALL_COORDINATOR"],
    [["--listen", "8700"], {}, "--listen"],
    [["--listen", "127.0.0.1:99999"], {}, "--listen"],
    [["--listen", "0.0.0.0:8700"], {}, "--public-url"],
    [["--mode", "star"], {}, "--mode"],
    [["--mode", "direct"], {}, "--coordinator"],
    [["--bootstrap", "127.0.0.1:4001"], {}, "--bootstrap"],
    [["--bootstrap", "/ip4/127.0.0.1/tcp/4001"], {}, "--bootstrap"],
    [["--probe-interval", "fast"], {}, "--probe-interval"],
    [["--tier", "7"], {}, "--tier"],
    [["--capabilities", "[1]"], {}, "--capabilities"],
    [["--psk", "/nonexistent/swarm.key"], {}, "--psk"],
    [["--cluster", "a b"], {}, "--cluster"],
    [["--nope"], {}, "arguments"],
    [["--config", "/nonexistent.json"], {}, "--config"],
    [["--token", "same", "--agent-token", "same"], {}, "--agent-token"],
  ])("rejects %j %j naming %s", (argv, env, setting) => {
    expect(settingOf(() => load(argv, env))).toBe(setting);
  });

  it("keeps the mesh on loopback without a pre-shared key, and says which flags open it", () => {
    expect(load([]).meshListen).toEqual(["/ip4/127.0.0.1/tcp/7400"]);
    const psk = `/key/swarm/psk/1.0.0/\n/base16/\n${"ab".repeat(32)}\n`;
    expect(load(["--psk", psk]).meshListen).toEqual(["/ip4/0.0.0.0/tcp/7400"]);
    expect(load(["--insecure-open-mesh"]).meshListen).toEqual(["/ip4/0.0.0.0/tcp/7400"]);
    const open = ["--mesh-listen", "/ip4/0.0.0.0/tcp/7400"];
    expect(settingOf(() => load(open))).toBe("--mesh-listen");
    expect(() => load(open)).toThrow(
      /beyond loopback without a pre-shared key.*--psk.*--insecure-open-mesh/,
    );
    expect(settingOf(() => load([], { ROLLCALL_MESH_LISTEN: "/ip4/10.0.0.5/tcp/7400" }))).toBe(
      "ROLLCALL_MESH_LISTEN",
    );
    expect(load([...open, "--insecure-open-mesh"]).insecureOpenMesh).toBe(true);
    expect(load(open, { ROLLCALL_INSECURE_OPEN_MESH: "true" }).meshListen).toEqual([
      "/ip4/0.0.0.0/tcp/7400",
    ]);
    // Direct mode runs no mesh: nothing to refuse.
    expect(load([...open, "--mode", "direct", "--coordinator", "http://127.0.0.1:1"]).mode).toBe(
      "direct",
    );
  });

  it("takes an allow-list of PeerIds and names a bad one", () => {
    const id = "12D3KooWGRUVh4QXxWvRZkLZyRzd8nK1Gbbr5ZqdF4gRNiVMpbQo";
    expect(load([]).allowPeers).toBeUndefined();
    expect(load(["--allow-peers", ` ${id} ,`]).allowPeers).toEqual([id]);
    expect(settingOf(() => load([], { ROLLCALL_ALLOW_PEERS: `${id},bogus` }))).toBe(
      "ROLLCALL_ALLOW_PEERS",
    );
    expect(load([]).gatewayPerClient).toBe(256);
    expect(load(["--gateway-per-client", "0"]).gatewayPerClient).toBe(0);
    expect(settingOf(() => load(["--gateway-per-client", "many"]))).toBe("--gateway-per-client");
    expect(load([]).meshWatchers).toBeUndefined();
    expect(load(["--mesh-watchers", "3"]).meshWatchers).toBe(3);
    expect(load([], { ROLLCALL_MESH_WATCHERS: "2" }).meshWatchers).toBe(2);
    expect(settingOf(() => load(["--mesh-watchers", "0"]))).toBe("--mesh-watchers");
    expect(load(["--mesh-watchers", "all"]).meshWatchers).toBe(Number.POSITIVE_INFINITY);
    expect(settingOf(() => load(["--mesh-watchers", "All of them"]))).toBe("--mesh-watchers");
    for (const flag of [
      "--insecure-open-mesh",
      "--allow-peers",
      "--gateway-per-client",
      "--mesh-watchers",
    ]) {
      expect(helpText()).toContain(flag);
    }
  });

  it("checks the public URL and capabilities with the coordinator's schemas, naming the env variable", () => {
    const message = (env: Record<string, string>) => {
      try {
        load([], env);
      } catch (err) {
        if (err instanceof ConfigError) return err.message;
        throw err;
      }
      throw new Error("expected a ConfigError");
    };
    expect(message({ ROLLCALL_PUBLIC_URL: "http://u:p@host" })).toBe(
      'Invalid ROLLCALL_PUBLIC_URL: "http://u:p@host": must be an http(s) URL without credentials, query or fragment',
    );
    expect(message({ ROLLCALL_CAPABILITIES: '{"cpu_cores":-1}' })).toMatch(
      /^Invalid ROLLCALL_CAPABILITIES: "\{\\"cpu_cores\\":-1\}": cpu_cores: /,
    );
    expect(settingOf(() => load(["--capabilities", '{"cpu_cores":-1}']))).toBe("--capabilities");
  });

  it("derives the tier from the capabilities unless --tier says otherwise", () => {
    expect(load([]).tier).toBe(2);
    expect(load([], { ROLLCALL_CAPABILITIES: '{"worker_type":"gpu"}' }).tier).toBe(1);
    expect(load(["--tier", "3"], { ROLLCALL_CAPABILITIES: '{"has_gpu":true}' }).tier).toBe(3);
  });

  it("names an unknown key in the config file", () => {
    const dir = mkdtempSync(join(tmpdir(), "rollcall-cfg-"));
    const file = join(dir, "agent.json");
    writeFileSync(file, JSON.stringify({ clustr: "typo" }));
    expect(settingOf(() => load(["--config", file]))).toBe(`${file}: clustr`);
  });

  it("documents every setting in --help", () => {
    expect(loadConfig(["--help"], {}).help).toBe(true);
    for (const flag of [
      "--coordinator",
      "--token",
      "--mdns",
      "--psk",
      "--services",
      "--mode",
      "ROLLCALL_PUBLIC_URL",
    ]) {
      expect(helpText()).toContain(flag);
    }
  });
});
