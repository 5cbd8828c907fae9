import { createHash } from 'node:crypto';
import { ident, addColumnIfMissing, SyncflowError, ErrorKind, type Sql, type pb } from '@syncflow/shared';
import { hashedTypes, hasBit, inBuckets, tidArray, unpackFilter, MAX_TID_LOOKUPS, type BucketFilter } from '../read/buckets.js';
import { takeTargetTids } from '../read/diff-digests.js';
import { withPinnedTextForms } from '../read/text-forms.js';
import type { UndoTarget } from './undo.js';

/**
 * Diff re-sync on the target: a task's bucket filter (read/buckets.ts) is stored in the
 * transaction of each batch it ships, so every committed batch of a task was applied under one
 * filter and a redelivered task resumes with it (the ready ack hands it back). Mirror marks and a
 * keyless table's replace stay inside the filter's buckets: rows of equal buckets are neither
 * shipped nor deleted.
 */
export async function ensureDiffSchema(tx: Sql): Promise<void> {
  await tx`CREATE TABLE IF NOT EXISTS syncflow.diff_filters (
    job_id uuid NOT NULL, task_id text NOT NULL,
    fine_bits int NOT NULL, buckets bytea NOT NULL,  -- the wire form (deflated bitmap)
    hashed text[] NOT NULL,                          -- columns hashed by their type's hash function
    digest text NOT NULL,                            -- sha256 of the bitmap (or keys): filters compare by it
    keys bytea NOT NULL DEFAULT '',                  -- tracked changes: deflated JSON of the keys (fine_bits 0)
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, task_id))`;
  // Targets set up before tracked changes have no keys column yet (this runs at every stream's start).
  await addColumnIfMissing(tx, 'syncflow', 'diff_filters', 'keys', "bytea NOT NULL DEFAULT ''");
}

type WireFilter = { fine_bits: number; buckets: Buffer; hashed_columns: string[]; keys: Buffer };
export interface StoredFilter { wire: WireFilter; digest: string }

/**
 * Filters compare by this. `b2`: the bucket formula (per-column hashes, read/buckets.ts); a filter
 * stored by an agent with the earlier formula (upgraded in the middle of a job) selects other rows, so
 * it no longer matches and the task fails rather than skip rows by the wrong buckets.
 */
const digestOf = (f: BucketFilter) => (f.keys
  ? `k1:${createHash('sha256').update(JSON.stringify(f.keys)).digest('hex')}`
  : `b2:${f.fineBits}:${f.hashed.join(',')}:${createHash('sha256').update(f.bitmap).digest('hex')}`);

export async function storedFilter(sql: Sql, jobId: string, taskId: string): Promise<StoredFilter | null> {
  const [r] = await sql<{ fine_bits: number; buckets: Buffer; hashed: string[]; keys: Buffer; digest: string }[]>`
    SELECT fine_bits, buckets, hashed, keys, digest FROM syncflow.diff_filters WHERE job_id = ${jobId} AND task_id = ${taskId}`;
  return r ? { wire: { fine_bits: r.fine_bits, buckets: r.buckets, hashed_columns: r.hashed, keys: r.keys }, digest: r.digest } : null;
}

export interface TaskFilter {
  filter: BucketFilter; wire: WireFilter; digest: string;
  /** The hashed columns' types in this database, looked up once per stream (filterTypes). */
  types?: ReadonlyMap<string, string>;
}

/** The types of the filter's hashed columns (the bucket hash calls their type's hash function). */
export async function filterTypes(tx: Sql, schema: string, table: string, f: TaskFilter): Promise<ReadonlyMap<string, string>> {
  f.types ??= await hashedTypes(tx, schema, table, f.filter.hashed);
  return f.types;
}

export function taskFilter(wire: pb.DiffFilter__Output): TaskFilter | null {
  const filter = unpackFilter(wire);
  return filter ? { filter, wire: { ...wire, keys: wire.keys ?? Buffer.alloc(0) }, digest: digestOf(filter) } : null;
}

const mismatch = (what: string) => new SyncflowError(ErrorKind.Unavailable,
  `diff re-sync: ${what}; the task is retried with the filter of its committed batches`, { code: 'diff_filter_mismatch', retryable: true });

