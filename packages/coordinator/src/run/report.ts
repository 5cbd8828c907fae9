import { isTerminalJob, toSyncflowError, scrubSecrets, displayName, type pb } from '@syncflow/shared';
import type { RunnerDeps } from './advance.js';
import type { JobRow, TaskRow } from '../store/jobs.js';
import type { ConnectionRow } from '../store/connections.js';
import { SafetyStore } from '../store/safety.js';
import { compareTable, type CompareResult } from '../verify/compare.js';

/**
 * The report of a job, per table: rows read, inserted, updated, deleted, quarantined, bytes,
 * duration, and a verification of source against target (key-range hashes, see verify/compare.ts).
 * A table split into key ranges (plan/split.ts) is one line: its parts' counts summed, its duration
 * from the first part's start to the last part's end, and one verification of the whole table.
 *
 * Made when the job ends (reportJobEnd, called by the JobRunner after the state change, never
 * awaited by it) and kept in the control DB (job_reports); `job report` returns the kept one, or
 * makes it on request for a job that ended without one (older jobs, a coordinator that stopped
 * meanwhile). A rollback marks the kept report (rolled_back_at); a job that runs again (retry)
 * gets a new report when it ends again.
 */
export async function jobReport(d: RunnerDeps, id: string): Promise<pb.JobReport> {
  const kept = await new SafetyStore(d.jobs.sql).report(id);
  if (kept) return kept;
  const job = await d.jobs.get(id);
  if (!isTerminalJob(job.state)) return buildReport(d, job); // counts so far; nothing verified, nothing kept
  return makeAndKeep(d, id);
}

/** Called when a job reaches a terminal state: makes and keeps its report in the background; never throws. */
export function reportJobEnd(d: RunnerDeps, id: string): void {
  void makeAndKeep(d, id).catch((e) => {
    d.log.warn({ job: id, err: scrubSecrets(toSyncflowError(e).message) }, 'the job report could not be made now; job report makes it on request');
  });
}

/** Time the verifications of one report may take in all; tables left after it say so. */
export const VERIFY_BUDGET_MS = 30 * 60_000;

// One report in the making per job in this process: `job report` during the build waits for it.
const building = new Map<string, Promise<pb.JobReport>>();

function makeAndKeep(d: RunnerDeps, id: string): Promise<pb.JobReport> {
  const inFlight = building.get(id);
  if (inFlight) return inFlight;
  const p = (async () => {
    const safety = new SafetyStore(d.jobs.sql);
    const job = await d.jobs.get(id);
    const report = await buildReport(d, job);
    if (!isTerminalJob(job.state) || !job.finished_at) return report;
    // Kept only while the job still has the end it describes (a retry may have restarted it).
    await safety.saveReport(id, report, job.finished_at);
    return (await safety.report(id)) ?? report;
  })().finally(() => building.delete(id));
  building.set(id, p);
  return p;
}

