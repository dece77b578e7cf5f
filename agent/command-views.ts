/**
 * What the CLI's read-only commands print, pure: the answers of a running agent
 * (`/_agent/cluster`, `/_agent/health`) and of the coordinator's admin API turned into rows
 * for `--json` and into aligned text tables for people. No I/O; time is passed in.
 */
import type { BudgetAnswer, ServicesAnswer } from "../coordinator.ts";
import type { ReportAnswer } from "./reporter.ts";

/** A member as `/_agent/cluster` lists it in `all_members`. */
export interface LiveMemberState {
  worker_id: string;
  state: string;
  flapping: boolean;
  incarnation: number;
  url: string;
  last_seen: number;
}

/**
 * `/_agent/cluster` as the commands read it (see docs/PROTOCOL.md); the agent builds its answer
 * typed by this and by the coordinator's `LiveViewSchema` (`Agent.clusterView`).
 */
export interface AgentClusterView {
  self: string;
  /** The agent's human name (`--name`). */
  name?: string;
  cluster: string;
  mode: string;
  coordinator?: string | null;
  leader: { id: string; term: number } | null;
  members: { worker_id: string; status: string; services: { name: string; status: string }[] }[];
  all_members: LiveMemberState[];
  services: { name: string; status: string }[];
  reporter: {
    sent?: number;
    failed?: number;
    lastAt?: number;
    lastError?: string;
    /** The coordinator's last answer to the leader's report, as the agent relays it. */
    lastAnswer?: ReportAnswer;
  } | null;
}

/** One row of `members`. */
export interface MemberRow {
  worker_id: string;
  url: string;
  /** Liveness, then what the member declares (degraded; later also draining). */
  status: string;
  state: string;
  flapping: boolean;
  incarnation: number;
  services: { name: string; status: string }[];
  leader: boolean;
  self: boolean;
  last_seen: number;
}

/** Text columns aligned with two spaces between them; the last column is not padded. */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  return `${all
    .map((r) =>
      r
        .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] as number)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n")}\n`;
}

/** The members the local agent sees, leader first, then by ID. */
export function memberRows(view: AgentClusterView): MemberRow[] {
  const declared = new Map(view.members.map((m) => [m.worker_id, m]));
  return view.all_members
    .map((m) => {
      const d = declared.get(m.worker_id);
      const words = [m.state];
      if (m.flapping) words.push("flapping");
      if (d && d.status !== "online") words.push(d.status);
      return {
        worker_id: m.worker_id,
        url: m.url,
        status: words.join(", "),
        state: m.state,
        flapping: m.flapping,
        incarnation: m.incarnation,
        services: d?.services.map((s) => ({ name: s.name, status: s.status })) ?? [],
        leader: view.leader?.id === m.worker_id,
        self: m.worker_id === view.self,
        last_seen: m.last_seen,
      };
    })
    .sort((a, b) => Number(b.leader) - Number(a.leader) || (a.worker_id < b.worker_id ? -1 : 1));
}

const serviceList = (list: { name: string; status: string }[]) =>
  list.map((s) => (s.status === "healthy" ? s.name : `${s.name} (${s.status})`)).join(", ") || "-";

/** The `members` table. */
export function membersTable(rows: MemberRow[]): string {
  return table(
    ["ID", "ADDRESS", "STATUS", "SERVICES", "INC", "ROLE"],
    rows.map((r) => [
      r.worker_id,
      r.url || "-",
      r.status,
      serviceList(r.services),
      String(r.incarnation),
      [r.leader ? "leader" : "", r.self ? "self" : ""].filter(Boolean).join(", "),
    ]),
  );
}

/** The `services` table. */
export function servicesTable(body: ServicesAnswer): string {
  const names = Object.keys(body.services).sort();
  return table(
    ["SERVICE", "STATUS", "HEALTHY", "SCALING"],
    names.map((name) => {
      const s = body.services[name] as ServicesAnswer["services"][string];
      return [name, s.status, `${s.healthy_workers}/${s.total_workers}`, s.scaling?.signal ?? "-"];
    }),
  );
}

/** "12 s ago" for a clock ms at `now`. */
export function ago(at: number, now: number): string {
  const s = Math.max(0, Math.round((now - at) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/** The `status` summary: what the agent says, plus the day's writes from the coordinator if asked. */
export function statusOf(
  agentUrl: string,
  view: AgentClusterView,
  budget: Pick<BudgetAnswer, "used_today" | "cap"> | null,
  now: number,
) {
  const rows = memberRows(view);
  const isLeader = view.leader?.id === view.self && view.self !== "";
  const r = view.reporter;
  const answer = r?.lastAnswer;
  let writes: { used: number; cap: number; source: string } | null = null;
  if (budget) writes = { used: budget.used_today, cap: budget.cap, source: "coordinator" };
  else if (answer && isLeader) {
    writes = { used: answer.writes_today, cap: answer.write_budget, source: "last report" };
  }
  return {
    worker_id: view.self,
    agent_url: agentUrl,
    cluster: view.cluster,
    mode: view.mode,
    leader: view.leader,
    is_leader: isLeader,
    members: {
      total: rows.length,
      alive: rows.filter((m) => m.state === "alive").length,
      suspect: rows.filter((m) => m.state === "suspect").length,
    },
    coordinator: view.coordinator ?? null,
    last_report:
      r && r.lastAt !== undefined
        ? {
            at: new Date(r.lastAt).toISOString(),
            ago: ago(r.lastAt, now),
            ok: r.lastError === undefined,
            error: r.lastError ?? null,
            written: answer?.written ?? null,
            reason: answer?.reason ?? null,
          }
        : null,
    writes_today: writes,
    services: view.services.map((s) => ({ name: s.name, status: s.status })),
  };
}

/** The `status` text. */
export function statusText(s: ReturnType<typeof statusOf>): string {
  const leader = s.leader
    ? `${s.leader.id} (term ${s.leader.term})${s.is_leader ? ": this agent" : ""}`
    : "none yet";
  let report = s.mode === "direct" ? "none yet" : "none: the leader reports, this agent does not";
  if (s.last_report) {
    report = s.last_report.ok
      ? `${s.last_report.written ? "written" : "not written"} (${s.last_report.reason}), ${s.last_report.ago}`
      : `failed (${s.last_report.error}), ${s.last_report.ago}`;
  }
  const writes = s.writes_today
    ? `${s.writes_today.used} of ${s.writes_today.cap} (from the ${s.writes_today.source})`
    : "unknown here: pass --admin-token (or ROLLCALL_ADMIN_TOKEN) to ask the coordinator";
  const rows: [string, string][] = [
    ["Agent", `${s.worker_id || "-"} at ${s.agent_url}`],
    ["Cluster", `${s.cluster} (${s.mode} mode)`],
    ["Leader", leader],
    ["Members", `${s.members.total} (${s.members.alive} alive, ${s.members.suspect} suspect)`],
    ["Coordinator", s.coordinator ?? "none: this agent does not report"],
    ["Last report", report],
    ["Writes today", writes],
    ["Services", serviceList(s.services)],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  return `${rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join("\n")}\n`;
}
