/**
 * Builds the artefacts that run without a checkout (`npm run build:agent`, also run by
 * `npm pack`): dist/rollcall.mjs, the `rollcall` command (agent, coordinator, keygen), and
 * dist/agent/rollcall-agent.mjs, the agent alone; each one file with every library inside, for
 * plain Node 20+. `--binary` also builds dist/bin/rollcall, a standalone executable with Bun
 * inside (`bun build --compile`, see docs/BENCHMARKS.md for why Bun and not `deno compile`).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, statSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { build } from "esbuild";

const ROOT = path.resolve(import.meta.dirname, "..");
const { values } = parseArgs({ options: { binary: { type: "boolean" } } });

/** Some libraries (mDNS) are CommonJS and `require` Node's built-ins: give the ESM bundle one. */
const REQUIRE_SHIM =
  'import { createRequire as __rollcallCreateRequire } from "node:module";\n' +
  "const require = __rollcallCreateRequire(import.meta.url);";

const bundles = [
  { entry: "scripts/rollcall.ts", out: "dist/rollcall.mjs", shebang: true },
  { entry: "agent/cli.ts", out: "dist/agent/rollcall-agent.mjs", shebang: false },
];

for (const b of bundles) {
  await build({
    entryPoints: [path.join(ROOT, b.entry)],
    outfile: path.join(ROOT, b.out),
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    minify: true,
    legalComments: "eof",
    logLevel: "warning",
    banner: { js: `${b.shebang ? "#!/usr/bin/env node\n" : ""}${REQUIRE_SHIM}` },
  });
  const size = statSync(path.join(ROOT, b.out)).size;
  console.log(`${b.out}  ${(size / 1024 / 1024).toFixed(2)} MB`);
}

if (values.binary) {
  const out = path.join(ROOT, "dist/bin/rollcall");
  mkdirSync(path.dirname(out), { recursive: true });
  execFileSync(
    path.join(ROOT, "node_modules/.bin/bun"),
    ["build", "--compile", "--minify", path.join(ROOT, "scripts/rollcall.ts"), "--outfile", out],
    { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] },
  );
  console.log(`dist/bin/rollcall  ${(statSync(out).size / 1024 / 1024).toFixed(1)} MB`);
}