async function buildReport(d: RunnerDeps, job: JobRow): Promise<pb.JobReport> {
  const safety = new SafetyStore(d.jobs.sql);
  const tasks = await d.jobs.tasks(job.id);
  const rolled = await safety.rolledBack(job.id);
  let conns: [ConnectionRow, ConnectionRow] | null = null;
  let unreachable = '';
  try {
    conns = await Promise.all([d.connections.get(job.from_conn), d.connections.get(job.to_conn)]);
  } catch (e) {
    unreachable = scrubSecrets(toSyncflowError(e).message); // e.g. a connection removed since
  }
  let counts: pb.TableCount__Output[] = [];
  let rejectsUnknown = unreachable;
  if (conns) {
    const to = conns[1];
    try {
      counts = (await d.agents.call<pb.RejectList__Output>(to.agent_group, 'ListRejects', { job_id: job.id, connection: { name: to.name, sealed_url: to.sealed_url }, limit: 1 })).counts;
    } catch (e) {
      rejectsUnknown = scrubSecrets(toSyncflowError(e).message);
    }
  }
  const deadline = Date.now() + VERIFY_BUDGET_MS;
  const tables: pb.TableReport[] = [];
  for (const parts of byTable(tasks)) {
    const t = parts[0]!;
    const quarantined = Number(counts.find((c) => c.schema === t.schema_name && c.table === t.table_name)?.rows ?? 0);
    let verification: string;
    const verifyLater = `syncflow verify --tables ${tableName({ schema: t.schema_name, table: t.table_name })}`;
    const notDone = parts.filter((p) => p.state !== 'done');
    if (!isTerminalJob(job.state)) verification = 'not verified: the job is still running';
    else if (rolled.at) verification = 'not verified: the job was rolled back';
    else if (job.state === 'failed' || job.state === 'cancelled') verification = `not verified: the job ${job.state}`;
    else if (notDone.length) verification = `not verified: the table was not synced (${notDone.length === parts.length ? notDone[0]!.state : `${notDone.length} of ${parts.length} parts ${notDone[0]!.state}`})`;
    else if ((job.spec as { verify?: string }).verify === 'off') verification = `not verified: the job asked for no verification (--verify off; ${verifyLater})`;
    else if (!conns) verification = `not verified: ${unreachable}`;
    else if (Date.now() >= deadline) verification = `not verified: the report's ${VERIFY_BUDGET_MS / 60_000} min for verification ran out (${verifyLater})`;
    else {
      try {
        const r = await compareTable(d.agents, side(conns[0]), side(conns[1]), compareSpec(t, 5), { deadline });
        verification = describe(r, job.mode, quarantined);
      } catch (e) {
        verification = `not verified: ${scrubSecrets(toSyncflowError(e).message)}`;
      }
    }
    if (rejectsUnknown && conns) verification += `; quarantined rows unknown: ${rejectsUnknown}`;
    tables.push({
      schema: t.schema_name, table: t.table_name,
      rows_read: sum(parts, 'rows'), inserted: sum(parts, 'inserted'), updated: sum(parts, 'updated'),
      deleted: sum(parts, 'marked_for_delete'), quarantined, bytes: sum(parts, 'bytes'),
      duration_ms: span(parts), verification, copy_format: t.message.copy_format ?? 'text',
    });
  }
  const after = rolled.at ? rolled : await safety.rolledBack(job.id);
  if (after.at && !rolled.at) {
    // Rolled back while the report was made: what was verified no longer describes the target.
    for (const t of tables) t.verification = 'not verified: the job was rolled back';
  }
  return { job_id: job.id, state: job.state, tables, created_at: new Date().toISOString(), rolled_back_at: after.at ?? '' };
}

/** The job's tasks grouped by table (a split table has several), in plan order: level, then first task. */
export function byTable(tasks: readonly TaskRow[]): TaskRow[][] {
  const groups = new Map<string, TaskRow[]>();
  const sorted = [...tasks].sort((a, b) => a.level - b.level || a.id.localeCompare(b.id, 'en', { numeric: true }));
  for (const t of sorted) {
    const k = JSON.stringify([t.schema_name, t.table_name]);
    const g = groups.get(k);
    if (g) g.push(t);
    else groups.set(k, [t]);
  }
  return [...groups.values()];
}

const sum = (parts: readonly TaskRow[], f: 'rows' | 'inserted' | 'updated' | 'marked_for_delete' | 'bytes') =>
  parts.reduce((n, p) => n + Number(p[f] ?? 0), 0);

/** From the first part's start to the last part's end; 0 until every part that started has ended. */
function span(parts: readonly TaskRow[]): number {
  const started = parts.map((p) => (p.started_at ? Date.parse(p.started_at) : NaN)).filter(Number.isFinite);
  if (!started.length) return 0;
  const ended = parts.filter((p) => p.started_at).map((p) => (p.finished_at ? Date.parse(p.finished_at) : NaN));
  if (!ended.every(Number.isFinite)) return 0;
  return Math.max(0, Math.max(...ended) - Math.min(...started));
}

export const side = (c: { name: string; sealed_url: string; agent_group: string }, snapshotId?: string) =>
  ({ group: c.agent_group, connection: { name: c.name, sealed_url: c.sealed_url }, snapshotId });

export function compareSpec(t: Pick<TaskRow, 'schema_name' | 'table_name' | 'message'>, maxKeys: number) {
  const m = t.message;
  return {
    schema: t.schema_name, table: t.table_name, columns: m.columns, maxKeys,
    key: m.key_columns.map((k, i) => ({ name: k, type_schema: m.key_types[i]!.schema, type_name: m.key_types[i]!.name })),
  };
}

function describe(r: CompareResult, mode: string, quarantined: number): string {
  const extra = mode === 'upsert' ? r.onlyTarget : 0; // upsert keeps the target's own rows: not a difference
  const parts: string[] = [];
  if (r.onlySource) parts.push(`${r.onlySource} missing on the target${quarantined ? ` (${quarantined} quarantined)` : ''}`);
  if (r.onlyTarget - extra) parts.push(`${r.onlyTarget - extra} only on the target`);
  if (r.different) parts.push(`${r.different} different`);
  const note = extra ? ` (${extra} row(s) only on the target, kept by upsert)` : '';
  return parts.length ? `differs: ${parts.join(', ')}${note}` : `match: ${r.sourceRows} rows${note}`;
}

export const tableName = (t: { schema: string; table: string }) => displayName(t.schema, t.table);
