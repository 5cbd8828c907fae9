import { ident, identList, toSyncflowError, SyncflowError, ErrorKind, type Sql, type Logger } from '@syncflow/shared';
import { RowBatcher, leadingFields, type CutBatch } from './copy-text.js';
import { keyAfterSettings, setKeySettings, type KeySpec } from './keys.js';
import { assertSnapshotId } from './snapshot.js';

const SNAPSHOT_GONE = 'snapshot_gone';

export interface ReadSpec {
  schema: string;
  table: string;
  columns: readonly string[];  // key columns first
  key: KeySpec;                // empty columns: keyless table, read in physical order
  snapshotId: string;
  resumeAfter: (string | null)[] | null;
  batchBytes: number;
}

export interface ReadBatch extends CutBatch {
  firstKey: (string | null)[];
  lastKey: (string | null)[];
}

/**
 * Streams one table out of the job's snapshot as COPY text, in key order, starting after the
 * checkpoint, cut into batches of whole rows. `emit` is awaited for each batch: while it waits
 * (no credit from the target), the COPY stream is not read, so the database is not either.
 */
export async function readTable(sql: Sql, spec: ReadSpec, log: Logger, emit: (b: ReadBatch) => Promise<void>): Promise<{ snapshot: 'job' | 'own' }> {
  let snapshot: 'job' | 'own' = 'job';
  if (spec.snapshotId) assertSnapshotId(spec.snapshotId);
  const run = (useSnapshot: boolean) => sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
    // SET TRANSACTION SNAPSHOT takes a literal only; the id was checked against pg_export_snapshot's format.
    if (useSnapshot) {
      try {
        await tx.unsafe(`SET TRANSACTION SNAPSHOT '${spec.snapshotId}'`);
      } catch (e) {
        throw new SyncflowError(ErrorKind.FailedPrecondition, 'the job snapshot no longer exists', { code: SNAPSHOT_GONE, cause: e });
      }
    }
    const keyed = spec.key.columns.length > 0;
    const table = ident(tx as unknown as Sql, spec.schema, spec.table);
    const cols = identList(tx as unknown as Sql, spec.columns);
    let query;
    if (keyed) {
      const order = identList(tx as unknown as Sql, spec.key.columns);
      if (spec.resumeAfter) {
        await setKeySettings(tx as unknown as Sql, spec.resumeAfter);
        query = tx`COPY (SELECT ${cols} FROM ${table} WHERE ${keyAfterSettings(tx as unknown as Sql, spec.key)} ORDER BY ${order}) TO STDOUT`;
      } else {
        query = tx`COPY (SELECT ${cols} FROM ${table} ORDER BY ${order}) TO STDOUT`;
      }
    } else {
      // Keyless: the physical order inside one snapshot is fixed once scans start at block 0.
      await tx`SET LOCAL synchronize_seqscans = off`;
      query = tx`COPY (SELECT ${cols} FROM ${table}) TO STDOUT`;
    }
    const stream = await query.readable();
    const batcher = new RowBatcher(spec.batchBytes);
    const k = spec.key.columns.length;
    const toBatch = (b: CutBatch): ReadBatch => ({
      ...b, firstKey: k ? leadingFields(b.firstRow, k) : [], lastKey: k ? leadingFields(b.lastRow, k) : [],
    });
    // When emit fails (the target refused a batch, the job was cancelled), the COPY must still be
    // ended on this connection before the transaction can roll back, and postgres.js only resumes a
    // paused socket from the stream's reads: cancel the query and keep reading (discarding) until
    // the server stops, else the ROLLBACK's answer is never read and the task hangs.
    let failure: { e: unknown } | undefined;
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (failure) continue;
        try {
          for (const b of batcher.push(chunk)) await emit(toBatch(b));
        } catch (e) {
          failure = { e };
          log.debug({ table: spec.table }, 'emit failed; cancelling the COPY and draining it');
          void (query as unknown as { cancel?: () => Promise<void> }).cancel?.()?.catch?.(() => undefined);
        }
      }
    } catch (e) {
      if (!failure) throw e;
    }
    // postgres.js pauses its socket when a COPY chunk fills the stream's buffer and resumes it
    // from the stream's read(); if that happened on the last chunk, read() is never called again
    // after the end, and the COMMIT's (or ROLLBACK's) answer would never be read. Resume it once more.
    (stream as unknown as { _read?: () => void })._read?.();
    if (failure) {
      log.debug({ table: spec.table }, 'COPY drained after a failure');
      throw failure.e;
    }
    const tail = batcher.end();
    if (tail) await emit(toBatch(tail));
  });
  try {
    await run(Boolean(spec.snapshotId));
  } catch (e) {
    const err = toSyncflowError(e);
    // The exporting transaction is gone (its agent restarted): take a new snapshot and say so.
    if (err.code === SNAPSHOT_GONE) {
      log.warn({ table: spec.table }, 'job snapshot no longer exists; reading from a new snapshot');
      snapshot = 'own';
      await run(false);
    } else throw err;
  }
  return { snapshot };
}
