/**
 * The coordinator's Worker bundle in workerd (Miniflare, a persisted local KV namespace) as a
 * process of its own, so a test can SIGKILL it (its process group takes workerd along) and
 * start it again on the same KV directory. Args: <bundle.js> <kv dir>; env: the bindings.
 * Prints "listening on <url>".
 */
import { startWorkerd } from "./coord-runtimes.ts";

const [scriptPath, kvPersist] = process.argv.slice(2) as [string, string];
const bindings = Object.fromEntries(
  Object.entries(process.env).filter(
    (e): e is [string, string] => e[0].startsWith("ROLLCALL_") && e[1] !== undefined,
  ),
);
const w = await startWorkerd({ scriptPath, kvBinding: "ROLLCALL_KV", kvPersist, bindings });
console.log(`workerd listening on ${w.url}`);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void w.stop().finally(() => process.exit(0)));
}
