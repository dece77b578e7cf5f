/**
 * A lab of test hosts in Linux network namespaces (root only): N hosts on one bridge, which
 * lives in a switch namespace of its own, and a coordinator host reachable from every host on
 * the bridge and from this process over a separate point-to-point link. Nothing is connected
 * to the machine's own network: addresses come from 198.18.0.0/15 (RFC 2544, benchmarking),
 * there is no default route, and multicast (mDNS) stays on the bridge.
 *
 * Faults are nftables rules in the hosts' input hooks, so a cut drops packets silently at the
 * receiver, as a real network does (a drop in an output hook would fail the sender's send).
 * Every name carries the creating process's id: a later run removes what a killed run left.
 */
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);
const PREFIX = "rcf";

/** Why namespaces cannot be used here, or null when they can. */
export function labUnavailable(): string | null {
  if (process.getuid?.() !== 0) return "network namespaces need root (CI runs as root)";
  for (const [tool, args] of [
    ["ip", ["-V"]],
    ["nft", ["--version"]],
  ] as const) {
    try {
      execFileSync(tool, args, { stdio: "ignore" });
    } catch {
      return `${tool} is not installed (Debian: ${tool === "ip" ? "iproute2" : "nftables"})`;
    }
  }
  try {
    const probe = `${PREFIX}${process.pid}probe`;
    execFileSync("ip", ["netns", "add", probe], { stdio: "ignore" });
    execFileSync("ip", ["netns", "del", probe], { stdio: "ignore" });
  } catch {
    return "this kernel or sandbox does not allow new network namespaces";
  }
  return null;
}

/** Whether `tc qdisc ... netem` (delay, loss) exists in this kernel. */
export async function netemAvailable(lab: Lab): Promise<boolean> {
  try {
    await lab.netem(["delay", "1ms"]);
    await lab.netem(null);
    return true;
  } catch {
    return false;
  }
}

/** A built lab. Host i (0-based) is `hosts[i]` at `ip(i)`. */
export interface Lab {
  /** Namespace names of the hosts. */
  hosts: string[];
  /** Namespace of the coordinator host. */
  coordinator: string;
  /** The host's address on the bridge. */
  ip(host: number): string;
  /** The coordinator's address on the bridge (what the hosts use). */
  coordinatorIp: string;
  /** The coordinator's address on its link to this process (what the test uses). */
  coordinatorIpFromTest: string;
  /** Runs a command inside a namespace. */
  exec(ns: string, command: string, args: string[]): Promise<string>;
  /** Drops every packet between the two groups of hosts, both ways. */
  split(a: number[], b: number[]): Promise<void>;
  /** Drops every packet `from` sends to `to` (at `to`): `from` still hears `to`. */
  cutOneWay(from: number, to: number): Promise<void>;
  /** Every host drops `percent` % of the packets it receives (from hosts and coordinator). */
  loss(percent: number): Promise<void>;
  /** Puts `tc netem <args>` on every host's link (null: takes it off). */
  netem(args: string[] | null): Promise<void>;
  /** Removes every fault rule. */
  heal(): Promise<void>;
  /** Removes every namespace and link of the lab. */
  destroy(): Promise<void>;
}

