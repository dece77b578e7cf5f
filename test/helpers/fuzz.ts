/**
 * How many generated cases a property test runs: `ROLLCALL_FUZZ_RUNS` when set (`npm run fuzz`
 * sets 10,000), otherwise the test's own short count, so `npm test` stays quick.
 */
export function fuzzRuns(short: number): number {
  const env = Number(process.env.ROLLCALL_FUZZ_RUNS);
  return Number.isInteger(env) && env > 0 ? env : short;
}

/** Whether this is the full fuzz run (`npm run fuzz`). */
export const fullFuzz = Number(process.env.ROLLCALL_FUZZ_RUNS) >= 10_000;
