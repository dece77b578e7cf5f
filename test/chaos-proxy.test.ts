/**
 * Chaos under load, with real processes: the coordinator (Node starter) routes a bounded load
 * of GETs (concurrency 10) to a service with two provider processes; one provider is killed
 * with SIGKILL mid-load. No GET may fail. The latency spike is printed (and recorded in
 * docs/BENCHMARKS.md); timing is reported, never asserted.
 */
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, killAll, type Proc, startTs } from "../support/processes.ts";
import { signedHeaders, testKey } from "./helpers/signing.ts";

const WARMUP = 500;
const TOTAL = 6000;
const CONCURRENCY = 10;
const KILL_AT = 2500;
const CLUSTER = "chaos-cluster";
const ADMIN = "chaos-admin";

let coordinator: Proc;
let base = "";
const providers: { id: string; port: number; proc: Proc }[] = [];

beforeAll(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  coordinator = startTs(
    "coordinator",
    "scripts/start-node.ts",
    ["--port", String(port), "--data", `/tmp/rollcall-chaos-${process.pid}-${port}.json`],
    {
      ROLLCALL_CLUSTER_TOKEN: CLUSTER,
      ROLLCALL_ADMIN_TOKEN: ADMIN,
      ROLLCALL_LIVE_VIEW: "false",
      ROLLCALL_UPSTREAM_ALLOW: "loopback",
    },
  );
  for (const id of ["p1", "p2"]) {
    const p = await freePort();
    const proc = startTs(id, "scripts/sample-service.ts", [
      "--name",
      "svc",
      "--port",
      String(p),
      "--worker",
      id,
    ]);
    providers.push({ id, port: p, proc });
  }
  await Promise.all([
    coordinator.waitForLine(/listening on/),
    ...providers.map((p) => p.proc.waitForLine(/listening on/)),
  ]);
  const leader = testKey("chaos leader");
  const body = JSON.stringify({
    leader_id: leader.id,
    term: 1,
    sequence: 1,
    members: providers.map((p) => ({
      worker_id: p.id,
      status: "online",
      url: `http://127.0.0.1:${p.port}`,
      services: [{ name: "svc", url: `http://127.0.0.1:${p.port}/svc` }],
    })),
  });
  const path = "/api/cluster/heartbeat";
  const res = await fetch(`${base}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      authorization: `Bearer ${CLUSTER}`,
      ...(await signedHeaders(leader, { method: "POST", path, body, now: Date.now() })),
    },
    body,
  });
  expect(res.status).toBe(200);
}, 60_000);

afterAll(async () => {
  await killAll();
});

interface Sample {
  start: number;
  ms: number;
  status: number;
  worker: string;
}

/** One GET through a keep-alive agent (a client of the coordinator, as a browser would be). */
function get(agent: http.Agent, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = http.get(`${base}${path}`, { agent, timeout: 15_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }),
      );
      res.on("error", () => resolve({ status: -1, body: "response error" }));
    });
    req.on("timeout", () => req.destroy(new Error("client timeout")));
    req.on("error", (err) => resolve({ status: -1, body: err.message }));
  });
}

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

function summary(list: Sample[]): string {
  const ms = list.map((s) => s.ms).sort((a, b) => a - b);
  return `n=${list.length} p50=${percentile(ms, 0.5).toFixed(1)} p99=${percentile(ms, 0.99).toFixed(1)} max=${(ms.at(-1) ?? Number.NaN).toFixed(1)} ms`;
}

describe("chaos: a provider killed with SIGKILL under load", () => {
  it("fails no GET, and the killed provider is taken out", async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    for (let i = 0; i < WARMUP; i += CONCURRENCY) {
      const batch = Array.from({ length: CONCURRENCY }, () => get(agent, "/api/service/svc/warm"));
      expect((await Promise.all(batch)).every((r) => r.status === 200)).toBe(true);
    }
    const samples: Sample[] = [];
    let next = 0;
    let killedAt = 0;
    const victim = providers[0] as (typeof providers)[number];
    const worker = async () => {
      while (next < TOTAL) {
        const i = next++;
        if (i === KILL_AT) {
          killedAt = performance.now();
          victim.proc.proc.kill("SIGKILL");
        }
        const start = performance.now();
        const res = await get(agent, `/api/service/svc/item/${i}`);
        let who = "";
        try {
          who = (JSON.parse(res.body) as { worker?: string }).worker ?? "";
        } catch {
          // not JSON: the status tells
        }
        samples.push({ start, ms: performance.now() - start, status: res.status, worker: who });
      }
    };
    const began = performance.now();
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const took = performance.now() - began;
    agent.destroy();

    const failed = samples.filter((s) => s.status !== 200);
    const before = samples.filter((s) => s.start < killedAt - 100);
    const around = samples.filter((s) => s.start >= killedAt - 100 && s.start < killedAt + 500);
    const after = samples.filter((s) => s.start >= killedAt + 500);
    console.log(
      `chaos: ${TOTAL} GETs, concurrency ${CONCURRENCY}, ${(TOTAL / (took / 1000)).toFixed(0)} req/s, failed ${failed.length}\n` +
        `  before the kill:               ${summary(before)}\n` +
        `  started 100 ms before to 500 ms after: ${summary(around)}\n` +
        `  later:                         ${summary(after)}`,
    );
    expect(failed.map((s) => `${s.status}`)).toEqual([]);
    expect(samples).toHaveLength(TOTAL);
    expect(new Set(before.map((s) => s.worker))).toEqual(new Set(["p1", "p2"]));
    expect(after.length).toBeGreaterThan(0);
    expect(after.every((s) => s.worker === "p2")).toBe(true);

    const res = await fetch(`${base}/api/admin/breakers`, {
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    const rows = (await res.json()).breakers as {
      worker_id: string;
      ejected: boolean;
      state: string;
    }[];
    const p1 = rows.find((r) => r.worker_id === "p1");
    expect(p1).toBeDefined();
    expect(p1?.ejected || p1?.state !== "closed").toBe(true);
    const metrics = await (
      await fetch(`${base}/api/admin/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } })
    ).json();
    console.log(
      `chaos: retries ${metrics.services.svc.retries_total}, p1 errors ${metrics.services.svc.workers.p1.errors_total}, p1 ejected ${p1?.ejected}, breaker ${p1?.state}`,
    );
  });
});
