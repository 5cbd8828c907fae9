import { ident, identList, hasColumn, savepoint, SyncflowError, ErrorKind, type Sql } from '@syncflow/shared';
import { joinFragments, keyEquals, type KeySpec } from '../read/keys.js';

/**
 * The target's undo log: for every row a job changes, written in the same transaction as the
 * change — the key of a row it inserts (with a hash of the row it wrote), the before-image of a
 * row it updates or deletes. Rollback replays it backwards; its cost follows the rows the job
 * changed, not the table size. Row images are the row's text form (`t::text`), which casts back
 * to the table's row type exactly (every type's own output/input functions), unlike JSON.
 */
export async function ensureSafetySchema(tx: Sql): Promise<void> {
  await tx`CREATE TABLE IF NOT EXISTS syncflow.undo_log (
    job_id uuid NOT NULL, task_id text NOT NULL, seq bigint NOT NULL,
    schema_name text NOT NULL, table_name text NOT NULL,
    op char(1) NOT NULL CHECK (op IN ('i', 'u', 'd')),
    key text[],          -- keyed tables: the key values as text
    before text,         -- u, d: the whole row before, as text
    after_hash text,     -- i, u (keyed): md5 of the whole row as the job left it
    after_row text,      -- i (keyless): ROW(synced columns)::text as the job wrote it
    at timestamptz NOT NULL DEFAULT now())`;
  // One index: rollback reads a job's log table by table; the purge drops whole jobs (purgeUndo).
  // Every logged row is an entry in each index, so each one is paid per row a re-sync upserts: the two
  // earlier ones (by batch, by time) served no query, and cost ~15 % of an upsert batch's time.
  await tx`CREATE INDEX IF NOT EXISTS undo_log_table ON syncflow.undo_log (job_id, schema_name, table_name, op)`;
  await tx`DROP INDEX IF EXISTS syncflow.undo_log_batch, syncflow.undo_log_at`;
  await dropLogId(tx);
  await compressRowImagesWithLz4(tx);
  await tx`CREATE TABLE IF NOT EXISTS syncflow.undo_tables (
    job_id uuid NOT NULL, schema_name text NOT NULL, table_name text NOT NULL,
    columns text[] NOT NULL, key_columns text[] NOT NULL, key_type_schemas text[] NOT NULL, key_type_names text[] NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, schema_name, table_name))`;
  // A batch loaded straight into a table that was empty (apply/batch.ts loadDirect) logs no row: its
  // rows are those whose xmin is the batch transaction's id, and rollback finds them by it.
  await tx`CREATE TABLE IF NOT EXISTS syncflow.undo_loads (
    job_id uuid NOT NULL, task_id text NOT NULL, seq bigint NOT NULL,
    schema_name text NOT NULL, table_name text NOT NULL, xid xid8 NOT NULL, rows bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, task_id, seq))`;
  await tx`CREATE TABLE IF NOT EXISTS syncflow.undo_sequences (
    job_id uuid NOT NULL, schema_name text NOT NULL, name text NOT NULL, last_value text NOT NULL, is_called boolean NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, schema_name, name))`;
  await tx`CREATE TABLE IF NOT EXISTS syncflow.rollbacks (
    job_id uuid PRIMARY KEY, forced boolean NOT NULL, rows_deleted bigint NOT NULL DEFAULT 0,
    rows_restored bigint NOT NULL DEFAULT 0, rows_reinserted bigint NOT NULL DEFAULT 0, at timestamptz NOT NULL DEFAULT now())`;
  await tx`CREATE TABLE IF NOT EXISTS syncflow.quarantine (
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL, task_id text NOT NULL, seq bigint NOT NULL,
    schema_name text NOT NULL, table_name text NOT NULL,
    sqlstate text NOT NULL, message text NOT NULL,
    key text[],          -- the row's key as text, when it could be read
    row_data bytea,      -- the refused row as COPY text, bytes as received (NULL with on_bad_row = skip)
    at timestamptz NOT NULL DEFAULT now())`;
  await tx`CREATE INDEX IF NOT EXISTS quarantine_job ON syncflow.quarantine (job_id, schema_name, table_name)`;
  await ensureChangedConcurrently(tx);
}

