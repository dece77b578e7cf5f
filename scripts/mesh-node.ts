/**
 * Runs mesh node(s) in one process and prints their events as JSON lines on stdout, for the
 * benchmark, the mDNS test and debugging. SIGTERM/SIGINT stop them gracefully (leave announced).
 *
 *   npx tsx scripts/mesh-node.ts --data-dir .data/n1 [--listen /ip4/127.0.0.1/tcp/0]
 *     [--bootstrap <multiaddr>]... [--mdns] [--cluster name] [--psk-file swarm.key]
 *     [--url http://...] [--nodes 2] [--views] [--heartbeat-ms 1000] [--suspect-ms 3000]
 *     [--watchers 3|all]
 *     [--dead-ms 6000] [--settle-ms 5000] [--stats-ms 0] [--exit-after-ms 0] [--gossip '{"D":2}']
 *     [--stock] [--insecure-open-mesh] [--port-base 27000]
 *
 * --port-base P: node i listens on /ip4/127.0.0.1/tcp/<P + i> (instead of --listen), so several
 * nodes in one process get fixed, distinct ports (the benchmark's tcpdump filter needs them).
 *
 * Listening beyond loopback needs --psk-file, or --insecure-open-mesh (anyone may join).
 *
 * --stock runs the stock TCP/yamux stack instead of mesh/lean.ts (to measure what lean saves).
 *
 * Lines: {"t":<ms>,"node":<index>,"event":"started"|"leader"|"member-up"|"member-down"|"view"|
 * "stats"|"stopped"|"error", ...}. With --nodes N, node i uses <data-dir>/<i>. A "stats" line
 * carries the process's `process.memoryUsage()` too (shared by its nodes).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Mesh, type MeshInit, createMesh, heartbeatTopic } from "../mesh/index.ts";

const { values } = parseArgs({
  options: {
    "data-dir": { type: "string" },
    listen: { type: "string", multiple: true },
    bootstrap: { type: "string", multiple: true },
    mdns: { type: "boolean", default: false },
    cluster: { type: "string" },
    "psk-file": { type: "string" },
    url: { type: "string", default: "" },
    nodes: { type: "string", default: "1" },
    views: { type: "boolean", default: false },
    "heartbeat-ms": { type: "string" },
    "suspect-ms": { type: "string" },
    // The watch ring (mesh/ring.ts): each member's heartbeat goes to this many watchers.
    watchers: { type: "string" },
    "dead-ms": { type: "string" },
    "settle-ms": { type: "string" },
    "stats-ms": { type: "string", default: "0" },
    "exit-after-ms": { type: "string", default: "0" },
    gossip: { type: "string" },
    stock: { type: "boolean", default: false },
    "port-base": { type: "string" },
    "insecure-open-mesh": { type: "boolean", default: false },
  },
});

function out(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ t: Date.now(), ...line })}\n`);
}

function num(name: keyof typeof values): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    out({ event: "error", message: `--${name} must be a non-negative number` });
    process.exit(2);
  }
  return n;
}

const dataDir = values["data-dir"];
if (!dataDir) {
  out({ event: "error", message: "--data-dir is required" });
  process.exit(2);
}
const count = num("nodes") ?? 1;
const portBase = num("port-base");
const meshes: Mesh[] = [];

for (let i = 0; i < count; i++) {
  const init: MeshInit = {
    dataDir: count > 1 ? join(dataDir, String(i)) : dataDir,
    cluster: values.cluster,
    listen: portBase === undefined ? values.listen : [`/ip4/127.0.0.1/tcp/${portBase + i}`],
    bootstrap: values.bootstrap,
    mdns: values.mdns,
    psk: values["psk-file"] ? readFileSync(values["psk-file"], "utf8") : undefined,
    insecureOpenMesh: values["insecure-open-mesh"],
    local: { url: values.url ?? "", status: "online", services: [] },
    heartbeatIntervalMs: num("heartbeat-ms"),
    suspectAfterMs: num("suspect-ms"),
    watchers: values.watchers === "all" ? Number.POSITIVE_INFINITY : num("watchers"),
    deadAfterMs: num("dead-ms"),
    settleMs: num("settle-ms"),
    gossip: values.gossip ? JSON.parse(values.gossip) : undefined,
    lean: !values.stock,
  };
  const mesh = createMesh(init, { logger: (line) => out({ node: i, event: "log", line }) });
  mesh.addEventListener("leader", (e) => out({ node: i, event: "leader", leader: e.detail }));
  mesh.addEventListener("member-up", (e) => out({ node: i, event: "member-up", id: e.detail.id }));
  mesh.addEventListener("member-down", (e) =>
    out({ node: i, event: "member-down", id: e.detail.id, state: e.detail.state }),
  );
  if (values.views) {
    mesh.addEventListener("view", (e) =>
      out({
        node: i,
        event: "view",
        leader: e.detail.leader,
        members: e.detail.members.map((m) => ({ id: m.id, state: m.state, flapping: m.flapping })),
      }),
    );
  }
  meshes.push(mesh);
}

let stopping = false;
async function stopAll(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  await Promise.all(meshes.map((m) => m.stop().catch(() => {})));
  for (const [i, m] of meshes.entries()) out({ node: i, event: "stopped", stats: m.stats() });
  process.exit(code);
}
process.on("SIGTERM", () => void stopAll(0));
process.on("SIGINT", () => void stopAll(0));

try {
  for (const [i, mesh] of meshes.entries()) {
    await mesh.start();
    out({ node: i, event: "started", id: mesh.id, addrs: mesh.multiaddrs(), pid: process.pid });
  }
} catch (err) {
  out({ event: "error", message: (err as Error).message });
  await stopAll(1);
}

const statsMs = num("stats-ms") ?? 0;
if (statsMs > 0) {
  const topic = heartbeatTopic(values.cluster);
  setInterval(() => {
    const memory = process.memoryUsage();
    for (const [i, m] of meshes.entries()) {
      const peers = m.libp2p?.getPeers().length ?? 0;
      const subscribers = m.libp2p?.services.pubsub.getSubscribers(topic).length ?? 0;
      const members = m.view().members.length;
      const connections = m.libp2p?.getConnections().length ?? 0;
      out({
        node: i,
        event: "stats",
        stats: m.stats(),
        members,
        peers,
        subscribers,
        connections,
        memory,
      });
    }
  }, statsMs).unref();
}
const exitAfter = num("exit-after-ms") ?? 0;
if (exitAfter > 0) setTimeout(() => void stopAll(0), exitAfter).unref();
