/**
 * docs/MIGRATING.md, step 1: the old system's Python agents keep working against the new
 * coordinator. Their requests are replayed exactly as they sent them (only the placeholders
 * of the issue text filled in) against Node, Bun, Deno and workerd, with legacy workers
 * admitted and the old path aliases on, and an hour of heartbeats is played on a scaled
 * clock: the coordinator's intervals are divided by 150 (heartbeat 30 s -> 0.2 s, write
 * interval 5 min -> 2 s, consistency grace 60 s -> 0.4 s), so an hour is 24 s here.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { COORDINATOR_RUNTIMES, type RunningCoordinator } from "./helpers/coord-runtimes.ts";
import { pollUntil } from "../support/processes.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";
import { readAnswer } from "./helpers/answer.ts";

const SCALE = 150;
const HEARTBEAT_MS = 30_000 / SCALE;
const HOUR_BEATS = 3600_000 / 30_000; // 120 heartbeats of each agent
const ADMIN = "migration-admin-token";
const SETTINGS: Record<string, string> = {
  ROLLCALL_CLUSTER_TOKEN: "migration-cluster-token",
  ROLLCALL_ADMIN_TOKEN: ADMIN,
  ROLLCALL_ALLOW_LEGACY_WORKERS: "true",
  ROLLCALL_ALIASES: JSON.stringify({ "/clients": "upload", "/uploads/": "upload" }),
  ROLLCALL_HEARTBEAT_INTERVAL_S: String(30 / SCALE),
  ROLLCALL_DIRECT_WRITE_INTERVAL_S: String(300 / SCALE),
  ROLLCALL_CONSISTENCY_GRACE_S: String(60 / SCALE),
  ROLLCALL_LIVE_VIEW: "false",
  // The old agents' boxes are test servers on loopback, which the proxy refuses by default.
  ROLLCALL_UPSTREAM_ALLOW: "loopback",
};

let cpuBox: Upstream;
let gpuBox: Upstream;
beforeAll(async () => {
  [cpuBox, gpuBox] = await Promise.all([startUpstream("cpu-worker"), startUpstream("gpu-worker")]);
});
afterAll(async () => {
  await Promise.all([cpuBox?.close(), gpuBox?.close()]);
});

/** The old agents sent JSON with `requests`: no token, no headers beyond the content type. */
async function send(base: string, method: string, path: string, body?: unknown) {
  const res = await fetch(base + path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return readAnswer(res);
}

interface WorkerRow {
  worker_id: string;
  status: string;
  healthy: boolean;
  services: string[];
}

const running: RunningCoordinator[] = [];
afterAll(async () => {
  await Promise.all(running.map((c) => c.stop()));
});

describe("old agents against the new coordinator", () => {
  // The four runtimes play their hour at the same time.
  it.concurrent.each(COORDINATOR_RUNTIMES)(
    "on $name: both kinds register, stay online through an hour of heartbeats, route their services and the old paths; a stopped service gets no traffic",
    async (runtime) => {
      const coord = await runtime.start(SETTINGS);
      running.push(coord);
      const base = coord.url;
      const admin = async (path: string) => {
        const res = await fetch(base + path, { headers: { authorization: `Bearer ${ADMIN}` } });
        expect(res.status, path).toBe(200);
        // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON answers
        return (await res.json()) as any;
      };
      const workers = async () => (await admin("/api/admin/workers")) as WorkerRow[];

      // The service-aware CPU agent: no worker_id (the coordinator assigns one).
      const cpuRegister = await send(base, "POST", "/api/worker/register", {
        capabilities: {
          cpu_cores: 8,
          ram: "15.6GB",
          storage: "100.0GB",
          containerized: true,
          worker_type: "cpu",
          ip_address: null,
        },
        services: [{ name: "upload", port: 8103, health: "healthy", version: "1.2.0" }],
        tunnel_url: cpuBox.url,
        wants_heartbeat_leadership: true,
      });
      expect(cpuRegister.status, JSON.stringify(cpuRegister.body)).toBe(200);
      expect(cpuRegister.body).toMatchObject({ tier: 2, services_registered: ["upload"] });
      const cpuId = cpuRegister.body.worker_id as string;
      expect(cpuId).toMatch(/^worker-/);

      // The later universal agent: its own id, no services; it reads assigned_services.
      const gpuId = `worker-gpubox-${Math.floor(Date.now() / 1000)}`;
      const gpuRegister = await send(base, "POST", "/api/worker/register", {
        worker_id: gpuId,
        tunnel_url: gpuBox.url,
        capabilities: {
          hostname: "gpubox",
          cpu_cores: 16,
          has_gpu: true,
          gpu_type: "NVIDIA GeForce RTX 4090",
          gpu_memory: "24564 MiB",
          worker_type: "gpu",
          has_public_ip: false,
          ram: "62GB",
        },
      });
      expect(gpuRegister.status, JSON.stringify(gpuRegister.body)).toBe(200);
      expect(gpuRegister.body).toMatchObject({ worker_id: gpuId, tier: 1, assigned_services: [] });

      // `ip_address` at the top level may carry a URL, an IP or null.
      for (const ip_address of ["https://box.example.org:8443", "10.1.2.3", null]) {
        const r = await send(base, "POST", "/api/worker/register", {
          worker_id: "worker-ipcheck",
          ip_address,
          tunnel_url: cpuBox.url,
          capabilities: { worker_type: "cpu" },
        });
        expect(r.status, `${ip_address}: ${JSON.stringify(r.body)}`).toBe(200);
      }
      expect((await send(base, "DELETE", "/api/worker/unregister/worker-ipcheck")).status).toBe(
        200,
      );

      const cpuBeat = () =>
        send(base, "POST", "/api/worker/heartbeat", {
          worker_id: cpuId,
          status: "healthy",
          current_load: 0.12,
          available_memory: "3.2GB",
        });
      const gpuBeat = (status: string, vllm: "running" | "stopped") =>
        send(base, "POST", "/api/worker/heartbeat", {
          worker_id: gpuId,
          status,
          services_status: { ocr: "running", vllm },
          current_load: 0.0,
        });

      // The hour: both agents heartbeat every (scaled) 30 s; a few beats say "degraded".
      const offline: string[] = [];
      const routed: string[] = [];
      const hourStarted = Date.now();
      for (let beat = 0; beat < HOUR_BEATS; beat++) {
        const pace = new Promise((r) => setTimeout(r, HEARTBEAT_MS));
        const [cpu, gpu] = await Promise.all([
          cpuBeat(),
          gpuBeat(beat >= 60 && beat < 63 ? "degraded" : "healthy", "stopped"),
        ]);
        expect(cpu.status, JSON.stringify(cpu.body)).toBe(200);
        expect(cpu.body).toMatchObject({ status: "ok" });
        expect(gpu.status, JSON.stringify(gpu.body)).toBe(200);
        if (beat % 10 === 5) {
          for (const w of await workers()) if (!w.healthy) offline.push(`${beat}: ${w.worker_id}`);
          const up = await send(base, "GET", `/api/service/upload/beat-${beat}`);
          const ocr = await send(base, "GET", `/api/service/ocr/beat-${beat}`);
          routed.push(`${up.status}:${up.body?.upstream} ${ocr.status}:${ocr.body?.upstream}`);
        }
        await pace;
      }
      expect(offline).toEqual([]);
      expect(new Set(routed)).toEqual(new Set(["200:cpu-worker 200:gpu-worker"]));
      const rows = await workers();
      expect(rows.find((w) => w.worker_id === gpuId)?.services.sort()).toEqual(["ocr", "vllm"]);

      // Writes stay what the old coordinator promised: one per worker per write interval at most
      // (the hour may take longer than 24 s on a loaded machine), plus 6 for the registrations
      // and the unregister above and 3 for status and service changes.
      const intervals = Math.ceil((Date.now() - hourStarted) / ((300 / SCALE) * 1000)) + 1;
      const budget = await admin("/api/admin/budget");
      expect(budget.used_today).toBeGreaterThanOrEqual(6 + 2 * 6);
      expect(budget.used_today).toBeLessThanOrEqual(6 + 3 + 2 * intervals);

      // The old paths and aliases.
      expect((await send(base, "GET", "/clients/7")).body).toMatchObject({
        upstream: "cpu-worker",
        url: "/clients/7",
      });
      expect((await send(base, "GET", "/uploads/a.pdf")).body).toMatchObject({
        upstream: "cpu-worker",
        url: "/uploads/a.pdf",
      });
      const ocr = await send(base, "POST", "/api/service/ocr/scan?lang=en", { page: 1 });
      expect(ocr.status).toBe(200);
      expect(ocr.headers.get("x-rollcall-worker")).toBe(gpuId);
      expect(ocr.body).toMatchObject({ upstream: "gpu-worker", url: "/scan?lang=en" });

      // A stopped service gets no traffic; the lookup finds healthy providers only.
      const vllmBefore = gpuBox.received.filter((r) => r.url.startsWith("/v1")).length;
      const stopped = await send(base, "GET", "/api/service/vllm/v1/models");
      expect(stopped.status).toBe(503);
      expect(stopped.body.error).toBe("No healthy workers available for 'vllm'");
      expect(await send(base, "GET", "/api/worker/find/ocr")).toMatchObject({
        status: 200,
        body: { worker_url: gpuBox.url, worker_id: gpuId },
      });
      const none = await send(base, "GET", "/api/worker/find/vllm");
      expect(none.status).toBe(404);
      expect(none.body.available_services).toEqual(["ocr", "upload"]);
      expect((await gpuBeat("healthy", "running")).status).toBe(200);
      expect((await send(base, "GET", "/api/service/vllm/v1/models")).body).toMatchObject({
        upstream: "gpu-worker",
        url: "/v1/models",
      });
      expect((await send(base, "GET", "/api/worker/find/vllm")).body.worker_url).toBe(gpuBox.url);
      expect((await gpuBeat("healthy", "stopped")).status).toBe(200);
      expect((await send(base, "GET", "/api/service/vllm/v1/models")).status).toBe(503);
      expect(gpuBox.received.filter((r) => r.url.startsWith("/v1")).length).toBe(vllmBefore + 1);

      // Silence is noticed: with no heartbeat for longer than the write interval plus two
      // heartbeats and the grace, the universal agent shows offline (the CPU agent beats on).
      const seen = await pollUntil(
        "the silent worker to show offline",
        async () => {
          await cpuBeat();
          const w = (await workers()).find((r) => r.worker_id === gpuId);
          return w && !w.healthy ? w : undefined;
        },
        30_000,
        HEARTBEAT_MS,
      );
      expect(seen.status).toBe("offline");
      expect((await workers()).find((r) => r.worker_id === cpuId)?.healthy).toBe(true);

      // Unregister, as the CPU agent does on shutdown.
      const bye = await send(base, "DELETE", `/api/worker/unregister/${cpuId}`);
      expect(bye.status).toBe(200);
      expect(bye.body).toMatchObject({ status: "ok" });
      expect((await send(base, "GET", "/api/service/upload/x")).body.error).toBe(
        "Service 'upload' not available",
      );
    },
    120_000,
  );
});
