/**
 * Helpers for mesh integration tests: real libp2p nodes on 127.0.0.1, a connection gater the
 * test controls (to cut and heal partitions), child processes running scripts/mesh-node.ts,
 * and polling with deadlines instead of sleeps.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { ConnectionGater, PeerId } from "@libp2p/interface";
import { type Mesh, type MeshInit, createMesh, loadIdentity } from "../../mesh/index.ts";

/** Timings that keep integration tests quick yet tolerant of a loaded 2-core machine. */
export const TEST_TIMINGS = {
  heartbeatIntervalMs: 500,
  suspectAfterMs: 2000,
  deadAfterMs: 4000,
  settleMs: 3000,
} as const;

/** A temp dir removed by `cleanup()`. */
export function tempDir(prefix: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Polls `check` until it returns a truthy value or the deadline passes (then throws with `what`). */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | false,
  timeoutMs = 30_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end)
      throw new Error(`Timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Creates `n` data dirs with keys, sorted by PeerId (index 0 = lowest ID = the future leader). */
export async function makeIdentities(
  root: string,
  n: number,
): Promise<Array<{ dir: string; id: string }>> {
  const out: Array<{ dir: string; id: string }> = [];
  for (let i = 0; i < n; i++) {
    const dir = join(root, `n${i}`);
    const ident = await loadIdentity(dir);
    out.push({ dir, id: ident.peerId.toString() });
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : 1));
}

/** A partition table shared by the gaters of every in-process node. */
export class Partition {
  #side = new Map<string, number>();
  /** Puts each group on its own side; peers on different sides cannot connect. */
  split(...groups: string[][]): void {
    this.#side.clear();
    groups.forEach((g, i) => {
      for (const id of g) this.#side.set(id, i);
    });
  }
  #only = new Map<string, Set<string>>();
  /** Lets `id` connect to `peers` only (a node behind NAT that reaches one relay, say). */
  only(id: string, peers: string[]): void {
    this.#only.set(id, new Set(peers));
  }
  heal(): void {
    this.#side.clear();
    this.#only.clear();
  }
  blocked(a: string, b: string): boolean {
    if (this.#only.get(a)?.has(b) === false || this.#only.get(b)?.has(a) === false) return true;
    const sa = this.#side.get(a);
    const sb = this.#side.get(b);
    return sa !== undefined && sb !== undefined && sa !== sb;
  }
  /** A gater for the node whose id `self()` returns (known once it started). */
  gater(self: () => string | undefined): ConnectionGater {
    const deny = (peer: PeerId) => {
      const me = self();
      return me !== undefined && this.blocked(me, peer.toString());
    };
    return {
      denyDialPeer: deny,
      denyInboundEncryptedConnection: deny,
      denyOutboundEncryptedConnection: deny,
    };
  }
}

/** Starts an in-process mesh node with the test timings. */
export async function startMesh(
  init: Omit<MeshInit, "local"> & Partial<Pick<MeshInit, "local">>,
  partition?: Partition,
): Promise<Mesh> {
  let id: string | undefined;
  const mesh = createMesh(
    {
      ...TEST_TIMINGS,
      local: { url: "http://127.0.0.1:9", status: "online", services: [] },
      ...init,
    },
    { connectionGater: partition?.gater(() => id) },
  );
  await mesh.start();
  id = mesh.id;
  return mesh;
}

/** A mesh node in a child process (scripts/mesh-node.ts), read through its JSON lines. */
export class NodeProcess {
  readonly child: ChildProcess;
  readonly lines: Array<Record<string, unknown>> = [];
  readonly exited: Promise<number | null>;

  constructor(args: string[], opts: { command?: string[] } = {}) {
    // node itself (not npx), so that a signal reaches the process that runs the mesh.
    const command = opts.command ?? [process.execPath, "--import", "tsx", "scripts/mesh-node.ts"];
    this.child = spawn(command[0] as string, [...command.slice(1), ...args], {
      cwd: join(import.meta.dirname, "..", ".."),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const rl = createInterface({ input: this.child.stdout as NodeJS.ReadableStream });
    rl.on("line", (line) => {
      try {
        this.lines.push(JSON.parse(line));
      } catch {
        this.lines.push({ event: "raw", line });
      }
    });
    this.child.stderr?.on("data", (d) => this.lines.push({ event: "stderr", line: String(d) }));
    // "close", not "exit": only then are stdout and stderr drained, so `lines` is complete.
    this.exited = new Promise((resolve) => this.child.on("close", (code) => resolve(code)));
  }

  /** The first line matching `pred`, once it arrived. */
  async line(what: string, pred: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000) {
    return waitFor(what, () => this.lines.find(pred), timeoutMs);
  }

  /** Sends a signal and waits for the exit. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }
}

/** The leader each mesh names, as "id@term" (or "none"), deduplicated and sorted. */
export function leaders(meshes: Mesh[]): string[] {
  const set = new Set(
    meshes.map((m) => {
      const l = m.view().leader;
      return l ? `${l.id}@${l.term}` : "none";
    }),
  );
  return [...set].sort();
}

/** Whether every mesh sees exactly `ids` as alive members. */
export function allSeeAlive(meshes: Mesh[], ids: string[]): boolean {
  const want = [...ids].sort().join(",");
  return meshes.every(
    (m) =>
      m
        .view()
        .members.filter((x) => x.state === "alive")
        .map((x) => x.id)
        .sort()
        .join(",") === want,
  );
}

/** The command line of a mesh node process (NodeProcess) with the test timings. */
export function nodeArgs(dir: string, bootstrap: string[]): string[] {
  const t = TEST_TIMINGS;
  return [
    "--data-dir",
    dir,
    ...bootstrap.flatMap((b) => ["--bootstrap", b]),
    "--heartbeat-ms",
    String(t.heartbeatIntervalMs),
    "--suspect-ms",
    String(t.suspectAfterMs),
    "--dead-ms",
    String(t.deadAfterMs),
    "--settle-ms",
    String(t.settleMs),
  ];
}
