import { ident, identList, SyncflowError, ErrorKind, failedPrecondition, displayName, type Sql, type Logger, type pb } from '@syncflow/shared';
import { joinFragments } from '../read/keys.js';
import { lockJobExclusive, rowText } from './undo.js';

interface UndoTable {
  schema_name: string; table_name: string; columns: string[]; key_columns: string[]; key_type_schemas: string[]; key_type_names: string[];
}
interface TargetColumn { name: string; identity: string; generated: string }

/**
 * Undoes a job on this target from its undo log, in one transaction (all or nothing):
 *   1. refuse (unless force) when a row the job wrote was changed since by someone else: an
 *      inserted or updated row whose current hash differs from the one the job left, a deleted
 *      key that exists again, keyless rows that are no longer all there;
 *   2. put back the before-images of updated and deleted rows, parents before children;
 *   3. delete the rows the job inserted, children before parents;
 *   4. set sequences back.
 * The job's exclusive advisory lock waits for its batches in flight; the rollbacks row then fences
 * any later batch of the job. Cost: proportional to the rows the job changed (key lookups), except
 * keyless tables, whose rows are matched by content in one scan, and batches loaded straight into
 * an empty table, whose rows are found by their transaction id (xmin) in one scan.
 */
export async function rollbackJob(sql: Sql, req: pb.RollbackTargetRequest__Output, log: Logger): Promise<pb.RollbackReply> {
  const jobId = req.job_id;
  return sql.begin(async (txAny) => {
    const tx = txAny as unknown as Sql;
    await lockJobExclusive(tx, jobId);
    const [done] = await tx<{ at: string }[]>`SELECT at::text FROM syncflow.rollbacks WHERE job_id = ${jobId}`;
    if (done) throw failedPrecondition(`job ${jobId} was already rolled back on this target (at ${done.at})`, 'already_rolled_back');
    const tables = await tx<UndoTable[]>`
      SELECT schema_name, table_name, columns, key_columns, key_type_schemas, key_type_names FROM syncflow.undo_tables WHERE job_id = ${jobId}`;
    if (tables.length === 0) {
      const [l] = await tx<{ n: number }[]>`SELECT count(*)::int AS n FROM syncflow.ledger WHERE job_id = ${jobId}`;
      if (l!.n > 0) throw failedPrecondition(`the undo log of job ${jobId} is gone (purged after the retention, SYNCFLOW_UNDO_RETENTION_HOURS): it cannot be rolled back`, 'undo_purged');
    }
    const rank = new Map(req.order.map((t, i) => [`${t.schema}.${t.name}`, i]));
    const parentsFirst = [...tables].sort((a, b) => (rank.get(`${a.schema_name}.${a.table_name}`) ?? 1e9) - (rank.get(`${b.schema_name}.${b.table_name}`) ?? 1e9));

    if (!req.force) {
      const conflicts: pb.RollbackConflict[] = [];
      let total = 0;
      for (const t of parentsFirst) {
        const found = await findConflicts(tx, jobId, t);
        total += found.count;
        conflicts.push(...found.sample);
      }
      if (total > 0) {
        const first = conflicts.slice(0, 5).map((c) => `${displayName(c.schema ?? "", c.table ?? "")} ${c.key}: ${c.reason}`).join('; ');
        throw new SyncflowError(ErrorKind.FailedPrecondition,
          `${total} row(s) written by job ${jobId} were changed since by someone else (${first}); nothing was rolled back — use --force to overwrite them`,
          { code: 'rollback_conflict' });
      }
    }

    let restored = 0, reinserted = 0, deleted = 0;
    for (const t of parentsFirst) {
      const cols = await targetColumns(tx, t);
      reinserted += await putBack(tx, jobId, t, cols, 'd');
      restored += await putBack(tx, jobId, t, cols, 'u');
    }
    for (const t of [...parentsFirst].reverse()) deleted += await deleteInserted(tx, jobId, t);

    let sequences = 0;
    const seqs = await tx<{ schema_name: string; name: string; last_value: string; is_called: boolean }[]>`
      SELECT schema_name, name, last_value, is_called FROM syncflow.undo_sequences WHERE job_id = ${jobId}`;
    for (const s of seqs) {
      const [r] = await tx<{ ok: boolean }[]>`
        SELECT CASE WHEN to_regclass(format('%I.%I', ${s.schema_name}::text, ${s.name}::text)) IS NULL THEN false
               ELSE setval(format('%I.%I', ${s.schema_name}::text, ${s.name}::text)::regclass, ${s.last_value}::int8, ${s.is_called}) IS NOT NULL END AS ok`;
      if (r?.ok) sequences++;
    }

    await tx`INSERT INTO syncflow.rollbacks (job_id, forced, rows_deleted, rows_restored, rows_reinserted)
             VALUES (${jobId}, ${req.force}, ${deleted}, ${restored}, ${reinserted})`;
    await tx`DELETE FROM syncflow.undo_log WHERE job_id = ${jobId}`;
    await tx`DELETE FROM syncflow.undo_loads WHERE job_id = ${jobId}`;
    await tx`DELETE FROM syncflow.undo_sequences WHERE job_id = ${jobId}`;
    await tx`DELETE FROM syncflow.pending_deletes WHERE job_id = ${jobId}`;
    log.info({ job: jobId, deleted, restored, reinserted, sequences, forced: req.force }, 'job rolled back on the target');
    return { rows_deleted: deleted, rows_restored: restored, rows_reinserted: reinserted, conflicts: [], conflict_count: 0, sequences_restored: sequences };
  });
}

