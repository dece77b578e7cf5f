/**
 * Agent configuration: flags > environment > config file > defaults.
 * Every bad setting stops the agent at once with a message that names it.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { parseArgs } from "node:util";
import { peerIdFromString } from "@libp2p/peer-id";
import { z } from "zod";
import {
  type Capabilities,
  CapabilitiesSchema,
  ClusterNameSchema,
  HttpUrlSchema,
  tierOf,
  WorkerNameSchema,
} from "../coordinator.ts";
import { checkExposure, loopbackOnly, OpenMeshError } from "../mesh/exposure.ts";
import { LOG_FORMATS, type LogFormat } from "./log.ts";

/** A setting that could not be used; `setting` names it as the user wrote it. */
export class ConfigError extends Error {
  constructor(
    readonly setting: string,
    message: string,
  ) {
    super(`Invalid ${setting}: ${message}`);
    this.name = "ConfigError";
  }
}

/** The agent's resolved settings. */
export interface AgentConfig {
  /** This worker's human name (`--name`, default the hostname). */
  name: string;
  logFormat: LogFormat;
  coordinator: string | undefined;
  token: string | undefined;
  agentToken: string | undefined;
  cluster: string;
  dataDir: string;
  listen: { host: string; port: number };
  publicUrl: string;
  meshListen: string[];
  bootstrap: string[];
  mdns: boolean;
  psk: string | undefined;
  /** Let the mesh listen beyond loopback without a PSK (--insecure-open-mesh). */
  insecureOpenMesh: boolean;
  /** Only these PeerIds may join the mesh (--allow-peers); undefined: whoever has the PSK. */
  allowPeers: string[] | undefined;
  /** Connections one client address may hold open on the gateway (0: no cap). */
  gatewayPerClient: number;
  /**
   * The watch ring's watchers per member (--mesh-watchers); Infinity (`all`): flood every peer;
   * undefined: the mesh's default (3).
   */
  meshWatchers: number | undefined;
  services: string | undefined;
  mode: "mesh" | "direct";
  probeIntervalMs: number;
  probeTimeoutMs: number;
  debounceMs: number;
  /** --tier, or the coordinator's tierOf(capabilities). */
  tier: 1 | 2 | 3;
  /** As the coordinator's CapabilitiesSchema parsed them. */
  capabilities: Capabilities;
}

/** One row per setting: flag name, env variable, config-file key, help text. */
const SETTINGS = [
  ["coordinator", "ROLLCALL_COORDINATOR", "coordinator URL (omit to run without reporting)"],
  ["name", "ROLLCALL_NAME", "this worker's name in the coordinator's views (default: hostname)"],
  ["token", "ROLLCALL_CLUSTER_TOKEN", "cluster token sent to the coordinator"],
  [
    "agent-token",
    "ROLLCALL_AGENT_TOKEN",
    "read-only token for /_agent/cluster (never the cluster token)",
  ],
  ["cluster", "ROLLCALL_CLUSTER", 'cluster name (default "default")'],
  ["data-dir", "ROLLCALL_DATA_DIR", "where the agent keeps its key (default .data/agent)"],
  ["listen", "ROLLCALL_LISTEN", "gateway listen address host:port (default 127.0.0.1:8700)"],
  ["public-url", "ROLLCALL_PUBLIC_URL", "URL others reach the gateway at (the tunnel_url)"],
  [
    "mesh-listen",
    "ROLLCALL_MESH_LISTEN",
    "mesh multiaddrs, comma-separated (default /ip4/0.0.0.0/tcp/7400 with --psk, else 127.0.0.1)",
  ],
  ["bootstrap", "ROLLCALL_BOOTSTRAP", "bootstrap peer multiaddrs with /p2p/<id>, comma-separated"],
  ["mdns", "ROLLCALL_MDNS", "find peers on the LAN by mDNS (true/false; needs --psk)"],
  ["psk", "ROLLCALL_PSK", "private-network key: swarm.key text or a path to it"],
  [
    "mesh-watchers",
    "ROLLCALL_MESH_WATCHERS",
    "heartbeat to this many watchers (1-16, default 3), or all: flood every peer (docs/PROTOCOL.md)",
  ],
  ["services", "ROLLCALL_SERVICES", "services manifest JSON file (default: none, no services)"],
  ["mode", "ROLLCALL_MODE", "mesh (default) or direct"],
  ["probe-interval", "ROLLCALL_PROBE_INTERVAL", "seconds between service probes (default 10)"],
  ["probe-timeout", "ROLLCALL_PROBE_TIMEOUT", "seconds a probe may take (default 2)"],
  ["debounce", "ROLLCALL_DEBOUNCE", "seconds the leader waits to batch changes (default 2)"],
  ["tier", "ROLLCALL_TIER", "1 GPU, 2 CPU, 3 storage (default: from capabilities)"],
  ["capabilities", "ROLLCALL_CAPABILITIES", "JSON object, as in direct-mode register"],
  ["log-format", "ROLLCALL_LOG_FORMAT", "text (default) or json: one JSON object per line"],
  // Who may reach this agent (docs/SECURITY.md).
  [
    "insecure-open-mesh",
    "ROLLCALL_INSECURE_OPEN_MESH",
    "let the mesh listen beyond loopback without --psk: anyone who reaches it may join",
  ],
  ["allow-peers", "ROLLCALL_ALLOW_PEERS", "only these PeerIds may join the mesh, comma-separated"],
  [
    "gateway-per-client",
    "ROLLCALL_GATEWAY_PER_CLIENT",
    "connections one client address may hold on the gateway (default 256, 0: no cap)",
  ],
] as const;

