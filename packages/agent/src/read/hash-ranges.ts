import { ident, identList, invalidArgument, notFound, displayName, type Sql, type pb } from '@syncflow/shared';
import { keyCompare, joinFragments, columnTypes, type KeySpec } from './keys.js';
import { useSnapshot } from './snapshot.js';
import { pinTextForms } from './text-forms.js';

/**
 * Hashes of a table for verify and dry run, computed inside the database (only counts and md5s
 * travel): for key ranges, `count(*)` and the md5 of the rows' md5s in key order; or per row,
 * (key, md5) of a small range; keyless tables give the multiset of row md5s, by groups
 * (keylessHashes). A row's md5 is that of ROW(columns)::text, the same rule the upsert uses to
 * decide that a row changed.
 */
export async function hashRanges(sql: Sql, req: pb.HashRangesRequest__Output): Promise<pb.HashRangesReply> {
  if (!req.columns.length) throw invalidArgument('columns are required');
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (txAny) => {
    const tx = txAny as unknown as Sql;
    if (req.snapshot_id) await useSnapshot(tx, req.snapshot_id);
    await pinTextForms(tx);
    const table = ident(tx, req.schema, req.table);
    const rowHash = tx`md5(ROW(${identList(tx, req.columns, 't')})::text)`;
    const key: KeySpec = { columns: req.key.map((k) => k.name), types: await keyTypes(tx, req) };
    if (key.columns.length === 0) return keylessHashes(tx, req, tx`SELECT ${rowHash} AS h FROM ${table} t`);
    const order = identList(tx, key.columns, 't');
    const keyText = joinFragments(tx, key.columns.map((c) => tx`t.${ident(tx, c)}::text`));
    const lower = req.lower?.values.length ? req.lower.values : null;
    const upper = req.upper?.values.length ? req.upper.values : null;
    const inRange = (lo: string[] | null, hi: string[] | null) => {
      const c = [];
      if (lo) c.push(keyCompare(tx, key, 't', '>', lo));
      if (hi) c.push(keyCompare(tx, key, 't', '<=', hi));
      return c.length ? joinFragments(tx, c, ' AND ') : tx`true`;
    };
    if (req.rows) {
      const rows = await tx<{ k: string[]; h: string }[]>`
        SELECT ARRAY[${keyText}]::text[] AS k, ${rowHash} AS h FROM ${table} t WHERE ${inRange(lower, upper)} ORDER BY ${order}`;
      return { ranges: [], rows: rows.map((r) => ({ key: { values: r.k }, hash: r.h, count: '1' })), prefixes: [] };
    }
    let bounds: string[][] = req.bounds.map((b) => b.values);
    if (!bounds.length && req.splits > 1) {
      const [{ n }] = await tx<{ n: string }[]>`SELECT count(*)::text AS n FROM ${table} t WHERE ${inRange(lower, upper)}`;
      const step = Math.max(1, Math.ceil(Number(n) / req.splits));
      if (Number(n) > step) {
        const cut = await tx<{ k: string[] }[]>`
          SELECT k FROM (SELECT ARRAY[${keyText}]::text[] AS k, row_number() OVER (ORDER BY ${order}) AS rn FROM ${table} t WHERE ${inRange(lower, upper)}) x
          WHERE rn % ${step} = 0 AND rn < ${Number(n)} ORDER BY rn`;
        bounds = cut.map((c) => c.k);
      }
    }
    const ranges: pb.RangeHash[] = [];
    let lo = lower;
    for (const hi of [...bounds, upper]) {
      const [r] = await tx<{ n: string; h: string }[]>`
        SELECT count(*)::text AS n, coalesce(md5(string_agg(${rowHash}, '' ORDER BY ${order})), '') AS h
        FROM ${table} t WHERE ${inRange(lo, hi)}`;
      ranges.push({ upper: hi ? { values: hi } : null, rows: r!.n, hash: r!.h });
      lo = hi;
    }
    return { ranges, rows: [], prefixes: [] };
  });
}

/** Keyless: the longest hash prefix a comparison groups by (16^5 groups). */
const MAX_PREFIX_DIGITS = 5;

/**
 * A keyless table as a multiset of row hashes, in one scan: grouped by their first `prefix_digits`
 * hex digits (a count and the md5 of the group's hashes in sorted order per group: equal multisets
 * give equal groups), or, in rows mode, each distinct hash with its count, of the groups in
 * `prefixes` only. The comparison (coordinator verify/compare.ts) lists only the groups that differ,
 * so neither side holds a row per row of the table (350 000 rows listed whole took ~200 MB of an
 * agent and of the coordinator).
 */
async function keylessHashes(tx: Sql, req: pb.HashRangesRequest__Output, hashes: ReturnType<Sql['unsafe']>): Promise<pb.HashRangesReply> {
  if (req.prefix_digits) {
    if (!Number.isInteger(req.prefix_digits) || req.prefix_digits < 1 || req.prefix_digits > MAX_PREFIX_DIGITS) {
      throw invalidArgument(`prefix_digits must be 1 to ${MAX_PREFIX_DIGITS}, got ${req.prefix_digits}`);
    }
    const groups = await tx<{ p: string; n: string; h: string }[]>`
      SELECT left(x.h, ${req.prefix_digits}) AS p, count(*)::text AS n, md5(string_agg(x.h, '' ORDER BY x.h COLLATE "C")) AS h
      FROM (${hashes}) x GROUP BY 1`;
    return { ranges: [], rows: [], prefixes: groups.map((g) => ({ prefix: g.p, rows: g.n, hash: g.h })) };
  }
  if (!req.rows) throw invalidArgument('a keyless table is compared by its row hashes: prefix_digits or rows');
  const len = req.prefixes[0]?.length ?? 0;
  if (req.prefixes.some((p) => p.length !== len || len > MAX_PREFIX_DIGITS || !/^[0-9a-f]+$/.test(p))) {
    throw invalidArgument(`prefixes must be lowercase hex strings of one length, 1 to ${MAX_PREFIX_DIGITS} digits`);
  }
  const where = len ? tx`WHERE left(x.h, ${len}) = ANY(${req.prefixes}::text[])` : tx``;
  const rows = await tx<{ h: string; n: string }[]>`SELECT x.h, count(*)::text AS n FROM (${hashes}) x ${where} GROUP BY 1`;
  return { ranges: [], rows: rows.map((r) => ({ hash: r.h, count: r.n, key: null })), prefixes: [] };
}

/** This database's own types of the key columns (the other side's may differ: int4 here, int8 there). */
export async function keyTypes(tx: Sql, req: Pick<pb.HashRangesRequest__Output, 'schema' | 'table' | 'key'>): Promise<{ schema: string; name: string }[]> {
  if (!req.key.length) return [];
  const types = await columnTypes(tx, req.schema, req.table);
  if (!types.size) throw notFound(`table ${displayName(req.schema, req.table)} does not exist`);
  return req.key.map((k) => {
    const t = types.get(k.name);
    if (!t) throw invalidArgument(`key column ${k.name} not found in ${displayName(req.schema, req.table)}`);
    return t;
  });
}
