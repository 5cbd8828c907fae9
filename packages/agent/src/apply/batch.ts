import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ident, identList, toSyncflowError, type Sql, type ApplyMethod, type CopyFormat } from '@syncflow/shared';
import { BINARY_HEADER, BINARY_TRAILER } from '../read/copy-binary.js';
import { keyCompare, keyEquals, joinFragments, IntegerKeys, type KeySpec } from '../read/keys.js';
import {
  fenceBatch, registerUndoTable, deleteAllLogged, insertKeylessLogged, upsertLogged, keyTextArray, logLoad, retryLockingFirst, type UndoTarget,
} from './undo.js';
import { applyBisecting, badRowPolicy, isDataError, type ChunkCounts } from './quarantine.js';
import { countBits, keysFrom } from '../read/buckets.js';
import { storeFilter, inFilter, filterTypes, deleteBucketsLogged, type TaskFilter } from './diff-filter.js';
import { withPinnedTextForms } from '../read/text-forms.js';

export interface ApplySpec {
  jobId: string;
  taskId: string;
  schema: string;
  table: string;
  columns: readonly string[];
  key: KeySpec;
  method: ApplyMethod;
  mirror: boolean;
  onBadRow?: string;
  /** Diff re-sync: this task ships only these hash buckets (apply/diff-filter.ts). */
  diff?: TaskFilter | null;
  /** How the batches' bytes are encoded: binary COPY tuples only for method copy (the planner decides). */
  format?: CopyFormat;
  /** A partitioned table: its upserts lock their rows before reading their before-images (upsertLogged). */
  partitioned?: boolean;
}

export interface IncomingBatch {
  seq: number;
  data: Buffer;
  rows: number;
  firstKey: string[] | null;
  lastKey: string[] | null;
}

/** `relocked`: a row changed under the batch's first try; it was applied again with its rows locked first. */
export interface Applied { duplicate: boolean; inserted: number; updated: number; marked: number; quarantined: number; relocked?: boolean }

/**
 * Applies one batch in one transaction together with its ledger row; a batch whose ledger row
 * exists is skipped. Every change is logged in the undo log in the same transaction (apply/undo.ts);
 * rows the target refuses are bisected out and quarantined (apply/quarantine.ts) unless the job
 * says on_bad_row = fail. READ COMMITTED: a row's before-image is the version the batch updates
 * (checked, or locked first), and a concurrent writer of the same row is waited for, not silently
 * overwritten mid-statement (see docs/safety.md, "Isolation").
 */
export async function applyBatch(sql: Sql, spec: ApplySpec, b: IncomingBatch, lowerKey: string[] | null): Promise<Applied> {
  if (spec.method === 'copy') {
    // A load into a table that was empty: COPY straight into it. A batch the target refuses rolls
    // back whole and goes the staged way below, which finds and quarantines the bad rows.
    const direct = await loadDirect(sql, spec, b).catch((e) => {
      if (isDataError(e)) return undefined;
      throw e;
    });
    if (direct) return direct;
  }
  // Upserts read their before-images beside the update; a batch a row changed under runs again, locking first.
  return applyStaged(sql, spec, b, lowerKey, spec.partitioned === true).catch((e) => {
    if (!retryLockingFirst(toSyncflowError(e).code)) throw e;
    return applyStaged(sql, spec, b, lowerKey, true).then((r) => ({ ...r, relocked: true }));
  });
}

