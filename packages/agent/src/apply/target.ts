import { ident, toSyncflowError, type Sql, type Logger, type pb } from '@syncflow/shared';
import { ensureTargetSchema } from './ledger.js';
import { joinFragments } from '../read/keys.js';
import { deferIndexes, restoreIndexes, constraintOf } from './defer-indexes.js';
import { registerUndoTable, keyTextArray } from './undo.js';

/**
 * Readies a target for a job: the syncflow schema; the FK constraints the plan sets aside — those
 * inside FK cycles (self-references included), which no load order can satisfy batch by batch, and
 * those of empty tables loaded by COPY, checked once after the data instead of row by row — their
 * definitions saved in the same transaction as the DROP; and the secondary indexes of those tables.
 */
export async function prepareTarget(sql: Sql, req: pb.PrepareTargetRequest__Output, log: Logger): Promise<pb.TargetReply> {
  const { job_id: jobId } = req;
  await ensureTargetSchema(sql);
  const defer = [...req.defer_constraints, ...await foreignKeysOf(sql, req.defer_index_tables)];
  let deferred = 0;
  for (const fk of defer) {
    await sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      const [c] = await tx<{ definition: string; ref_schema: string; ref_table: string }[]>`
        SELECT pg_get_constraintdef(c.oid) AS definition, pn.nspname AS ref_schema, p.relname AS ref_table
        FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
        JOIN pg_class p ON p.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE n.nspname = ${fk.schema} AND r.relname = ${fk.table} AND c.conname = ${fk.name} AND c.contype = 'f'`;
      if (!c) return; // already set aside (a retried prepare), or the target never had it
      await tx`INSERT INTO syncflow.deferred_constraints (job_id, schema_name, table_name, name, definition, ref_schema, ref_table)
               VALUES (${jobId}, ${fk.schema}, ${fk.table}, ${fk.name}, ${c.definition}, ${c.ref_schema}, ${c.ref_table}) ON CONFLICT DO NOTHING`;
      await tx`ALTER TABLE ${ident(tx, fk.schema, fk.table)} DROP CONSTRAINT ${ident(tx, fk.name)}`;
      deferred++;
    });
    log.info({ job: jobId, table: `${fk.schema}.${fk.table}`, constraint: fk.name }, 'foreign key set aside for the load');
  }
  const indexes = await deferIndexes(sql, jobId, req.defer_index_tables, log);
  return { constraints_deferred: deferred, indexes_deferred: indexes };
}

/**
 * Ends a job on the target: indexes and keys set aside rebuilt, mirror deletes (in the given order:
 * children before parents), constraints set aside restored (added NOT VALID at once, so they guard new writes, then
 * validated), sequences set to the source's values. Each step is idempotent.
 */
export async function finalizeTarget(sql: Sql, req: pb.FinalizeTargetRequest__Output, log: Logger): Promise<pb.TargetReply> {
  let rowsDeleted = 0;
  // Indexes set aside first (keys included): foreign keys need the keys they reference, the deletes
  // find their rows through them, and validating the foreign keys reads through them.
  const indexesRestored = await restoreIndexes(sql, req.job_id, PARALLEL_JOBS, log);
  // --create-missing: indexes and foreign keys of the tables created for this job, after their data.
  for (const stmt of req.post_ddl) {
    // DDL text built by the source agent from its catalog (pg_get_indexdef / pg_get_constraintdef), not user input.
    await sql.unsafe(stmt).catch((e) => { throw toSyncflowError(e, 'creating indexes and foreign keys of created tables'); });
  }
  // Only the tables with marks get a transaction (one index probe each to find them): a re-sync's
  // finish otherwise spent four statements on every table of the job that had nothing to delete.
  const keyed = req.delete_order.filter((t) => t.key.length > 0);
  const marked = await sql<{ i: number }[]>`
    SELECT (w.i - 1)::int AS i FROM unnest(${keyed.map((t) => t.schema)}::text[], ${keyed.map((t) => t.name)}::text[]) WITH ORDINALITY AS w(s, t, i)
    WHERE EXISTS (SELECT 1 FROM syncflow.pending_deletes p WHERE p.job_id = ${req.job_id} AND p.schema_name = w.s AND p.table_name = w.t)
    ORDER BY w.i`;
  for (const t of marked.map((m) => keyed[m.i]!)) {
    const key = { columns: t.key.map((k) => k.name), types: t.key.map((k) => ({ schema: k.type_schema, name: k.type_name })) };
    const keyValues = key.columns.map((_, i) => sql`p.key[${i + 1}]`);
    const r = await sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      // The before-image of every deleted row goes to the undo log in the same transaction.
      await registerUndoTable(tx, { jobId: req.job_id, taskId: 'finalize', seq: 0, schema: t.schema, table: t.name, columns: [], key });
      const del = await tx`
        WITH d AS (DELETE FROM ${ident(tx, t.schema, t.name)} t USING syncflow.pending_deletes p
                   WHERE p.job_id = ${req.job_id} AND p.schema_name = ${t.schema} AND p.table_name = ${t.name}
                     AND ${keyCompareColumns(tx, key, keyValues)}
                   RETURNING ${keyTextArray(tx, key.columns, 't')} AS key, ROW(t.*)::text AS r)
        INSERT INTO syncflow.undo_log (job_id, task_id, seq, schema_name, table_name, op, key, before)
        SELECT ${req.job_id}, 'finalize', 0, ${t.schema}, ${t.name}, 'd', key, r FROM d`;
      await tx`DELETE FROM syncflow.pending_deletes WHERE job_id = ${req.job_id} AND schema_name = ${t.schema} AND table_name = ${t.name}`;
      return del.count;
    });
    rowsDeleted += r;
  }
  const { restored, held } = await restoreConstraints(sql, req.job_id, log, req.unfinished); // (their keys: rebuilt above)
  let sequencesSet = 0;
  for (const s of req.sequences) {
    await rememberSequence(sql, req.job_id, s.schema, s.name);
    const [r] = await sql<{ ok: boolean }[]>`
      SELECT CASE WHEN to_regclass(format('%I.%I', ${s.schema}::text, ${s.name}::text)) IS NULL THEN false
             ELSE setval(format('%I.%I', ${s.schema}::text, ${s.name}::text)::regclass, ${s.last_value}::int8, ${s.is_called}) IS NOT NULL END AS ok`;
    if (r?.ok) sequencesSet++;
    else log.warn({ sequence: `${s.schema}.${s.name}` }, 'sequence missing on the target; not set');
  }
  return { rows_deleted: rowsDeleted, constraints_restored: restored, constraints_held: held, constraints_deferred: 0, sequences_set: sequencesSet, indexes_restored: indexesRestored };
}