/** The settings that are flags without a value. */
const BOOLEAN_FLAGS: ReadonlySet<string> = new Set(["mdns", "insecure-open-mesh"]);

type Key = (typeof SETTINGS)[number][0];

/** The --help text. */
export function helpText(): string {
  const rows = SETTINGS.map(
    ([flag, env, help]) => `  --${flag.padEnd(15)} ${env.padEnd(24)} ${help}`,
  );
  return [
    "Usage: rollcall-agent [options]",
    "",
    "Detects the HTTP services this machine runs, fronts them on one gateway port,",
    "gossips with the other agents and, when elected leader, reports to the coordinator.",
    "",
    "Options (flag, environment variable, meaning):",
    ...rows,
    `  --${"config".padEnd(15)} ${"ROLLCALL_CONFIG".padEnd(24)} JSON file with any of the settings above`,
    `  --${"help".padEnd(15)} ${"".padEnd(24)} this text`,
    `  --${"version".padEnd(15)} ${"".padEnd(24)} print the version and exit`,
    "",
    'A config file takes the flag names as keys, e.g. {"coordinator": "https://...",',
    '"probe-interval": 5, "bootstrap": ["/ip4/10.0.0.5/tcp/7400/p2p/12D3Koo..."]}.',
    "Flags win over environment variables, which win over the file.",
    "",
  ].join("\n");
}

const camel = (flag: string) => flag.replace(/-(\w)/g, (_, c: string) => c.toUpperCase());

/** Edit distance of two short strings (insertions, deletions, substitutions). */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row.push(
        Math.min(
          (prev[j] as number) + 1,
          (row[j - 1] as number) + 1,
          (prev[j - 1] as number) + cost,
        ),
      );
    }
    prev = row;
  }
  return prev[b.length] as number;
}

/** The known setting nearest to an unknown key, when one is near enough to be a typo. */
export function nearestSetting(key: string): string | undefined {
  const wanted = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/_/g, "-");
  let best: { flag: string; d: number } | undefined;
  for (const [flag] of SETTINGS) {
    const d = distance(wanted.toLowerCase(), flag);
    if (!best || d < best.d) best = { flag, d };
  }
  return best && best.d <= Math.max(2, Math.floor(best.flag.length / 3)) ? best.flag : undefined;
}

/** Raw strings per setting, merged from the three sources, with where each came from. */
function collect(argv: string[], env: Record<string, string | undefined>) {
  const options = Object.fromEntries([
    ...SETTINGS.map(
      ([flag]) => [flag, { type: BOOLEAN_FLAGS.has(flag) ? "boolean" : "string" }] as const,
    ),
    ["config", { type: "string" }],
    ["help", { type: "boolean" }],
    ["version", { type: "boolean" }],
  ]) as Record<string, { type: "string" | "boolean" }>;
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: false, strict: true });
  } catch (err) {
    throw new ConfigError("arguments", (err as Error).message);
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;
  const raw = new Map<Key, { value: string; from: string }>();
  const configPath = (flags.config as string | undefined) ?? env.ROLLCALL_CONFIG;
  if (configPath) {
    let file: Record<string, unknown>;
    try {
      file = JSON.parse(readFileSync(configPath, "utf8"));
    } catch (err) {
      throw new ConfigError("--config", `cannot read ${configPath}: ${(err as Error).message}`);
    }
    if (typeof file !== "object" || file === null || Array.isArray(file)) {
      throw new ConfigError("--config", `${configPath} must hold a JSON object`);
    }
    // The keys are the flag names (`probe-interval`); camelCase (`probeInterval`) is also taken.
    const byKey = new Map<string, Key>();
    for (const [flag] of SETTINGS) {
      byKey.set(flag, flag);
      byKey.set(camel(flag), flag);
    }
    for (const [key, v] of Object.entries(file)) {
      const flag = byKey.get(key);
      if (!flag) {
        const near = nearestSetting(key);
        throw new ConfigError(
          `${configPath}: ${key}`,
          `unknown setting${near ? `; did you mean "${near}"?` : ""} (--help lists the settings)`,
        );
      }
      if (v === undefined || v === null) continue;
      const value = typeof v === "string" ? v : Array.isArray(v) ? v.join(",") : JSON.stringify(v);
      raw.set(flag, { value, from: `${configPath}: ${key}` });
    }
  }
  for (const [flag, envName] of SETTINGS) {
    const v = env[envName];
    if (v !== undefined && v !== "") raw.set(flag, { value: v, from: envName });
  }
  for (const [flag] of SETTINGS) {
    const v = flags[flag];
    if (v !== undefined) raw.set(flag, { value: String(v), from: `--${flag}` });
  }
  return { raw, help: flags.help === true, version: flags.version === true };
}

