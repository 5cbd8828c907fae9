import { ident, identList, quoteIdent, type Sql, type pb } from '@syncflow/shared';
import { useSnapshot } from './snapshot.js';
import { joinFragments } from './keys.js';

/**
 * Boundaries that cut a big table into `parts` key ranges of about equal row counts, read inside the
 * job snapshot from a block sample (cheap at any size), so every range task of the table reads rows of
 * the same instant. A keyless table answers its size in blocks instead: its parts are ctid ranges.
 */
export async function splitPoints(sql: Sql, req: pb.SplitRequest__Output): Promise<pb.SplitReply> {
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (txAny) => {
    const tx = txAny as unknown as Sql;
    if (req.snapshot_id) await useSnapshot(tx, req.snapshot_id);
    const rel = tx`to_regclass(format('%I.%I', ${req.schema}::text, ${req.table}::text))`;
    const [size] = await tx<{ blocks: string; rows: string }[]>`
      SELECT (pg_relation_size(${rel}) / current_setting('block_size')::int)::text AS blocks,
             greatest((SELECT reltuples FROM pg_class WHERE oid = ${rel}), 1)::int8::text AS rows`;
    const parts = Math.max(1, Math.min(req.parts, 256));
    if (req.key.length === 0 || parts === 1) return { boundaries: [], blocks: size!.blocks };

    // ~3000 sampled rows per part place a boundary well enough; sample at least 1 % of the blocks.
    const pct = Math.min(100, Math.max(1, (parts * 3000 * 100) / Number(size!.rows)));
    const cols = req.key.map((k) => k.name);
    const list = identList(tx, cols);
    const keyText = joinFragments(tx, cols.map((c) => tx`${ident(tx, c)}::text`));
    const desc = tx.unsafe(cols.map((c) => `${quoteIdent(c)} DESC`).join(', '));
    const rows = await tx<{ k: string[] }[]>`
      SELECT DISTINCT ON (part) ARRAY[${keyText}] AS k FROM (
        SELECT ${list}, ntile(${parts}) OVER (ORDER BY ${list}) AS part
        FROM (SELECT ${list} FROM ${ident(tx, req.schema, req.table)} TABLESAMPLE SYSTEM (${pct}) REPEATABLE (42)) s
      ) x
      WHERE part < ${parts}
      ORDER BY part, ${desc}`;
    return { boundaries: rows.map((r) => ({ values: r.k })), blocks: size!.blocks };
  });
}
