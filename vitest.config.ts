import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration suites start real processes and libp2p nodes: give them room,
    // and run files in separate processes so one suite's sockets never leak into another.
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // 2 cores in CI: two files at a time keeps timing-sensitive mesh tests honest.
    maxWorkers: 2,
    // Deno in tests reads its packages as `deno task` does (deno.json `imports`, never
    // package.json's devDependencies), so no test run rewrites deno.lock.
    env: { DENO_NO_PACKAGE_JSON: "1" },
    // The default output, then one plain closing line: "N passed, N failed, N skipped".
    reporters: ["default", "./test/helpers/summary-reporter.ts"],
  },
});
