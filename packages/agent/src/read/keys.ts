import { ident, identList, type Sql } from '@syncflow/shared';

/**
 * The types of a table's columns in this database, by column name (empty when there is no such
 * table), and whether it is partitioned (relkind p): the one catalog lookup behind key casts
 * (keyTypes), typed bucket hashes (hashedTypes) and how a target's upserts take before-images.
 */
export async function tableColumns(sql: Sql, schema: string, table: string): Promise<{ types: Map<string, { schema: string; name: string }>; partitioned: boolean }> {
  const rows = await sql<{ name: string; type_schema: string; type_name: string; partitioned: boolean }[]>`
    SELECT a.attname AS name, tn.nspname AS type_schema, ty.typname AS type_name, c.relkind = 'p' AS partitioned
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid JOIN pg_type ty ON ty.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = ty.typnamespace
    WHERE c.oid = to_regclass(format('%I.%I', ${schema}::text, ${table}::text)) AND a.attnum > 0 AND NOT a.attisdropped`;
  return { types: new Map(rows.map((r) => [r.name, { schema: r.type_schema, name: r.type_name }])), partitioned: rows[0]?.partitioned ?? false };
}

/** The types of a table's columns (tableColumns). */
export async function columnTypes(sql: Sql, schema: string, table: string): Promise<Map<string, { schema: string; name: string }>> {
  return (await tableColumns(sql, schema, table)).types;
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

/** `a.k1 = b.k1 AND …`: the rows of aliases `a` and `b` with equal key columns. */
export function keyEquals(sql: Sql, cols: readonly string[], a: string, b: string) {
  return joinFragments(sql, cols.map((c) => sql`${ident(sql, a)}.${ident(sql, c)} = ${ident(sql, b)}.${ident(sql, c)}`), ' AND ');
}

const INTEGER_TYPES = new Set(['int2', 'int4', 'int8']);

/** An exact integer: a number up to 15 digits (cheap), a BigInt beyond (int8); `<` and `>` compare the two exactly. */
type Int = number | bigint;

/** A plain integer's text: an optional minus and digits only. */
function isInteger(v: string): boolean {
  const n = v.length;
  let i = n > 0 && v.charCodeAt(0) === 45 /* - */ ? 1 : 0;
  if (i === n) return false;
  for (; i < n; i++) {
    const c = v.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

/** A key tuple as exact integers; undefined when a value is not a plain integer (null: no tuple). */
function integerTuple(k: readonly (string | null)[] | null | undefined): Int[] | null | undefined {
  if (!k) return null;
  const out: Int[] = new Array(k.length);
  for (let i = 0; i < k.length; i++) {
    const v = k[i];
    if (v === null || v === undefined || !isInteger(v)) return undefined;
    out[i] = v.length <= 15 ? Number(v) : BigInt(v);
  }
  return out;
}

function compareTuples(a: readonly Int[], b: readonly Int[]): number {
  for (let i = 0; i < a.length; i++) {
    if (a[i]! < b[i]!) return -1;
    if (a[i]! > b[i]!) return 1;
  }
  return 0;
}

/** Key lists parsed by IntegerKeys.of, with the key types they were parsed for. */
const parsed = new WeakMap<readonly (string | null)[][], { types: string; keys: IntegerKeys | undefined }>();

/**
 * Keys of integer columns (the common case), parsed once, each distinct value once, in key order:
 * range slices come by binary search in JS, without a round trip. Other key types order by the
 * database's rules (collations, numerics, …) and are left to it: `of` is undefined for them, and for
 * a value that is not a plain integer.
 */
export class IntegerKeys {
  private constructor(private readonly sorted: readonly Int[][]) {}

  /**
   * The keys of a list, parsed once per list (key lists are never changed once made: a table's parts on
   * the source share the change log's list, a stream on the target keeps its filter's for every batch).
   */
  static of(types: readonly { schema: string; name: string }[], keys: readonly (string | null)[][]): IntegerKeys | undefined {
    const sig = types.map((t) => `${t.schema}.${t.name}`).join(',');
    const hit = parsed.get(keys);
    if (hit?.types === sig) return hit.keys;
    const out = IntegerKeys.#parse(types, keys);
    parsed.set(keys, { types: sig, keys: out });
    return out;
  }

  static #parse(types: readonly { schema: string; name: string }[], keys: readonly (string | null)[][]): IntegerKeys | undefined {
    if (!types.every((t) => t.schema === 'pg_catalog' && INTEGER_TYPES.has(t.name))) return undefined;
    const tuples: Int[][] = new Array(keys.length);
    for (let i = 0; i < keys.length; i++) {
      const v = integerTuple(keys[i]);
      if (!v) return undefined;
      tuples[i] = v;
    }
    // Sorted, then each distinct tuple once (equal tuples are neighbours): no text key per tuple.
    tuples.sort(compareTuples);
    const distinct: Int[][] = [];
    for (const v of tuples) if (!distinct.length || compareTuples(distinct[distinct.length - 1]!, v) !== 0) distinct.push(v);
    return new IntegerKeys(distinct);
  }

  /** The keys inside (after, upto] (either end open when missing), in canonical text forms; undefined for a bound that is not an integer tuple. */
  between(after?: readonly (string | null)[] | null, upto?: readonly (string | null)[] | null): string[][] | undefined {
    const lo = integerTuple(after), hi = integerTuple(upto);
    if (lo === undefined || hi === undefined) return undefined;
    const first = (pred: (v: readonly Int[]) => boolean) => { // the first index whose tuple satisfies a monotone predicate
      let a = 0, b = this.sorted.length;
      while (a < b) { const m = (a + b) >>> 1; if (pred(this.sorted[m]!)) b = m; else a = m + 1; }
      return a;
    };
    const from = lo ? first((v) => compareTuples(v, lo) > 0) : 0;
    const to = hi ? first((v) => compareTuples(v, hi) > 0) : this.sorted.length;
    return this.sorted.slice(from, Math.max(from, to)).map((v) => v.map(String));
  }
}
