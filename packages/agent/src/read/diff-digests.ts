import { ident, invalidArgument, type Sql, type pb } from '@syncflow/shared';
import { keyCompare, joinFragments } from './keys.js';
import { keyTypes } from './hash-ranges.js';
import { useSnapshot } from './snapshot.js';
import { assertFineBits, bucketDigests, COARSE_SHIFT } from './buckets.js';

export interface DigestRequest {
  schema: string;
  table: string;
  columns: readonly string[];
  keyColumns: readonly string[];
  after: readonly (string | null)[] | null;
  upto: readonly (string | null)[] | null;
  fineBits: number;
  coarse: Buffer | null;
  hashed?: readonly string[];
}

/**
 * Bucket digests of a table (part) in one REPEATABLE READ, READ ONLY transaction: inside the job
 * snapshot on the source (`snapshotId`), in the current state on the target (no snapshot).
 */
export async function digestsOf(sql: Sql, req: DigestRequest, snapshotId = ''): Promise<{ digests: Buffer; rows: number }> {
  if (!req.columns.length) throw invalidArgument('columns are required');
  assertFineBits(req.fineBits);
  if (req.coarse && req.coarse.length !== Math.ceil(2 ** (req.fineBits - COARSE_SHIFT) / 8)) throw invalidArgument('coarse bitmap has the wrong size');
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (txAny) => {
    const tx = txAny as unknown as Sql;
    if (snapshotId) await useSnapshot(tx, snapshotId);
    const types = await keyTypes(tx, { schema: req.schema, table: req.table, key: req.keyColumns.map((name) => ({ name, type_schema: '', type_name: '' })) });
    return bucketDigests(tx, {
      schema: req.schema, table: req.table, columns: req.columns, keyColumns: req.keyColumns, fineBits: req.fineBits,
      key: { columns: req.keyColumns, types }, after: req.after, upto: req.upto, coarse: req.coarse,
      hashed: (req.hashed ?? []).filter((c) => req.columns.includes(c)),
    });
  });
}

/** AgentService.DiffBuckets: the target's digests, in its current state. */
export async function diffBuckets(sql: Sql, req: pb.DiffRequest__Output): Promise<pb.DiffReply> {
  const r = await digestsOf(sql, {
    schema: req.schema, table: req.table, columns: req.columns, keyColumns: req.key_columns,
    after: req.range_after?.values.length ? req.range_after.values : null,
    upto: req.range_upto?.values.length ? req.range_upto.values : null,
    fineBits: req.fine_bits, coarse: req.coarse.length ? req.coarse : null, hashed: req.hashed_columns,
  });
  return { digests: r.digests, rows: r.rows };
}

/**
 * Rows of a table (part), which size the buckets: the planner's estimate when it has one, else
 * counted inside the job snapshot.
 */
export async function rowsOf(sql: Sql, req: Omit<DigestRequest, 'fineBits' | 'coarse'>, snapshotId: string, estimate: number): Promise<number> {
  if (estimate > 0) return estimate;
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (txAny) => {
    const tx = txAny as unknown as Sql;
    await useSnapshot(tx, snapshotId);
    const types = await keyTypes(tx, { schema: req.schema, table: req.table, key: req.keyColumns.map((name) => ({ name, type_schema: '', type_name: '' })) });
    const key = { columns: req.keyColumns, types };
    const conds = [];
    if (key.columns.length && req.after) conds.push(keyCompare(tx, key, 't', '>', req.after));
    if (key.columns.length && req.upto) conds.push(keyCompare(tx, key, 't', '<=', req.upto));
    const [r] = await tx<{ n: string }[]>`SELECT count(*)::text AS n FROM ${ident(tx, req.schema, req.table)} t
      ${conds.length ? tx`WHERE ${joinFragments(tx, conds, ' AND ')}` : tx``}`;
    return Number(r!.n);
  });
}
