/**
 * Where a process's CPU time went, from a V8 CPU profile (`.cpuprofile`, as `node --cpu-prof` or
 * the inspector's Profiler.stop writes it): self time per function and per origin (a package
 * from node_modules, our own folders, Node's internals, GC, idle). Used by
 * `scripts/bench-agent.ts --cpu-prof`; also runs alone:
 *
 *   npx tsx scripts/cpu-profile.ts <file.cpuprofile>... [--top 25]
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

/** The parts of a V8 CPU profile this reads. */
export interface CpuProfile {
  nodes: Array<{
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    children?: number[];
  }>;
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Where a script URL comes from: a package, one of our folders, Node, or V8's pseudo frames. */
export function originOf(url: string, fn: string): string {
  if (!url) return fn.startsWith("(") ? fn : "(native)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1] as string;
  if (url.startsWith("node:internal/")) return `node:${url.slice(14).split("/")[0]}`;
  if (url.startsWith("node:")) return url;
  const own = /\/(mesh|agent|scripts|support)\/[^/]+$/.exec(url);
  if (own) return `${own[1]}/`;
  if (/coordinator\.(ts|mjs)$/.test(url)) return "coordinator.ts";
  return url.replace(/^.*\//, "");
}

/**
 * Self time (ms) per function and per origin, summed over the profiles given. A native frame
 * (a binding such as a socket write or a signature check) counts for the origin of the nearest
 * JavaScript frame that called it: `(native)` alone says nothing about who asked.
 */
export function summarize(profiles: CpuProfile[]) {
  const byFn = new Map<string, number>();
  const byOrigin = new Map<string, number>();
  let totalMs = 0;
  let wallMs = 0;
  for (const p of profiles) {
    const frames = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
    const parent = new Map<number, number>();
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const caller = (id: number): string => {
      for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
        const f = frames.get(at);
        if (f?.url) return originOf(f.url, f.functionName);
      }
      return "(native)";
    };
    wallMs += (p.endTime - p.startTime) / 1000;
    for (let k = 0; k < p.samples.length; k++) {
      const id = p.samples[k] as number;
      const f = frames.get(id);
      const ms = (p.timeDeltas[k + 1] ?? 0) / 1000;
      if (!f || f.functionName === "(idle)") continue;
      const origin =
        f.url || f.functionName.startsWith("(") ? originOf(f.url, f.functionName) : caller(id);
      const name = `${f.functionName || "(anonymous)"} ${f.url.replace(/^.*\//, "")}:${f.lineNumber + 1}`;
      byFn.set(name, (byFn.get(name) ?? 0) + ms);
      byOrigin.set(origin, (byOrigin.get(origin) ?? 0) + ms);
      totalMs += ms;
    }
  }
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  return { wallMs, busyMs: totalMs, byFn: sorted(byFn), byOrigin: sorted(byOrigin) };
}

/** Markdown tables of the top `top` functions and origins, as % of busy time and ms per s. */
export function report(profiles: CpuProfile[], top = 25): string {
  const s = summarize(profiles);
  const rows = (xs: Array<[string, number]>) =>
    xs
      .slice(0, top)
      .map(
        ([k, ms]) =>
          `| ${k.replaceAll("|", "\\|")} | ${((ms / s.busyMs) * 100).toFixed(1)} | ${((ms / s.wallMs) * 1000).toFixed(2)} |`,
      );
  return [
    `${profiles.length} profile(s), ${(s.wallMs / 1000).toFixed(0)} s of wall time in all, the main thread busy ${((s.busyMs / s.wallMs) * 100).toFixed(2)} % of the time (ms per s: per process)`,
    "",
    "| origin | % of busy | ms per s |",
    "| --- | ---: | ---: |",
    ...rows(s.byOrigin),
    "",
    "| function (self time) | % of busy | ms per s |",
    "| --- | ---: | ---: |",
    ...rows(s.byFn),
  ].join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: "string", default: "25" } },
  });
  const profiles = positionals.map((f) => JSON.parse(readFileSync(f, "utf8")) as CpuProfile);
  console.log(report(profiles, Number(values.top)));
}
