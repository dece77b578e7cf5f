/**
 * The coordinator SIGKILLed in the middle of a leader's reports, with each persistent store:
 * the file store (Node), Deno KV (Deno) and Workers KV (workerd through Miniflare, persisted).
 * A leader sends reports back to back, each adding a member; the coordinator is killed at a
 * random moment (a report is nearly always in flight) and started again on the same store.
 * Nothing acknowledged as written is lost, and the leader's next report restores the rest.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, bundleWorker, ROOT, tempDir } from "./helpers/coord-runtimes.ts";
import { signedHeaders, testKey } from "./helpers/signing.ts";

const READY = /listening on (http:\/\/[0-9.:]+)/;
const ROUNDS = 2;
const running = new Set<ChildProcess>();

afterAll(() => {
  for (const child of running) killGroup(child);
});

function killGroup(child: ChildProcess) {
  try {
    process.kill(-(child.pid as number), "SIGKILL");
  } catch {
    // already gone
  }
}

/** This process's environment without tokens (an empty token is a configuration error). */
function openEnv(): Record<string, string | undefined> {
  const env = { ...process.env };
  delete env.ROLLCALL_CLUSTER_TOKEN;
  delete env.ROLLCALL_ADMIN_TOKEN;
  delete env.ROLLCALL_AGENT_TOKEN;
  return env;
}

/** The reporting leader: a real key, as a report is signed by its leader. */
const LEADER = testKey("faults-kill leader");

/** Starts a command in a process group of its own; resolves with its URL once it listens. */
function startGroup(
  command: string,
  args: string[],
): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(command, args, {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: openEnv(),
  });
  running.add(child);
  let out = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${command} did not start:\n${out}`)), 60_000);
    const onData = (c: Buffer) => {
      out += c.toString();
      const m = READY.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1] as string, child });
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("exit", (code) => {
      running.delete(child);
      clearTimeout(timer);
      reject(new Error(`${command} exited (${code}) before it listened:\n${out}`));
    });
  });
}

const memberOf = (i: number) => ({
  worker_id: `m${i}`,
  incarnation: 1,
  status: "online",
  url: `http://127.0.0.1:${20_000 + i}`,
  last_seen: 1000 + i,
  services: [{ name: `svc${i % 3}`, status: "healthy" }],
});

/**
 * Report n: members m0..mn (the cluster grows by one member per report), each of a new term:
 * a leader change is written at once, where a change of members alone waits for the pace.
 */
const reportOf = (n: number) => ({
  leader_id: LEADER.id,
  term: n,
  sequence: n,
  members: Array.from({ length: n + 1 }, (_, i) => memberOf(i)),
});

async function send(url: string, n: number): Promise<{ written: boolean; reason: string } | null> {
  try {
    const path = "/api/cluster/heartbeat";
    const body = JSON.stringify(reportOf(n));
    const signed = await signedHeaders(LEADER, { method: "POST", path, body, now: Date.now() });
    const res = await fetch(`${url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...signed },
      body,
      signal: AbortSignal.timeout(5000),
    });
    return res.ok ? ((await res.json()) as { written: boolean; reason: string }) : null;
  } catch {
    return null; // killed mid-report
  }
}

async function storedIds(url: string): Promise<Set<string>> {
  const res = await fetch(`${url}/api/admin/workers`);
  return new Set(((await res.json()) as { worker_id: string }[]).map((w) => w.worker_id));
}

let bundle = "";
beforeAll(async () => {
  bundle = await bundleWorker("scripts/start-workers.ts");
}, 120_000);

const stores: [string, (dir: string) => [string, string[]]][] = [
  [
    "file store (Node)",
    (dir) => [
      process.execPath,
      ["--import", "tsx", "scripts/start-node.ts", "--port", "0", "--data", join(dir, "c.json")],
    ],
  ],
  [
    "Deno KV (Deno)",
    (dir) => [
      BIN("deno"),
      [
        "run",
        "-A",
        "--unstable-kv",
        "scripts/start-deno.ts",
        "--port",
        "0",
        "--kv",
        join(dir, "kv"),
      ],
    ],
  ],
  [
    "Workers KV (workerd)",
    (dir) => [
      process.execPath,
      ["--import", "tsx", "test/helpers/workerd-child.ts", bundle, join(dir, "kv")],
    ],
  ],
];

describe.each(stores)("SIGKILL mid-report, %s", (name, command) => {
  it("loses nothing acknowledged, and the next report restores the rest", async () => {
    const dir = tempDir("kill");
    let n = 0;
    let acked = -1;
    const figures: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const [cmd, args] = command(dir);
      const { url, child } = await startGroup(cmd, args);
      // What was acknowledged before the last kill is there after the restart.
      const before = await storedIds(url);
      for (let i = 0; i <= acked; i++) expect(before.has(`m${i}`), `m${i} of ${name}`).toBe(true);
      // The leader's next report restores what was not acknowledged.
      if (n > 0) {
        // Written now, or "unchanged": the report in flight at the kill was written, unanswered;
        // or "deferred": a change within CLUSTER_PACE_MS of the last write waits (not acknowledged).
        const answer = await send(url, n);
        expect(answer).not.toBeNull();
        const restored = await storedIds(url);
        for (let i = 0; i <= n; i++) expect(restored.has(`m${i}`)).toBe(true);
        if (answer?.written || answer?.reason === "unchanged") acked = n;
      }
      // Reports back to back; the kill lands at a random moment among them.
      const killAt = Date.now() + 500 + Math.random() * 1500;
      let killed = false;
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      const killer = setTimeout(() => {
        killed = true;
        killGroup(child);
      }, killAt - Date.now());
      let sent = 0;
      while (!killed) {
        n++;
        sent++;
        const answer = await send(url, n);
        if (answer?.written) acked = n;
      }
      clearTimeout(killer);
      await exited;
      running.delete(child);
      figures.push(
        `round ${round + 1}: ${sent} reports, acknowledged written up to ${acked} of ${n}`,
      );
    }
    // One more start: the last kill lost nothing acknowledged either.
    const [cmd, args] = command(dir);
    const { url, child } = await startGroup(cmd, args);
    const after = await storedIds(url);
    for (let i = 0; i <= acked; i++) expect(after.has(`m${i}`)).toBe(true);
    expect(await send(url, n)).not.toBeNull();
    const restored = await storedIds(url);
    for (let i = 0; i <= n; i++) expect(restored.has(`m${i}`)).toBe(true);
    killGroup(child);
    console.log(`${name}: ${figures.join("; ")}`);
  }, 180_000);
});