/** The staged way: the batch into a temporary stage, then inserted or upserted from it, logged; see upsertLogged for `lockFirst`. */
function applyStaged(sql: Sql, spec: ApplySpec, b: IncomingBatch, lowerKey: string[] | null, lockFirst: boolean): Promise<Applied> {
  return sql.begin('ISOLATION LEVEL READ COMMITTED', async (txAny) => {
    const tx = txAny as unknown as Sql;
    const u = await beginBatch(tx, spec, b);
    if (!u) return DUPLICATE;
    const table = ident(tx, spec.schema, spec.table);
    const cols = identList(tx, spec.columns);
    // Bisecting and quarantine work on COPY text rows: a binary batch is turned into text by the
    // target database itself (its own text output of the same types), inside this transaction.
    const data = spec.format === 'binary' ? await binaryToText(tx, spec, b.data) : b.data;
    if (spec.method === 'replace' && b.seq === 1) await (spec.diff ? deleteBucketsLogged(tx, u, spec.diff.filter) : deleteAllLogged(tx, u));
    const keyCols = spec.key.columns;
    const rest = spec.columns.filter((c) => !keyCols.includes(c));
    const keepStage = spec.mirror && spec.method === 'upsert';

    const applyRows = async (t: Sql, data: Buffer, stage: string): Promise<ChunkCounts> => {
      const st = ident(t, stage);
      await t`CREATE TEMP TABLE ${st} ON COMMIT DROP AS SELECT ${cols} FROM ${table} WITH NO DATA`;
      await copyIn(t, t`COPY ${st} (${cols}) FROM STDIN`, [data]);
      let r: ChunkCounts;
      if (keyCols.length === 0) {
        r = { inserted: await insertKeylessLogged(t, u, stage, spec.method === 'append'), updated: 0 };
      } else {
        r = await upsertLogged(t, u, stage, spec.method === 'copy' ? 'error' : rest.length === 0 ? 'keep' : 'update', lockFirst);
      }
      if (stage !== 'sf_stage') {
        if (keepStage) await t`INSERT INTO sf_stage SELECT * FROM ${st}`;
        await t`DROP TABLE ${st}`;
      }
      return r;
    };
    const q = { jobId: spec.jobId, taskId: spec.taskId, seq: b.seq, schema: spec.schema, table: spec.table, keyCount: keyCols.length, policy: badRowPolicy(spec.onBadRow) };
    const r = await applyBisecting(tx, q, data, applyRows, async (t) => {
      // Parts are applied one by one; mirror's marks still need every good key of the batch in sf_stage.
      if (keepStage) await t`CREATE TEMP TABLE sf_stage ON COMMIT DROP AS SELECT ${cols} FROM ${table} WITH NO DATA`;
    });
    const marked = spec.mirror && spec.method === 'upsert' ? await markMissing(tx, spec, lowerKey, b.lastKey, true, b.seq) : 0;
    return { duplicate: false, inserted: r.inserted, updated: r.updated, marked, quarantined: r.quarantined };
  });
}

const DUPLICATE: Applied = { duplicate: true, inserted: 0, updated: 0, marked: 0, quarantined: 0 };

/**
 * The start of every batch's transaction: the fence against a rollback of the job, then the ledger
 * row. Undefined when the ledger already has the batch (applied before: acknowledge, skip).
 */
async function beginBatch(tx: Sql, spec: ApplySpec, b: IncomingBatch): Promise<UndoTarget | undefined> {
  await fenceBatch(tx, spec.jobId);
  // The content hash serves a keyless table's resume (its committed batches are read again and
  // compared); a keyed one resumes after its last key, so its batches skip the hashing (~1.8 s of the
  // target agent's CPU per 670 MB in the scale-1 load profile).
  const hash = spec.key.columns.length ? '' : createHash('sha256').update(b.data).digest('hex');
  const fresh = await tx`
    INSERT INTO syncflow.ledger (job_id, task_id, seq, first_key, last_key, rows, bytes, hash)
    VALUES (${spec.jobId}, ${spec.taskId}, ${b.seq}, ${b.firstKey}, ${b.lastKey}, ${b.rows}, ${b.data.length}, ${hash})
    ON CONFLICT DO NOTHING RETURNING 1`;
  if (fresh.length === 0) return undefined;
  if (spec.diff) await storeFilter(tx, spec.jobId, spec.taskId, spec.diff);
  const u: UndoTarget = { jobId: spec.jobId, taskId: spec.taskId, seq: b.seq, schema: spec.schema, table: spec.table, columns: spec.columns, key: spec.key };
  await registerUndoTable(tx, u);
  return u;
}

