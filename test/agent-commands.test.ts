/**
 * `rollcall-agent members | services | status` as a user runs them (`agent/cli.ts` as a
 * process) against a real local cluster: tables for people, --json for scripts, exit 1 when
 * the agent or coordinator cannot be reached or refuses the token, 2 on a bad option; and the
 * pure views on their own.
 */
import { execFile } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { memberRows, statusOf, statusText, table } from "../agent/command-views.ts";
import {
  LOCAL_CLUSTER_START_MS,
  type LocalCluster,
  type LocalWorker,
  startLocalCluster,
} from "./helpers/local-cluster.ts";
import { freePort, killAll, ROOT } from "../support/processes.ts";

const run = promisify(execFile);
let cluster: LocalCluster;

/** Runs the CLI with a clean ROLLCALL_* environment; resolves with its output and exit code. */
async function cli(args: string[], env: Record<string, string> = {}) {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("ROLLCALL_")),
  );
  try {
    const { stdout, stderr } = await run(
      process.execPath,
      ["--import", "tsx", "agent/cli.ts", ...args],
      {
        cwd: ROOT,
        env: { ...clean, ...env },
      },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(async () => {
  cluster = await startLocalCluster({ layout: [["notes", "upload"], ["upload"]] });
}, LOCAL_CLUSTER_START_MS);

afterAll(async () => {
  await killAll();
});

describe("the CLI's commands against a running cluster", () => {
  it("members: every member with address, status, services, incarnation and the leader", async () => {
    const [a, b] = cluster.workers as [LocalWorker, LocalWorker];
    const env = { ROLLCALL_AGENT_TOKEN: cluster.agentToken };
    const json = await cli(["members", "--agent", b.gateway, "--json"], env);
    expect(json.code).toBe(0);
    const body = JSON.parse(json.stdout);
    expect(body.self).toBe(b.id);
    const rows = body.members as {
      worker_id: string;
      url: string;
      status: string;
      incarnation: number;
      leader: boolean;
      self: boolean;
      services: { name: string }[];
    }[];
    expect(rows.map((r) => r.worker_id).sort()).toEqual([a.id, b.id].sort());
    const leader = (await cluster.leader()) as LocalWorker;
    expect(rows[0]).toMatchObject({ worker_id: leader.id, leader: true, status: "alive" });
    const ra = rows.find((r) => r.worker_id === a.id);
    expect(ra?.url).toBe(a.gateway);
    expect(ra?.services.map((s) => s.name)).toEqual(["notes", "upload"]);
    expect(ra?.incarnation).toBeGreaterThanOrEqual(1);
    const text = await cli(["members", "--agent", b.gateway], env);
    expect(text.code).toBe(0);
    const lines = text.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^ID\s+ADDRESS\s+STATUS\s+SERVICES\s+INC\s+ROLE$/);
    expect(lines.find((l) => l.startsWith(a.id))).toMatch(/alive\s+notes, upload\s+\d+/);
    expect(lines.find((l) => l.startsWith(b.id))).toMatch(/self$/);
  });

  it("services: the coordinator's services with healthy/total, the coordinator found through the agent", async () => {
    const [a] = cluster.workers as [LocalWorker];
    const env = {
      ROLLCALL_AGENT_TOKEN: cluster.agentToken,
      ROLLCALL_ADMIN_TOKEN: cluster.adminToken,
    };
    const text = await cli(["services", "--agent", a.gateway], env);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^SERVICE\s+STATUS\s+HEALTHY\s+SCALING\n/);
    expect(text.stdout).toMatch(/\nnotes\s+available\s+1\/1\s+steady\n/);
    expect(text.stdout).toMatch(/\nupload\s+available\s+2\/2\s+steady\n/);
    const json = await cli(["services", "--coordinator", cluster.url, "--json"], env);
    expect(JSON.parse(json.stdout).services.upload).toMatchObject({
      healthy_workers: 2,
      total_workers: 2,
    });
    // The admin token travels in a header: a wrong one is refused, exit 1.
    const refused = await cli(["services", "--coordinator", cluster.url], {
      ROLLCALL_ADMIN_TOKEN: "wrong",
    });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("refused the request (401)");
    expect(refused.stderr).not.toContain("wrong");
  });

  it("status: this agent's ID, cluster, leader and term, coordinator, last report and writes today", async () => {
    const leader = (await cluster.leader()) as LocalWorker;
    const env = { ROLLCALL_AGENT_TOKEN: cluster.agentToken };
    const json = JSON.parse(
      (await cli(["status", "--agent", leader.gateway, "--json"], env)).stdout,
    );
    expect(json).toMatchObject({
      worker_id: leader.id,
      cluster: "default",
      mode: "mesh",
      is_leader: true,
      coordinator: cluster.url,
      members: { total: 2, alive: 2, suspect: 0 },
      last_report: { ok: true },
      writes_today: { source: "last report" },
    });
    expect(json.leader.term).toBeGreaterThanOrEqual(1);
    const follower = cluster.workers.find((w) => w !== leader) as LocalWorker;
    const text = await cli(["status", "--agent", follower.gateway], {
      ...env,
      ROLLCALL_ADMIN_TOKEN: cluster.adminToken,
    });
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`Agent         ${follower.id} at ${follower.gateway}`);
    expect(text.stdout).toContain(`Leader        ${leader.id} (term `);
    expect(text.stdout).toContain(`Coordinator   ${cluster.url}`);
    expect(text.stdout).toMatch(/Writes today {2}\d+ of 1000 \(from the coordinator\)/);
  });

  it("exits 1 when the agent is unreachable or refuses, 2 on a bad option", async () => {
    const nobody = `http://127.0.0.1:${await freePort()}`;
    const down = await cli(["status", "--agent", nobody]);
    expect(down.code).toBe(1);
    expect(down.stderr).toContain(`Could not reach The agent at ${nobody}: unreachable`);
    const [a] = cluster.workers as [LocalWorker];
    const refused = await cli(["members", "--agent", a.gateway], { ROLLCALL_AGENT_TOKEN: "nope" });
    expect(refused.code).toBe(1);
    expect((await cli(["members", "--bogus"])).code).toBe(2);
    expect((await cli(["members", "--agent", "ftp://x"])).code).toBe(2);
    expect((await cli(["--help"])).stdout).toContain("rollcall-agent members");
  });
});