/**
 * Logs made by earlier versions have an `id bigserial PRIMARY KEY` that no query reads (rollback and
 * purge go by job and table): its sequence and index were ~30 % of the cost of writing the log (15 400
 * rows of a re-sync's upsert: ~115 → ~82 ms, medians of 15, measured alone). Dropped once; the table is
 * locked for it, so a log in use (a rollback reading it, a long batch) is waited for at most 2 s and
 * then left for a later call, in a savepoint that keeps the rest of the schema transaction.
 */
async function dropLogId(tx: Sql): Promise<void> {
  if (!(await hasColumn(tx, 'syncflow', 'undo_log', 'id'))) return;
  const [prev] = await tx<{ v: string }[]>`SELECT current_setting('lock_timeout') AS v`;
  await savepoint(tx, async (sp) => {
    await sp`SELECT set_config('lock_timeout', '2s', true)`;
    await sp`ALTER TABLE syncflow.undo_log DROP COLUMN id`;
  }).catch((e: { code?: string }) => {
    if (e.code !== LOCK_NOT_AVAILABLE) throw e;
  });
  await tx`SELECT set_config('lock_timeout', ${prev!.v}, true)`;
}

/** SQLSTATE of a lock not granted within lock_timeout. */
const LOCK_NOT_AVAILABLE = '55P03';

/**
 * The undo log's row images (before, after_row) are compressed with lz4 where the server was built
 * with it (a wide row's text — bytea as hex, jsonb — is TOASTed): pglz, the default, cost a third of a
 * logged upsert of 520 `product_media` rows of ~2 KB (80 of 220 ms; lz4: 35). Set once, from the catalog:
 * only values written later use it, and rollback reads either.
 */
async function compressRowImagesWithLz4(tx: Sql): Promise<void> {
  const [s] = await tx<{ lz4: boolean; pending: string[] }[]>`
    SELECT EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)) AS lz4,
           ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = 'syncflow.undo_log'::regclass
                 AND attname IN ('before', 'after_row') AND attcompression <> 'l' ORDER BY attname) AS pending`;
  if (!s!.lz4 || !s!.pending.length) return;
  await tx`ALTER TABLE syncflow.undo_log ${joinFragments(tx, s!.pending.map((c) => tx`ALTER COLUMN ${ident(tx, c)} SET COMPRESSION lz4`))}`;
}

export interface UndoTarget {
  jobId: string;
  taskId: string;
  seq: number;
  schema: string;
  table: string;
  columns: readonly string[];
  key: KeySpec;
}

/** A job's batches share an advisory lock with its rollback: a rollback waits for batches in flight and fences later ones. */
export async function fenceBatch(tx: Sql, jobId: string): Promise<void> {
  await tx`SELECT pg_advisory_xact_lock_shared(hashtextextended(${'syncflow.job:' + jobId}, 0))`;
  const r = await tx`SELECT 1 FROM syncflow.rollbacks WHERE job_id = ${jobId}`;
  if (r.length) throw new SyncflowError(ErrorKind.Cancelled, 'the job was rolled back on the target; no more batches are applied', { code: 'rolled_back' });
}

export async function lockJobExclusive(tx: Sql, jobId: string): Promise<void> {
  await tx`SELECT pg_advisory_xact_lock(hashtextextended(${'syncflow.job:' + jobId}, 0))`;
}

/** Remembers, once per job and table, what rollback needs to read the log: columns, key and key types. */
export async function registerUndoTable(tx: Sql, u: UndoTarget): Promise<void> {
  await tx`INSERT INTO syncflow.undo_tables (job_id, schema_name, table_name, columns, key_columns, key_type_schemas, key_type_names)
           VALUES (${u.jobId}, ${u.schema}, ${u.table}, ${u.columns as string[]}, ${u.key.columns as string[]},
                   ${u.key.types.map((t) => t.schema)}, ${u.key.types.map((t) => t.name)})
           ON CONFLICT DO NOTHING`;
}