/** `(t.k1, …) = (CAST(u.key[1] AS type1), …)`: matches through the table's key index. */
function keyMatch(sql: Sql, t: UndoTable, alias: string, keyExpr: string) {
  const casts = t.key_columns.map((_, i) => sql`CAST(${sql.unsafe(keyExpr)}[${i + 1}] AS ${ident(sql, t.key_type_schemas[i]!, t.key_type_names[i]!)})`);
  return sql`(${identList(sql, t.key_columns, alias)}) = (${joinFragments(sql, casts)})`;
}

const keyText = (key: string[] | null) => (key ? `(${key.join(', ')})` : '(row)');

async function findConflicts(tx: Sql, jobId: string, t: UndoTable): Promise<{ count: number; sample: pb.RollbackConflict[] }> {
  const table = ident(tx, t.schema_name, t.table_name);
  const where = tx`u.job_id = ${jobId} AND u.schema_name = ${t.schema_name} AND u.table_name = ${t.table_name}`;
  const sample: pb.RollbackConflict[] = [];
  let count = 0;
  if (t.key_columns.length) {
    const changed = await tx<{ key: string[]; op: string }[]>`
      SELECT u.key, u.op FROM syncflow.undo_log u
      WHERE ${where} AND u.op IN ('i', 'u')
        AND NOT EXISTS (SELECT 1 FROM ${table} t WHERE ${keyMatch(tx, t, 't', 'u.key')} AND md5(ROW(t.*)::text) = u.after_hash)`;
    const back = await tx<{ key: string[] }[]>`
      SELECT u.key FROM syncflow.undo_log u
      WHERE ${where} AND u.op = 'd' AND EXISTS (SELECT 1 FROM ${table} t WHERE ${keyMatch(tx, t, 't', 'u.key')})`;
    count = changed.length + back.length + (await changedLoads(tx, jobId, t, sample));
    for (const c of changed.slice(0, 20)) sample.push({ schema: t.schema_name, table: t.table_name, key: keyText(c.key), reason: c.op === 'i' ? 'the row it inserted was changed or deleted since' : 'the row it updated was changed or deleted since' });
    for (const c of back.slice(0, 20)) sample.push({ schema: t.schema_name, table: t.table_name, key: keyText(c.key), reason: 'the row it deleted exists again' });
  } else {
    const [r] = await tx<{ n: string }[]>`
      WITH u AS (SELECT after_row AS r, count(*) AS n FROM syncflow.undo_log u WHERE ${where} AND u.op = 'i' GROUP BY 1),
           cur AS (SELECT ${rowText(tx, t.columns, 't')} AS r, count(*) AS m FROM ${table} t GROUP BY 1)
      SELECT coalesce(sum(u.n - coalesce(cur.m, 0)), 0)::text AS n FROM u LEFT JOIN cur ON cur.r = u.r WHERE coalesce(cur.m, 0) < u.n`;
    count = Number(r!.n);
    if (count) sample.push({ schema: t.schema_name, table: t.table_name, key: '(keyless)', reason: `${count} row(s) it inserted were changed or deleted since` });
    count += await changedLoads(tx, jobId, t, sample);
  }
  return { count, sample };
}

/** The transaction ids of the job's batches loaded straight into table t (their rows' xmin). */
const loadXids = (tx: Sql, jobId: string, t: UndoTable) =>
  tx`SELECT l.xid::xid FROM syncflow.undo_loads l WHERE l.job_id = ${jobId} AND l.schema_name = ${t.schema_name} AND l.table_name = ${t.table_name}`;

/**
 * Rows of directly loaded batches that are no longer as the job left them: an update gives a row
 * a new xmin and a delete removes it, so fewer rows carry the batches' ids than they loaded.
 */
