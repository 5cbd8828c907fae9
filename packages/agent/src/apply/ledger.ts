import { addColumnIfMissing, type Sql } from '@syncflow/shared';
import { ensureSafetySchema } from './undo.js';
import { ensureDiffSchema } from './diff-filter.js';

/**
 * The syncflow schema on every target: the ledger that makes apply exactly-once, the keys that
 * mirror mode deletes at the end, and the constraints and indexes set aside during a load (kept in the target
 * itself, in the same transaction as the DROP, so a crash can never lose a definition).
 */
export async function ensureTargetSchema(sql: Sql): Promise<void> {
  // One advisory lock: concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(hashtext('syncflow.schema'))`;
    await tx`CREATE SCHEMA IF NOT EXISTS syncflow`;
    await tx`CREATE TABLE IF NOT EXISTS syncflow.ledger (
      job_id uuid NOT NULL, task_id text NOT NULL, seq bigint NOT NULL,
      first_key text[], last_key text[], rows bigint NOT NULL, bytes bigint NOT NULL, hash text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (job_id, task_id, seq))`;
    await tx`CREATE TABLE IF NOT EXISTS syncflow.pending_deletes (
      job_id uuid NOT NULL, schema_name text NOT NULL, table_name text NOT NULL, key text[] NOT NULL,
      PRIMARY KEY (job_id, schema_name, table_name, key))`;
    await tx`CREATE TABLE IF NOT EXISTS syncflow.deferred_constraints (
      job_id uuid NOT NULL, schema_name text NOT NULL, table_name text NOT NULL, name text NOT NULL, definition text NOT NULL,
      deferred_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (schema_name, table_name, name))`;
    await tx`CREATE TABLE IF NOT EXISTS syncflow.deferred_indexes (
      job_id uuid NOT NULL, schema_name text NOT NULL, table_name text NOT NULL, name text NOT NULL, definition text NOT NULL,
      deferred_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (schema_name, name))`;
    // A primary key or unique constraint set aside with its index (its pg_get_constraintdef; NULL for a plain index),
    // and the table a foreign key set aside references (its key is rebuilt before the foreign key is added back).
    const t = tx as unknown as Sql;
    await addColumnIfMissing(t, 'syncflow', 'deferred_indexes', 'constraint_def', 'text');
    await addColumnIfMissing(t, 'syncflow', 'deferred_constraints', 'ref_schema', 'text');
    await addColumnIfMissing(t, 'syncflow', 'deferred_constraints', 'ref_table', 'text');
    await ensureSafetySchema(t);
    await ensureDiffSchema(t);
  });
}

export interface LedgerPosition { seq: number; lastKey: string[] | null }

/** Where a task stands on this target: its highest committed batch and that batch's last key. */
export async function ledgerPosition(sql: Sql, jobId: string, taskId: string): Promise<LedgerPosition> {
  const [row] = await sql<{ seq: string; last_key: string[] | null }[]>`
    SELECT l.seq::text AS seq, l.last_key FROM syncflow.ledger l WHERE l.job_id = ${jobId} AND l.task_id = ${taskId} ORDER BY l.seq DESC LIMIT 1`;
  // (ORDER BY l.seq, the bigint: a bare "seq" would sort the text output column, and 9 > 22.)
  return row ? { seq: Number(row.seq), lastKey: row.last_key } : { seq: 0, lastKey: null };
}

/** The content hashes of a task's committed batches, in order (a keyless table's resume checks them). */
export async function ledgerHashes(sql: Sql, jobId: string, taskId: string): Promise<string[]> {
  const rows = await sql<{ hash: string }[]>`
    SELECT l.hash FROM syncflow.ledger l WHERE l.job_id = ${jobId} AND l.task_id = ${taskId} ORDER BY l.seq`;
  return rows.map((r) => r.hash);
}
