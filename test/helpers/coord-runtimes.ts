/** Starting the coordinator's runtimes for tests: bundles for workerd, child processes for the rest. */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Miniflare } from "miniflare";

/** The project root. */
export const ROOT = path.resolve(import.meta.dirname, "../..");
/** Binaries from node_modules/.bin. */
export const BIN = (name: string) => path.join(ROOT, "node_modules/.bin", name);

/** A fresh temporary directory. */
export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `rollcall-${prefix}-`));
}

/** Bundles a Worker entry with wrangler (as `npm run build:worker` does); returns the file. */
export async function bundleWorker(entry: string): Promise<string> {
  const dir = tempDir("bundle");
  const config = path.join(dir, "wrangler.toml");
  const name = path.basename(entry).replace(/\.ts$/, "");
  writeFileSync(
    config,
    `name = "${name}"\nmain = "${path.resolve(ROOT, entry)}"\ncompatibility_date = "2025-09-01"\n`,
  );
  await promisify(execFile)(
    BIN("wrangler"),
    ["deploy", "--dry-run", "-c", config, "--outdir", dir],
    {
      cwd: ROOT,
      env: { ...process.env, WRANGLER_SEND_METRICS: "false", NO_UPDATE_NOTIFIER: "1" },
    },
  );
  return path.join(dir, `${name}.js`);
}

/** Runs a bundled Worker in workerd through Miniflare with a local KV namespace (`cf: false`). */
export async function startWorkerd(init: {
  scriptPath: string;
  kvBinding: string;
  kvPersist: string;
  bindings?: Record<string, string>;
}): Promise<{ url: string; mf: Miniflare; stop(): Promise<void> }> {
  const mf = new Miniflare({
    modules: true,
    scriptPath: init.scriptPath,
    modulesRoot: path.dirname(init.scriptPath),
    compatibilityDate: "2025-09-01",
    kvNamespaces: [init.kvBinding],
    kvPersist: init.kvPersist,
    bindings: init.bindings ?? {},
    cf: false,
    host: "127.0.0.1",
    port: 0,
  });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  return { url, mf, stop: () => mf.dispose() };
}

/** A child process started by a test. */
export interface Spawned {
  child: ChildProcess;
  match: RegExpMatchArray;
  output: () => string;
  stop(): Promise<void>;
}

/** Spawns a process and waits until its output matches `ready` (or fails after a deadline). */
export function spawnUntil(
  command: string,
  args: string[],
  options: { ready: RegExp; env?: Record<string, string>; timeoutMs?: number },
): Promise<Spawned> {
  const child = spawn(command, args, {
    cwd: ROOT,
    env: { ...process.env, ...(options.env ?? {}) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`${command} did not start in time; output:\n${output}`));
    }, options.timeoutMs ?? 45_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = output.match(options.ready);
      if (match) {
        clearTimeout(timer);
        resolve({ child, match, output: () => output, stop });
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${command} exited with ${code} before it was ready; output:\n${output}`));
    });
  });
}

/** A coordinator a test started on one runtime. */
export interface RunningCoordinator {
  url: string;
  stop(): Promise<void>;
}

/** One runtime of the coordinator: its name, its persistent store, and how to start it. */
export interface CoordinatorRuntime {
  name: "node" | "bun" | "deno" | "workerd";
  store: string;
  /** Starts a coordinator with `settings` as its `ROLLCALL_*` environment (or Worker vars). */
  start(settings: Record<string, string>): Promise<RunningCoordinator>;
}

const READY = /listening on (http:\/\/[0-9.:]+)/;

/** Node (file store), Bun (file store), Deno (Deno KV) and workerd (the `build:worker` bundle, KV). */
export const COORDINATOR_RUNTIMES: CoordinatorRuntime[] = [
  {
    name: "node",
    store: "file",
    start: async (settings) => {
      const data = path.join(tempDir("node"), "coordinator.json");
      const p = await spawnUntil(
        process.execPath,
        ["--import", "tsx", "scripts/start-node.ts", "--port", "0"],
        { ready: READY, env: { ...settings, ROLLCALL_DATA: data } },
      );
      return { url: p.match[1] as string, stop: p.stop };
    },
  },
  {
    name: "bun",
    store: "file",
    start: async (settings) => {
      const data = path.join(tempDir("bun"), "coordinator.json");
      const p = await spawnUntil(BIN("bun"), ["scripts/start-bun.ts", "--port", "0"], {
        ready: READY,
        env: { ...settings, ROLLCALL_DATA: data },
      });
      return { url: p.match[1] as string, stop: p.stop };
    },
  },
  {
    name: "deno",
    store: "deno-kv",
    start: async (settings) => {
      const kv = path.join(tempDir("deno"), "kv.sqlite");
      const p = await spawnUntil(
        BIN("deno"),
        ["run", "-A", "--unstable-kv", "scripts/start-deno.ts", "--port", "0", "--kv", kv],
        { ready: READY, env: settings },
      );
      return { url: p.match[1] as string, stop: p.stop };
    },
  },
  {
    name: "workerd",
    store: "cloudflare-kv",
    start: async (settings) => {
      // Exactly what `npm run build:worker` does, into a temporary directory.
      const out = tempDir("worker-build");
      await promisify(execFile)(
        BIN("wrangler"),
        ["deploy", "--dry-run", "--minify", "--outdir", out],
        {
          cwd: ROOT,
          env: { ...process.env, WRANGLER_SEND_METRICS: "false", NO_UPDATE_NOTIFIER: "1" },
        },
      );
      return startWorkerd({
        scriptPath: path.join(out, "start-workers.js"),
        kvBinding: "ROLLCALL_KV",
        kvPersist: tempDir("workerd-kv"),
        bindings: settings,
      });
    },
  },
];
