/**
 * The 24-hour simulation: writes/day at the coordinator for N = 1 ... 1000 workers, run on a
 * virtual clock with the real membership, election, aggregate, reporters and coordinator.
 *
 *   npx tsx scripts/simulate.ts                  # the full table (a few minutes)
 *   npx tsx scripts/simulate.ts --n 1,3,10 --hours 24
 *
 * Columns: naive (every heartbeat written, every 30 s per worker), direct mode (each worker
 * registers and heartbeats; the coordinator writes on change or every 5 min; shown uncapped
 * to show the demand, and with the default 1,000/day cap), and mesh mode (only the leader
 * reports) for three days: steady; churn (every 30 min a member leaves or crashes and returns
 * 10 min later, and the leader crashes once); one member flapping every 5 s all day, either
 * frozen (like SIGSTOP) or cut off from the network while it runs on.
 */
import { parseArgs } from "node:util";
import { naiveWrites, type SimResult, simulateDirect, simulateMesh } from "./sim-cluster.ts";

const { values } = parseArgs({
  options: {
    n: { type: "string", default: "1,3,10,30,100,1000" },
    hours: { type: "string", default: "24" },
    // Direct mode costs 2,880 requests per worker per day; workers do not interact, so above
    // this N the per-worker rate measured at smaller N is extrapolated (and marked so).
    "direct-max": { type: "string", default: "100" },
  },
});
const sizes = values.n.split(",").map(Number);
const hours = Number(values.hours);
const directMax = Number(values["direct-max"]);
const CAP = 1000;

const fmt = (n: number) => n.toLocaleString("en-US");
const rows: string[][] = [];
const started = performance.now();

for (const n of sizes) {
  const t0 = performance.now();
  const direct =
    n <= directMax
      ? await simulateDirect({ n, hours, writeCap: Number.MAX_SAFE_INTEGER })
      : undefined;
  const capped = n <= directMax ? await simulateDirect({ n, hours, writeCap: CAP }) : undefined;
  const steady = await simulateMesh({ n, scenario: "steady", hours });
  const churn = await simulateMesh({ n, scenario: "churn", hours });
  const flapping = await simulateMesh({ n, scenario: "flapping", hours });
  const netflap = await simulateMesh({ n, scenario: "netflap", hours });
  const mesh = (r: SimResult) => `${fmt(r.writes)}${r.deferred ? ` (${r.deferred} deferred)` : ""}`;
  rows.push([
    fmt(n),
    fmt(naiveWrites(n, hours)),
    direct
      ? `${fmt(direct.writes)} (${(direct.writes / n).toFixed(0)}/worker)`
      : `~${fmt(288 * n)} (extrapolated)`,
    capped ? fmt(capped.writes) : `${fmt(CAP)} (extrapolated)`,
    mesh(steady),
    `${mesh(churn)} for ${churn.realChanges} changes (${churn.writes >= steady.writes ? "+" : ""}${churn.writes - steady.writes})`,
    `${mesh(flapping)} / ${mesh(netflap)} (leaders ${flapping.leaders} / ${netflap.leaders})`,
  ]);
  console.error(`N=${n} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

const header = [
  "N",
  "naive",
  "direct (uncapped)",
  `direct (cap ${CAP})`,
  "mesh steady",
  "mesh churn",
  "mesh flapping (frozen / cut off; leaders that day)",
];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
const line = (cells: string[]) =>
  `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
console.log(`Writes per ${hours} h at the coordinator (virtual clock, real code):\n`);
console.log(line(header));
console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
for (const r of rows) console.log(line(r));
console.log(`\n(${((performance.now() - started) / 1000).toFixed(0)} s)`);
