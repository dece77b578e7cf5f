/**
 * A tiny HTTP service for the local cluster and tests: answers /health and
 * echoes every other request as JSON, naming itself, so a routed call shows
 * which worker's service it reached.
 *
 *   npx tsx scripts/sample-service.ts --name upload --port 9102 [--worker w1]
 */
import http from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    name: { type: "string" },
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    worker: { type: "string", default: "" },
  },
});

if (!values.name || !values.port || !/^\d+$/.test(values.port)) {
  console.error("Usage: sample-service --name NAME --port PORT [--host 127.0.0.1] [--worker ID]");
  process.exit(2);
}

const name = values.name;
const server = http.createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const body =
      req.url === "/health"
        ? { status: "healthy", service: name, worker: values.worker }
        : {
            service: name,
            worker: values.worker,
            method: req.method,
            path: req.url,
            body: Buffer.concat(chunks).toString("utf8"),
          };
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  });
});

server.listen(Number(values.port), values.host, () => {
  console.log(`sample service ${name} listening on http://${values.host}:${values.port}`);
});

const stop = () => server.close(() => process.exit(0));
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
