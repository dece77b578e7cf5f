/**
 * The soak's memory probe, loaded into the coordinator it starts (`--expose-gc --import`), never
 * into a deployed one. Once a second it runs a full GC and writes one JSON object to the file in
 * ROLLCALL_SOAK_PROBE: the RSS, the live heap, and the young generation's reserved size (kB).
 *
 * Why: a leak is memory that a full GC does not give back. RSS alone also counts V8's young
 * generation, which grows under the proxy's allocation rate up to its configured size in the
 * first minutes (1 -> 32 MB a semi-space in a 60 s soak, the old generation flat): growth that is
 * sizing, not a leak. The soak checks the live heap and the RSS without the young generation.
 */
import { writeFileSync } from "node:fs";
import { getHeapSpaceStatistics } from "node:v8";

const out = process.env.ROLLCALL_SOAK_PROBE;
const gc = (globalThis as { gc?: () => void }).gc;
if (out && gc) {
  setInterval(() => {
    gc();
    const young = getHeapSpaceStatistics()
      .filter((s) => s.space_name.startsWith("new_"))
      .reduce((sum, s) => sum + s.space_size, 0);
    const m = process.memoryUsage();
    const kb = (n: number) => Math.round(n / 1024);
    writeFileSync(
      out,
      JSON.stringify({ rss_kb: kb(m.rss), heap_kb: kb(m.heapUsed), young_kb: kb(young) }),
    );
  }, 1000).unref();
}
