/**
 * End-to-end check of a running coordinator, local or deployed:
 *
 *   npx tsx scripts/test-service-discovery.ts http://127.0.0.1:8787 [--service upload] [--path /health]
 *
 * The admin token comes from --admin-token or ROLLCALL_ADMIN_TOKEN (never printed).
 * Prints one PASS/FAIL line per check and exits non-zero when any check fails.
 */
import { parseArgs } from "node:util";
import type { ServicesAnswer, WorkerViewSchema } from "../coordinator.ts";
import type { z } from "zod";

interface Check {
  name: string;
  run(): Promise<string>;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    "admin-token": { type: "string" },
    service: { type: "string" },
    path: { type: "string", default: "/health" },
    help: { type: "boolean" },
  },
});

if (values.help || positionals.length !== 1) {
  console.log(
    "Usage: test-service-discovery <coordinator URL> [--service NAME] [--path /health] [--admin-token T]",
  );
  process.exit(values.help ? 0 : 2);
}

const base = (positionals[0] as string).replace(/\/+$/, "");
const adminToken = values["admin-token"] ?? process.env.ROLLCALL_ADMIN_TOKEN;
const admin: Record<string, string> = adminToken ? { authorization: `Bearer ${adminToken}` } : {};

async function getJson(path: string, headers: Record<string, string> = {}) {
  const res = await fetch(base + path, { headers, signal: AbortSignal.timeout(15_000) });
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body: body as Record<string, unknown>, headers: res.headers };
}

function expect(cond: unknown, message: string): asserts cond {
  if (!cond) throw new Error(message);
}

// What the checks read of the answers (any coordinator, the one rollcall succeeds too): the
// contract's fields, as the coordinator's schemas name them; nothing else is required.
let services: Record<
  string,
  Pick<ServicesAnswer["services"][string], "healthy_workers" | "status">
> = {};

const checks: Check[] = [
  {
    name: "coordinator is healthy",
    async run() {
      const r = await getJson("/health");
      expect(r.status === 200, `GET /health answered ${r.status}`);
      expect(r.body.status === "healthy", `status is ${JSON.stringify(r.body.status)}`);
      return "GET /health -> healthy";
    },
  },
  {
    name: "services are listed",
    async run() {
      const r = await getJson("/api/admin/services", admin);
      expect(
        r.status === 200,
        `GET /api/admin/services answered ${r.status}${r.status === 401 ? " (set ROLLCALL_ADMIN_TOKEN)" : ""}`,
      );
      services = (r.body.services ?? {}) as typeof services;
      const names = Object.keys(services);
      expect(names.length > 0, "no services registered yet");
      return `${names.length} service(s): ${names.map((n) => `${n} (${services[n]?.healthy_workers} healthy)`).join(", ")}`;
    },
  },
  {
    name: "unknown service gets a helpful 503",
    async run() {
      const r = await getJson("/api/service/no-such-service-xyz/anything");
      expect(r.status === 503, `answered ${r.status}, expected 503`);
      expect(Array.isArray(r.body.available_services), "no available_services list in the body");
      return `503 with available_services ${JSON.stringify(r.body.available_services)}`;
    },
  },
  {
    name: "a routed call reaches a worker",
    async run() {
      const name =
        values.service ?? Object.keys(services).find((n) => services[n]?.status === "available");
      expect(name, "no available service to call (pass --service)");
      const res = await fetch(`${base}/api/service/${name}${values.path}`, {
        signal: AbortSignal.timeout(15_000),
      });
      await res.body?.cancel();
      expect(res.status < 500, `/api/service/${name}${values.path} answered ${res.status}`);
      return `/api/service/${name}${values.path} -> ${res.status}`;
    },
  },
  {
    name: "workers are listed",
    async run() {
      const r = await getJson("/api/admin/workers", admin);
      expect(r.status === 200, `GET /api/admin/workers answered ${r.status}`);
      expect(Array.isArray(r.body), "the answer is not a JSON array");
      const workers = r.body as unknown as Pick<
        z.output<typeof WorkerViewSchema>,
        "worker_id" | "status"
      >[];
      expect(workers.length > 0, "no workers registered");
      const online = workers.filter((w) => w.status !== "offline").length;
      return `${workers.length} worker(s), ${online} not offline`;
    },
  },
];

let failed = 0;
console.log(`Checking ${base}`);
for (const check of checks) {
  try {
    const detail = await check.run();
    console.log(`PASS  ${check.name}: ${detail}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL  ${check.name}: ${(err as Error).message}`);
  }
}
console.log(`${checks.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
