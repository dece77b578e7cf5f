/**
 * The worker agent: wires detection -> gateway -> mesh (or direct mode) -> reporter.
 * In mesh mode every agent gossips; only the elected leader reports the aggregate, and only an
 * agent whose token the coordinator took offers to lead (agent/eligibility.ts). Every event
 * handler here is guarded: a throw is logged, never fatal to the agent.
 */
import { freemem, loadavg } from "node:os";
import type { z } from "zod";
import { type ClusterMemberReport, type LiveViewSchema, serviceUrl } from "../coordinator.ts";
import { systemClock } from "../mesh/clock.ts";
import {
  createMesh,
  loadIdentity,
  type MemberMeta,
  type MemberView,
  type Mesh,
  type ServiceSummary,
  type ViewSnapshot,
} from "../mesh/index.ts";
import { aggregate, liveMembers, reportBody } from "./aggregate.ts";
import type { AgentClusterView } from "./command-views.ts";
import { authFailureHint, CoordinatorClient } from "./client.ts";
import type { AgentConfig } from "./config.ts";
import { type ServiceCandidate, ServiceDetector } from "./detect.ts";
import { DirectReporter, type Registration } from "./direct.ts";
import { Drain } from "./drain.ts";
import { LeadEligibility } from "./eligibility.ts";
import { Gateway } from "./gateway.ts";
import { createLogger, type Logger, lineLogger } from "./log.ts";
import { LeaderReporter } from "./reporter.ts";
import { loadSigner, signerFromKey } from "./signer.ts";

/** Collaborators of an agent. */
export interface AgentComponents {
  /** Where log lines go; default a logger in the configured format (time, level, message). */
  logger?: Logger;
  /** Bare log messages (no time or level), for tests; ignored when `logger` is given. */
  log?: (line: string) => void;
  fetch?: typeof fetch;
}

/** What an agent with no manifest says (`--services` not given). */
export const NO_MANIFEST =
  "No services manifest (--services): this agent fronts no services. Write one, e.g. " +
  '{"services": [{"name": "upload", "port": 8103, "health": "/health"}]}, and pass ' +
  "--services FILE (see docs/AGENTS.md).";

/** A running worker agent. */
export class Agent {
  readonly #config: AgentConfig;
  readonly #logger: Logger;
  readonly #log: (line: string) => void;
  readonly #detector: ServiceDetector;
  readonly #gateway: Gateway;
  readonly #client: CoordinatorClient | undefined;
  #mesh: Mesh | undefined;
  #reporter: LeaderReporter<ClusterMemberReport> | undefined;
  #eligibility: LeadEligibility | undefined;
  #direct: DirectReporter | undefined;
  #id = "";
  #reportedOnce = false;
  /** Throws caught in the agent's own event handlers (the mesh counts its own). */
  #faults = 0;
  #answered = false;
  #gatewayPort = 0;
  /** Maintenance mode (`rollcall-agent drain`). */
  readonly #drain = new Drain({}, systemClock);
  /** Whether the coordinator took our token (the offer to lead, unless draining). */
  #eligible = false;

