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
