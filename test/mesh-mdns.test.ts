/**
 * mDNS discovery: two mesh agents with no bootstrap list find each other. Multicast must never
 * leave a private network namespace, so both agents run in ONE child process inside
 * `unshare -n` (with only `lo`, brought up). Where the namespace cannot be made, the test says
 * so and skips.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { NodeProcess, tempDir } from "./helpers/mesh-cluster.ts";

const probe = spawnSync("unshare", ["-n", "sh", "-c", "ip link set lo up"], { encoding: "utf8" });
const canUnshare = probe.status === 0;
if (!canUnshare) {
  console.warn(
    `mesh-mdns: skipped, a private network namespace cannot be made here (unshare -n: ${(probe.stderr || probe.error?.message || "").trim()})`,
  );
}

const tmp = tempDir("rollcall-mdns-");
let proc: NodeProcess | undefined;
afterAll(async () => {
  await proc?.kill("SIGKILL");
  tmp.cleanup();
});

describe("mesh mDNS", () => {
  it.skipIf(!canUnshare)(
    "two agents find each other by mDNS alone, inside a private namespace",
    async () => {
      // mDNS needs a pre-shared key (or --insecure-open-mesh): strangers on a LAN answer it too.
      const keyFile = join(tmp.path, "swarm.key");
      writeFileSync(
        keyFile,
        `/key/swarm/psk/1.0.0/\n/base16/\n${randomBytes(32).toString("hex")}\n`,
      );
      proc = new NodeProcess(
        [
          ...["--data-dir", tmp.path, "--nodes", "2", "--mdns", "--cluster", "mdns-test"],
          ...["--psk-file", keyFile],
        ],
        {
          command: [
            "unshare",
            "-n",
            "sh",
            "-c",
            `ip link set lo up && exec "${process.execPath}" --import tsx scripts/mesh-node.ts "$@"`,
            "sh",
          ],
        },
      );
      const started = await Promise.all(
        [0, 1].map((n) =>
          proc?.line(`agent ${n} to start`, (l) => l.event === "started" && l.node === n),
        ),
      );
      const ids = started.map((l) => l?.id as string);
      // The agents run in another network namespace than this test (so multicast stays there).
      const pid = proc.child.pid as number;
      expect(readlinkSync(`/proc/${pid}/ns/net`)).not.toBe(readlinkSync("/proc/self/ns/net"));
      // No bootstrap list: each learns of the other only through mDNS.
      await proc.line(
        "agent 0 to see agent 1",
        (l) => l.node === 0 && l.event === "member-up" && l.id === ids[1],
      );
      await proc.line(
        "agent 1 to see agent 0",
        (l) => l.node === 1 && l.event === "member-up" && l.id === ids[0],
      );
      const lowest = [...ids].sort()[0];
      for (const n of [0, 1]) {
        await proc.line(`agent ${n} to name the lowest ID leader`, (l) => {
          const leader = l.leader as { id: string } | null | undefined;
          return l.node === n && l.event === "leader" && leader?.id === lowest;
        });
      }
      await proc.kill("SIGTERM");
      expect(proc.lines.filter((l) => l.event === "stopped")).toHaveLength(2);
    },
  );
});
