import { ident, identList, toSyncflowError, SyncflowError, ErrorKind, type Sql, type Logger, type CopyFormat, type TaskMessage } from '@syncflow/shared';
import { RowBatcher, leadingFields, type CutBatch } from './copy-text.js';
import { TupleBatcher, tupleKeys } from './copy-binary.js';
import { keyVsSettings, setKeySettings, joinFragments, type KeySpec } from './keys.js';
import { assertSnapshotId, useSnapshot } from './snapshot.js';
import { readerBucketCondition, type BucketFilter } from './buckets.js';

const SNAPSHOT_GONE = 'snapshot_gone';

export interface ReadSpec {
  schema: string;
  table: string;
  columns: readonly string[];  // key columns first
  key: KeySpec;                // empty columns: keyless table, read in physical order
  snapshotId: string;
  resumeAfter: (string | null)[] | null;
  /** Upper end (inclusive) of this task's key range; null = to the end of the table. */
  upto: (string | null)[] | null;
  /** Keyless tables split into parts: the blocks [from, to) of this part. */
  blocks: { from: number; to: number | null } | null;
  /** Target batch size, read before each chunk (the sizer may change it between batches). */
  batchBytes: number | (() => number);
  /** Diff re-sync: only rows of these hash buckets (read/buckets.ts). */
  buckets?: BucketFilter | null;
  /** 'binary': tuples of binary COPY (the planner checked the types); default 'text'. */
  format?: CopyFormat;
  /** Fail when the job snapshot is gone, instead of reading from a new snapshot (a read ahead must match its decision). */
  requireSnapshot?: boolean;
}

/**
 * A task's read of its table (range, blocks, format) in `snapshotId`, after `resumeAfter` (a keyed
 * table's last committed key; null: from the start of the task's range), under `buckets` (a diff's filter).
 */
export function taskReadSpec(task: TaskMessage, snapshotId: string, resumeAfter: (string | null)[] | null, batchBytes: ReadSpec['batchBytes'],
  buckets: BucketFilter | null): ReadSpec {
  const keyless = task.key_columns.length === 0;
  return {
    schema: task.schema, table: task.table, columns: task.columns, key: { columns: task.key_columns, types: task.key_types }, snapshotId,
    resumeAfter: keyless ? null : resumeAfter ?? task.range?.after ?? null, upto: task.range?.upto ?? null,
    blocks: task.blocks, batchBytes, buckets, format: task.copy_format,
  };
}

export interface ReadBatch extends CutBatch {
  firstKey: (string | null)[];
  lastKey: (string | null)[];
}

/**
 * Streams one table out of the job's snapshot as COPY text or binary COPY, in key order, starting after the
 * checkpoint, cut into batches of whole rows. `emit` is awaited for each batch: while it waits
 * (no credit from the target), the COPY stream is not read, so the database is not either.
 */