  constructor(
    config: AgentConfig,
    candidates: ServiceCandidate[],
    components: AgentComponents = {},
  ) {
    this.#config = config;
    this.#logger =
      components.logger ??
      (components.log
        ? lineLogger(components.log)
        : createLogger({
            format: config.logFormat,
            base: config.logFormat === "json" ? { worker: config.name } : {},
          }));
    this.#log = (line) => this.#logger.info(line);
    this.#detector = new ServiceDetector(
      { candidates, intervalMs: config.probeIntervalMs, timeoutMs: config.probeTimeoutMs },
      { fetch: components.fetch },
    );
    this.#gateway = new Gateway(
      {
        host: config.listen.host,
        port: config.listen.port,
        agentToken: config.agentToken,
        maxConnectionsPerClient: config.gatewayPerClient,
        // With a cluster token but no agent token, nobody may read the view.
        viewLocked: config.token !== undefined && config.agentToken === undefined,
      },
      {
        service: (name) => this.#detector.get(name),
        services: () => this.#detector.services(),
        health: () => this.health(),
        clusterView: () => this.clusterView(),
        drain: this.#drain,
        selfId: () => this.#id,
        log: (line) => this.#log(line),
      },
    );
    if (config.coordinator) {
      this.#client = new CoordinatorClient(
        { baseUrl: config.coordinator, token: config.token },
        { fetch: components.fetch },
      );
    }
  }

  /** This agent's stable ID (its PeerId); known after start(). */
  get id(): string {
    return this.#id;
  }

  /** The gateway's bound port; known after start(). */
  get gatewayPort(): number {
    return this.#gatewayPort;
  }

  /** Detects services, opens the gateway, joins the mesh or registers directly. */
  async start(): Promise<void> {
    const c = this.#config;
    this.#log(`Starting rollcall agent "${c.name}"`);
    this.#log("Detecting available services...");
    await this.#detector.start();
    const probed = this.#detector.report();
    if (c.services === undefined) this.#logger.warn(NO_MANIFEST);
    else this.#log(`Probed ${probed.length} manifest entries of ${c.services}:`);
    for (const p of probed) {
      const line = `  ${p.state === "healthy" ? "✓" : p.state === "missing" ? "✗" : "!"} ${p.name}: ${p.state}, ${p.detail} (${p.url})`;
      if (p.state === "healthy") this.#log(line);
      else this.#logger.warn(line);
    }
    const found = this.#detector.services();
    this.#log(`Found ${found.length} active service(s)`);
    this.#detector.addEventListener(
      "change",
      this.#guard("services changed", () => this.#onServicesChanged()),
    );
    this.#drain.addEventListener(
      "change",
      this.#guard("the drain handler", () => this.#onDrain()),
    );
    this.#gatewayPort = await this.#gateway.start();
    this.#log(
      `Gateway on http://${c.listen.host}:${this.#gatewayPort}, reachable at ${c.publicUrl}`,
    );
    if (c.mode === "direct") await this.#startDirect();
    else await this.#startMesh();
  }

  /** Leaves the mesh (or unregisters), closes the gateway, stops probing. */
  async stop(): Promise<void> {
    this.#detector.stop();
    this.#eligibility?.stop();
    this.#reporter?.stop();
    await this.#direct?.stop().catch(() => {});
    await this.#mesh?.stop();
    await this.#gateway.stop();
  }

  /** /_agent/health. */
  health(): Record<string, unknown> {
    const leader = this.#mesh?.view().leader ?? null;
    return {
      status: "healthy",
      worker_id: this.#id,
      name: this.#config.name,
      mode: this.#config.mode,
      leader: leader?.id ?? null,
      is_leader: leader?.id === this.#id && this.#id !== "",
      can_lead: (this.#eligibility?.canLead ?? false) && !this.#drain.draining,
      draining: this.#drain.draining,
      faults: this.#faults + (this.#mesh?.stats().faults ?? 0),
      services: this.#detector.services().map((s) => ({ name: s.name, status: s.status })),
    };
  }

  /**
   * /_agent/cluster: the live view (members, leader, services, health, reporting), typed by what
   * the commands read of it and what the coordinator reads (its `LiveViewSchema`).
   */
  clusterView(): AgentClusterView & z.input<typeof LiveViewSchema> {
    const view = this.#mesh?.view();
    return {
      self: this.#id,
      name: this.#config.name,
      cluster: this.#config.cluster,
      mode: this.#config.mode,
      coordinator: this.#config.coordinator ?? null,
      leader: view?.leader ?? null,
      members: liveMembers(view ?? { members: [] }),
      all_members: (view?.members ?? []).map((m) => ({
        worker_id: m.id,
        state: m.state,
        flapping: m.flapping,
        incarnation: m.incarnation,
        can_lead: m.canLead,
        url: m.url,
        last_seen: m.lastSeen,
      })),
      services: this.#detector.services(),
      reporter: this.#reporter?.stats ?? this.#direct?.stats ?? null,
    };
  }

  /** Wraps an event handler: a throw in it is logged, never fatal (it would crash the process). */
  #guard<A extends unknown[]>(what: string, fn: (...args: A) => void): (...args: A) => void {
    return (...args) => {
      try {
        fn(...args);
      } catch (err) {
        this.#faults++;
        this.#log(`Fault in ${what}: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
  }

  #summaries(): ServiceSummary[] {
    return this.#detector
      .services()
      .map((s) => ({ name: s.name, status: s.status, latency_ms: s.latency_ms }));
  }

  #onServicesChanged(): void {
    const names = this.#detector.services().map((s) => `${s.name}:${s.status}`);
    this.#log(`Services changed: ${names.join(", ") || "none"}`);
    this.#mesh?.setLocalState({ services: this.#summaries() });
    this.#direct?.update(this.#registration());
  }

  /** Drain started or ended: gossip it (the leader reports it) and offer to lead only when not. */
  #onDrain(): void {
    const draining = this.#drain.draining;
    this.#log(
      draining
        ? "Draining: no new routed requests once the coordinator hears of it; in-flight ones finish"
        : "Drain ended: taking routed requests again",
    );
    if (this.#mesh) {
      const meta = this.#meta();
      this.#mesh.setLocalState({ meta, canLead: this.#eligible && !draining });
    }
    this.#direct?.update(this.#registration());
  }

  #meta(): MemberMeta {
    const c = this.#config;
    const meta: MemberMeta = { tier: c.tier, capabilities: c.capabilities, name: c.name };
    if (this.#drain.draining) meta.draining = true;
    return meta;
  }

  #registration(): Registration {
    const c = this.#config;
    return {
      worker_id: this.#id,
      name: c.name,
      tunnel_url: c.publicUrl,
      capabilities: c.capabilities,
      containers: this.#detector.services().map((s) => ({
        name: s.name,
        // The gateway's URL for it (the name only: s.url is the local address behind the gateway).
        service_url: serviceUrl(c.publicUrl, { name: s.name }),
        port: s.port,
        health_endpoint: "/health",
      })),
    };
  }

  async #startDirect(): Promise<void> {
    const identity = await loadIdentity(this.#config.dataDir);
    this.#id = identity.peerId.toString();
    const client = this.#client as CoordinatorClient;
    client.signWith(signerFromKey(identity.privateKey));
    this.#direct = new DirectReporter(this.#registration(), {
      client,
      load: () => ({
        status: this.#drain.draining ? "draining" : "online",
        current_load: loadavg()[0] ?? 0,
        available_memory: freemem(),
      }),
      log: (line) =>
        line.startsWith("Registered as ") ? this.#logger.info(line) : this.#logger.warn(line),
    });
    await this.#direct.start();
    const r = this.#direct.registered;
    if (r)
      this.#log(
        `Registered with ${this.#config.coordinator} as ${r.worker_id} (name ${this.#config.name}, tier ${r.tier}, direct mode)`,
      );
    else
      this.#log(
        `Could not register with ${this.#config.coordinator} yet (${this.#direct.stats.lastError}); retrying`,
      );
  }

  async #startMesh(): Promise<void> {
    const c = this.#config;
    const mesh = createMesh(
      {
        dataDir: c.dataDir,
        cluster: c.cluster,
        listen: c.meshListen,
        bootstrap: c.bootstrap,
        mdns: c.mdns,
        psk: c.psk,
        insecureOpenMesh: c.insecureOpenMesh,
        allowPeers: c.allowPeers,
        watchers: c.meshWatchers,
        local: {
          url: c.publicUrl,
          status: "online",
          services: this.#summaries(),
          meta: this.#meta(),
          // Offered once the coordinator took our token (see #startEligibility).
          canLead: false,
        },
      },
      { logger: (line) => this.#logger.info(`mesh: ${line}`) },
    );
    this.#mesh = mesh;
    if (this.#client) {
      const client = this.#client;
      let refused = false;
      const eligibility = new LeadEligibility(
        {},
        {
          check: async () => {
            const r = await client.checkToken();
            return r.ok
              ? { ok: true, status: r.status }
              : { ok: false, status: r.status, error: r.error };
          },
          onChange: (canLead) => {
            this.#eligible = canLead;
            mesh.setLocalState({ canLead: canLead && !this.#drain.draining });
          },
          log: (line) => this.#log(line),
        },
      );
      this.#eligibility = eligibility;
      this.#reporter = new LeaderReporter<ClusterMemberReport>(
        { debounceMs: c.debounceMs },
        {
          send: async (r) => {
            const result = await client.report(
              reportBody({
                cluster: c.cluster,
                leaderId: this.#id,
                term: r.term,
                sequence: r.sequence,
                aggregate: r,
              }),
            );
            // A report is an authenticated call too: a refused token withdraws the offer. So
            // does a 403 for membership (the coordinator does not list this leader): stepping
            // aside lets a member it lists lead and list us; keeping the lead would be refused
            // for good (tried and reverted, docs/RELIABILITY.md Open item 7).
            eligibility.observe(
              result.ok ? { ok: true, status: 200 } : { ok: false, status: result.status ?? 0 },
            );
            if (result.ok) {
              refused = false;
              return result;
            }
            // A refused token: say once which setting to check, and keep retrying with the
            // capped exponential backoff (a fixed token can start working without a restart).
            const hint = authFailureHint(result.status ?? 0, result.ok ? "" : result.error);
            if (hint && !refused) this.#logger.error(hint);
            refused = hint !== null;
            return hint ? { ...result, retryable: true } : result;
          },
          log: (line) => this.#logger.warn(line),
          onAnswer: (a, r) => {
            const first = !this.#answered;
            this.#answered = true;
            if (first || a.reason === "deferred" || a.written) {
              this.#log(
                `Reported ${r.members.length} member(s) as leader (term ${r.term}): ${a.reason}` +
                  `, ${a.writes_today}/${a.write_budget} writes today, next keepalive in ${a.next_keepalive_in_s} s`,
              );
            }
          },
        },
      );
    }
    mesh.addEventListener(
      "leader",
      this.#guard("the leader handler", (e: CustomEvent<{ id: string; term: number } | null>) =>
        this.#onLeader(e.detail),
      ),
    );
    mesh.addEventListener(
      "view",
      this.#guard("the view handler", (e: CustomEvent<ViewSnapshot>) =>
        this.#reporter?.update(aggregate(e.detail)),
      ),
    );
    const named = (m: { id: string; meta?: { name?: string } }) =>
      m.meta?.name ? `${m.id} (${m.meta.name})` : m.id;
    mesh.addEventListener(
      "member-up",
      this.#guard("the member-up handler", (e: CustomEvent<MemberView>) =>
        this.#log(`Member up: ${named(e.detail)} at ${e.detail.url}`),
      ),
    );
    mesh.addEventListener(
      "member-down",
      this.#guard("the member-down handler", (e: CustomEvent<MemberView>) =>
        this.#logger.warn(`Member down: ${named(e.detail)} (${e.detail.state})`),
      ),
    );
    await mesh.start();
    this.#id = mesh.id;
    // The mesh created (or read) the key: the leader's reports are signed with it.
    this.#client?.signWith(loadSigner(c.dataDir));
    this.#log(
      `Joined cluster "${c.cluster}" as ${this.#id} (name ${c.name}, tier ${c.tier}, mesh mode)`,
    );
    this.#log(`Mesh listening on ${mesh.multiaddrs().join(" ")}`);
    if (!c.psk) {
      this.#log(
        c.insecureOpenMesh
          ? "WARNING: open mesh (--insecure-open-mesh): anyone who reaches its port may join"
          : "Mesh without a pre-shared key: loopback only (set --psk to let other machines join)",
      );
    }
    if (this.#eligibility) this.#eligibility.start();
    else this.#log("No coordinator configured: this agent gossips but never reports or leads");
  }

  #onLeader(leader: { id: string; term: number } | null): void {
    const self = leader !== null && leader.id === this.#id;
    this.#log(
      leader
        ? `Leader is ${leader.id} (term ${leader.term})${self ? ": this agent" : ""}`
        : "No leader yet",
    );
    if (!this.#reporter) return;
    if (self && this.#mesh) this.#reporter.update(aggregate(this.#mesh.view()));
    this.#reporter.setLeader(self, leader?.term ?? 0);
    if (self && !this.#reportedOnce) {
      this.#reportedOnce = true;
      this.#log(`Reporting the cluster to ${this.#config.coordinator} as its leader`);
    }
  }
}
