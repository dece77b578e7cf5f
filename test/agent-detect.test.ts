import { afterEach, describe, expect, it } from "vitest";
import { ConfigError } from "../agent/config.ts";
import { parseManifest, ServiceDetector } from "../agent/detect.ts";
import { freePort } from "../support/processes.ts";
import { startUpstream, type Upstream } from "./helpers/upstream.ts";

const open: Upstream[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((u) => u.close()));
});

async function upstream(name: string) {
  const u = await startUpstream(name);
  open.push(u);
  return u;
}

describe("parseManifest", () => {
  it("accepts ports and URLs and fills the health path", () => {
    const c = parseManifest(
      {
        services: [
          { name: "upload", port: 8103 },
          { name: "rag", url: "http://10.0.0.2:9000/" },
        ],
      },
      "m.json",
    );
    expect(c).toEqual([
      { name: "upload", url: "http://127.0.0.1:8103", health: "/health" },
      { name: "rag", url: "http://10.0.0.2:9000", health: "/health" },
    ]);
  });

  it.each([
    [{ services: [{ name: "Bad Name", port: 1 }] }, "m.json: services.0.name"],
    [{ services: [{ name: "a" }] }, "m.json: services.0"],
    [{ services: [{ name: "a", port: 1, url: "http://x" }] }, "m.json: services.0"],
    [{ services: [{ name: "a", port: 70000 }] }, "m.json: services.0.port"],
    [{ services: [{ name: "a", port: 1, extra: true }] }, "m.json: services.0"],
    [
      {
        services: [
          { name: "a", port: 1 },
          { name: "a", port: 2 },
        ],
      },
      "m.json: a",
    ],
    [[], "m.json: services"],
  ])("rejects %j naming the entry", (doc, setting) => {
    try {
      parseManifest(doc, "m.json");
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).setting).toBe(setting);
    }
  });
});

describe("ServiceDetector with real HTTP services", () => {
  it("finds running services, ignores absent ones, and reports latency", async () => {
    const a = await upstream("upload");
    await a.setMode("slow"); // answers each probe after a.slowMs
    const gone = await freePort();
    const d = new ServiceDetector({
      candidates: [
        { name: "upload", url: a.url, health: "/health" },
        { name: "rag", url: `http://127.0.0.1:${gone}`, health: "/health" },
      ],
      timeoutMs: 1000,
    });
    await d.probeOnce();
    expect(d.services().map((s) => [s.name, s.status, s.port])).toEqual([
      ["upload", "healthy", a.port],
    ]);
    // At least the upstream's delay: 1 ms less at most, as a Node timer starts on the loop's
    // clock, which is whole milliseconds and taken before the request arrived.
    expect(d.services()[0]?.latency_ms).toBeGreaterThanOrEqual(a.slowMs - 1);
    d.stop();
  });

  it("drops a stopped service after two failed probes and finds it again when it returns", async () => {
    const a = await upstream("notes");
    const d = new ServiceDetector({
      candidates: [{ name: "notes", url: a.url, health: "/health" }],
    });
    let changes = 0;
    d.addEventListener("change", () => changes++);
    expect(await d.probeOnce()).toBe(true);
    await a.setMode("refuse");
    expect(await d.probeOnce()).toBe(false); // one blip is damped
    expect(d.get("notes")).toBeDefined();
    expect(await d.probeOnce()).toBe(true);
    expect(d.get("notes")).toBeUndefined();
    await a.setMode("ok");
    expect(await d.probeOnce()).toBe(true);
    expect(d.get("notes")?.status).toBe("healthy");
    expect(changes).toBe(3);
  });

  it("marks a service that answers 5xx or hangs as unhealthy, not gone", async () => {
    const a = await upstream("ocr");
    await a.setMode("error500");
    const d = new ServiceDetector({
      candidates: [{ name: "ocr", url: a.url, health: "/health" }],
      timeoutMs: 300,
    });
    await d.probeOnce();
    expect(d.get("ocr")?.status).toBe("unhealthy");
    await a.setMode("ok");
    await d.probeOnce();
    expect(d.get("ocr")?.status).toBe("healthy");
    await a.setMode("hang");
    await d.probeOnce();
    await d.probeOnce();
    expect(d.get("ocr")?.status).toBe("unhealthy");
  });
});
