import { isTerminalJob, toSyncflowError, scrubSecrets, displayName, type pb } from '@syncflow/shared';
import type { RunnerDeps } from './advance.js';
import type { TaskRow } from '../store/jobs.js';
import { SafetyStore } from '../store/safety.js';
import { compareTable, type CompareResult } from '../verify/compare.js';

/**
 * The report of a job, per table: rows read, inserted, updated, deleted, quarantined, bytes,
 * duration, and a verification of source against target (key-range hashes, see verify/compare.ts).
 * Made once the job has ended, on first request, and kept in the control DB (job_reports).
 */
export async function jobReport(d: RunnerDeps, id: string): Promise<pb.JobReport> {
  const safety = new SafetyStore(d.jobs.sql);
  const cached = await safety.report(id);
  if (cached) return cached;
  const job = await d.jobs.get(id);
  const tasks = await d.jobs.tasks(id);
  const rolled = await safety.rolledBack(id);
  const [from, to] = await Promise.all([d.connections.get(job.from_conn), d.connections.get(job.to_conn)]);
  let counts: pb.TableCount__Output[] = [];
  try {
    counts = (await d.agents.call<pb.RejectList__Output>(to.agent_group, 'ListRejects', { job_id: id, connection: { name: to.name, sealed_url: to.sealed_url }, limit: 1 })).counts;
  } catch { /* target unreachable: quarantined counts unknown, shown as 0 */ }
  const tables: pb.TableReport[] = [];
  for (const t of tasks) {
    const quarantined = Number(counts.find((c) => c.schema === t.schema_name && c.table === t.table_name)?.rows ?? 0);
    let verification: string;
    if (!isTerminalJob(job.state)) verification = 'not verified: the job is still running';
    else if (rolled.at) verification = 'not verified: the job was rolled back';
    else if (job.state !== 'completed') verification = `not verified: the job ${job.state}`;
    else {
      try {
        const r = await compareTable(d.agents, side(from), side(to), compareSpec(t, 5));
        verification = describe(r, job.mode, quarantined);
      } catch (e) {
        verification = `not verified: ${scrubSecrets(toSyncflowError(e).message)}`;
      }
    }
    const started = t.started_at ? Date.parse(t.started_at) : NaN;
    const finished = t.finished_at ? Date.parse(t.finished_at) : NaN;
    tables.push({
      schema: t.schema_name, table: t.table_name, rows_read: t.rows, inserted: t.inserted, updated: t.updated,
      deleted: t.marked_for_delete, quarantined, bytes: t.bytes,
      duration_ms: Number.isFinite(started) && Number.isFinite(finished) ? finished - started : 0, verification,
    });
  }
  const report: pb.JobReport = { job_id: id, state: job.state, tables, created_at: new Date().toISOString(), rolled_back_at: rolled.at ?? '' };
  if (isTerminalJob(job.state)) await safety.saveReport(id, report);
  return report;
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
