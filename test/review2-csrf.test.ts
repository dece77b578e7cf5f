/**
 * Review 2 (attacker's pass over issue 9 item 10): the dashboard's actions are writes too. In
 * the open dev cluster (no token) any web page may POST `text/plain` to them, a "simple"
 * request the browser sends cross-site without a preflight.
 */
import { describe, expect, it } from "vitest";
import { testCoordinator } from "./helpers/coord-fixtures.ts";

describe("finding 5: admin actions take a cross-site text/plain post in open mode", () => {
  // FINDING review2-5 (low): `mountDashboard`'s `act` (POST /api/admin/breakers/reset and
  // /api/admin/ejections/end) parses any body as JSON whatever its Content-Type, so a page
  // the developer visits can reset breakers and end ejections of the dev cluster.
  for (const path of ["/api/admin/breakers/reset", "/api/admin/ejections/end"]) {
    it(`${path} refuses a text/plain body with 415`, async () => {
      const { coordinator } = testCoordinator();
      const res = await coordinator.app.request(path, {
        method: "POST",
        headers: { "content-type": "text/plain", origin: "http://evil.example" },
        body: JSON.stringify({ service: "upload", worker_id: "A" }),
      });
      expect(res.status).toBe(415);
    });
  }
});
