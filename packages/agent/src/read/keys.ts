import { ident, identList, type Sql } from '@syncflow/shared';

/**
 * The types of a table's columns in this database, by column name (empty when there is no such
 * table): the one catalog lookup behind key casts (keyTypes) and typed bucket hashes (hashedTypes).
 */
export async function columnTypes(sql: Sql, schema: string, table: string): Promise<Map<string, { schema: string; name: string }>> {
  const rows = await sql<{ name: string; type_schema: string; type_name: string }[]>`
    SELECT a.attname AS name, tn.nspname AS type_schema, ty.typname AS type_name
    FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = ty.typnamespace
    WHERE a.attrelid = to_regclass(format('%I.%I', ${schema}::text, ${table}::text)) AND a.attnum > 0 AND NOT a.attisdropped`;
  return new Map(rows.map((r) => [r.name, { schema: r.type_schema, name: r.type_name }]));
}

export interface KeySpec {
  columns: readonly string[];
  types: readonly { schema: string; name: string }[];
}

/**
 * `(k1, k2) <op> (CAST(current_setting('syncflow.k1') AS t1), …)`: a key comparison whose values
 * reach the server as settings made with bind parameters, because COPY (SELECT …) cannot take
 * parameters and values are never spliced into SQL text. The setting names are our own constants,
 * written as literals.
 */
export function keyVsSettings(sql: Sql, key: KeySpec, op: '>' | '<=', prefix: string) {
  const casts = key.types.map((t, i) => sql`CAST(current_setting(${sql.unsafe(`'${prefix}${i + 1}'`)}) AS ${ident(sql, t.schema, t.name)})`);
  return sql`(${identList(sql, key.columns)}) ${sql.unsafe(op)} (${joinFragments(sql, casts)})`;
}

/** Sets the transaction-local settings read by keyVsSettings. */
export async function setKeySettings(sql: Sql, values: readonly (string | null)[], prefix: string): Promise<void> {
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) throw new Error('key values are never NULL');
    await sql`SELECT set_config(${`${prefix}${i + 1}`}, ${v}, true)`;
  }
}

/** `(t.k1, t.k2) <op> (CAST($1 AS t1), …)` with bound values, for statements that take parameters. */
export function keyCompare(sql: Sql, key: KeySpec, alias: string, op: '>' | '<=' | '=', values: readonly (string | null)[]) {
  const casts = key.types.map((t, i) => sql`CAST(${values[i] ?? null}::text AS ${ident(sql, t.schema, t.name)})`);
  return sql`(${identList(sql, key.columns, alias)}) ${sql.unsafe(op)} (${joinFragments(sql, casts)})`;
}

export function joinFragments(sql: Sql, parts: readonly ReturnType<Sql['unsafe']>[], sep = ', ') {
  if (parts.length === 0) return sql``;
  return parts.slice(1).reduce((acc, p) => sql`${acc}${sql.unsafe(sep)}${p}`, parts[0]!);
}