/** Refuses a filter that differs from the one stored with committed batches of the task (or a filter after unfiltered batches). */
export function checkResume(committedSeq: number, stored: StoredFilter | null, f: TaskFilter | null): void {
  if (committedSeq === 0 && !stored) return;
  if (stored && !f) throw mismatch('batches of this task were applied with a bucket filter, this attempt has none');
  if (!stored && f && committedSeq > 0) throw mismatch('batches of this task were applied without a bucket filter, this attempt has one');
  if (stored && f && stored.digest !== f.digest) throw mismatch('this attempt\'s bucket filter differs from the stored one');
}

/** In a batch's transaction: stores the task's filter, or checks it against the stored one (a concurrent attempt). */
export async function storeFilter(tx: Sql, jobId: string, taskId: string, f: TaskFilter): Promise<void> {
  await tx`INSERT INTO syncflow.diff_filters (job_id, task_id, fine_bits, buckets, hashed, keys, digest)
           VALUES (${jobId}, ${taskId}, ${f.wire.fine_bits}, ${f.wire.buckets}, ${f.wire.hashed_columns}, ${f.wire.keys}, ${f.digest}) ON CONFLICT DO NOTHING`;
  const [r] = await tx<{ digest: string }[]>`SELECT digest FROM syncflow.diff_filters WHERE job_id = ${jobId} AND task_id = ${taskId}`;
  if (r?.digest !== f.digest) throw mismatch('another attempt of this task stored a different bucket filter');
}

export async function dropFilter(tx: Sql, jobId: string, taskId: string): Promise<void> {
  await tx`DELETE FROM syncflow.diff_filters WHERE job_id = ${jobId} AND task_id = ${taskId}`;
}

/** `get_bit($bitmap, bucket(t)) = 1` for statements that take parameters; call inside withPinnedTextForms. A filter of keys is a FROM item instead (keysFrom). */
export function inFilter(tx: Sql, columns: readonly string[], keyColumns: readonly string[], f: BucketFilter, types: ReadonlyMap<string, string>, alias = 't') {
  if (f.keys) throw new SyncflowError(ErrorKind.Internal, 'a filter of keys is not a condition (keysFrom)');
  return inBuckets(tx, { columns, keyColumns, fineBits: f.fineBits, hashed: f.hashed, types }, alias, tx`${f.bitmap}::bytea`);
}

/**
 * A keyless replace's filter: the target's ctids of the rows of its buckets, kept by this agent's pass
 * that compared them (read/diff-digests.ts takeTargetTids) under the filter's session — or nothing
 * (another agent compared them, a resumed task, too many rows), and the delete scans. Returns how many.
 */
export function rowsByCtid(f: BucketFilter): number | null {
  if (f.keys || !f.session) return null;
  const tids = takeTargetTids(f.session, f.fineBits)?.select((b) => hasBit(f.bitmap, b), MAX_TID_LOOKUPS);
  if (!tids) return null;
  f.tids = tids;
  return tids.length;
}

/**
 * Keyless replace inside the filter: deletes the target's rows of the differing buckets, keeping their
 * before-images — by their ctids when the filter has them (a TID scan, each row still checked against
 * the buckets; rows another writer put into those buckets since the comparison are left, where a scan
 * would delete them: writes by others during a re-sync are outside what a diff sees either way), else by a scan.
 */
export async function deleteBucketsLogged(tx: Sql, u: UndoTarget, f: BucketFilter): Promise<number> {
  const types = await hashedTypes(tx, u.schema, u.table, f.hashed);
  const where = f.tids ? tx`t.ctid = ANY(${tidArray(f.tids)}::tid[]) AND ${inFilter(tx, u.columns, [], f, types)}` : inFilter(tx, u.columns, [], f, types);
  return withPinnedTextForms(tx, async () => {
    const r = await tx`
      WITH d AS (DELETE FROM ${ident(tx, u.schema, u.table)} t WHERE ${where} RETURNING ROW(t.*)::text AS r)
      INSERT INTO syncflow.undo_log (job_id, task_id, seq, schema_name, table_name, op, before)
      SELECT ${u.jobId}, ${u.taskId}, ${u.seq}, ${u.schema}, ${u.table}, 'd', r FROM d`;
    return r.count;
  });
}
