import { ident, SyncflowError, ErrorKind, type Sql, type Logger, type pb } from '@syncflow/shared';

/**
 * Secondary indexes of tables being loaded empty are dropped for the load and rebuilt after it —
 * building an index once over the data is far cheaper than maintaining it row by row. Definitions are
 * saved in syncflow.deferred_indexes in the same transaction as the DROP, so a crash in between is
 * repaired by the next finalize; rebuilt indexes are checked against the saved definition.
 * Indexes that back a constraint (primary key, unique) or that something depends on stay.
 */
export async function deferIndexes(sql: Sql, jobId: string, tables: pb.TableRef__Output[], log: Logger): Promise<number> {
  let n = 0;
  for (const t of tables) {
    n += await sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      const idx = await tx<{ name: string; definition: string }[]>`
        SELECT ic.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = to_regclass(format('%I.%I', ${t.schema}::text, ${t.name}::text))
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indexrelid AND d.deptype = 'n')
          AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
        ORDER BY 1`;
      for (const i of idx) {
        await tx`INSERT INTO syncflow.deferred_indexes (job_id, schema_name, table_name, name, definition)
                 VALUES (${jobId}, ${t.schema}, ${t.name}, ${i.name}, ${i.definition}) ON CONFLICT DO NOTHING`;
        await tx`DROP INDEX ${ident(tx, t.schema, i.name)}`;
      }
      return idx.length;
    });
  }
  if (n) log.info({ job: jobId, indexes: n }, 'secondary indexes set aside for the load');
  return n;
}

/**
 * Rebuilds the indexes the job set aside (all, or those of `tables`), `parallel` at a time, each
 * verified against its saved definition. Each is built in a transaction that holds its
 * syncflow.deferred_indexes row locked: an early rebuild (a table whose load is done, while others
 * load) and the job's finalize may overlap, and the second one waits, then finds the row gone.
 */
export async function restoreIndexes(sql: Sql, jobId: string, parallel: number, log: Logger, tables?: readonly pb.TableRef__Output[]): Promise<number> {
  const all = await sql<{ schema_name: string; table_name: string; name: string }[]>`
    SELECT schema_name, table_name, name FROM syncflow.deferred_indexes WHERE job_id = ${jobId} ORDER BY schema_name, table_name, name`;
  const rows = tables ? all.filter((i) => tables.some((t) => t.schema === i.schema_name && t.name === i.table_name)) : [...all];
  let next = 0;
  let rebuilt = 0;
  const worker = async () => {
    while (next < rows.length) {
      const i = rows[next++]!;
      const started = Date.now();
      const done = await sql.begin(async (txAny) => {
        const tx = txAny as unknown as Sql;
        const [saved] = await tx<{ definition: string }[]>`
          SELECT definition FROM syncflow.deferred_indexes WHERE schema_name = ${i.schema_name} AND table_name = ${i.table_name} AND name = ${i.name} FOR UPDATE`;
        if (!saved) return false; // rebuilt meanwhile by an overlapping call
        // pg_get_indexdef() output read from this same database: DDL text, not user input.
        if (await definitionOf(tx, i.schema_name, i.name) === null) await tx.unsafe(saved.definition);
        const now = await definitionOf(tx, i.schema_name, i.name);
        if (now !== saved.definition) {
          throw new SyncflowError(ErrorKind.Internal, `index ${i.schema_name}.${i.name} was not restored as it was (saved in syncflow.deferred_indexes)`, { code: 'index_mismatch' });
        }
        await tx`DELETE FROM syncflow.deferred_indexes WHERE schema_name = ${i.schema_name} AND table_name = ${i.table_name} AND name = ${i.name}`;
        return true;
      });
      if (!done) continue;
      rebuilt++;
      log.info({ job: jobId, index: `${i.schema_name}.${i.name}`, ms: Date.now() - started }, 'index rebuilt');
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(parallel, rows.length)) }, worker));
  return rebuilt;
}

/** ANALYZE of a table the job loaded; a failure (the table dropped meanwhile, a lock timeout) is logged, not thrown: statistics only help. */
export async function analyzeTable(sql: Sql, schema: string, table: string, log: Logger): Promise<void> {
  const started = Date.now();
  try {
    await sql`ANALYZE ${ident(sql, schema, table)}`;
    log.info({ table: `${schema}.${table}`, ms: Date.now() - started }, 'loaded table analyzed');
  } catch (e) {
    log.warn({ table: `${schema}.${table}`, err: (e as Error).message }, 'ANALYZE of a loaded table failed; autovacuum will do it');
  }
}

async function definitionOf(sql: Sql, schema: string, name: string): Promise<string | null> {
  const [r] = await sql<{ d: string }[]>`
    SELECT pg_get_indexdef(c.oid) AS d FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ${schema} AND c.relname = ${name} AND c.relkind IN ('i', 'I')`;
  return r?.d ?? null;
}
