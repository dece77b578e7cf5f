/** The services manifest accepts only what the gateway can reach; the detector parses each URL once. */
import { describe, expect, it } from "vitest";
import { ConfigError } from "../agent/config.ts";
import { parseManifest, ServiceDetector } from "../agent/detect.ts";

describe("parseManifest", () => {
  it("refuses an https service URL, naming the service", () => {
    const doc = { services: [{ name: "rag", url: "https://10.0.0.2:9443" }] };
    let error: unknown;
    try {
      parseManifest(doc, "m.json");
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).setting).toBe("m.json: rag");
    expect((error as ConfigError).message).toMatch(
      /^Invalid m\.json: rag: url "https:\/\/10\.0\.0\.2:9443" must be an http:\/\/ URL/,
    );
  });

  it("accepts the coordinator's service names", () => {
    const doc = { services: [{ name: "OCR.v2", port: 9000 }] };
    expect(parseManifest(doc, "m.json")).toEqual([
      { name: "OCR.v2", url: "http://127.0.0.1:9000", health: "/health" },
    ]);
  });
});

describe("ServiceDetector", () => {
  it("gives each service the host, port and base path the gateway connects to", async () => {
    const fetcher = (async () => new Response("ok")) as unknown as typeof fetch;
    const d = new ServiceDetector(
      {
        candidates: [
          { name: "a", url: "http://10.0.0.2/api/v2", health: "/health" },
          { name: "b", url: "http://[::1]:8103", health: "/health" },
        ],
      },
      { fetch: fetcher },
    );
    await d.probeOnce();
    expect(d.services().map(({ host, port, basePath }) => ({ host, port, basePath }))).toEqual([
      { host: "10.0.0.2", port: 80, basePath: "/api/v2" },
      { host: "::1", port: 8103, basePath: "" },
    ]);
  });

  it("refuses a candidate the gateway could not reach", () => {
    expect(
      () =>
        new ServiceDetector({
          candidates: [{ name: "rag", url: "https://127.0.0.1:9443", health: "/health" }],
        }),
    ).toThrow(/^Service rag: url must be an http:\/\/ URL/);
  });
});
