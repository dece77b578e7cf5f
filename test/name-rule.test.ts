/**
 * One name rule for clusters, services and workers: the coordinator's schemas and the mesh's
 * copy of the rule (mesh/ cannot import the coordinator) accept exactly the same names.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ClusterNameSchema, ServiceNameSchema, WorkerNameSchema } from "../coordinator.ts";
import { NAME_PATTERN, validateServices } from "../mesh/schema.ts";
import { fuzzRuns } from "./helpers/fuzz.ts";

const meshServiceAccepts = (name: string) => {
  try {
    validateServices([{ name, status: "healthy" }]);
    return true;
  } catch {
    return false;
  }
};

/** Names around every edge of the rule: first character, length 64/65, each allowed sign. */
const EDGES = [
  "a",
  "A9",
  "0",
  "x".repeat(64),
  "x".repeat(65),
  "_lab",
  ".hidden",
  "-dash",
  "a.b_c-d",
  "a b",
  "a/b",
  "é",
  "",
  "a:b",
  "a@b",
];

const ALPHABET = [..."aZ09._-:@/ é+"];
const names = fc.oneof(
  fc.string({ unit: fc.constantFrom(...ALPHABET), maxLength: 70 }),
  fc.string({ maxLength: 70 }),
);

describe("one name rule for clusters, services and workers", () => {
  it.each(EDGES)("the coordinator and the mesh agree on %j", (name) => {
    const coordinator = ServiceNameSchema.safeParse(name).success;
    expect(ClusterNameSchema.safeParse(name).success).toBe(coordinator);
    expect(WorkerNameSchema.safeParse(name).success).toBe(coordinator);
    expect(NAME_PATTERN.test(name)).toBe(coordinator);
    expect(meshServiceAccepts(name)).toBe(coordinator);
  });

  it("the coordinator and the mesh agree on any name", () => {
    fc.assert(
      fc.property(names, (name) => {
        const coordinator = ServiceNameSchema.safeParse(name).success;
        return NAME_PATTERN.test(name) === coordinator && meshServiceAccepts(name) === coordinator;
      }),
      { numRuns: fuzzRuns(2000) },
    );
  });
});
