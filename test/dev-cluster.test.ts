/**
 * `npm run dev` and `deno task dev` for real: the local cluster comes up, the user's
 * end-to-end check passes against it, killing the leader's agent (`kill -9`, as the README
 * suggests) leaves the rest running and a new leader shows, and Ctrl-C (SIGINT) leaves
 * nothing running.
 */
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pollUntil, ROOT } from "../support/processes.ts";

const run = promisify(execFile);
const DENO = join(ROOT, "node_modules/deno/deno");
const DENO_DEV_TASK = (
  JSON.parse(readFileSync(join(ROOT, "deno.json"), "utf8")) as { tasks: { dev: string } }
).tasks.dev;
const started: number[] = [];

// A clean machine has an empty Deno cache: fetch the packages first (what `deno task dev` does
// on its first run), so the 90 s the cluster gets to come up are not spent downloading.
beforeAll(async () => {
  await run(
    DENO,
    [
      "cache",
      "--node-modules-dir=none",
      "scripts/dev.ts",
      "agent/cli.ts",
      "scripts/start-deno.ts",
      "scripts/sample-service.ts",
    ],
    { cwd: ROOT },
  );
}, 300_000);

afterAll(() => {
  for (const pid of started) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});

/** PIDs of a process's children, from /proc (Linux; no ps needed). */
async function childrenOf(pid: number): Promise<number[]> {
  const kids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) kids.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return kids;
}

/** The worker the coordinator shows as leader, if any. */
async function leaderOf(
  url: string,
  env: Record<string, string>,
): Promise<{ worker_id: string; tunnel_url: string } | undefined> {
  const token = env.ROLLCALL_ADMIN_TOKEN;
  const res = await fetch(`${url}/api/admin/workers`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  const workers = (await res.json()) as {
    worker_id: string;
    tunnel_url: string;
    is_heartbeat_leader: boolean;
  }[];
  return workers.find((w) => w.is_heartbeat_leader);
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** A secured cluster, as anyone rehearsing production runs it (a user's run never got up). */
const SECURED = {
  ROLLCALL_CLUSTER_TOKEN: "dev-cluster-secret",
  ROLLCALL_ADMIN_TOKEN: "dev-admin-secret",
};

describe.each([
  [
    "npm run dev (Node, secured by tokens)",
    [process.execPath, "--import", "tsx", "scripts/dev.ts"],
    SECURED,
  ],
  // The command of deno.json's `dev` task, as `deno task dev` runs it (packages from Deno's
  // own cache, not node_modules).
  [
    "deno task dev (Deno, open)",
    [DENO, ...DENO_DEV_TASK.split(" ").slice(DENO_DEV_TASK.split(" ").indexOf("deno") + 1)],
    {},
  ],
])("%s", (_name, command, env: Record<string, string>) => {
  it("starts the whole cluster, passes the user's check, survives losing its leader, and stops everything on Ctrl-C", async () => {
    const data = mkdtempSync(join(tmpdir(), "rollcall-dev-"));
    const [bin, ...args] = command as [string, ...string[]];
    let out = "";
    let base = 0;
    let dev: ReturnType<typeof spawn> | undefined;
    let exited: Promise<number | null> = Promise.resolve(null);
    // Ports below Linux's ephemeral range (32768+); another base if some are taken.
    for (let attempt = 0; attempt < 5 && !out.includes("cluster is up"); attempt++) {
      base = 10_000 + Math.floor(Math.random() * 20_000);
      out = "";
      const proc = spawn(
        bin,
        [...args, "--base-port", String(base), "--data", data, "--probe-interval", "1"],
        {
          cwd: ROOT,
          env: {
            ...process.env,
            ROLLCALL_CLUSTER_TOKEN: undefined,
            ROLLCALL_ADMIN_TOKEN: undefined,
            ...env,
          },
          stdio: ["ignore", "pipe", "pipe"],
          detached: true,
        },
      );
      dev = proc;
      started.push(proc.pid as number);
      proc.stdout.on("data", (c: Buffer) => {
        out += c.toString();
      });
      proc.stderr.on("data", (c: Buffer) => {
        out += c.toString();
      });
      exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
      const outcome = await new Promise<"up" | "busy">((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no banner within 90 s:\n${out}`)), 90_000);
        proc.stdout.on("data", () => {
          if (out.includes("cluster is up")) {
            clearTimeout(timer);
            resolve("up");
          }
        });
        proc.once("exit", () => {
          clearTimeout(timer);
          if (out.includes("Ports already in use")) resolve("busy");
          else reject(new Error(`dev exited early:\n${out}`));
        });
      });
      if (outcome === "up") break;
    }
    if (!dev) throw new Error("dev never started");
    const url = `http://127.0.0.1:${base + 87}`;
    expect(out).toContain(`curl -s ${url}/api/service/upload/hello`);
    // It says which mode it runs in, and never prints a secret.
    expect(out).toMatch(env.ROLLCALL_ADMIN_TOKEN ? /Mode +secured/ : /Mode +open local dev/);
    for (const secret of Object.values(env)) expect(out).not.toContain(secret);
    // The banner maps each agent's pid to its name and id.
    for (const n of [1, 2, 3]) {
      expect(out).toMatch(
        new RegExp(`agent${n} {2}pid \\d+ {2}worker${n} {2}12D3Koo\\w+ {2}http://`),
      );
    }
    const check = await run(
      process.execPath,
      ["--import", "tsx", "scripts/test-service-discovery.ts", url],
      { cwd: ROOT, env: { ...process.env, ...env } },
    ).catch((err: { stdout: string }) => ({ stdout: err.stdout }));
    expect(check.stdout).toContain("5 passed, 0 failed");
    const children = await childrenOf(dev.pid as number);
    expect(children.length).toBeGreaterThanOrEqual(10); // coordinator, 3 agents, 6 services
    // kill -9 the leader's agent (its gateway port gives its place in the banner's pid list).
    const leader = await pollUntil("a leader", () => leaderOf(url, env));
    const pids = (/Agent pids\s+([\d ]+)/.exec(out)?.[1] ?? "").trim().split(/\s+/).map(Number);
    const victim = pids[Number(new URL(leader.tunnel_url).port) - base - 1] as number;
    expect(children).toContain(victim);
    process.kill(victim, "SIGKILL");
    const next = await pollUntil(
      "a new leader",
      async () => {
        const l = await leaderOf(url, env);
        return l && l.worker_id !== leader.worker_id ? l : undefined;
      },
      30_000,
    );
    expect(next.tunnel_url).not.toBe(leader.tunnel_url);
    expect(out).toMatch(/\[agent\d\] +exited \(SIGKILL\); the rest of the cluster keeps running/);
    expect(dev.exitCode).toBeNull();
    dev.kill("SIGINT");
    expect(await exited).toBe(0);
    expect(out).toContain("Everything stopped.");
    // Every child is gone: dev waits for their exits, but give the OS a moment to reap them.
    await pollUntil(
      "every child of dev to be gone",
      async () => {
        const left = children.filter(alive);
        if (left.length > 0) throw new Error(`still alive: ${left.join(", ")}`);
        return true;
      },
      5000,
      100,
    );
  }, 150_000);
});