/** The machine's hostname as a worker name: invalid characters become "-", at most 64. */
export function defaultName(host = hostname()): string {
  const name = host
    .replace(/[^A-Za-z0-9._-]/g, "-")
    .replace(/^[^A-Za-z0-9]+/, "")
    .slice(0, 64);
  return name || "worker";
}

const list = (s: string | undefined) =>
  (s ?? "")
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);

/**
 * Parses argv and env into settings; throws ConfigError naming the bad setting as the user
 * wrote it. What the coordinator will check again (the public URL, capabilities) is checked
 * with its own schemas, so a mistake stops the agent at start instead of every report.
 */
export function loadConfig(
  argv: string[],
  env: Record<string, string | undefined> = process.env,
): { config: AgentConfig; help: boolean; version: boolean } {
  const { raw, help, version } = collect(argv, env);
  const get = (k: Key) => raw.get(k)?.value;
  const check = <T>(k: Key, schema: z.ZodType<T>, fallback: T): T => {
    const entry = raw.get(k);
    if (!entry) return fallback;
    const r = schema.safeParse(entry.value);
    if (!r.success) {
      const issue = r.error.issues[0];
      const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
      throw new ConfigError(
        entry.from,
        `${JSON.stringify(entry.value)}: ${where}${issue?.message}`,
      );
    }
    return r.data;
  };
  const url = z.string().pipe(HttpUrlSchema);
  const seconds = (min: number, max: number) =>
    z.coerce.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`);
  const bool = z
    .enum(["true", "false", "1", "0", "yes", "no"], { message: "must be true or false" })
    .transform((s) => ["true", "1", "yes"].includes(s));

  const listenStr = check(
    "listen",
    z.string().regex(/^[^:\s]+:\d{1,5}$/, "must be host:port"),
    "127.0.0.1:8700",
  );
  const [host, portStr] = listenStr.split(":") as [string, string];
  const port = Number(portStr);
  if (port > 65535)
    throw new ConfigError(raw.get("listen")?.from ?? "--listen", "port must be at most 65535");
  const wildcard = host === "0.0.0.0" || host === "::";
  const publicUrl = check("public-url", url, wildcard ? "" : `http://${host}:${port}`).replace(
    /\/+$/,
    "",
  );
  if (!publicUrl) {
    throw new ConfigError(
      "--public-url",
      `required when --listen binds ${host}: say how others reach this gateway`,
    );
  }
  const capabilities = check(
    "capabilities",
    z
      .string()
      .transform((s, ctx) => {
        try {
          return JSON.parse(s) as unknown;
        } catch {
          ctx.addIssue({ code: "custom", message: "must be a JSON object" });
          return z.NEVER;
        }
      })
      .pipe(z.record(z.string(), z.unknown(), { message: "must be a JSON object" }))
      .pipe(CapabilitiesSchema),
    {},
  );
  const multiaddr = z
    .string()
    .regex(/^\/(ip4|ip6|dns|dns4|dns6)\//, "must be a multiaddr like /ip4/1.2.3.4/tcp/7400");
  const multiaddrs = (k: Key, fallback: string[]) => {
    const values = list(get(k));
    for (const v of values) {
      if (!multiaddr.safeParse(v).success)
        throw new ConfigError(
          raw.get(k)?.from ?? `--${k}`,
          `${JSON.stringify(v)} must be a multiaddr like /ip4/1.2.3.4/tcp/7400`,
        );
    }
    return values.length > 0 ? values : fallback;
  };
  const bootstrap = multiaddrs("bootstrap", []);
  for (const b of bootstrap) {
    if (!b.includes("/p2p/"))
      throw new ConfigError(
        raw.get("bootstrap")?.from ?? "--bootstrap",
        `${JSON.stringify(b)} must end with /p2p/<peer id>`,
      );
  }
  let psk = get("psk");
  if (psk !== undefined && !psk.includes("/key/swarm/psk/")) {
    try {
      psk = readFileSync(psk, "utf8");
    } catch (err) {
      throw new ConfigError(
        raw.get("psk")?.from ?? "--psk",
        `not a swarm.key text and not a readable file (${(err as Error).message})`,
      );
    }
    if (!psk.includes("/key/swarm/psk/"))
      throw new ConfigError(
        raw.get("psk")?.from ?? "--psk",
        "file is not in the swarm.key format (/key/swarm/psk/1.0.0/)",
      );
  }
  const insecureOpenMesh = check("insecure-open-mesh", bool, false);
  // Without a pre-shared key the mesh stays on loopback unless told otherwise: anyone who
  // reaches its port could join, advertise services and claim leadership.
  const meshListen = multiaddrs(
    "mesh-listen",
    psk !== undefined || insecureOpenMesh ? ["/ip4/0.0.0.0/tcp/7400"] : ["/ip4/127.0.0.1/tcp/7400"],
  );
  const mode = check(
    "mode",
    z.enum(["mesh", "direct"], { message: "must be mesh or direct" }),
    "mesh",
  );
  const mdns = check("mdns", bool, false);
  if (mode === "mesh") {
    try {
      checkExposure({ listen: meshListen, psk, insecureOpenMesh, mdns });
    } catch (err) {
      if (!(err instanceof OpenMeshError)) throw err;
      if (mdns && psk === undefined && !insecureOpenMesh) {
        throw new ConfigError(
          raw.get("mdns")?.from ?? "--mdns",
          "finds peers on the LAN without a pre-shared key, so any machine there could answer " +
            "and join: set --psk (ROLLCALL_PSK), leave mDNS off, or pass --insecure-open-mesh " +
            "(ROLLCALL_INSECURE_OPEN_MESH=true) to let anyone who answers join",
        );
      }
      const open = meshListen.find((a) => !loopbackOnly(a));
      throw new ConfigError(
        raw.get("mesh-listen")?.from ?? "--mesh-listen",
        `${JSON.stringify(open)} listens beyond loopback without a pre-shared key: set --psk ` +
          "(ROLLCALL_PSK), listen on 127.0.0.1 only, or pass --insecure-open-mesh " +
          "(ROLLCALL_INSECURE_OPEN_MESH=true) to let anyone who reaches it join",
      );
    }
  }
  const allowPeers = raw.has("allow-peers") ? list(get("allow-peers")) : undefined;
  for (const id of allowPeers ?? []) {
    try {
      peerIdFromString(id);
    } catch {
      throw new ConfigError(
        raw.get("allow-peers")?.from ?? "--allow-peers",
        `${JSON.stringify(id)} is not a PeerId (the agent prints its own at start: "Joined cluster ... as 12D3KooW...")`,
      );
    }
  }
  const config: AgentConfig = {
    name: check("name", WorkerNameSchema, defaultName()),
    logFormat: check(
      "log-format",
      z.enum(LOG_FORMATS as [LogFormat, ...LogFormat[]], { message: "must be text or json" }),
      "text",
    ),
    coordinator: raw.has("coordinator")
      ? check("coordinator", url, "").replace(/\/+$/, "")
      : undefined,
    token: get("token"),
    agentToken: get("agent-token"),
    cluster: check("cluster", ClusterNameSchema, "default"),
    dataDir: get("data-dir") ?? ".data/agent",
    listen: { host, port },
    publicUrl,
    meshListen,
    bootstrap,
    mdns,
    psk,
    insecureOpenMesh,
    allowPeers,
    gatewayPerClient: check(
      "gateway-per-client",
      z.coerce.number().int().min(0).max(1_000_000),
      256,
    ),
    meshWatchers: raw.has("mesh-watchers")
      ? check(
          "mesh-watchers",
          z.union([
            z.literal("all").transform(() => Number.POSITIVE_INFINITY),
            z.coerce.number().int().min(1).max(16),
          ]),
          3,
        )
      : undefined,
    services: get("services"),
    mode,
    probeIntervalMs: check("probe-interval", seconds(0.1, 3600), 10) * 1000,
    probeTimeoutMs: check("probe-timeout", seconds(0.05, 60), 2) * 1000,
    debounceMs: check("debounce", seconds(0, 600), 2) * 1000,
    tier: check(
      "tier",
      z.coerce
        .number()
        .int()
        .min(1, "must be 1, 2 or 3")
        .max(3, "must be 1, 2 or 3")
        .transform((n) => n as 1 | 2 | 3),
      tierOf(capabilities),
    ),
    capabilities,
  };
  if (config.agentToken !== undefined && config.agentToken === config.token) {
    // The live view travels over plain http: its credential must not be able to write.
    throw new ConfigError(
      raw.get("agent-token")?.from ?? "--agent-token",
      "must differ from the cluster token (it only reads the live view)",
    );
  }
  if (config.mode === "direct" && !config.coordinator) {
    throw new ConfigError("--coordinator", "direct mode needs a coordinator URL");
  }
  return { config, help, version };
}