/** The target's own FK constraints of the given tables (their child side). */
async function foreignKeysOf(sql: Sql, tables: pb.TableRef__Output[]): Promise<pb.ForeignKeyRef__Output[]> {
  if (tables.length === 0) return [];
  const rows = await sql<pb.ForeignKeyRef__Output[]>`
    SELECT n.nspname AS schema, r.relname AS table, c.conname AS name
    FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
    JOIN unnest(${tables.map((t) => t.schema)}::text[], ${tables.map((t) => t.name)}::text[]) AS w(s, t) ON w.s = n.nspname AND w.t = r.relname
    WHERE c.contype = 'f' AND c.conparentid = 0
    ORDER BY 1, 2, 3`;
  return [...rows];
}

/** Indexes rebuilt, and foreign keys validated, at once at the end of a load (each on one connection of the pool). */
const PARALLEL_JOBS = 2;

/** The sequence's value before the job sets it, once per job, so a rollback can set it back. */
async function rememberSequence(sql: Sql, jobId: string, schema: string, name: string): Promise<void> {
  const exists = await sql`SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ${schema} AND c.relname = ${name} AND c.relkind = 'S'`;
  if (!exists.length) return;
  await sql`INSERT INTO syncflow.undo_sequences (job_id, schema_name, name, last_value, is_called)
            SELECT ${jobId}, ${schema}, ${name}, last_value::text, is_called FROM ${ident(sql, schema, name)}
            ON CONFLICT DO NOTHING`;
}

function keyCompareColumns(sql: Sql, key: { columns: string[]; types: { schema: string; name: string }[] }, values: ReturnType<Sql['unsafe']>[]) {
  const casts = key.types.map((ty, i) => sql`CAST(${values[i]!} AS ${ident(sql, ty.schema, ty.name)})`);
  const cols = key.columns.map((c) => sql`t.${ident(sql, c)}`);
  return sql`(${joinFragments(sql, cols)}) = (${joinFragments(sql, casts)})`;
}

/**
 * Re-creates every constraint this job set aside: added NOT VALID (it guards new rows at once), then
 * validated, two at a time, and only then forgotten from syncflow.deferred_constraints — a validation
 * cut short (the database restarting) is done again by the next finalize. One that references an
 * `unfinished` table and that the rows do not satisfy (rows loaded into its table reference parent
 * rows that have not arrived) is held: left NOT VALID and recorded, so the finalize after a
 * `job retry` validates it. One that was NOT VALID before the job comes back NOT VALID.
 */
