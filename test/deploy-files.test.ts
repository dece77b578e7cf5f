/**
 * The files docs/AGENTS.md tells operators to use (deploy/): the systemd unit passes
 * `systemd-analyze verify` (where systemd-analyze exists: skipped with a message otherwise), and
 * the Dockerfile, the compose snippet and the example settings agree with the agent they run.
 * `docker build` cannot run here (the machine has a Docker client but no engine), so the
 * Dockerfile is checked for what can go wrong without one: its sources, npm scripts, the
 * artefact it copies, its ports and its settings.
 */
import { execFile, execFileSync } from "node:child_process";
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { helpText, loadConfig } from "../agent/config.ts";
import { parseManifest } from "../agent/detect.ts";
import { ROOT, tempDir } from "./helpers/coord-runtimes.ts";

const run = promisify(execFile);
const read = (f: string) => readFileSync(path.join(ROOT, f), "utf8");
/** ROLLCALL_* variables the agent reads, as its --help lists them. */
const AGENT_ENV = new Set(
  [...helpText().matchAll(/^ {2}--\S+\s+(ROLLCALL_[A-Z_]+)/gm)].map((m) => m[1] as string),
);

const systemdAnalyze = (() => {
  try {
    execFileSync("systemd-analyze", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();
const UNIT_DIRS = ["/usr/lib/systemd/system", "/lib/systemd/system"].filter((d) => existsSync(d));
if (!systemdAnalyze || UNIT_DIRS.length === 0) {
  console.warn(
    "deploy-files: systemd-analyze or the system's unit files are missing: unit not verified",
  );
}

/** Verifies a unit in a scratch root holding the system's units and a stand-in binary. */
async function verify(unitText: string): Promise<{ code: number; stderr: string }> {
  const root = tempDir("systemd-root");
  mkdirSync(path.join(root, "usr/lib/systemd"), { recursive: true });
  cpSync(UNIT_DIRS[0] as string, path.join(root, "usr/lib/systemd/system"), { recursive: true });
  mkdirSync(path.join(root, "etc/systemd/system"), { recursive: true });
  writeFileSync(path.join(root, "etc/systemd/system/rollcall-agent.service"), unitText);
  mkdirSync(path.join(root, "usr/local/bin"), { recursive: true });
  const bin = path.join(root, "usr/local/bin/rollcall");
  writeFileSync(bin, "#!/bin/sh\n");
  chmodSync(bin, 0o755);
  return run("systemd-analyze", ["verify", `--root=${root}`, "rollcall-agent.service"])
    .then(({ stderr }) => ({ code: 0, stderr }))
    .catch((e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }));
}

describe("deploy/rollcall-agent.service", () => {
  const unit = read("deploy/rollcall-agent.service");

  it.skipIf(!systemdAnalyze || UNIT_DIRS.length === 0)(
    "passes systemd-analyze verify without a warning (and a typo would not)",
    async () => {
      expect(await verify(unit)).toEqual({ code: 0, stderr: "" });
      const typo = await verify(unit.replace("NoNewPrivileges=", "NoNewPrivilege="));
      expect(typo.stderr).toMatch(/Unknown key 'NoNewPrivilege'/);
    },
    60_000,
  );

  it("runs `rollcall agent` with a config file the agent reads and a state directory", () => {
    expect(unit).toMatch(
      /^ExecStart=\/usr\/local\/bin\/rollcall agent --config \/etc\/rollcall\/agent\.json --data-dir \/var\/lib\/rollcall-agent$/m,
    );
    expect(unit).toMatch(/^StateDirectory=rollcall-agent$/m);
    for (const [, key] of unit.matchAll(/^Environment=(ROLLCALL_[A-Z_]+)=/gm)) {
      expect(AGENT_ENV, key).toContain(key);
    }
  });
});

describe("deploy/Dockerfile.agent and deploy/docker-compose.agent.yml", () => {
  const dockerfile = read("deploy/Dockerfile.agent");
  const compose = read("deploy/docker-compose.agent.yml");
  const scripts = (JSON.parse(read("package.json")) as { scripts: Record<string, string> }).scripts;

  it("copy files that exist, run npm scripts that exist, and start the artefact build:agent writes", () => {
    for (const [, src] of dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
      for (const f of (src as string).split(" "))
        expect(existsSync(path.join(ROOT, f)), f).toBe(true);
    }
    for (const [, name] of dockerfile.matchAll(/RUN npm run (\S+)/g)) {
      expect(scripts[name as string], name).toBeDefined();
    }
    const artefact = /^COPY --from=build \/src\/(\S+) (\S+)$/m.exec(dockerfile);
    expect(artefact?.[1]).toBe("dist/rollcall.mjs");
    expect(read("scripts/build.ts")).toContain('out: "dist/rollcall.mjs"');
    expect(dockerfile).toContain(`ENTRYPOINT ["node", "${artefact?.[2]}", "agent"]`);
    expect(compose).toMatch(/dockerfile: deploy\/Dockerfile\.agent/);
  });

  it("set only settings the agent knows, and expose the ports it listens on", () => {
    const env: Record<string, string> = {};
    for (const [, k, v] of dockerfile.matchAll(/(ROLLCALL_[A-Z_]+)=(\S+?)\s*\\?$/gm)) {
      env[k as string] = v as string;
    }
    for (const [, k, v] of compose.matchAll(/^ {6}(ROLLCALL_[A-Z_]+): (.+)$/gm)) {
      env[k as string] = (v as string).replace(/ #.*$/, "");
    }
    expect(Object.keys(env).length).toBeGreaterThan(6);
    for (const key of Object.keys(env)) expect(AGENT_ENV, key).toContain(key);
    expect(env.ROLLCALL_LISTEN).toBe("0.0.0.0:8700");
    expect(env.ROLLCALL_MESH_LISTEN).toBe("/ip4/0.0.0.0/tcp/7400");
    expect(dockerfile).toMatch(/^EXPOSE 8700 7400$/m);
    expect(compose).toContain('"8700:8700"');
    expect(compose).toContain('"7400:7400"');
    // The container's settings load, once the files they name exist and compose's
    // variables are filled in.
    const dir = tempDir("compose");
    writeFileSync(
      path.join(dir, "swarm.key"),
      `/key/swarm/psk/1.0.0/\n/base16/\n${"ab".repeat(32)}`,
    );
    const filled = {
      ...env,
      ROLLCALL_CLUSTER_TOKEN: "t",
      ROLLCALL_NAME: "box-1",
      ROLLCALL_PSK: path.join(dir, "swarm.key"),
      ROLLCALL_BOOTSTRAP:
        env.ROLLCALL_BOOTSTRAP?.replace(
          /\/p2p\/\S+/,
          "/p2p/12D3KooWBK2Xk2ynAH4sESgDGKQPLtRiwntLfVq22awbsZYpYYPW",
        ) ?? "",
    };
    expect(loadConfig([], filled).config).toMatchObject({
      listen: { host: "0.0.0.0", port: 8700 },
      publicUrl: "http://10.0.0.5:8700",
      logFormat: "json",
    });
  });

  it("ship example settings and a manifest the agent accepts", () => {
    const manifest = JSON.parse(read("deploy/services.example.json"));
    expect(parseManifest(manifest, "deploy/services.example.json").map((s) => s.name)).toEqual([
      "upload",
      "rag",
      "ocr",
    ]);
    const dir = tempDir("example");
    const example = JSON.parse(read("deploy/agent.example.json")) as Record<string, unknown>;
    writeFileSync(
      path.join(dir, "swarm.key"),
      `/key/swarm/psk/1.0.0/\n/base16/\n${"cd".repeat(32)}`,
    );
    example.psk = path.join(dir, "swarm.key");
    example.bootstrap = [
      "/ip4/10.0.0.6/tcp/7400/p2p/12D3KooWBK2Xk2ynAH4sESgDGKQPLtRiwntLfVq22awbsZYpYYPW",
    ];
    writeFileSync(path.join(dir, "agent.json"), JSON.stringify(example));
    expect(loadConfig(["--config", path.join(dir, "agent.json")], {}).config).toMatchObject({
      name: "gpu-box-1",
      tier: 1,
      probeIntervalMs: 10_000,
    });
  });
});
