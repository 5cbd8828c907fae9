import { isTerminalJob, failedPrecondition, scrubSecrets, toSyncflowError, type pb } from '@syncflow/shared';
import type { RunnerDeps } from './advance.js';
import type { JobRow } from '../store/jobs.js';
import { SafetyStore } from '../store/safety.js';
import { orderLevels } from '../plan/graph.js';

/**
 * Rolls a finished or failed job back on its target: the target agent replays the job's undo log
 * in one transaction (refusing, unless forced, when rows it wrote were changed since). The order
 * of the job's tables, parents first, comes from their foreign keys.
 */
export async function rollbackJob(d: RunnerDeps, id: string, force: boolean): Promise<pb.RollbackResult> {
  const job = await d.jobs.get(id);
  if (!isTerminalJob(job.state)) throw failedPrecondition(`job ${id} is ${job.state}: cancel it or let it end before rolling it back`, 'job_active');
  const safety = new SafetyStore(d.jobs.sql);
  const prev = await safety.rolledBack(id);
  if (prev.at) throw failedPrecondition(`job ${id} was already rolled back (at ${prev.at})`, 'already_rolled_back');
  const to = await d.connections.get(job.to_conn);
  // Parents first by the foreign keys themselves, not by the load's levels: a table loaded with its
  // foreign keys set aside shares a level with its parents.
  const tables = job.plan.tables as pb.TablePlan[];
  const keyOf = (t: pb.TablePlan) => `${t.schema}.${t.name}`;
  const fk = orderLevels(tables.map(keyOf), tables.flatMap((t) => (t.depends_on ?? []).map((to) => ({ from: keyOf(t), to, name: '' }))));
  const order = [...tables]
    .sort((a, b) => fk.level.get(keyOf(a))! - fk.level.get(keyOf(b))!)
    .map((t) => ({ schema: t.schema, name: t.name, key: [] }));
  const reply = await d.agents.call<pb.RollbackReply__Output>(to.agent_group, 'RollbackJob', {
    job_id: id, connection: { name: to.name, sealed_url: to.sealed_url }, force, order,
  }, 30 * 60_000);
  const result: pb.RollbackResult = {
    job_id: id, rows_deleted: reply.rows_deleted, rows_restored: reply.rows_restored,
    rows_reinserted: reply.rows_reinserted, sequences_restored: reply.sequences_restored,
  };
  await safety.markRolledBack(id, result);
  // The target no longer holds what the tables' last syncs left: their next re-sync hashes both sides.
  await d.baselines.forgetTargetTables(job.to_conn, tables.map((t) => ({ schema: t.schema ?? '', name: t.name ?? '' })));
  await d.jobs.log(id, null, 'warn', `rolled back${force ? ' (forced)' : ''}: ${reply.rows_deleted} inserted row(s) deleted, ${reply.rows_restored} updated row(s) restored, ${reply.rows_reinserted} deleted row(s) re-inserted, ${reply.sequences_restored} sequence(s) set back`);
  d.log.warn({ job: id, deleted: reply.rows_deleted, restored: reply.rows_restored, reinserted: reply.rows_reinserted, forced: force }, 'job rolled back');
  return result;
}

/** on_failure: rollback — called once a job has failed; a refusal is logged, never thrown. */
export async function rollbackOnFailure(d: RunnerDeps, job: JobRow): Promise<void> {
  const spec = job.spec as { on_failure?: string };
  if (spec?.on_failure !== 'rollback') return;
  try {
    await rollbackJob(d, job.id, false);
  } catch (e) {
    const err = toSyncflowError(e);
    await d.jobs.log(job.id, null, 'error', `automatic rollback failed: ${scrubSecrets(err.message)} (retry with: syncflow job rollback ${job.id})`);
  }
}
