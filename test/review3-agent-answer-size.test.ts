/**
 * Review: the agent reads the coordinator's answers whole before it parses them (agent/client.ts).
 * Every answer of the contract is a few KiB at most; a hostile or broken coordinator (or whoever
 * sits on a plain-http path to it) could stream one for the whole call timeout and make the agent,
 * which also runs the gateway, buffer it all. A real HTTP server answers 2 MiB, with and
 * without a Content-Length: a clear retryable error, nothing taken.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CoordinatorClient } from "../agent/client.ts";

const PAD = "x".repeat(2 * 1024 * 1024);
const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    const body = JSON.stringify({ status: "ok", pad: PAD });
    if (req.url?.includes("heartbeat")) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(body);
      return;
    }
    // Chunked: no Content-Length to refuse it by.
    res.writeHead(200, { "content-type": "application/json" });
    for (let i = 0; i < body.length; i += 64 * 1024) res.write(body.slice(i, i + 64 * 1024));
    res.end();
  });
});
let client: CoordinatorClient;

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  client = new CoordinatorClient({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 5000 });
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

describe("review3: the agent bounds what it reads of an answer", () => {
  it("refuses a 2 MiB answer with a Content-Length", async () => {
    const r = await client.heartbeat({ worker_id: "w1" });
    expect(r).toMatchObject({ ok: false, retryable: true });
    expect(r.ok ? "" : r.error).toMatch(/larger than/);
  });

  it("refuses a 2 MiB chunked answer", async () => {
    const r = await client.checkToken();
    expect(r).toMatchObject({ ok: false, retryable: true });
    expect(r.ok ? "" : r.error).toMatch(/larger than/);
  });
});
