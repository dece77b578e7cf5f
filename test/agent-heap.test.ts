/**
 * agent/heap.ts: the agent keeps V8's young generation at its starting size, from inside the
 * process, unless Node was started with its own semi-space flags. Run in child processes (the
 * flag is process-wide): a burst of surviving young objects grows the new space without it.
 */
import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { keepYoungGenerationSmall } from "../agent/heap.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** MB of new space before and after a burst of objects that survive a few scavenges each. */
function newSpaceBurst(setFlag: boolean): { before: number; after: number } {
  const script = `
    import { getHeapSpaceStatistics } from "node:v8";
    import { keepYoungGenerationSmall } from "./agent/heap.ts";
    const size = () =>
      getHeapSpaceStatistics().find((x) => x.space_name === "new_space").space_size / 2 ** 20;
    if (${setFlag} && !keepYoungGenerationSmall({}, [])) throw new Error("flag not set");
    const before = size();
    const keep = [];
    for (let r = 0; r < 200; r++) {
      for (let i = 0; i < 20000; i++) keep.push({ a: i, b: [i] });
      if (keep.length > 200000) keep.splice(0, 100000);
    }
    console.log(JSON.stringify({ before, after: size() }));
  `;
  const out = execFileSync(
    process.execPath,
    ["--import", "tsx", "--input-type=module", "-e", script],
    { cwd: ROOT, env: { ...process.env, NODE_OPTIONS: "" } },
  );
  return JSON.parse(out.toString());
}

describe("the agent's young generation", () => {
  it("stays at its size through a burst that grows it on V8's defaults", () => {
    // Under tsx the loader has grown it a little before the flag is set: the size it has then holds.
    const stock = newSpaceBurst(false);
    expect(stock.after).toBeGreaterThan(stock.before);
    const kept = newSpaceBurst(true);
    expect(kept.after).toBeLessThanOrEqual(kept.before);
  });

  it("leaves a process started with semi-space flags alone", () => {
    expect(keepYoungGenerationSmall({ NODE_OPTIONS: "--max-semi-space-size=8" }, [])).toBe(false);
    expect(keepYoungGenerationSmall({}, ["--max-semi-space-size=64"])).toBe(false);
  });
});
