/**
 * The Cloudflare Workers entry (wrangler.toml `main`): the default export of coordinator.ts,
 * plus the access log when the `ROLLCALL_ACCESS_LOG` var is true (off by default on Workers:
 * every line is a log event you may pay for; `ROLLCALL_LOG_FORMAT=json` for Logpush). Only a
 * default export: workerd treats every named export of the main module as an entrypoint and
 * refuses the exported schemas and constants.
 */
import { createLogger, isLogFormat } from "../agent/log.ts";
import coordinator, { coordinatorFromEnv } from "../coordinator.ts";
import { withAccessLog } from "./access-log.ts";

type Handler = (request: Request, env?: unknown, ctx?: unknown) => Response | Promise<Response>;
let logged: Handler | null = null;

export default {
  fetch(request: Request, env?: unknown, ctx?: unknown): Response | Promise<Response> {
    const vars = (env ?? {}) as Record<string, unknown>;
    if (!["1", "true", "yes", "on"].includes(String(vars.ROLLCALL_ACCESS_LOG).toLowerCase())) {
      return coordinator.fetch(request, env, ctx);
    }
    if (logged === null) {
      const format = String(vars.ROLLCALL_LOG_FORMAT ?? "text");
      let aliases: Record<string, string> = {};
      try {
        aliases = coordinatorFromEnv(env).settings.aliases;
      } catch {
        // misconfigured: coordinator.fetch answers 500 saying why
      }
      logged = withAccessLog(
        coordinator.fetch as Handler,
        createLogger({ format: isLogFormat(format) ? format : "text" }),
        aliases,
      );
    }
    return logged(request, env, ctx);
  },
};
