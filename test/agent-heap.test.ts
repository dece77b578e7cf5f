/**
 * agent/heap.ts: the agent sets its V8 memory flags from inside the process, each unless Node was
 * started with its own flags of that kind: the young generation keeps its starting size, and
 * WebAssembly (undici's llhttp, behind fetch) stays in its baseline tier. Run in child processes
 * (the flags are process-wide).
 */
import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { setAgentV8Flags } from "../agent/heap.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Runs `script` (an ES module, in the project root) in a fresh Node under tsx; its JSON output. */
function child<T>(script: string): T {
  const out = execFileSync(
    process.execPath,
    ["--import", "tsx", "--input-type=module", "-e", script],
    { cwd: ROOT, env: { ...process.env, NODE_OPTIONS: "" } },
  );
  return JSON.parse(out.toString());
}

/** MB of new space before and after a burst of objects that survive a few scavenges each. */
function newSpaceBurst(setFlags: boolean): { before: number; after: number } {
  return child(`
    import { getHeapSpaceStatistics } from "node:v8";
    import { setAgentV8Flags } from "./agent/heap.ts";
    const size = () =>
      getHeapSpaceStatistics().find((x) => x.space_name === "new_space").space_size / 2 ** 20;
    if (${setFlags} && !setAgentV8Flags({}, []).includes("--semi-space-growth-factor=1"))
      throw new Error("flag not set");
    const before = size();
    const keep = [];
    for (let r = 0; r < 200; r++) {
      for (let i = 0; i < 20000; i++) keep.push({ a: i, b: [i] });
      if (keep.length > 200000) keep.splice(0, 100000);
    }
    console.log(JSON.stringify({ before, after: size() }));
  `);
}

/**
 * The tier a WebAssembly function is compiled in when V8 is asked to compile it with TurboFan
 * (`--wasm-tier-mask-for-testing`: at once, no background tier-up to wait for).
 */
function wasmTier(setFlags: boolean): { liftoff: boolean; turbofan: boolean } {
  return child(`
    import { setFlagsFromString } from "node:v8";
    import { setAgentV8Flags } from "./agent/heap.ts";
    setFlagsFromString("--allow-natives-syntax");
    setFlagsFromString("--wasm-tier-mask-for-testing=1");
    if (${setFlags} && !setAgentV8Flags({}, []).includes("--liftoff-only"))
      throw new Error("flag not set");
    // (module (func (export "f") (result i32) i32.const 42))
    const bytes = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 127, 3, 2, 1, 0,
      7, 5, 1, 1, 102, 0, 0, 10, 6, 1, 4, 0, 65, 42, 11]);
    const { f } = new WebAssembly.Instance(new WebAssembly.Module(bytes)).exports;
    if (f() !== 42) throw new Error("wrong answer");
    const [liftoff, turbofan] = new Function(
      "f", "return [%IsLiftoffFunction(f), %IsTurboFanFunction(f)];")(f);
    console.log(JSON.stringify({ liftoff, turbofan }));
  `);
}

describe("the agent's V8 flags", () => {
  it("keep the young generation at its size through a burst that grows it on V8's defaults", () => {
    // Under tsx the loader has grown it a little before the flag is set: the size it has then holds.
    const stock = newSpaceBurst(false);
    expect(stock.after).toBeGreaterThan(stock.before);
    const kept = newSpaceBurst(true);
    expect(kept.after).toBeLessThanOrEqual(kept.before);
  });

  it("keep WebAssembly out of TurboFan, whose compile of llhttp malloc'ed 30-44 MB", () => {
    expect(wasmTier(false)).toEqual({ liftoff: false, turbofan: true });
    expect(wasmTier(true)).toEqual({ liftoff: true, turbofan: false });
  });

  it("leave a process started with flags of the same kind alone", () => {
    expect(
      setAgentV8Flags({ NODE_OPTIONS: "--max-semi-space-size=8" }, ["--liftoff-only"]),
    ).toEqual([]);
    expect(setAgentV8Flags({}, ["--max-semi-space-size=64", "--no-wasm-tier-up"])).toEqual([]);
  });
});
