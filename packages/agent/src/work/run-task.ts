import {
  applyMethodToProto, publishEvent, retry, withSpan, extractContext, SpanKind, SyncflowError, ErrorKind,
  BatchSizer, type TaskMessage, type Names, type JetStreamClient, type Logger, type EventMessage, type JobFlags, type AgentRegistry, type pb, type Sql,
} from '@syncflow/shared';
import type { Pools } from '../pools.js';
import { readTable } from '../read/table-reader.js';
import { SNAPSHOT_ID } from '../read/snapshot.js';
import { TransferSender } from '../stream/transfer-client.js';
import type { AgentClients } from '../clients.js';
import type { JobLimiters, InflightBytes } from './limits.js';
import { decideDiff, diffSummary } from './diff-plan.js';

export interface TaskDeps {
  agentId: string;
  pools: Pools;
  js: JetStreamClient;
  names: Names;
  flags: JobFlags;
  registry: AgentRegistry;
  clients: AgentClients;
  creditWindow: number;
  limiters: JobLimiters;
  inflight: InflightBytes;
  log: Logger;
}

/** Above this resident size the batch sizer backs off (agents are meant to stay well under 300 MB). */
const MEMORY_TIGHT_BYTES = 200 * 1024 * 1024;

/** True when the job's exported snapshot can still be imported. */
async function snapshotAlive(sql: Sql, id: string): Promise<boolean> {
  if (!id || !SNAPSHOT_ID.test(id)) return false;
  try {
    await sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
      // A literal only (checked against pg_export_snapshot's format above).
      await tx.unsafe(`SET TRANSACTION SNAPSHOT '${id}'`);
    });
    return true;
  } catch {
    return false;
  }
}

export interface TaskOutcome { rows: number; bytes: number; batches: number }

/**
 * Runs one table task as its source agent: read from the job snapshot after the target's last
 * committed batch, stream to the target's agent, report checkpoints as acks come back.
 */