export async function readTable(sql: Sql, spec: ReadSpec, log: Logger, emit: (b: ReadBatch) => Promise<void>): Promise<{ snapshot: 'job' | 'own' }> {
  let snapshot: 'job' | 'own' = 'job';
  if (spec.snapshotId) assertSnapshotId(spec.snapshotId);
  let buckets = spec.buckets;
  const run = (withSnapshot: boolean) => sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
    if (withSnapshot) {
      try {
        await useSnapshot(tx, spec.snapshotId);
      } catch (e) {
        throw new SyncflowError(ErrorKind.FailedPrecondition, 'the job snapshot no longer exists', { code: SNAPSHOT_GONE, cause: e });
      }
    }
    const keyed = spec.key.columns.length > 0;
    const table = ident(tx as unknown as Sql, spec.schema, spec.table);
    const cols = identList(tx as unknown as Sql, spec.columns);
    const conds = [];
    if (keyed) {
      if (spec.resumeAfter) {
        await setKeySettings(tx as unknown as Sql, spec.resumeAfter, 'syncflow.k');
        conds.push(keyVsSettings(tx as unknown as Sql, spec.key, '>', 'syncflow.k'));
      }
      if (spec.upto) {
        await setKeySettings(tx as unknown as Sql, spec.upto, 'syncflow.u');
        conds.push(keyVsSettings(tx as unknown as Sql, spec.key, '<=', 'syncflow.u'));
      }
    } else {
      // Keyless: the physical order inside one snapshot is fixed once scans start at block 0.
      await tx`SET LOCAL synchronize_seqscans = off`;
      if (spec.blocks) {
        // A part of the table by block range (a TID range scan): settings again, COPY takes no parameters.
        await tx`SELECT set_config('syncflow.b1', ${`(${spec.blocks.from},0)`}, true)`;
        conds.push(tx`ctid >= current_setting('syncflow.b1')::tid`);
        if (spec.blocks.to !== null) {
          await tx`SELECT set_config('syncflow.b2', ${`(${spec.blocks.to},0)`}, true)`;
          conds.push(tx`ctid < current_setting('syncflow.b2')::tid`);
        }
      }
    }
    // A diff's filter: a condition on the rows' buckets, or the rows of listed keys looked up one by one.
    let from: ReturnType<Sql['unsafe']> = table;
    if (buckets) {
      const f = await readerBucketCondition(tx as unknown as Sql, spec, { columns: spec.columns, keyColumns: spec.key.columns, fineBits: buckets.fineBits, key: spec.key }, buckets);
      if (f.cond) conds.push(f.cond);
      if (f.from) from = f.from;
    }
    const where = conds.length ? tx`WHERE ${joinFragments(tx as unknown as Sql, conds, ' AND ')}` : tx``;
    const order = keyed ? tx`ORDER BY ${identList(tx as unknown as Sql, spec.key.columns)}` : tx``;
    const binary = spec.format === 'binary';
    const query = binary
      ? tx`COPY (SELECT ${cols} FROM ${from} ${where} ${order}) TO STDOUT (FORMAT binary)`
      : tx`COPY (SELECT ${cols} FROM ${from} ${where} ${order}) TO STDOUT`;
    const stream = await query.readable();
    const size = typeof spec.batchBytes === 'function' ? spec.batchBytes : () => spec.batchBytes as number;
    const batcher = binary ? new TupleBatcher(size()) : new RowBatcher(size());
    const k = spec.key.columns.length;
    const keyTypes = spec.key.types.map((t) => t.name);
    // Only the first and last row of each batch are decoded: the key texts of its checkpoint.
    const keysOf = binary ? (row: Buffer) => tupleKeys(row, keyTypes) : (row: Buffer) => leadingFields(row, k);
    const toBatch = (b: CutBatch): ReadBatch => ({
      ...b, firstKey: k ? keysOf(b.firstRow) : [], lastKey: k ? keysOf(b.lastRow) : [],
    });
    // A failing emit (target refused a batch, cancel, pause) must not leave the COPY half-read:
    // breaking out would destroy the stream while postgres.js keeps the socket paused, and the
    // transaction would never end. Cancel the query on the server and drain what is in flight.
    let failure: unknown;
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (failure !== undefined) continue;
        try {
          batcher.setTarget(size());
          for (const b of batcher.push(chunk)) await emit(toBatch(b));
        } catch (e) {
          failure = e;
          void Promise.resolve((query as unknown as { cancel(): unknown }).cancel()).catch(() => undefined);
        }
      }
    } catch (e) {
      throw failure ?? e;
    } finally {
      // postgres.js pauses its socket when a COPY chunk fills the stream's buffer and resumes it
      // from the stream's read(); if that happened on the last chunk, read() is never called again
      // after the end, and the COMMIT's (or ROLLBACK's) answer would never be read. Resume it once more.
      (stream as unknown as { _read?: () => void })._read?.();
    }
    if (failure !== undefined) throw failure;
    const tail = batcher.end();
    if (tail) await emit(toBatch(tail));
  });
  try {
    await run(Boolean(spec.snapshotId));
  } catch (e) {
    const err = toSyncflowError(e);
    // The exporting transaction is gone (its agent restarted): take a new snapshot and say so.
    if (err.code === SNAPSHOT_GONE && !spec.requireSnapshot) {
      log.warn({ table: spec.table }, 'job snapshot no longer exists; reading from a new snapshot');
      snapshot = 'own';
      // The filter's ctids name rows of the job snapshot: in a new one the rows of its buckets are found by scanning.
      if (buckets?.tids) buckets = { ...buckets, tids: undefined };
      await run(false);
    } else throw err;
  }
  return { snapshot };
}