async function changedLoads(tx: Sql, jobId: string, t: UndoTable, sample: pb.RollbackConflict[]): Promise<number> {
  const [l] = await tx<{ n: string }[]>`
    SELECT coalesce(sum(rows), 0)::text AS n FROM syncflow.undo_loads WHERE job_id = ${jobId} AND schema_name = ${t.schema_name} AND table_name = ${t.table_name}`;
  if (Number(l!.n) === 0) return 0;
  const [c] = await tx<{ n: string }[]>`SELECT count(*)::text AS n FROM ${ident(tx, t.schema_name, t.table_name)} t WHERE t.xmin IN (${loadXids(tx, jobId, t)})`;
  const changed = Number(l!.n) - Number(c!.n);
  if (changed > 0) sample.push({ schema: t.schema_name, table: t.table_name, key: '(loaded)', reason: `${changed} row(s) of its initial load were changed or deleted since` });
  return Math.max(0, changed);
}

async function targetColumns(tx: Sql, t: UndoTable): Promise<TargetColumn[]> {
  const cols = await tx<TargetColumn[]>`
    SELECT a.attname AS name, a.attidentity::text AS identity, a.attgenerated::text AS generated
    FROM pg_attribute a WHERE a.attrelid = to_regclass(format('%I.%I', ${t.schema_name}::text, ${t.table_name}::text))
      AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`;
  if (!cols.length) throw failedPrecondition(`table ${displayName(t.schema_name, t.table_name)} no longer exists on the target`, 'table_gone');
  return cols;
}

/**
 * Writes back the before-images of the rows the job updated ('u') or deleted ('d'). Keyed: an
 * upsert on the key (with force, a row deleted since comes back too); keyless: plain inserts.
 */
async function putBack(tx: Sql, jobId: string, t: UndoTable, cols: TargetColumn[], op: 'u' | 'd'): Promise<number> {
  const table = ident(tx, t.schema_name, t.table_name);
  const insertable = cols.filter((c) => !c.generated).map((c) => c.name);
  const values = joinFragments(tx, insertable.map((c) => tx`(x.r).${ident(tx, c)}`));
  const images = tx`SELECT CAST(u.before AS ${table}) AS r FROM syncflow.undo_log u
                    WHERE u.job_id = ${jobId} AND u.schema_name = ${t.schema_name} AND u.table_name = ${t.table_name} AND u.op = ${op}`;
  if (!t.key_columns.length) {
    const r = await tx`INSERT INTO ${table} (${identList(tx, insertable)}) OVERRIDING SYSTEM VALUE SELECT ${values} FROM (${images}) x`;
    return r.count;
  }
  const rest = cols.filter((c) => !c.generated && c.identity !== 'a' && !t.key_columns.includes(c.name)).map((c) => c.name);
  const onConflict = rest.length
    ? tx`DO UPDATE SET (${identList(tx, rest)}) = ROW(${identList(tx, rest, 'excluded')})`
    : tx`DO NOTHING`;
  const r = await tx`INSERT INTO ${table} AS t (${identList(tx, insertable)}) OVERRIDING SYSTEM VALUE SELECT ${values} FROM (${images}) x
                     ON CONFLICT (${identList(tx, t.key_columns)}) ${onConflict}`;
  return r.count;
}

/** Deletes the rows the job inserted: by key, or for keyless tables as many rows of each content as it inserted. */
async function deleteInserted(tx: Sql, jobId: string, t: UndoTable): Promise<number> {
  const table = ident(tx, t.schema_name, t.table_name);
  // Rows of batches loaded straight into the table: found by their transaction's id.
  const loaded = (await tx`DELETE FROM ${table} t WHERE t.xmin IN (${loadXids(tx, jobId, t)})`).count;
  return loaded + (await deleteLogged(tx, jobId, t, table));
}

async function deleteLogged(tx: Sql, jobId: string, t: UndoTable, table: ReturnType<typeof ident>): Promise<number> {
  const where = tx`u.job_id = ${jobId} AND u.schema_name = ${t.schema_name} AND u.table_name = ${t.table_name} AND u.op = 'i'`;
  if (t.key_columns.length) {
    const r = await tx`DELETE FROM ${table} t USING syncflow.undo_log u WHERE ${where} AND ${keyMatch(tx, t, 't', 'u.key')}`;
    return r.count;
  }
  const r = await tx`
    DELETE FROM ${table} t WHERE (t.tableoid, t.ctid) IN (
      SELECT x.tableoid, x.ctid FROM (SELECT t2.tableoid, t2.ctid, ${rowText(tx, t.columns, 't2')} AS r,
                                 row_number() OVER (PARTITION BY ${rowText(tx, t.columns, 't2')}) AS rn FROM ${table} t2) x
      JOIN (SELECT u.after_row AS r, count(*) AS n FROM syncflow.undo_log u WHERE ${where} GROUP BY 1) c ON c.r = x.r AND x.rn <= c.n)`;
  return r.count;
}