export async function runTask(task: TaskMessage, delivery: number, deps: TaskDeps, signal: AbortSignal): Promise<TaskOutcome> {
  const tlog = deps.log.child({ job: task.job_id, task: task.task_id, table: `${task.schema}.${task.table}` });
  const emit = (e: EventMessage, id: string) => publishEvent(deps.js, deps.names, e, id);
  // Events that must arrive (started, done) ride out a NATS restart: the message id deduplicates.
  const emitRetry = (e: EventMessage, id: string) => retry(() => emit(e, id).catch((err) => {
    throw new SyncflowError(ErrorKind.Unavailable, `publishing ${e.type} event: ${(err as Error).message}`, { retryable: true, cause: err });
  }), { attempts: 20, baseMs: 250, maxMs: 3_000 });
  const base = { job_id: task.job_id, task_id: task.task_id, agent_id: deps.agentId };
  const now = () => new Date().toISOString();

  return withSpan('sync table', { 'syncflow.job': task.job_id, 'syncflow.task': task.task_id, 'db.sql.table': `${task.schema}.${task.table}` }, async (span) => {
    const target = await deps.registry.pick(task.target.group);
    let sender = new TransferSender(deps.clients.get(target.address), deps.creditWindow, tlog, onAck, deps.inflight);
    const limiter = await deps.limiters.get(task.job_id);
    // Keyed tables adapt their batch size to the target's commit latency; keyless ones keep a fixed size,
    // because resuming them re-reads the same batches.
    const sizer = task.key_columns.length ? new BatchSizer(64 * 1024, task.batch_bytes) : undefined;
    const source = await deps.pools.guarded(task.source);
    const { sql } = source;
    let restarted = false;
    const fromTarget = new WeakSet<object>();
    let rows = 0, bytes = 0, batches = 0, inserted = 0, updated = 0, marked = 0, duplicates = 0;
    let lastCheckpoint = 0;
    let lastAck: { seq: number; key: string[] | null } = { seq: 0, key: null };

    function onAck(a: pb.TransferAck__Output, latencyMs: number) {
      sizer?.observe(latencyMs, process.memoryUsage.rss() > MEMORY_TIGHT_BYTES);
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
      const header = {
        job_id: task.job_id, task_id: task.task_id, target: { name: task.target.name, sealed_url: task.target.sealed_url },
        schema: task.schema, table: task.table, columns: task.columns, key_columns: task.key_columns,
        method: applyMethodToProto(task.method) as pb.ApplyMethod, mirror: task.mirror, on_bad_row: task.on_bad_row,
        range_after: task.range?.after ? { values: task.range.after as string[] } : null,
        range_upto: task.range?.upto ? { values: task.range.upto as string[] } : null,
      };
      let start = await sender.open(header);
      const keyless = task.key_columns.length === 0;
      if (keyless && start.committedSeq > 0 && !(await snapshotAlive(sql, task.snapshot_id))) {
        // A keyless table cannot resume by key, and its physical order in a new snapshot differs:
        // start it over. The target deletes what earlier attempts of this task applied, in one
        // transaction with their ledger rows, before the first new batch.
        sender.cancel();
        signal.removeEventListener('abort', abort);
        sender = new TransferSender(deps.clients.get(target.address), deps.creditWindow, tlog, onAck, deps.inflight);
        signal.addEventListener('abort', abort, { once: true });
        start = await sender.open({ ...header, restart: true });
        restarted = true;
        await emitRetry({ ...base, type: 'log', at: now(), level: 'warn', message: `${task.schema}.${task.table}: no primary key and the job snapshot is gone: restarted the table (the rows earlier attempts applied were deleted in one transaction, then the table is read again)` }, `${task.task_id}:restart:${delivery}`);
      }
      await emitRetry({ ...base, type: 'started', at: now(), delivery, resume_after: start.resumeAfter, snapshot: task.snapshot_id && !restarted ? 'job' : 'own' }, `${task.task_id}:started:${delivery}`);
      // Diff re-sync (work/diff-plan.ts): ship only the hash buckets that differ from the target.
      const diff = task.diff ? await decideDiff(task, sql, deps.clients.get(target.address), start, !restarted && await snapshotAlive(sql, task.snapshot_id), tlog) : null;
      if (diff?.message) sender.sendDiff(diff.message);
      let skip = keyless ? start.committedSeq : 0; // keyless: re-read the same snapshot, skip what was committed
      const readSpec = {
        schema: task.schema, table: task.table, columns: task.columns,
        key: { columns: task.key_columns, types: task.key_types }, snapshotId: restarted ? '' : task.snapshot_id,
        resumeAfter: keyless ? null : start.resumeAfter ?? task.range?.after ?? null, upto: task.range?.upto ?? null,
        blocks: task.blocks, batchBytes: sizer ? () => sizer.bytes : task.batch_bytes, buckets: diff?.filter ?? null,
      };
      const { snapshot } = diff?.filter && diff.fineDiffering === 0 ? { snapshot: 'job' as const } : await readTable(sql, readSpec, tlog, async (b) => {
        if (signal.aborted || await deps.flags.isCancelled(task.job_id)) throw new SyncflowError(ErrorKind.Cancelled, 'job cancelled', { code: 'cancelled' });
        if (await deps.flags.isPaused(task.job_id)) {
          // Let the batches in flight commit (their acks become the checkpoint); only the batch in
          // hand is read again on resume.
          await sender.settle().catch(() => undefined);
          if (lastAck.seq > 0) {
            await emit({ ...base, type: 'checkpoint', at: now(), seq: lastAck.seq, last_key: lastAck.key, rows, bytes, batches }, `${task.task_id}:cp:${lastAck.seq}:${delivery}`).catch(() => undefined);
          }
          throw new SyncflowError(ErrorKind.Cancelled, 'job paused', { code: 'paused' });
        }
        if (skip > 0) { skip--; return; }
        const waited = await limiter.take(b.rows, b.data.length);
        if (waited > 5_000) tlog.info({ waited_ms: waited }, 'reader held back by the job rate limit');
        await sender.send(b).catch((e) => { fromTarget.add(e as object); throw e; });
        rows += b.rows; bytes += b.data.length; batches++;
      }).catch((e) => {
        // Only the source database's own failures count against its breaker (the target agent keeps its own).
        if (!(typeof e === 'object' && e !== null && fromTarget.has(e))) source.breaker.failure(e);
        throw e;
      });
      source.breaker.success();
      if (snapshot === 'own' && !restarted) {
        // The snapshot vanished between the check and the read: the next attempt restarts the table.
        if (keyless && start.committedSeq > 0) throw new SyncflowError(ErrorKind.Unavailable, 'job snapshot lost while resuming a keyless table', { code: 'keyless_resume', retryable: true });
        await emitRetry({ ...base, type: 'log', at: now(), level: 'warn', message: `${task.schema}.${task.table}: the job snapshot was gone; read from a new snapshot after the last checkpoint` }, `${task.task_id}:own:${delivery}`);
      }
      const fin = await sender.finish(rows);
      if (diff) await emitRetry({ ...base, type: 'log', at: now(), level: 'info', message: diffSummary(task, diff, rows, bytes) }, `${task.task_id}:diff:${delivery}`);
      marked += Number(fin.rows_marked_for_delete);
      span.setAttributes({ 'syncflow.rows': rows, 'syncflow.bytes': bytes, 'syncflow.batches': batches });
      await emitRetry({ ...base, type: 'done', at: now(), rows, bytes, batches, inserted, updated, marked_for_delete: marked, duplicates }, `${task.task_id}:done:${delivery}`);
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
