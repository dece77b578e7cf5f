/** Real child processes for end-to-end tests: started with Node (+ tsx), output kept, always killed. */
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";

/** The project root. */
export const ROOT = path.resolve(import.meta.dirname, "..");

/** A child process running one of the project's TypeScript files. */
export interface Proc {
  name: string;
  proc: ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Resolves with the first printed line matching `re` (waits up to `timeoutMs`). */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const running = new Set<Proc>();

/** Starts `node --import tsx <file> ...args` in the project root. */
export function startTs(
  name: string,
  file: string,
  args: string[],
  env: Record<string, string> = {},
): Proc {
  return startNode(name, ["--import", "tsx", file, ...args], env);
}

/** Starts `node ...argv` (this test's Node, or `command`) in the project root. */
export function startNode(
  name: string,
  argv: string[],
  env: Record<string, string> = {},
  command: string = process.execPath,
): Proc {
  return startProcess(name, command, argv, env);
}

/** Starts any command in the project root (e.g. `ip netns exec <ns> node ...`). */
export function startProcess(
  name: string,
  command: string,
  argv: string[],
  env: Record<string, string> = {},
): Proc {
  const proc = spawn(command, argv, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const waiters = new Set<() => void>();
  const onData = (c: Buffer) => {
    out += c.toString("utf8");
    for (const w of waiters) w();
  };
  proc.stdout?.on("data", onData);
  proc.stderr?.on("data", onData);
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const p: Proc = {
    name,
    proc,
    output: () => out,
    waitForLine(re, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const line = out.split("\n").find((l) => re.test(l));
          if (line !== undefined) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(line);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(`${name}: no line matching ${re} within ${timeoutMs} ms. Output:\n${out}`),
          );
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    async kill(signal = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const force = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(force);
      running.delete(p);
    },
  };
  running.add(p);
  return p;
}

/** Kills every process started by this module that is still running. */
export async function killAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.kill("SIGKILL")));
}

/** A TCP port free at the time of asking, on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => resolve(typeof addr === "object" && addr ? addr.port : 0));
    });
  });
}

/** Polls `fn` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function pollUntil<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  timeoutMs = 30_000,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(
    `Timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ""}`,
  );
}