export async function restoreConstraints(sql: Sql, jobId: string, log: Logger, unfinished: readonly pb.TableRef__Output[] = [],
  only?: readonly pb.TableRef__Output[]): Promise<{ restored: number; held: number; keys: number }> {
  const all = await sql<{ schema_name: string; table_name: string; name: string; definition: string; ref_schema: string | null; ref_table: string | null }[]>`
    SELECT schema_name, table_name, name, definition, ref_schema, ref_table FROM syncflow.deferred_constraints WHERE job_id = ${jobId} ORDER BY deferred_at, name`;
  // `only`: the early restore of tables loaded with their parents, while the rest of the job loads.
  const rows = only ? all.filter((c) => only.some((t) => t.schema === c.schema_name && t.name === c.table_name)) : all;
  // A foreign key needs the key it references: a referenced table loaded by the job gets its primary
  // key or unique constraint back first (waiting for an overlapping rebuild of it, if any).
  const refs = new Map(rows.filter((c) => c.ref_schema !== null && c.ref_table !== null).map((c) => [`${c.ref_schema}.${c.ref_table}`, { schema: c.ref_schema!, name: c.ref_table! }]));
  const keys = refs.size ? await restoreIndexes(sql, jobId, 1, log, [...refs.values()], true) : 0;
  const added: { c: typeof rows[number]; parent: string | null }[] = [];
  for (const c of rows) {
    const one = await sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      // Its row locked first: an early restore and the finalize never add it twice; gone = validated meanwhile.
      const mine = await tx`SELECT 1 FROM syncflow.deferred_constraints WHERE job_id = ${jobId} AND schema_name = ${c.schema_name}
                              AND table_name = ${c.table_name} AND name = ${c.name} FOR UPDATE`;
      if (mine.length === 0) return null;
      const exists = await tx`SELECT 1 FROM pg_constraint co JOIN pg_class r ON r.oid = co.conrelid JOIN pg_namespace ns ON ns.oid = r.relnamespace
                               WHERE ns.nspname = ${c.schema_name} AND r.relname = ${c.table_name} AND co.conname = ${c.name}`;
      // The definition is pg_get_constraintdef() output read from this same database: DDL text, not user input.
      if (exists.length === 0) await tx`ALTER TABLE ${ident(tx, c.schema_name, c.table_name)} ADD CONSTRAINT ${ident(tx, c.name)} ${tx.unsafe(c.definition.replace(NOT_VALID, ''))} NOT VALID`;
      const [p] = await tx<{ schema: string; name: string }[]>`
        SELECT pn.nspname AS schema, p.relname AS name
        FROM pg_constraint co JOIN pg_class r ON r.oid = co.conrelid JOIN pg_namespace ns ON ns.oid = r.relnamespace
        JOIN pg_class p ON p.oid = co.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        WHERE ns.nspname = ${c.schema_name} AND r.relname = ${c.table_name} AND co.conname = ${c.name}`;
      return { c, parent: p && unfinished.some((u) => u.schema === p.schema && u.name === p.name) ? `${p.schema}.${p.name}` : null };
    });
    if (one) added.push(one);
  }
  let restored = 0;
  let held = 0;
  let next = 0;
  // Validation reads both tables whole: two at a time (one per core), each on its own connection.
  const worker = async () => {
    while (next < added.length) {
      const { c, parent } = added[next++]!;
      if (!NOT_VALID.test(c.definition)) {
        try {
          await sql`ALTER TABLE ${ident(sql, c.schema_name, c.table_name)} VALIDATE CONSTRAINT ${ident(sql, c.name)}`;
        } catch (e) {
          if (parent && (e as { code?: string }).code === '23503') {
            log.warn({ job: jobId, table: `${c.schema_name}.${c.table_name}`, constraint: c.name, parent }, 'foreign key back NOT VALID; validated once its parent table is synced');
            held++;
            continue;
          }
          throw toSyncflowError(e, `restoring constraint ${c.name} on ${c.schema_name}.${c.table_name}: it is back (NOT VALID, enforced for new rows) but not validated`);
        }
      }
      if (await constraintOf(sql, c.schema_name, c.table_name, c.name) !== c.definition) {
        throw toSyncflowError(new Error(`constraint ${c.name} on ${c.schema_name}.${c.table_name} differs from the definition it had before the load`), 'restoring constraints');
      }
      // Counted by whoever forgets it (an early restore and the finalize may both have validated it).
      if (!(await forget(sql, c))) continue;
      log.info({ job: jobId, table: `${c.schema_name}.${c.table_name}`, constraint: c.name }, 'foreign key restored and validated');
      restored++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_JOBS, added.length) }, worker));
  return { restored, held, keys };
}

/** pg_get_constraintdef()'s mark of a constraint not validated. */
const NOT_VALID = / NOT VALID$/;

async function forget(sql: Sql, c: { schema_name: string; table_name: string; name: string }): Promise<boolean> {
  const r = await sql`DELETE FROM syncflow.deferred_constraints WHERE schema_name = ${c.schema_name} AND table_name = ${c.table_name} AND name = ${c.name}`;
  return r.count > 0;
}