/** `ARRAY[alias.k1::text, …]`: a key as text, the form the undo log and quarantine keep. */
export function keyTextArray(sql: Sql, cols: readonly string[], alias: string) {
  return sql`ARRAY[${joinFragments(sql, cols.map((c) => sql`${ident(sql, alias)}.${ident(sql, c)}::text`))}]::text[]`;
}

/** Keyless tables: the synced columns' row text, the identity of a row there. */
export function rowText(sql: Sql, cols: readonly string[], alias: string) {
  return sql`ROW(${identList(sql, cols, alias)})::text`;
}

/**
 * What a keyed batch does with a staged row whose key the target already has: `error` (a load's
 * COPY method: the key must be new), `keep` (a table with no column besides its key: the row is
 * already right), `update` (upsert: the target row takes the staged values, when they differ).
 */
export type OnConflict = 'error' | 'keep' | 'update';

/** SQLSTATE of the optimistic upsert's refusal (syncflow.changed_concurrently()): the batch is applied again with its rows locked first. */
const CHANGED_CONCURRENTLY = '40001';

/**
 * Whether a batch whose optimistic upsert failed with this SQLSTATE runs again locking first: a row
 * changed under it, or a target whose syncflow schema predates syncflow.changed_concurrently()
 * (42883, undefined function: an agent upgraded while a job it did not prepare runs).
 */
export const retryLockingFirst = (sqlstate: string) => sqlstate === CHANGED_CONCURRENTLY || sqlstate === '42883';

/**
 * The function the optimistic upsert calls when a row it is about to update is not the version its
 * statement's snapshot sees (another transaction changed it since): it aborts the statement, and the
 * batch is applied again in a new transaction with `lockFirst` (see upsertLogged).
 */
export async function ensureChangedConcurrently(tx: Sql): Promise<void> {
  const [f] = await tx<{ missing: boolean }[]>`SELECT to_regprocedure('syncflow.changed_concurrently()') IS NULL AS missing`;
  if (!f!.missing) return;
  await tx`CREATE OR REPLACE FUNCTION syncflow.changed_concurrently() RETURNS boolean LANGUAGE plpgsql AS $f$
    BEGIN
      RAISE EXCEPTION 'a row of the batch was changed by another transaction while the batch ran'
        USING ERRCODE = '40001', HINT = 'syncflow applies the batch again, locking its rows before it reads their before-images';
    END $f$`;
}

/**
 * Keyed insert or upsert from the stage, logged in the same statement: the key and after-hash of a
 * row it inserts ('i'), the before-image and after-hash of a row it updates ('u').
 * One statement per chunk: its cost follows the chunk, not the rows already logged.
 *
 * An update's before-image is the row as the statement's snapshot sees it, read beside the update
 * (RETURNING), and the update's condition checks that the row it changes is that very version
 * (same ctid): a row another transaction changed (or inserted) after the statement began — it waits
 * for that writer — makes the statement fail (40001, retryLockingFirst), and the batch is applied again
 * with `lockFirst`: the before-images are read first, with FOR UPDATE (which takes the latest committed
 * version and holds it), then joined to what the upsert returns. The optimistic form costs a third
 * less (no lock written per row, no join): the diff re-sync's upserts are most of its target's work.
 * A partitioned table always locks first: its RETURNING cannot tell an insert from an update (xmax).
 */
