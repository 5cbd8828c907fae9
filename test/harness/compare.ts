import { quoteIdent, type Sql } from './postgres.js';

export interface TableHash {
  rows: number;
  /** md5 over the sorted md5s of every row's text form: independent of physical order, duplicates count. */
  hash: string;
}

// Text forms of values depend on session settings: pin them, so two clusters configured differently
// (time zone, float digits) still hash equal data equally.
const PINNED = [
  "SET LOCAL TimeZone = 'UTC'",
  "SET LOCAL DateStyle = 'ISO, YMD'",
  "SET LOCAL IntervalStyle = 'postgres'",
  'SET LOCAL extra_float_digits = 1',
  "SET LOCAL bytea_output = 'hex'",
];

async function pinned<T>(sql: Sql, fn: (tx: Sql) => Promise<T>): Promise<T> {
  return (await sql.begin(async (tx) => {
    for (const s of PINNED) await tx.unsafe(s);
    return fn(tx as unknown as Sql);
  })) as T;
}

async function hashIn(tx: Sql, schema: string, table: string): Promise<TableHash> {
  const rel = `${quoteIdent(schema)}.${quoteIdent(table)}`;
  const [r] = await tx.unsafe<{ n: string; h: string }[]>(
    `SELECT count(*)::int8::text AS n, coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), md5('')) AS h FROM ${rel} t`,
  );
  if (!r) throw new Error(`tableHash: no result for ${rel}`);
  return { rows: Number(r.n), hash: r.h };
}

/** Content hash of one table (a partitioned table includes its partitions' rows). */
export async function tableHash(sql: Sql, schema: string, table: string): Promise<TableHash> {
  return pinned(sql, (tx) => hashIn(tx, schema, table));
}

/**
 * Hashes of every user table (ordinary and partitioned; partitions are counted through their parent),
 * keyed by `schema.table`, in name order. Skips pg_catalog, information_schema and syncflow's own schema.
 */
export async function databaseHashes(sql: Sql, schemas?: string[]): Promise<Map<string, TableHash>> {
  return pinned(sql, async (tx) => {
    const tables = await tx<{ schema: string; table: string }[]>`
      SELECT n.nspname AS schema, c.relname AS table
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'syncflow')
        AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
        AND (${schemas ?? null}::text[] IS NULL OR n.nspname = ANY(${schemas ?? null}::text[]))
      ORDER BY 1, 2`;
    const out = new Map<string, TableHash>();
    for (const t of tables) out.set(`${t.schema}.${t.table}`, await hashIn(tx, t.schema, t.table));
    return out;
  });
}

/** `schema.sequence` → "last_value,is_called" for every sequence outside syncflow's schema. */
export async function sequenceValues(sql: Sql): Promise<Map<string, string>> {
  const seqs = await sql<{ schema: string; name: string }[]>`
    SELECT schemaname AS schema, sequencename AS name FROM pg_sequences
    WHERE schemaname NOT IN ('syncflow', 'pg_catalog', 'information_schema') ORDER BY 1, 2`;
  const out = new Map<string, string>();
  for (const s of seqs) {
    const [r] = await sql.unsafe<{ v: string }[]>(`SELECT last_value::text || ',' || is_called::text AS v FROM ${quoteIdent(s.schema)}.${quoteIdent(s.name)}`);
    out.set(`${s.schema}.${s.name}`, r?.v ?? '');
  }
  return out;
}

/** Human-readable differences between two hash maps (empty when equal), for assertion messages. */
export function diffHashes(source: Map<string, TableHash>, target: Map<string, TableHash>): string[] {
  const diffs: string[] = [];
  for (const key of new Set([...source.keys(), ...target.keys()])) {
    const a = source.get(key);
    const b = target.get(key);
    if (!a) diffs.push(`${key}: only on target (${b?.rows} rows)`);
    else if (!b) diffs.push(`${key}: only on source (${a.rows} rows)`);
    else if (a.rows !== b.rows) diffs.push(`${key}: ${a.rows} rows on source, ${b.rows} on target`);
    else if (a.hash !== b.hash) diffs.push(`${key}: same row count (${a.rows}) but different content`);
  }
  return diffs;
}