/**
 * The fast path of an initial load: the batch goes by COPY straight into the table, in one
 * transaction with its ledger row; the undo log records the batch (its transaction id), not each row.
 */
async function loadDirect(sql: Sql, spec: ApplySpec, b: IncomingBatch): Promise<Applied> {
  return sql.begin('ISOLATION LEVEL READ COMMITTED', async (txAny) => {
    const tx = txAny as unknown as Sql;
    const u = await beginBatch(tx, spec, b);
    if (!u) return DUPLICATE;
    const table = ident(tx, spec.schema, spec.table);
    const cols = identList(tx, spec.columns);
    if (spec.format === 'binary') {
      // The batch is tuples only: framed with a header and trailer, written as three pieces.
      await copyIn(tx, tx`COPY ${table} (${cols}) FROM STDIN (FORMAT binary)`, [BINARY_HEADER, b.data, BINARY_TRAILER]);
    } else {
      await copyIn(tx, tx`COPY ${table} (${cols}) FROM STDIN`, [b.data]);
    }
    await logLoad(tx, u, b.rows);
    return { duplicate: false, inserted: b.rows, updated: 0, marked: 0, quarantined: 0 };
  });
}

/**
 * Mirror mode: records the keys of target rows inside (lowerKey, upperKey] that the source did not
 * send. They are deleted at the end of the job, children before parents, so FKs hold throughout.
 * A diff from tracked changes looks up only its own keys in that range, and of those only the ones
 * the batch did not bring (the rows the source deleted): for integer keys, the range is cut in JS,
 * and a range without keys costs no statement.
 */
export async function markMissing(tx: Sql, spec: ApplySpec, lowerKey: string[] | null, upperKey: string[] | null, withStage: boolean, seq?: number): Promise<number> {
  const k = spec.key;
  const conds: ReturnType<Sql['unsafe']>[] = [];
  // A row the source has but the target refused (quarantined) is not "gone from the source".
  if (withStage && seq !== undefined) {
    conds.push(tx`NOT EXISTS (SELECT 1 FROM syncflow.quarantine q WHERE q.job_id = ${spec.jobId} AND q.task_id = ${spec.taskId}
                                AND q.seq = ${seq} AND q.key = ${keyTextArray(tx, k.columns, 't')})`);
  }
  let from;
  const keys = spec.diff?.filter.keys;
  if (spec.diff && keys) {
    // Diff re-sync from tracked changes: only the changed keys can be missing from the source.
    const ints = IntegerKeys.of(k.types, keys)?.between(lowerKey, upperKey);
    if (ints?.length === 0) return 0;
    from = keysFrom(tx, spec, k, ints ?? keys, 't', ints ? {} : { after: lowerKey, upto: upperKey }, withStage ? 'sf_stage' : undefined);
  } else {
    if (lowerKey) conds.push(keyCompare(tx, k, 't', '>', lowerKey));
    if (upperKey) conds.push(keyCompare(tx, k, 't', '<=', upperKey));
    if (withStage) conds.push(tx`NOT EXISTS (SELECT 1 FROM sf_stage s WHERE ${keyEquals(tx, k.columns, 's', 't')})`);
    // Diff re-sync by buckets: only rows of the shipped buckets can be missing from the source.
    if (spec.diff) conds.push(inFilter(tx, spec.columns, k.columns, spec.diff.filter, await filterTypes(tx, spec.schema, spec.table, spec.diff)));
    from = tx`${ident(tx, spec.schema, spec.table)} t`;
  }
  const keyText = k.columns.map((c) => tx`t.${ident(tx, c)}::text`);
  const mark = () => tx`
    INSERT INTO syncflow.pending_deletes (job_id, schema_name, table_name, key)
    SELECT ${spec.jobId}, ${spec.schema}, ${spec.table}, ARRAY[${joinFragments(tx, keyText)}]
    FROM ${from}
    WHERE ${conds.length ? andAll(tx, conds) : tx`true`}
    ON CONFLICT DO NOTHING`;
  const rows = spec.diff ? await withPinnedTextForms(tx, mark) : await mark();
  return rows.count;
}

