import { scrubSecrets, toSyncflowError, type pb } from '@syncflow/shared';
import type { RunnerDeps } from './advance.js';
import type { JobRow, TaskRow } from '../store/jobs.js';
import type { ConnectionRow } from '../store/connections.js';

/** The change slot a job asks for with its snapshot (shared/messages.ts CHANGE_SLOT). */
export const changeSlotOf = (jobId: string) => `syncflow_${jobId.replace(/-/g, '')}`;

/** Records the job's change slot as the baseline of every table whose tasks are all done. */
export async function recordBaselines(d: RunnerDeps, job: JobRow, tasks: readonly TaskRow[]): Promise<void> {
  if (!job.change_slot) return;
  const byTable = new Map<string, { schema: string; name: string; done: boolean; loaded: boolean }>();
  for (const t of tasks) {
    const k = `${t.schema_name}.${t.table_name}`;
    const e = byTable.get(k) ?? { schema: t.schema_name, name: t.table_name, done: true, loaded: t.method === 'copy' };
    e.done &&= t.state === 'done';
    byTable.set(k, e);
  }
  const shapes = job.plan.shapes ?? {};
  const tables = [...byTable].filter(([k, t]) => t.done && shapes[k])
    .map(([k, t]) => ({ schema: t.schema, name: t.name, shape: shapes[k]!, exact: job.mode === 'mirror' || t.loaded }));
  const older = await d.baselines.record(job.id, job.from_conn, job.to_conn, job.change_slot, tables);
  if (older) {
    await d.jobs.log(job.id, null, 'warn', `change slot ${job.change_slot} not kept: job ${older} of the same connections ran at the same time from an older snapshot, so the next re-sync decodes from the slot before both`);
  }
}

/**
 * Drops the source's retired change slots (each keeps WAL on the source until dropped). Never
 * throws: a slot not dropped now stays retired and is dropped when the source's next job starts or ends.
 */
export async function dropRetiredSlots(d: RunnerDeps, from: ConnectionRow): Promise<void> {
  try {
    const slots = await d.baselines.retired(from.name);
    if (!slots.length) return;
    const reply = await d.agents.call<pb.DropChangeSlotsReply__Output>(from.agent_group, 'DropChangeSlots', {
      connection: { name: from.name, sealed_url: from.sealed_url }, slots,
    });
    await d.baselines.dropped(from.name, reply.dropped);
    d.log.info({ from: from.name, dropped: reply.dropped.length, left: slots.length - reply.dropped.length }, 'retired change slots dropped');
  } catch (e) {
    d.log.warn({ from: from.name, err: scrubSecrets(toSyncflowError(e).message) }, 'retired change slots not dropped yet; tried again with the next job');
  }
}
