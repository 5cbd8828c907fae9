import { createHash } from 'node:crypto';
import {
  applyMethodToProto, publishEvent, retry, withSpan, extractContext, SpanKind, SyncflowError, ErrorKind,
  toSyncflowError, type TaskMessage, type Names, type JetStreamClient, type Logger, type EventMessage, type JobFlags, type AgentRegistry, type pb, type Sql,
} from '@syncflow/shared';
import type { Pools } from '../pools.js';
import { readTable, taskReadSpec, type ReadBatch } from '../read/table-reader.js';
import { SNAPSHOT_ID, useSnapshot } from '../read/snapshot.js';
import { TransferSender, type TransferStart } from '../stream/transfer-client.js';
import type { AgentClients } from '../clients.js';
import { batchSizerFor, type JobLimiters, type InflightBytes } from './limits.js';
import { decideDiff, diffSummary, shipsNothing, type DiffDecision } from './diff-plan.js';
import type { DiffPrefetch } from './diff-prefetch.js';
import type { ChangeLog } from '../read/change-log.js';

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
  /** Diff decisions prepared ahead of the tasks' FK levels (PrepareDiffs). */
  prefetch?: DiffPrefetch;
  /** Changes decoded from change slots (diff re-sync from tracked changes). */
  changes?: ChangeLog;
  log: Logger;
}

/**
 * Above this much live memory (V8 heap in use plus Buffers) the batch sizer backs off. Not the
 * resident size: the allocator keeps freed pages, so once one table of huge rows had raised RSS past
 * the mark, every later table ran at the smallest batch size (measured: 3x the agents' CPU, a
 * 100k-row table 36 s instead of 10).
 */
const MEMORY_TIGHT_BYTES = 160 * 1024 * 1024;
let memoryAt = 0, memoryWasTight = false;
/** Sampled at most every 100 ms: process.memoryUsage() reads /proc and cost ~0.35 s of CPU per scale-1 load when asked per ack. */
const memoryTight = () => {
  if (Date.now() - memoryAt >= 100) {
    const m = process.memoryUsage();
    memoryWasTight = m.heapUsed + m.arrayBuffers > MEMORY_TIGHT_BYTES;
    memoryAt = Date.now();
  }
  return memoryWasTight;
};

/** True when the job's exported snapshot can still be imported. */
async function snapshotAlive(sql: Sql, id: string): Promise<boolean> {
  if (!id || !SNAPSHOT_ID.test(id)) return false;
  try {
    await sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
      await useSnapshot(tx, id);
    });
    return true;
  } catch {
    return false;
  }
}

export interface TaskOutcome { rows: number; bytes: number; batches: number }

const KEYLESS_CHANGED = 'keyless_changed';
const keylessChanged = () => new SyncflowError(ErrorKind.FailedPrecondition, 'a keyless table read again differs from its committed batches', { code: KEYLESS_CHANGED });