describe("the commands' tokens", () => {
  it("never send the cluster token to the agent's view, and name the agent-token setting when it refuses", async () => {
    // A real HTTP server in the agent's place, which records what it is sent and refuses.
    const seen: (string | undefined)[] = [];
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(401, { "content-type": "application/json" }).end("{}");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const agent = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const res = await cli(["members", "--agent", agent], {
        ROLLCALL_CLUSTER_TOKEN: "the-cluster-secret",
      });
      expect(res.code).toBe(1);
      expect(seen).toEqual([undefined]);
      expect(res.stderr).toContain("--agent-token or ROLLCALL_AGENT_TOKEN");
      await cli(["members", "--agent", agent], {
        ROLLCALL_CLUSTER_TOKEN: "the-cluster-secret",
        ROLLCALL_AGENT_TOKEN: "the-view-token",
      });
      expect(seen[1]).toBe("Bearer the-view-token");
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe("the commands' views (pure)", () => {
  const view = {
    self: "B",
    cluster: "default",
    mode: "mesh",
    coordinator: "http://c.test",
    leader: { id: "A", term: 3 },
    members: [
      { worker_id: "A", status: "online", services: [{ name: "x", status: "healthy" }] },
      { worker_id: "B", status: "degraded", services: [{ name: "y", status: "unhealthy" }] },
    ],
    all_members: [
      {
        worker_id: "B",
        state: "alive",
        flapping: true,
        incarnation: 2,
        url: "http://b",
        last_seen: 0,
      },
      {
        worker_id: "A",
        state: "suspect",
        flapping: false,
        incarnation: 5,
        url: "http://a",
        last_seen: 0,
      },
      {
        worker_id: "C",
        state: "dead",
        flapping: false,
        incarnation: 1,
        url: "http://c",
        last_seen: 0,
      },
    ],
    services: [{ name: "y", status: "unhealthy" }],
    reporter: null,
  };

  it("lists the leader first, each member's liveness with what it declares", () => {
    expect(memberRows(view).map((r) => [r.worker_id, r.status, r.leader, r.self])).toEqual([
      ["A", "suspect", true, false],
      ["B", "alive, flapping, degraded", false, true],
      ["C", "dead", false, false],
    ]);
  });

  it("says where the day's writes come from, or how to learn them", () => {
    const s = statusOf("http://b", view, null, 0);
    expect(s).toMatchObject({
      is_leader: false,
      writes_today: null,
      members: { total: 3, alive: 1, suspect: 1 },
    });
    expect(statusText(s)).toContain("Writes today  unknown here: pass --admin-token");
    expect(statusText(s)).toContain("Last report   none: the leader reports, this agent does not");
    const lead = statusOf(
      "http://a",
      {
        ...view,
        self: "A",
        reporter: {
          lastAt: 0,
          lastAnswer: {
            written: true,
            reason: "changed",
            writes_today: 4,
            write_budget: 1000,
            next_keepalive_in_s: 60,
          },
        },
      },
      null,
      12_000,
    );
    expect(statusText(lead)).toContain("Last report   written (changed), 12 s ago");
    expect(statusText(lead)).toContain("Writes today  4 of 1000 (from the last report)");
  });

  it("aligns table columns", () => {
    expect(table(["A", "BB"], [["xxx", "y"]])).toBe("A    BB\nxxx  y\n");
  });
});