export async function upsertLogged(tx: Sql, u: UndoTarget, stage: string, onConflict: OnConflict, lockFirst: boolean): Promise<{ inserted: number; updated: number }> {
  const table = ident(tx, u.schema, u.table);
  const cols = identList(tx, u.columns);
  const st = ident(tx, stage);
  const key = keyTextArray(tx, u.key.columns, 't');
  /** `rows`: CTEs ending in `up` (key, h: after-hash, op, before), whose rows are logged. */
  const counts = async (rows: ReturnType<Sql['unsafe']>) => {
    const [r] = await tx<{ i: string; u: string }[]>`
      WITH ${rows}, logged AS (
        INSERT INTO syncflow.undo_log (job_id, task_id, seq, schema_name, table_name, op, key, before, after_hash)
        SELECT ${u.jobId}, ${u.taskId}, ${u.seq}, ${u.schema}, ${u.table}, op, key, before, h FROM up
        RETURNING op)
      SELECT count(*) FILTER (WHERE op = 'i')::text AS i, count(*) FILTER (WHERE op = 'u')::text AS u FROM logged`;
    return { inserted: Number(r!.i), updated: Number(r!.u) };
  };
  const inserted = tx`${key} AS key, md5(ROW(t.*)::text) AS h, 'i'::char AS op, NULL::text AS before`;
  if (onConflict === 'error') {
    return counts(tx`up AS (INSERT INTO ${table} AS t (${cols}) OVERRIDING SYSTEM VALUE SELECT ${cols} FROM ${st} RETURNING ${inserted})`);
  }
  const keyCols = identList(tx, u.key.columns);
  if (onConflict === 'keep') {
    return counts(tx`up AS (INSERT INTO ${table} AS t (${cols}) OVERRIDING SYSTEM VALUE SELECT ${cols} FROM ${st} ON CONFLICT (${keyCols}) DO NOTHING RETURNING ${inserted})`);
  }
  const rest = u.columns.filter((c) => !u.key.columns.includes(c));
  const keyEq = (a: string, b: string) => keyEquals(tx, u.key.columns, a, b);
  const set = tx`SET (${identList(tx, rest)}) = ROW(${identList(tx, rest, 'excluded')})`;
  const differs = tx`ROW(${identList(tx, rest, 't')})::text IS DISTINCT FROM ROW(${identList(tx, rest, 'excluded')})::text`;
  if (!lockFirst) {
    return counts(tx`up AS (
      INSERT INTO ${table} AS t (${cols}) OVERRIDING SYSTEM VALUE SELECT ${cols} FROM ${st}
      ON CONFLICT (${keyCols}) DO UPDATE ${set}
      WHERE ${differs} AND (t.ctid = (SELECT o.ctid FROM ${table} o WHERE ${keyEq('o', 't')}) OR syncflow.changed_concurrently())
      RETURNING ${key} AS key, md5(ROW(t.*)::text) AS h, CASE WHEN t.xmax = 0 THEN 'i' ELSE 'u' END::char AS op,
        CASE WHEN t.xmax = 0 THEN NULL ELSE (SELECT ROW(o.*)::text FROM ${table} o WHERE ${keyEq('o', 't')}) END AS before)`);
  }
  // The before-images: one index lookup per staged row, in a LATERAL subquery (its FOR UPDATE keeps the
  // planner from flattening it). As a join, the stage without statistics got a merge join that read the
  // table's whole primary key index for every batch.
  return counts(tx`b AS (SELECT x.* FROM ${st} s CROSS JOIN LATERAL (SELECT ${key} AS key, ROW(t.*)::text AS before FROM ${table} t WHERE ${keyEq('s', 't')} FOR UPDATE) x),
    -- the InitPlan over b makes every before-image read (and locked) before the first row is written
    written AS (INSERT INTO ${table} AS t (${cols}) OVERRIDING SYSTEM VALUE SELECT ${cols} FROM ${st} WHERE (SELECT count(*) FROM b) >= 0
                ON CONFLICT (${keyCols}) DO UPDATE ${set} WHERE ${differs}
                RETURNING ${key} AS key, md5(ROW(t.*)::text) AS h),
    up AS (SELECT w.key, w.h, CASE WHEN b.key IS NULL THEN 'i' ELSE 'u' END::char AS op, b.before FROM written w LEFT JOIN b ON b.key = w.key)`);
}

