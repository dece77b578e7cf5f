/**
 * Review 2 (attacker's pass over issue 9 item 5): the agent gateway answers a failed service
 * call with the system error's text, and the coordinator passes that 502 on to the public
 * client: `{"error":"Upstream failed","message":"connect ECONNREFUSED 127.0.0.1:21810"}`
 * (seen through `npm run dev` at /api/service/notes/x with the notes service stopped).
 */
import { describe, expect, it } from "vitest";
import { Gateway } from "../agent/gateway.ts";
import { freePort } from "../support/processes.ts";

describe("finding 7: the gateway's 502 names the local service's address", () => {
  // FINDING review2-7 (low): agent/gateway.ts `#proxy`, `upstream.on("error")` answers
  // `message: err.message`. Suggested: a generic message ("Service could not be reached" /
  // "Service timed out") and the detail to the agent's log under a request id.
  it("answers a refused connection without the service's address or the system error", async () => {
    const port = await freePort();
    const svc = {
      name: "notes",
      url: `http://127.0.0.1:${port}`,
      host: "127.0.0.1",
      port,
      basePath: "",
      status: "healthy" as const,
      latency_ms: 1,
    };
    const gw = new Gateway(
      { host: "127.0.0.1", port: 0 },
      {
        service: (n) => (n === "notes" ? svc : undefined),
        services: () => [svc],
        health: () => ({}),
        clusterView: () => ({}),
      },
    );
    const gport = await gw.start();
    try {
      const res = await fetch(`http://127.0.0.1:${gport}/service/notes/x`);
      expect(res.status).toBe(502);
      const text = await res.text();
      expect(text).not.toContain(String(port));
      expect(text).not.toContain("ECONNREFUSED");
    } finally {
      await gw.stop();
    }
  });
});
