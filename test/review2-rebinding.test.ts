/**
 * Review 2 (attacker's pass over the browser -> dev cluster boundary, issue 9 item 10): the
 * open coordinator (no token: `npm run dev`) answers any Host. A web page whose name is
 * DNS-rebound to 127.0.0.1 is then same-origin with it: "JSON only" and "no CORS" stop
 * nothing, and the page registers workers (routing the dev cluster's traffic where it likes)
 * and reads every admin view.
 */
import { describe, expect, it } from "vitest";
import { testCoordinator } from "./helpers/coord-fixtures.ts";

const REBOUND = "http://rebind.attacker.example:8787";

describe("finding 6: the open coordinator answers a DNS-rebound Host", () => {
  // FINDING review2-6 (medium, dev mode only): with no token configured, nothing checks the
  // Host header. Suggested: while open, answer only loopback hosts (localhost, *.localhost,
  // 127.0.0.0/8, [::1]) or ROLLCALL_ALLOWED_HOSTS, 421/403 otherwise (service routes too).
  it("refuses an agent write whose Host is not a loopback name", async () => {
    const { coordinator, store } = testCoordinator();
    const res = await coordinator.app.request(`${REBOUND}/api/worker/register`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: REBOUND },
      body: JSON.stringify({
        worker_id: "rebound",
        tunnel_url: "http://127.0.0.1:9",
        services: ["upload"],
      }),
    });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(store.writes).toBe(0);
  });

  it("refuses an admin read whose Host is not a loopback name", async () => {
    const { coordinator } = testCoordinator();
    const res = await coordinator.app.request(`${REBOUND}/api/admin/workers`);
    expect(res.status).toBeGreaterThanOrEqual(400);
  });

  it("answers loopback hosts as before", async () => {
    const { coordinator } = testCoordinator();
    const res = await coordinator.app.request("http://127.0.0.1:8787/api/admin/workers");
    expect(res.status).toBe(200);
  });
});
