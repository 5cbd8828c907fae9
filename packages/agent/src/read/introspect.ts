import type { Sql } from '@syncflow/shared';
import { ident, pb } from '@syncflow/shared';

const SKIP_SCHEMAS = ['pg_catalog', 'information_schema', 'pg_toast', 'syncflow'];

/**
 * Describes every user table of a database: columns, the key used for ordering and upserts
 * (primary key, else the first unique index on NOT NULL columns), foreign keys, size, and the
 * current values of the sequences the tables use. Partitions are folded into their parent.
 */
export async function introspect(sql: Sql): Promise<pb.Schema> {
  const tables = await sql<{ oid: number; schema: string; name: string; kind: string; row_estimate: string; bytes: string }[]>`
    SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
      CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(greatest(pc.reltuples, 0)), 0) FROM pg_partition_tree(c.oid) pt JOIN pg_class pc ON pc.oid = pt.relid)
           ELSE greatest(c.reltuples, 0) END::int8::text AS row_estimate,
      CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_total_relation_size(pt.relid)), 0) FROM pg_partition_tree(c.oid) pt)
           ELSE pg_total_relation_size(c.oid) END::int8::text AS bytes
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
      AND n.nspname <> ALL(${SKIP_SCHEMAS}) AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
    ORDER BY 2, 3`;
  if (tables.length === 0) return { tables: [], sequences: [], server_version: await version(sql) };
  const oids = tables.map((t) => t.oid);

  const columns = await sql<{ rel: number; name: string; type: string; not_null: boolean; generated: string; identity: string; type_schema: string; type_name: string }[]>`
    SELECT a.attrelid::int8 AS rel, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
      a.attgenerated::text AS generated, a.attidentity::text AS identity, tn.nspname AS type_schema, t.typname AS type_name
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
    WHERE a.attrelid = ANY(${oids}::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attrelid, a.attnum`;

  // Candidate keys: the primary key first, then unique, non-partial, column-only indexes whose columns are all NOT NULL.
  const keys = await sql<{ rel: number; primary: boolean; cols: string[] }[]>`
    SELECT i.indrelid::int8 AS rel, i.indisprimary AS primary,
      array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[] AS cols
    FROM pg_index i
    WHERE i.indrelid = ANY(${oids}::oid[]) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
      AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) k(attnum) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE NOT a.attnotnull)
    ORDER BY i.indisprimary DESC, i.indnatts, i.indexrelid`;

  const fks = await sql<{ rel: number; name: string; cols: string[]; ref_schema: string; ref_table: string; ref_cols: string[]; definition: string }[]>`
    SELECT c.conrelid::int8 AS rel, c.conname AS name,
      array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[] AS cols,
      rn.nspname AS ref_schema, r.relname AS ref_table,
      array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[] AS ref_cols,
      pg_get_constraintdef(c.oid) AS definition
    FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
    WHERE c.contype = 'f' AND c.conrelid = ANY(${oids}::oid[]) AND c.conparentid = 0
    ORDER BY c.conrelid, c.conname`;

  const setAside = await setAsideBy(sql);
  const out: pb.Table[] = [];
  for (const t of tables) {
    const cols = columns.filter((c) => Number(c.rel) === Number(t.oid));
    const key = keys.find((k) => Number(k.rel) === Number(t.oid));
    const [{ has_rows }] = await sql<{ has_rows: boolean }[]>`SELECT EXISTS (SELECT 1 FROM ${ident(sql, t.schema, t.name)}) AS has_rows`;
    // Never analysed (reltuples = -1 → 0 here) but not empty: count when that is cheap, for progress bars.
    let rowEstimate = t.row_estimate;
    if (has_rows && rowEstimate === '0' && Number(t.bytes) < 64 * 1024 * 1024) {
      const [{ n }] = await sql<{ n: string }[]>`SELECT count(*)::text AS n FROM ${ident(sql, t.schema, t.name)}`;
      rowEstimate = n;
    }
    out.push({
      schema: t.schema, name: t.name,
      columns: cols.map((c) => ({ name: c.name, type: c.type, not_null: c.not_null, generated: c.generated === 's', identity: c.identity, type_schema: c.type_schema, type_name: c.type_name })),
      primary_key: key?.cols ?? [],
      key_kind: key ? (key.primary ? 'primary' : 'unique') : 'none',
      foreign_keys: fks.filter((f) => Number(f.rel) === Number(t.oid)).map((f) => ({
        name: f.name, columns: f.cols, ref_schema: f.ref_schema, ref_table: f.ref_table, ref_columns: f.ref_cols, definition: f.definition,
      })),
      partitioned: t.kind === 'p', row_estimate: rowEstimate, bytes: t.bytes, has_rows,
      set_aside_by: setAside.get(`${t.schema}.${t.name}`) ?? '',
    });
  }
  return { tables: out, sequences: await sequences(sql, oids), server_version: await version(sql) };
}

/**
 * Tables whose indexes or keys a load set aside on this database (apply/defer-indexes.ts) and has not
 * rebuilt yet, by the job that did: until then the catalog shows them without their keys, and a plan
 * made from it would sync them as keyless tables.
 */
async function setAsideBy(sql: Sql): Promise<Map<string, string>> {
  const [{ present }] = await sql<{ present: boolean }[]>`SELECT to_regclass('syncflow.deferred_indexes') IS NOT NULL AS present`;
  if (!present) return new Map();
  const rows = await sql<{ schema_name: string; table_name: string; job: string }[]>`
    SELECT schema_name, table_name, min(job_id::text) AS job FROM syncflow.deferred_indexes GROUP BY 1, 2`;
  return new Map(rows.map((r) => [`${r.schema_name}.${r.table_name}`, r.job]));
}

async function version(sql: Sql): Promise<string> {
  const [{ v }] = await sql<{ v: string }[]>`SELECT current_setting('server_version') AS v`;
  return v;
}

/** Sequences owned by (serial, identity) or used in defaults of the given tables, with their current values. */
async function sequences(sql: Sql, oids: number[]): Promise<pb.SequenceValue[]> {
  const seqs = await sql<{ schema: string; name: string; owned_by_schema: string; owned_by_table: string }[]>`
    SELECT DISTINCT sn.nspname AS schema, s.relname AS name, tn.nspname AS owned_by_schema, t.relname AS owned_by_table
    FROM pg_depend d
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' AND d.classid = 'pg_class'::regclass
    JOIN pg_namespace sn ON sn.oid = s.relnamespace
    JOIN pg_class t ON t.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass
    JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE d.deptype IN ('a', 'i') AND d.refobjid = ANY(${oids}::oid[])
    UNION
    SELECT DISTINCT sn.nspname, s.relname, tn.nspname, t.relname
    FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
    JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
    JOIN pg_namespace sn ON sn.oid = s.relnamespace
    JOIN pg_class t ON t.oid = ad.adrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE ad.adrelid = ANY(${oids}::oid[])
    ORDER BY 1, 2`;
  const out: pb.SequenceValue[] = [];
  for (const s of seqs) {
    const [v] = await sql<{ last_value: string; is_called: boolean }[]>`SELECT last_value::text AS last_value, is_called FROM ${ident(sql, s.schema, s.name)}`;
    out.push({ ...s, last_value: v!.last_value, is_called: v!.is_called });
  }
  return out;
}
