import {
  applyMethodToProto, publishEvent, withSpan, extractContext, SpanKind, SyncflowError, ErrorKind,
  type TaskMessage, type Names, type JetStreamClient, type Logger, type EventMessage, type JobFlags, type AgentRegistry, type pb,
} from '@syncflow/shared';
import type { Pools } from '../pools.js';
import { readTable } from '../read/table-reader.js';
import { TransferSender } from '../stream/transfer-client.js';
import type { AgentClients } from '../clients.js';

export interface TaskDeps {
  agentId: string;
  pools: Pools;
  js: JetStreamClient;
  names: Names;
  flags: JobFlags;
  registry: AgentRegistry;
  clients: AgentClients;
  creditWindow: number;
  log: Logger;
}

export interface TaskOutcome { rows: number; bytes: number; batches: number }

/**
 * Runs one table task as its source agent: read from the job snapshot after the target's last
 * committed batch, stream to the target's agent, report checkpoints as acks come back.
 */
export async function runTask(task: TaskMessage, delivery: number, deps: TaskDeps, signal: AbortSignal): Promise<TaskOutcome> {
  const tlog = deps.log.child({ job: task.job_id, task: task.task_id, table: `${task.schema}.${task.table}` });
  const emit = (e: EventMessage, id: string) => publishEvent(deps.js, deps.names, e, id);
  const base = { job_id: task.job_id, task_id: task.task_id, agent_id: deps.agentId };
  const now = () => new Date().toISOString();

  return withSpan('sync table', { 'syncflow.job': task.job_id, 'syncflow.task': task.task_id, 'db.sql.table': `${task.schema}.${task.table}` }, async (span) => {
    const target = await deps.registry.pick(task.target.group);
    const sender = new TransferSender(deps.clients.get(target.address), deps.creditWindow, tlog, onAck);
    const { sql } = deps.pools.get(task.source);
    let rows = 0, bytes = 0, batches = 0, inserted = 0, updated = 0, marked = 0, duplicates = 0;
    let lastCheckpoint = 0;
    let lastAck: { seq: number; key: string[] | null } = { seq: 0, key: null };

    function onAck(a: { seq: string; last_key: { values: string[] } | null; rows: string; duplicate: boolean; rows_inserted: string; rows_updated: string; rows_marked_for_delete: string }) {
      lastAck = { seq: Number(a.seq), key: a.last_key?.values.length ? a.last_key.values : null };
      if (a.duplicate) duplicates++;
      inserted += Number(a.rows_inserted); updated += Number(a.rows_updated); marked += Number(a.rows_marked_for_delete);
      if (Date.now() - lastCheckpoint >= 1000) {
        lastCheckpoint = Date.now();
        void emit({ ...base, type: 'checkpoint', at: now(), seq: lastAck.seq, last_key: lastAck.key, rows, bytes, batches }, `${task.task_id}:cp:${lastAck.seq}:${delivery}`)
          .catch((e) => tlog.warn({ err: (e as Error).message }, 'checkpoint event not published'));
      }
    }

    const abort = () => sender.cancel();
    signal.addEventListener('abort', abort, { once: true });
    try {
      const start = await sender.open({
        job_id: task.job_id, task_id: task.task_id, target: { name: task.target.name, sealed_url: task.target.sealed_url },
        schema: task.schema, table: task.table, columns: task.columns, key_columns: task.key_columns,
        method: applyMethodToProto(task.method) as pb.ApplyMethod, mirror: task.mirror, on_bad_row: task.on_bad_row,
      });
      await emit({ ...base, type: 'started', at: now(), delivery, resume_after: start.resumeAfter, snapshot: task.snapshot_id ? 'job' : 'own' }, `${task.task_id}:started:${delivery}`);
      const keyless = task.key_columns.length === 0;
      let skip = keyless ? start.committedSeq : 0; // keyless: re-read the same snapshot, skip what was committed
      if (keyless && start.committedSeq > 0 && !task.snapshot_id) {
        throw new SyncflowError(ErrorKind.FailedPrecondition, 'cannot resume a keyless table without the job snapshot', { code: 'keyless_resume' });
      }
      const { snapshot } = await readTable(sql, {
        schema: task.schema, table: task.table, columns: task.columns,
        key: { columns: task.key_columns, types: task.key_types }, snapshotId: task.snapshot_id,
        resumeAfter: keyless ? null : start.resumeAfter, batchBytes: task.batch_bytes,
      }, tlog, async (b) => {
        if (signal.aborted || await deps.flags.isCancelled(task.job_id)) throw new SyncflowError(ErrorKind.Cancelled, 'job cancelled', { code: 'cancelled' });
        if (skip > 0) { skip--; return; }
        await sender.send(b);
        rows += b.rows; bytes += b.data.length; batches++;
      });
      if (snapshot === 'own') {
        if (keyless && start.committedSeq > 0) throw new SyncflowError(ErrorKind.FailedPrecondition, 'job snapshot lost while resuming a keyless table', { code: 'keyless_resume' });
        await emit({ ...base, type: 'log', at: now(), level: 'warn', message: `${task.schema}.${task.table}: the job snapshot was gone; read from a new snapshot after the last checkpoint` }, `${task.task_id}:own:${delivery}`);
      }
      const fin = await sender.finish(rows);
      marked += Number(fin.rows_marked_for_delete);
      span.setAttributes({ 'syncflow.rows': rows, 'syncflow.bytes': bytes, 'syncflow.batches': batches });
      await emit({ ...base, type: 'done', at: now(), rows, bytes, batches, inserted, updated, marked_for_delete: marked, duplicates }, `${task.task_id}:done:${delivery}`);
      tlog.info({ rows, bytes, batches, inserted, updated, marked, duplicates, resumed_after_seq: start.committedSeq }, 'task done');
      return { rows, bytes, batches };
    } catch (e) {
      sender.cancel();
      throw e;
    } finally {
      signal.removeEventListener('abort', abort);
    }
  }, { parent: extractContext(task.trace), kind: SpanKind.CONSUMER });
}