/** Removes namespaces that earlier runs (their processes gone) left behind. */
export async function removeStaleLabs(): Promise<void> {
  const { stdout } = await run("ip", ["netns", "list"]);
  for (const line of stdout.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (!m || alive(Number(m[1]))) continue;
    await run("ip", ["netns", "del", name]).catch(() => {});
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Builds a lab of `n` hosts (at most 99). */
export async function createLab(n: number): Promise<Lab> {
  await removeStaleLabs();
  const tag = `${PREFIX}${process.pid}-${Math.floor(Math.random() * 1e6)}`;
  const subnet = 1 + Math.floor(Math.random() * 250);
  const ns = (s: string) => `${tag}-${s}`;
  const sw = ns("sw");
  const hosts = Array.from({ length: n }, (_, i) => ns(`h${i + 1}`));
  const coordinator = ns("co");
  const ip = (i: number) => `198.18.${subnet}.${i + 1}`;
  const coordinatorIp = `198.18.${subnet}.100`;
  const testIp = `198.19.${subnet}.1`;
  const coordinatorIpFromTest = `198.19.${subnet}.2`;
  // The root end's name must be unique in the root namespace (15 characters at most).
  const rootLink = `rcf${process.pid % 100000}${subnet}`.slice(0, 15);
  const made: string[] = [];
  const sh = async (args: string[]) => void (await run("ip", args));
  const inNs = async (name: string, args: string[]) => sh(["-n", name, ...args]);
  const lab: Lab = {
    hosts,
    coordinator,
    ip,
    coordinatorIp,
    coordinatorIpFromTest,
    exec: async (name, command, args) =>
      (await run("ip", ["netns", "exec", name, command, ...args])).stdout,
    async split(a, b) {
      for (const [mine, theirs] of [
        [a, b],
        [b, a],
      ] as const) {
        for (const h of mine) await dropFrom(h, theirs.map(ip));
      }
    },
    cutOneWay: (from, to) => dropFrom(to, [ip(from)]),
    async loss(percent) {
      for (let h = 0; h < n; h++) {
        await nft(h, `add rule inet rcfault input numgen random mod 100 < ${percent} drop`);
      }
    },
    async netem(args) {
      for (const host of hosts) {
        const qdisc = ["qdisc", args ? "add" : "del", "dev", "eth0", "root"];
        await run("ip", [
          "netns",
          "exec",
          host,
          "tc",
          ...qdisc,
          ...(args ? ["netem", ...args] : []),
        ]);
      }
    },
    async heal() {
      for (let h = 0; h < n; h++) {
        await run("ip", [
          "netns",
          "exec",
          hosts[h] as string,
          "nft",
          "delete",
          "table",
          "inet",
          "rcfault",
        ]).catch(() => {});
      }
    },
    async destroy() {
      await run("ip", ["link", "del", rootLink]).catch(() => {});
      for (const name of made.reverse()) await run("ip", ["netns", "del", name]).catch(() => {});
    },
  };
  /** Adds one rule to host h's fault table, creating the table first. */
  async function nft(h: number, rule: string) {
    const host = hosts[h] as string;
    await run("ip", [
      "netns",
      "exec",
      host,
      "nft",
      "add table inet rcfault; add chain inet rcfault input { type filter hook input priority 0; policy accept; }",
    ]);
    await run("ip", ["netns", "exec", host, "nft", rule]);
  }
  async function dropFrom(h: number, sources: string[]) {
    for (const s of sources) await nft(h, `add rule inet rcfault input ip saddr ${s} drop`);
  }
  try {
    for (const name of [sw, ...hosts, coordinator]) {
      await sh(["netns", "add", name]);
      made.push(name);
      await inNs(name, ["link", "set", "lo", "up"]);
    }
    await inNs(sw, ["link", "add", "br0", "type", "bridge"]);
    await inNs(sw, ["link", "set", "br0", "up"]);
    const attach = async (host: string, port: string, addr: string) => {
      await inNs(sw, ["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host]);
      await inNs(sw, ["link", "set", port, "master", "br0"]);
      await inNs(sw, ["link", "set", port, "up"]);
      await inNs(host, ["addr", "add", `${addr}/24`, "dev", "eth0"]);
      await inNs(host, ["link", "set", "eth0", "up"]);
      // mDNS: multicast leaves through the bridge (there is no default route).
      await inNs(host, ["route", "add", "224.0.0.0/4", "dev", "eth0"]);
    };
    for (let i = 0; i < n; i++) await attach(hosts[i] as string, `p${i + 1}`, ip(i));
    await attach(coordinator, "pco", coordinatorIp);
    await sh([
      "link",
      "add",
      rootLink,
      "type",
      "veth",
      "peer",
      "name",
      "up0",
      "netns",
      coordinator,
    ]);
    await sh(["addr", "add", `${testIp}/30`, "dev", rootLink]);
    await sh(["link", "set", rootLink, "up"]);
    await inNs(coordinator, ["addr", "add", `${coordinatorIpFromTest}/30`, "dev", "up0"]);
    await inNs(coordinator, ["link", "set", "up0", "up"]);
  } catch (err) {
    await lab.destroy();
    throw err;
  }
  return lab;
}
