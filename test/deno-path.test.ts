/**
 * The Deno path with nothing but Deno: deno.json's `imports` name every package the runtime
 * code imports (with the versions package.json pins), its tasks call `deno` itself, and the
 * coordinator runs from a clean copy of the repository WITHOUT node_modules, Deno fetching its
 * packages from the npm registry into a fresh DENO_DIR: `deno task coordinator` and the command
 * docs/DEPLOY.md gives for Deno Deploy and self-hosting.
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { BIN, ROOT, tempDir } from "./helpers/coord-runtimes.ts";
import { startUpstream } from "./helpers/upstream.ts";

const run = promisify(execFile);
const deno = JSON.parse(readFileSync(path.join(ROOT, "deno.json"), "utf8")) as {
  nodeModulesDir: string;
  imports: Record<string, string>;
  tasks: Record<string, string>;
};
const pkg = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as {
  devDependencies: Record<string, string>;
};

/** Bare specifiers imported by the code that runs under Deno (not tests, not tooling). */
function bareImports(): Set<string> {
  const files = execFileSync(
    "git",
    ["ls-files", "-co", "--exclude-standard", "agent", "mesh", "scripts", "coordinator.ts"],
    {
      cwd: ROOT,
      encoding: "utf8",
    },
  )
    .split("\n")
    .filter(
      (f) =>
        f.endsWith(".ts") &&
        !/scripts\/(bench|build|sim)/.test(f) &&
        existsSync(path.join(ROOT, f)),
    );
  const found = new Set<string>();
  for (const f of files) {
    const text = readFileSync(path.join(ROOT, f), "utf8");
    for (const m of text.matchAll(/^(?:import|export)[^"']*from\s+["']([^"'./][^"']*)["']/gm)) {
      const spec = m[1] as string;
      if (!spec.startsWith("node:")) found.add(spec);
    }
  }
  return found;
}

describe("deno.json", () => {
  it("maps every package the runtime code imports, at the version package.json pins", () => {
    const specs = bareImports();
    expect(specs.size).toBeGreaterThan(10);
    for (const spec of specs) {
      const mapped =
        deno.imports[spec] ??
        Object.entries(deno.imports).find(([k]) => k.endsWith("/") && spec.startsWith(k))?.[1];
      expect(mapped, spec).toBeDefined();
    }
    for (const [name, target] of Object.entries(deno.imports)) {
      const m = /^npm:\/?(@?[^@]+)@([^/]+)\/?$/.exec(target);
      expect(m, target).not.toBeNull();
      expect(name.replace(/\/$/, ""), target).toBe(m?.[1]);
      expect(m?.[2], name).toBe(pkg.devDependencies[m?.[1] as string]);
    }
  });

  it("has tasks that call deno itself, resolving packages without node_modules", () => {
    expect(deno.nodeModulesDir).toBe("manual"); // npm users' node_modules stay npm's
    for (const [name, task] of Object.entries(deno.tasks)) {
      // `env` finds deno on the PATH: a bare `deno` would make deno task run npm's
      // node_modules/.bin/deno (the native binary) as a JavaScript file.
      expect(task, name).toMatch(/^env DENO_NO_PACKAGE_JSON=1 deno run --node-modules-dir=none /);
      expect(task, name).not.toContain("node_modules/");
    }
  });

  it("works for an npm user too: `npx deno task` beside npm's node_modules", async () => {
    const { stdout } = await run("npx", ["deno", "task", "agent", "--version"], { cwd: ROOT });
    expect(stdout.trim()).toMatch(/^rollcall-agent \d+\.\d+\.\d+$/);
  }, 60_000);
});

const started: number[] = [];
afterAll(() => {
  for (const pid of started) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
});

/** Runs `deno ...args` in `cwd` (its own process group) until it prints its URL. */
async function serveFrom(cwd: string, args: string[], env: Record<string, string>) {
  const child = spawn(BIN("deno"), args, {
    cwd,
    env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  started.push(child.pid as number);
  let out = "";
  child.stdout.on("data", (c: Buffer) => (out += c.toString()));
  child.stderr.on("data", (c: Buffer) => (out += c.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no URL within 180 s:\n${out}`)), 180_000);
    const check = () => {
      const m = /listening on (http:\/\/[0-9.:]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1] as string);
      }
    };
    child.stdout.on("data", check);
    child.stderr.on("data", check);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`deno ${args.join(" ")} exited with ${code}:\n${out}`));
    });
  });
  return {
    url,
    output: () => out,
    stop: () => process.kill(-(child.pid as number), "SIGTERM"),
  };
}

describe("a clean copy of the repository, no node_modules, only Deno", () => {
  it("serves the coordinator with `deno task coordinator` and with DEPLOY.md's command; routes a call", async () => {
    const copy = path.join(tempDir("deno-clean"), "rollcall");
    mkdirSync(copy);
    const files = execFileSync("git", ["ls-files", "-co", "--exclude-standard"], {
      cwd: ROOT,
      encoding: "utf8",
    })
      .split("\n")
      .filter((f) => f && existsSync(path.join(ROOT, f)));
    for (const f of files) cpSync(path.join(ROOT, f), path.join(copy, f), { recursive: true });
    expect(existsSync(path.join(copy, "node_modules"))).toBe(false);
    // Deno on the PATH (no npm project around), a fresh package cache, and not this test run's
    // DENO_NO_PACKAGE_JSON (the task sets it itself; DEPLOY.md's command does without).
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && k !== "DENO_NO_PACKAGE_JSON" && !k.startsWith("npm_")) env[k] = v;
    }
    Object.assign(env, {
      DENO_DIR: tempDir("deno-dir"),
      // Deno and the system's own tools (the tasks start with /usr/bin/env).
      PATH: `${path.dirname(BIN("deno"))}:/usr/bin:/bin`,
      NO_COLOR: "1",
      // The upstream below is on loopback, which the proxy refuses by default.
      ROLLCALL_UPSTREAM_ALLOW: "loopback",
    });
    const upstream = await startUpstream("from-deno");
    try {
      for (const args of [
        ["task", "coordinator", "--port", "0", "--kv", path.join(copy, "task.kv")],
        // docs/DEPLOY.md, "Deno and Deno Deploy" (Deploy opens its managed KV without --kv).
        [
          "run",
          "--node-modules-dir=none",
          "-A",
          "--unstable-kv",
          "scripts/start-deno.ts",
          "--port",
          "0",
          "--kv",
          path.join(copy, "run.kv"),
        ],
      ]) {
        const server = await serveFrom(copy, args, env);
        try {
          const health = await (await fetch(`${server.url}/health`)).json();
          expect(health).toMatchObject({
            status: "healthy",
            store: { kind: "deno-kv", persistent: true },
          });
          const reg = await fetch(`${server.url}/api/worker/register`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ worker_id: "w1", tunnel_url: upstream.url, services: ["echo"] }),
          });
          expect(reg.status).toBe(200);
          const routed = await (await fetch(`${server.url}/api/service/echo/hi`)).json();
          expect(routed).toMatchObject({ upstream: "from-deno", url: "/hi" });
        } finally {
          server.stop();
        }
      }
      expect(existsSync(path.join(copy, "node_modules"))).toBe(false);
    } finally {
      await upstream.close();
    }
  }, 300_000);
});
