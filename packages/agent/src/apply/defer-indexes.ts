import { ident, SyncflowError, ErrorKind, type Sql, type Logger, type pb } from '@syncflow/shared';

/**
 * Indexes of tables being loaded empty are dropped for the load and rebuilt after it — building an
 * index once over the data is far cheaper than maintaining it row by row (measured: a COPY of 2.2 M
 * rows into a table with its two-column primary key 3.1 s, without it 1.0 s plus 1.2 s to build it).
 * That includes primary keys and unique constraints, set aside with their index, unless something
 * still needs them during the load: a foreign key that references them (those of the loaded tables
 * are set aside before this), a replica identity, a publication of the table (its deletes would need
 * the key), a deferrable or partitioned one. Definitions are saved in syncflow.deferred_indexes in the
 * same transaction as the DROP, so a crash in between is repaired by the next finalize; what is
 * rebuilt is checked against the saved definition. Other indexes that something depends on stay.
 */
export async function deferIndexes(sql: Sql, jobId: string, tables: pb.TableRef__Output[], log: Logger): Promise<number> {
  let n = 0;
  for (const t of tables) {
    n += await sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      const idx = await tx<{ name: string; definition: string; constraint_def: string | null }[]>`
        SELECT ic.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
               CASE WHEN c.oid IS NOT NULL THEN pg_get_constraintdef(c.oid) END AS constraint_def
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class r ON r.oid = i.indrelid
        LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
        WHERE i.indrelid = to_regclass(format('%I.%I', ${t.schema}::text, ${t.name}::text))
          AND (c.oid IS NULL OR (c.contype IN ('p', 'u') AND c.conname = ic.relname AND NOT c.condeferrable AND c.conparentid = 0
               AND r.relkind = 'r' AND NOT i.indisreplident
               AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.schemaname = ${t.schema} AND p.tablename = ${t.name})))
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indexrelid AND d.deptype = 'n')
          AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
        ORDER BY 1`;
      for (const i of idx) {
        await tx`INSERT INTO syncflow.deferred_indexes (job_id, schema_name, table_name, name, definition, constraint_def)
                 VALUES (${jobId}, ${t.schema}, ${t.name}, ${i.name}, ${i.definition}, ${i.constraint_def}) ON CONFLICT DO NOTHING`;
        if (i.constraint_def) await tx`ALTER TABLE ${ident(tx, t.schema, t.name)} DROP CONSTRAINT ${ident(tx, i.name)}`;
        else await tx`DROP INDEX ${ident(tx, t.schema, i.name)}`;
      }
      return idx.length;
    });
  }
  if (n) log.info({ job: jobId, indexes: n }, 'indexes set aside for the load');
  return n;
}

/**
 * Rebuilds the indexes the job set aside (all, or those of `tables`; `keysOnly`: only primary keys
 * and unique constraints, which foreign keys need before they can be added back), keys first,
 * `parallel` at a time, each verified against its saved definition. Each is built in a transaction that
 * holds its syncflow.deferred_indexes row locked: an early rebuild (a table whose load is done, while
 * others load) and the job's finalize may overlap, and the second one waits, then finds the row gone.
 */
export async function restoreIndexes(sql: Sql, jobId: string, parallel: number, log: Logger, tables?: readonly { schema: string; name: string }[], keysOnly = false): Promise<number> {
  const all = await sql<{ schema_name: string; table_name: string; name: string; is_key: boolean }[]>`
    SELECT schema_name, table_name, name, constraint_def IS NOT NULL AS is_key FROM syncflow.deferred_indexes
    WHERE job_id = ${jobId} ORDER BY constraint_def IS NULL, schema_name, table_name, name`;
  const rows = all.filter((i) => (!keysOnly || i.is_key) && (!tables || tables.some((t) => t.schema === i.schema_name && t.name === i.table_name)));
  let next = 0;
  let rebuilt = 0;
  const worker = async () => {
    while (next < rows.length) {
      const i = rows[next++]!;
      const started = Date.now();
      const done = await sql.begin(async (txAny) => {
        const tx = txAny as unknown as Sql;
        const [saved] = await tx<{ definition: string; constraint_def: string | null }[]>`
          SELECT definition, constraint_def FROM syncflow.deferred_indexes WHERE schema_name = ${i.schema_name} AND table_name = ${i.table_name} AND name = ${i.name} FOR UPDATE`;
        if (!saved) return false; // rebuilt meanwhile by an overlapping call
        // A key is built, then put on its table, which needs the strongest lock: taken in a mode that
        // excludes every other index build and foreign key on the table first, so that two such
        // upgrades (a primary key and a unique constraint of one table, rebuilt side by side) can
        // never each hold the table while waiting for the other (seen: "deadlock detected").
        if (saved.constraint_def) await tx`LOCK TABLE ${ident(tx, i.schema_name, i.table_name)} IN SHARE ROW EXCLUSIVE MODE`;
        // pg_get_indexdef() output read from this same database: DDL text, not user input.
        if (await definitionOf(tx, i.schema_name, i.name) === null) await tx.unsafe(saved.definition);
        if (saved.constraint_def && await constraintOf(tx, i.schema_name, i.table_name, i.name) === null) {
          // The key comes back on the index just built (no second build); its columns kept NOT NULL.
          const kind = saved.constraint_def.startsWith('PRIMARY KEY') ? tx`PRIMARY KEY` : tx`UNIQUE`;
          await tx`ALTER TABLE ${ident(tx, i.schema_name, i.table_name)} ADD CONSTRAINT ${ident(tx, i.name)} ${kind} USING INDEX ${ident(tx, i.name)}`;
        }
        if (await definitionOf(tx, i.schema_name, i.name) !== saved.definition
          || (saved.constraint_def && await constraintOf(tx, i.schema_name, i.table_name, i.name) !== saved.constraint_def)) {
          throw new SyncflowError(ErrorKind.Internal, `index ${i.schema_name}.${i.name} was not restored as it was (saved in syncflow.deferred_indexes)`, { code: 'index_mismatch' });
        }
        await tx`DELETE FROM syncflow.deferred_indexes WHERE schema_name = ${i.schema_name} AND table_name = ${i.table_name} AND name = ${i.name}`;
        return true;
      });
      if (!done) continue;
      rebuilt++;
      log.info({ job: jobId, index: `${i.schema_name}.${i.name}`, key: i.is_key, ms: Date.now() - started }, 'index rebuilt');
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

/** pg_get_constraintdef() of a table's constraint, or null when it has none of that name. */
export async function constraintOf(sql: Sql, schema: string, table: string, name: string): Promise<string | null> {
  const [r] = await sql<{ d: string }[]>`
    SELECT pg_get_constraintdef(co.oid) AS d FROM pg_constraint co JOIN pg_class r ON r.oid = co.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
    WHERE n.nspname = ${schema} AND r.relname = ${table} AND co.conname = ${name}`;
  return r?.d ?? null;
}

async function definitionOf(sql: Sql, schema: string, name: string): Promise<string | null> {
  const [r] = await sql<{ d: string }[]>`
    SELECT pg_get_indexdef(c.oid) AS d FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ${schema} AND c.relname = ${name} AND c.relkind IN ('i', 'I')`;
  return r?.d ?? null;
}