/** The end of a task's stream: mirror marks past the last key; a replace of an empty source empties the table. */
export async function applyEnd(sql: Sql, spec: ApplySpec, lastKey: string[] | null, upto: string[] | null, batches: number): Promise<number> {
  if (spec.method === 'replace' && batches === 0) {
    // A diff where no bucket differs deletes nothing: no scan of the table to find that out.
    if (spec.diff && !spec.diff.filter.keys && countBits(spec.diff.filter.bitmap) === 0) return 0;
    return sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      const u = { jobId: spec.jobId, taskId: spec.taskId, seq: 0, schema: spec.schema, table: spec.table, columns: spec.columns, key: spec.key };
      await registerUndoTable(tx, u);
      return spec.diff ? deleteBucketsLogged(tx, u, spec.diff.filter) : deleteAllLogged(tx, u);
    });
  }
  if (!spec.mirror || spec.method !== 'upsert') return 0;
  if (spec.diff?.filter.keys?.length === 0) return 0; // no key of the task changed: none can be missing
  return sql.begin(async (tx) => markMissing(tx as unknown as Sql, spec, lastKey, upto, false));
}

/**
 * A binary batch as COPY text rows, converted by the target database: COPY binary into a temporary
 * table of the target's columns (no constraints, so every row the types accept goes in), then COPY
 * text out of it, in the same order. A value the types refuse fails the batch as a whole here.
 */
async function binaryToText(tx: Sql, spec: ApplySpec, data: Buffer): Promise<Buffer> {
  const tmp = ident(tx, 'sf_binary');
  const cols = identList(tx, spec.columns);
  await tx`CREATE TEMP TABLE ${tmp} ON COMMIT DROP AS SELECT ${cols} FROM ${ident(tx, spec.schema, spec.table)} WITH NO DATA`;
  await copyIn(tx, tx`COPY ${tmp} (${cols}) FROM STDIN (FORMAT binary)`, [BINARY_HEADER, data, BINARY_TRAILER]);
  await tx`SET LOCAL synchronize_seqscans = off`;
  // Text read back in this same session parses the same; floats print exactly (servers before 12 do not by default).
  await tx`SET LOCAL extra_float_digits = 3`;
  const stream = await tx`COPY ${tmp} (${cols}) TO STDOUT`.readable();
  const chunks: Buffer[] = [];
  try {
    for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
  } finally {
    // As in read/table-reader.ts: resume the socket postgres.js may have paused on the last chunk.
    (stream as unknown as { _read?: () => void })._read?.();
  }
  await tx`DROP TABLE ${tmp}`;
  return Buffer.concat(chunks);
}

async function copyIn(tx: Sql, query: ReturnType<Sql['unsafe']>, data: readonly Buffer[]): Promise<void> {
  // When the server refuses a row after the whole buffer was written, postgres.js hands the error
  // only to query.reject (its promise already resolved with the stream) and never finishes the
  // stream: waiting on the pipeline alone hung forever. Hook reject to see the error.
  const q = query as unknown as { reject: (e: unknown) => void; writable(): Promise<NodeJS.WritableStream> };
  let fail: (e: unknown) => void = () => undefined;
  const failed = new Promise<never>((_, reject) => { fail = reject; });
  failed.catch(() => undefined);
  const reject = q.reject;
  q.reject = (e: unknown) => { fail(e); reject(e); };
  const w = await q.writable();
  await Promise.race([pipeline(Readable.from(data), w), failed]);
}

const andAll = (sql: Sql, parts: ReturnType<Sql['unsafe']>[]) => joinFragments(sql, parts, ' AND ');
