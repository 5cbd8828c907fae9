import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ident, identList, type Sql, type ApplyMethod } from '@syncflow/shared';
import { keyCompare, joinFragments, type KeySpec } from '../read/keys.js';

export interface ApplySpec {
  jobId: string;
  taskId: string;
  schema: string;
  table: string;
  columns: readonly string[];
  key: KeySpec;
  method: ApplyMethod;
  mirror: boolean;
}

export interface IncomingBatch {
  seq: number;
  data: Buffer;
  rows: number;
  firstKey: string[] | null;
  lastKey: string[] | null;
}

export interface Applied { duplicate: boolean; inserted: number; updated: number; marked: number }

/**
 * Applies one batch in one transaction together with its ledger row; a batch whose ledger row
 * exists is skipped. READ COMMITTED: each upserted row is locked and written atomically, and a
 * concurrent writer of the same row is waited for, not silently overwritten mid-statement (see
 * docs/architecture.md, "Isolation").
 */
export async function applyBatch(sql: Sql, spec: ApplySpec, b: IncomingBatch, lowerKey: string[] | null): Promise<Applied> {
  return sql.begin('ISOLATION LEVEL READ COMMITTED', async (txAny) => {
    const tx = txAny as unknown as Sql;
    const hash = createHash('sha256').update(b.data).digest('hex');
    const fresh = await tx`
      INSERT INTO syncflow.ledger (job_id, task_id, seq, first_key, last_key, rows, bytes, hash)
      VALUES (${spec.jobId}, ${spec.taskId}, ${b.seq}, ${b.firstKey}, ${b.lastKey}, ${b.rows}, ${b.data.length}, ${hash})
      ON CONFLICT DO NOTHING RETURNING 1`;
    if (fresh.length === 0) return { duplicate: true, inserted: 0, updated: 0, marked: 0 };

    const table = ident(tx, spec.schema, spec.table);
    const cols = identList(tx, spec.columns);
    if (spec.method === 'copy' || spec.method === 'replace') {
      if (spec.method === 'replace' && b.seq === 1) await tx`DELETE FROM ${table}`;
      await copyIn(tx, tx`COPY ${table} (${cols}) FROM STDIN`, b.data);
      return { duplicate: false, inserted: b.rows, updated: 0, marked: 0 };
    }

    await tx`CREATE TEMP TABLE sf_stage ON COMMIT DROP AS SELECT ${cols} FROM ${table} WITH NO DATA`;
    await copyIn(tx, tx`COPY sf_stage (${cols}) FROM STDIN`, b.data);
    if (spec.method === 'append') {
      const [r] = await tx<{ n: string }[]>`
        WITH i AS (INSERT INTO ${table} (${cols}) OVERRIDING SYSTEM VALUE
          SELECT ${identList(tx, spec.columns, 's')} FROM sf_stage s
          WHERE NOT EXISTS (SELECT 1 FROM ${table} t WHERE ROW(${identList(tx, spec.columns, 't')})::text = ROW(${identList(tx, spec.columns, 's')})::text)
          RETURNING 1)
        SELECT count(*)::text AS n FROM i`;
      return { duplicate: false, inserted: Number(r!.n), updated: 0, marked: 0 };
    }

    const keyCols = spec.key.columns;
    const rest = spec.columns.filter((c) => !keyCols.includes(c));
    const onConflict = rest.length === 0
      ? tx`DO NOTHING`
      : tx`DO UPDATE SET (${identList(tx, rest)}) = ROW(${identList(tx, rest, 'excluded')})
           WHERE ROW(${identList(tx, rest, 't')})::text IS DISTINCT FROM ROW(${identList(tx, rest, 'excluded')})::text`;
    // Rows of the batch not yet on the target: counted before the upsert (RETURNING xmax is not
    // available on partitioned tables).
    const keyEq = keyEquals(tx, keyCols);
    const [missing] = await tx<{ n: string }[]>`SELECT count(*)::text AS n FROM sf_stage s WHERE NOT EXISTS (SELECT 1 FROM ${table} t WHERE ${keyEq})`;
    const upsert = await tx`INSERT INTO ${table} AS t (${cols}) OVERRIDING SYSTEM VALUE SELECT ${cols} FROM sf_stage
                            ON CONFLICT (${identList(tx, keyCols)}) ${onConflict}`;
    const inserted = Number(missing!.n);
    const marked = spec.mirror ? await markMissing(tx, spec, lowerKey, b.lastKey, true) : 0;
    return { duplicate: false, inserted, updated: upsert.count - inserted, marked };
  });
}

