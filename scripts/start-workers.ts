/**
 * The Cloudflare Workers entry (wrangler.toml `main`): only the default export of
 * coordinator.ts, because workerd treats every named export of the main module as an
 * entrypoint and refuses the exported schemas and constants.
 */
export { default } from "../coordinator.ts";
