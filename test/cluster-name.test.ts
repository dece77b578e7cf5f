/**
 * One rule for cluster names: a name the agent accepts is one the coordinator accepts in a
 * report, and the mesh (which keeps its own copy of the rule) agrees with both. A user started
 * an agent with `--cluster _lab`: it gossiped fine, and every report it sent got 400.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../agent/config.ts";
import { ClusterNameSchema, ClusterReportSchema } from "../coordinator.ts";
import { createMesh } from "../mesh/index.ts";
import { fuzzRuns } from "./helpers/fuzz.ts";

const agentAccepts = (name: string) => {
  try {
    return loadConfig([`--cluster=${name}`], {}).config.cluster === name;
  } catch (err) {
    if (err instanceof ConfigError) return false;
    throw err;
  }
};
const meshAccepts = (name: string) => {
  try {
    createMesh({
      cluster: name,
      dataDir: "/nonexistent",
      local: { url: "", status: "online", services: [] },
    });
    return true;
  } catch {
    return false;
  }
};
const coordinatorAccepts = (name: string) =>
  ClusterReportSchema.safeParse({
    cluster: name,
    leader_id: "a",
    term: 1,
    sequence: 1,
    members: [],
  }).success;

/** Names near the rule's edges, then arbitrary strings from its alphabet and beyond. */
const names = fc.oneof(
  fc.constantFrom(
    "_lab",
    "lab",
    ".lab",
    "-lab",
    "l",
    "",
    "a".repeat(64),
    "a".repeat(65),
    "Ω",
    "a b",
  ),
  fc.stringMatching(/^[A-Za-z0-9._-]{0,70}$/),
  fc.string({ unit: "grapheme", maxLength: 70 }),
);

describe("cluster names", () => {
  it("an agent started with --cluster _lab is stopped at once, naming the setting", () => {
    expect(() => loadConfig(["--cluster", "_lab"], {})).toThrow(ConfigError);
    expect(() => loadConfig(["--cluster", "_lab"], {})).toThrow(/--cluster/);
    expect(coordinatorAccepts("_lab")).toBe(false);
  });

  it("the agent, the mesh and the coordinator accept exactly the same names", () => {
    fc.assert(
      fc.property(names, (name) => {
        const expected = ClusterNameSchema.safeParse(name).success;
        expect(coordinatorAccepts(name)).toBe(expected);
        expect(agentAccepts(name)).toBe(expected);
        expect(meshAccepts(name)).toBe(expected);
      }),
      { numRuns: fuzzRuns(500) },
    );
  });
});
