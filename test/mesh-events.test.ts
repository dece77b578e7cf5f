/**
 * The mesh's and the service detector's events are typed by main-event's TypedEventEmitter
 * (no hand-written listener overloads, no casts): a listener's `detail` has its event's type,
 * and a misspelt event name does not compile (`npm run typecheck` checks the lines marked
 * @ts-expect-error below).
 */
import { describe, expect, it } from "vitest";
import { ServiceDetector } from "../agent/detect.ts";
import { createMesh, type Leader } from "../mesh/index.ts";

describe("typed events", () => {
  it("hands a mesh listener its event's detail, and counts listeners per event", () => {
    const mesh = createMesh({
      dataDir: "/nonexistent/never-started",
      local: { url: "", status: "online", services: [] },
    });
    const seen: (Leader | null)[] = [];
    mesh.addEventListener("leader", (e) => seen.push(e.detail));
    // @ts-expect-error: the mesh has no "leaders" event
    mesh.addEventListener("leaders", () => {});
    const leader = { id: "12D3KooWexample", term: 3 } as unknown as Leader;
    mesh.dispatchEvent(new CustomEvent("leader", { detail: leader }));
    expect(seen).toEqual([leader]);
    expect(mesh.listenerCount("leader")).toBe(1);
  });

  it("types the service detector's one event", () => {
    const detector = new ServiceDetector({ candidates: [] });
    let changes = 0;
    detector.addEventListener("change", () => changes++);
    // @ts-expect-error: the detector has no "changed" event
    detector.addEventListener("changed", () => {});
    detector.dispatchEvent(new Event("change"));
    expect(changes).toBe(1);
    expect(detector.listenerCount("change")).toBe(1);
  });
});