/**
 * Records a batch loaded straight into its table (COPY, no per-row log): its rows carry this
 * transaction's id as xmin. Must run in the batch's top-level transaction, outside any savepoint.
 */
export async function logLoad(tx: Sql, u: UndoTarget, rows: number): Promise<void> {
  await tx`INSERT INTO syncflow.undo_loads (job_id, task_id, seq, schema_name, table_name, xid, rows)
           VALUES (${u.jobId}, ${u.taskId}, ${u.seq}, ${u.schema}, ${u.table}, pg_current_xact_id(), ${rows})`;
}

/** Keyless insert from the stage (all rows, or with `onlyNew` those not already on the target), each logged by its row text. */
export async function insertKeylessLogged(tx: Sql, u: UndoTarget, stage: string, onlyNew: boolean): Promise<number> {
  const table = ident(tx, u.schema, u.table);
  const cols = identList(tx, u.columns);
  const where = onlyNew
    ? tx`WHERE NOT EXISTS (SELECT 1 FROM ${table} t2 WHERE ${rowText(tx, u.columns, 't2')} = ${rowText(tx, u.columns, 's')})`
    : tx``;
  const r = await tx`
    WITH ins AS (INSERT INTO ${table} AS t (${cols}) OVERRIDING SYSTEM VALUE SELECT ${identList(tx, u.columns, 's')} FROM ${ident(tx, stage)} s ${where}
                 RETURNING ${rowText(tx, u.columns, 't')} AS r)
    INSERT INTO syncflow.undo_log (job_id, task_id, seq, schema_name, table_name, op, after_row)
    SELECT ${u.jobId}, ${u.taskId}, ${u.seq}, ${u.schema}, ${u.table}, 'i', r FROM ins`;
  return r.count;
}

/** Deletes every row of a keyless table (mirror's replace), keeping their before-images. */
export async function deleteAllLogged(tx: Sql, u: UndoTarget): Promise<number> {
  const r = await tx`
    WITH d AS (DELETE FROM ${ident(tx, u.schema, u.table)} t RETURNING ROW(t.*)::text AS r)
    INSERT INTO syncflow.undo_log (job_id, task_id, seq, schema_name, table_name, op, before)
    SELECT ${u.jobId}, ${u.taskId}, ${u.seq}, ${u.schema}, ${u.table}, 'd', r FROM d`;
  return r.count;
}

/**
 * Drops the undo records of jobs that last wrote longer ago than the retention — log, tables, loads
 * and sequences together, in one statement (a job's records in part could not roll it back, and a log
 * without its tables would never be found by a later purge); rollback of such a job is then refused.
 */
export async function purgeUndo(sql: Sql, retentionHours: number): Promise<number> {
  const cut = sql`now() - make_interval(hours => ${retentionHours}::int)`;
  const [r] = await sql<{ n: string }[]>`
    WITH old AS (
      SELECT job_id FROM (SELECT job_id, at FROM syncflow.undo_tables UNION ALL SELECT job_id, at FROM syncflow.undo_loads
                          UNION ALL SELECT job_id, at FROM syncflow.undo_sequences) w
      GROUP BY job_id HAVING max(at) < ${cut}
        AND NOT EXISTS (SELECT 1 FROM syncflow.ledger l WHERE l.job_id = w.job_id AND l.applied_at >= ${cut})),
    tables AS (DELETE FROM syncflow.undo_tables x USING old WHERE x.job_id = old.job_id),
    loads AS (DELETE FROM syncflow.undo_loads x USING old WHERE x.job_id = old.job_id),
    sequences AS (DELETE FROM syncflow.undo_sequences x USING old WHERE x.job_id = old.job_id),
    log AS (DELETE FROM syncflow.undo_log x USING old WHERE x.job_id = old.job_id RETURNING 1)
    SELECT count(*)::text AS n FROM log`;
  // Diff re-sync bucket filters matter only while their job runs.
  await sql`DELETE FROM syncflow.diff_filters WHERE at < ${cut}`;
  return Number(r!.n);
}