/**
 * Mirror mode: records the keys of target rows inside (lowerKey, upperKey] that the source did not
 * send. They are deleted at the end of the job, children before parents, so FKs hold throughout.
 */
export async function markMissing(tx: Sql, spec: ApplySpec, lowerKey: string[] | null, upperKey: string[] | null, withStage: boolean): Promise<number> {
  const k = spec.key;
  const conds = [];
  if (lowerKey) conds.push(keyCompare(tx, k, 't', '>', lowerKey));
  if (upperKey) conds.push(keyCompare(tx, k, 't', '<=', upperKey));
  if (withStage) {
    conds.push(tx`NOT EXISTS (SELECT 1 FROM sf_stage s WHERE ${keyEquals(tx, k.columns)})`);
  }
  const keyText = k.columns.map((c) => tx`t.${ident(tx, c)}::text`);
  const rows = await tx`
    INSERT INTO syncflow.pending_deletes (job_id, schema_name, table_name, key)
    SELECT ${spec.jobId}, ${spec.schema}, ${spec.table}, ARRAY[${joinFragments(tx, keyText)}]
    FROM ${ident(tx, spec.schema, spec.table)} t
    WHERE ${conds.length ? andAll(tx, conds) : tx`true`}
    ON CONFLICT DO NOTHING`;
  return rows.count;
}

/** The end of a task's stream: mirror marks past the last key; a replace of an empty source empties the table. */
export async function applyEnd(sql: Sql, spec: ApplySpec, lastKey: string[] | null, upto: string[] | null, batches: number): Promise<number> {
  if (spec.method === 'replace' && batches === 0) {
    const r = await sql`DELETE FROM ${ident(sql, spec.schema, spec.table)}`;
    return r.count;
  }
  if (!spec.mirror || spec.method !== 'upsert') return 0;
  return sql.begin(async (tx) => markMissing(tx as unknown as Sql, spec, lastKey, upto, false));
}

async function copyIn(tx: Sql, query: ReturnType<Sql['unsafe']>, data: Buffer): Promise<void> {
  // postgres.js resolves a COPY query with its stream at CopyInResponse; when the server refuses a
  // row after the stream has ended (bad data: check, FK, type), it only calls query.reject, which
  // is then a no-op, and the stream's final callback never comes: the apply would hang forever.
  // Hook that reject so the error reaches us and the transaction rolls back.
  const q = query as unknown as { writable(): Promise<NodeJS.WritableStream>; reject: (e: unknown) => void };
  let fail!: (e: unknown) => void;
  const failed = new Promise<never>((_, rej) => { fail = rej; });
  failed.catch(() => undefined);
  const reject = q.reject;
  q.reject = (e: unknown) => { fail(e); reject(e); };
  const w = await q.writable();
  await Promise.race([pipeline(Readable.from([data]), w), failed]);
}

const andAll = (sql: Sql, parts: ReturnType<Sql['unsafe']>[]) => joinFragments(sql, parts, ' AND ');
/** `s.k1 = t.k1 AND s.k2 = t.k2` between the stage (s) and the table (t). */
const keyEquals = (sql: Sql, cols: readonly string[]) => andAll(sql, cols.map((c) => sql`s.${ident(sql, c)} = t.${ident(sql, c)}`));