/** Batches read ahead (work/diff-prefetch.ts), emitted as a read of the job snapshot would emit them. */
async function replay(batches: readonly ReadBatch[], ship: (b: ReadBatch) => Promise<void>): Promise<{ snapshot: 'job' }> {
  for (const b of batches) await ship(b);
  return { snapshot: 'job' };
}

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
    // Independent lookups (NATS round trips on a task's first step), asked at once.
    const [target, limiter, source] = await Promise.all([deps.registry.pick(task.target.group), deps.limiters.get(task.job_id), deps.pools.guarded(task.source)]);
    let sender = new TransferSender(deps.clients.get(target.address), deps.creditWindow, tlog, onAck, deps.inflight);
    const sizer = batchSizerFor(task);
    const { sql } = source;
    let restarted = false;
    const fromTarget = new WeakSet<object>();
    let rows = 0, bytes = 0, batches = 0, inserted = 0, updated = 0, marked = 0, duplicates = 0;
    let lastCheckpoint = 0;
    let lastAck: { seq: number; key: string[] | null } = { seq: 0, key: null };

    function onAck(a: pb.TransferAck__Output, latencyMs: number) {
      sizer?.observe(latencyMs, memoryTight());
      lastAck = { seq: Number(a.seq), key: a.last_key?.values.length ? a.last_key.values : null };
      if (a.duplicate) duplicates++;
      inserted += Number(a.rows_inserted); updated += Number(a.rows_updated); marked += Number(a.rows_marked_for_delete);
      if (Date.now() - lastCheckpoint >= 1000) {
        lastCheckpoint = Date.now();
        void emit({ ...base, type: 'checkpoint', at: now(), seq: lastAck.seq, last_key: lastAck.key, rows, bytes, batches }, `${task.task_id}:cp:${lastAck.seq}:${delivery}`)
          .catch((e) => tlog.warn({ err: (e as Error).message }, 'checkpoint event not published'));
      }
    }

    const abort = () => sender.cancel(); // the current sender: a keyless restart replaces it
    signal.addEventListener('abort', abort, { once: true });
    try {
      const header = {
        job_id: task.job_id, task_id: task.task_id, target: { name: task.target.name, sealed_url: task.target.sealed_url },
        schema: task.schema, table: task.table, columns: task.columns, key_columns: task.key_columns,
        method: applyMethodToProto(task.method) as pb.ApplyMethod, mirror: task.mirror, on_bad_row: task.on_bad_row,
        range_after: task.range?.after ? { values: task.range.after as string[] } : null,
        range_upto: task.range?.upto ? { values: task.range.upto as string[] } : null,
        copy_format: task.copy_format,
      };
      const keyless = task.key_columns.length === 0;
      /** Starts a keyless table over: the target deletes what earlier attempts applied (with their ledger rows) in one transaction. */
      const restartTable = async (why: string): Promise<TransferStart> => {
        sender.cancel();
        sender = new TransferSender(deps.clients.get(target.address), deps.creditWindow, tlog, onAck, deps.inflight);
        const s = await sender.open({ ...header, restart: true });
        restarted = true;
        await emitRetry({ ...base, type: 'log', at: now(), level: 'warn', message: `${task.schema}.${task.table}: no primary key and ${why}: restarted the table (the rows earlier attempts applied were deleted in one transaction, then the table is read again)` }, `${task.task_id}:restart:${delivery}`);
        return s;
      };
      let start = await sender.open(header);
      // A keyless table resumes by reading its committed batches again and skipping them. In the job
      // snapshot they are the same batches; in a new one (the snapshot's agent died) each must hash
      // equal to the ledger's, or the table changed since and is started over.
      let alive: Promise<boolean> | undefined; // asked once, by whichever needs it first
      const jobSnapshotAlive = () => (alive ??= snapshotAlive(sql, task.snapshot_id));
      let snapshotId = task.snapshot_id;
      if (keyless && start.committedSeq > 0 && !(await jobSnapshotAlive())) {
        snapshotId = '';
        if (start.committedHashes.length !== start.committedSeq) start = await restartTable('the job snapshot is gone');
      }
      // Its ack is awaited at the end, not here: the connection writes it before every later event of
      // the task, and the task's first steps (its diff, its first batches) need not wait a round trip.
      const started = emitRetry({ ...base, type: 'started', at: now(), delivery, resume_after: start.resumeAfter, snapshot: snapshotId ? 'job' : 'own' }, `${task.task_id}:started:${delivery}`);
      started.catch(() => undefined); // awaited below; a task failing before that fails for its own reason
      // Diff re-sync (work/diff-plan.ts): ship only the hash buckets that differ from the target.
      const prepared = task.diff ? deps.prefetch?.take(task) : undefined;
      const diff = task.diff
        ? await decideDiff(task, sql, deps.clients.get(target.address), start, snapshotId !== '' && await jobSnapshotAlive(), tlog, prepared?.decision, deps.changes)
        : null;
      if (diff?.message) sender.sendDiff(diff.message);
      // The prepared decision's rows, read ahead in the job snapshot from the start of the task's range.
      const readAhead = diff?.prepared && !start.resumeAfter ? await prepared?.rows : undefined;

      const read = async (from: TransferStart, snapshotId: string, buckets: NonNullable<typeof diff>['filter'] | null, ahead?: ReadBatch[]) => {
        const committed = keyless ? from.committedSeq : 0;
        let skipped = 0;
        const ship = async (b: ReadBatch) => {
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
          if (skipped < committed) {
            const expected = from.committedHashes[skipped];
            if (expected !== undefined && createHash('sha256').update(b.data).digest('hex') !== expected) throw keylessChanged();
            skipped++;
            return;
          }
          const waited = await limiter.take(b.rows, b.data.length);
          if (waited > 5_000) tlog.info({ waited_ms: waited }, 'reader held back by the job rate limit');
          await sender.send(b).catch((e) => { fromTarget.add(e as object); throw e; });
          rows += b.rows; bytes += b.data.length; batches++;
        };
        const spec = taskReadSpec(task, snapshotId, from.resumeAfter, sizer ? () => sizer.bytes : task.batch_bytes, buckets);
        const result = ahead ? await replay(ahead, ship) : await readTable(sql, spec, tlog, ship);
        if (skipped < committed) throw keylessChanged(); // fewer rows than were committed
        if (committed > 0 && !snapshotId) {
          await emitRetry({ ...base, type: 'log', at: now(), level: 'warn', message: `${task.schema}.${task.table}: no primary key and the job snapshot is gone: the ${committed} committed batch(es), read again in a new snapshot, equal the target's ledger; continued after them without sending them again` }, `${task.task_id}:verified:${delivery}`);
        }
        return result;
      };
      const { snapshot } = await (shipsNothing(diff) ? Promise.resolve({ snapshot: 'job' as const }) : read(start, snapshotId, diff?.filter ?? null, readAhead)).catch(async (e) => {
        if (toSyncflowError(e).code !== KEYLESS_CHANGED || restarted) throw e;
        // Started over on a new stream: the target drops the bucket filter with the rows; every row ships.
        start = await restartTable('it changed since the job snapshot, which is gone');
        return read(start, '', null);
      }).catch((e) => {
        // Only the source database's own failures count against its breaker (the target agent keeps its own).
        if (!(typeof e === 'object' && e !== null && fromTarget.has(e))) source.breaker.failure(e);
        throw e;
      });
      source.breaker.success();
      if (snapshot === 'own' && snapshotId && !keyless) {
        await emitRetry({ ...base, type: 'log', at: now(), level: 'warn', message: `${task.schema}.${task.table}: the job snapshot was gone; read from a new snapshot after the last checkpoint` }, `${task.task_id}:own:${delivery}`);
      }
      const fin = await sender.finish(rows);
      await started;
      marked += Number(fin.rows_marked_for_delete);
      span.setAttributes({ 'syncflow.rows': rows, 'syncflow.bytes': bytes, 'syncflow.batches': batches });
      // The diff line and done are published together (one wait on the FK chain, not two); the
      // connection writes them in this order. The rows read ahead shipped unless a keyless restart read the table again.
      await Promise.all([
        diff ? emitRetry({ ...base, type: 'log', at: now(), level: 'info', message: diffSummary(task, diff, rows, bytes, Boolean(readAhead) && !restarted) }, `${task.task_id}:diff:${delivery}`) : undefined,
        emitRetry({ ...base, type: 'done', at: now(), rows, bytes, batches, inserted, updated, marked_for_delete: marked, duplicates }, `${task.task_id}:done:${delivery}`),
      ]);
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

/**
 * A diff re-sync task whose decision, prepared ahead of its FK level (work/diff-prefetch.ts), ships
 * nothing: reported done without running (its diff line, then done with no rows). The coordinator
 * takes it while the task is still waiting for its parents, so the tables after it in the FK order
 * no longer wait for a task with nothing to do. Should the task be published all the same (its
 * parents ended at that moment), it runs with the same decision, does nothing, and its own done
 * finds the task done already.
 */
export async function finishAhead(task: TaskMessage, d: DiffDecision, deps: Pick<TaskDeps, 'js' | 'names' | 'agentId' | 'log'>): Promise<void> {
  const base = { job_id: task.job_id, task_id: task.task_id, agent_id: deps.agentId, at: new Date().toISOString() };
  await publishEvent(deps.js, deps.names, { ...base, type: 'log', level: 'info', message: `${diffSummary(task, d, 0, 0)}; nothing to ship: done ahead of its FK level, without running` }, `${task.task_id}:diff:ahead`);
  await publishEvent(deps.js, deps.names, { ...base, type: 'done', rows: 0, bytes: 0, batches: 0, inserted: 0, updated: 0, marked_for_delete: 0, duplicates: 0 }, `${task.task_id}:done:ahead`);
  deps.log.info({ job: task.job_id, task: task.task_id, table: `${task.schema}.${task.table}` }, 'diff: nothing to ship; task reported done ahead of its FK level');
}
