import postgres from 'postgres';
import { describeDatabase } from './logging.js';

export type Sql = postgres.Sql<Record<string, never>>;
export type { postgres };

/**
 * A quoted identifier as a postgres.js fragment. postgres.js' own sql(name) splits names on
 * dots ("a.b" → "a"."b"), which would misquote a table legitimately named with a dot, so every
 * identifier goes through this one function (the rules of quote_ident) and is never concatenated elsewhere.
 */
export function quoteIdent(name: string): string {
  if (name.length === 0 || name.includes('\u0000')) throw new Error('empty or NUL identifier');
  return '"' + name.replace(/"/g, '""') + '"';
}

export function ident(sql: Sql, ...parts: string[]) {
  return sql.unsafe(parts.map(quoteIdent).join('.'));
}

export function identList(sql: Sql, names: readonly string[], prefix?: string) {
  const p = prefix ? quoteIdent(prefix) + '.' : '';
  return sql.unsafe(names.map((n) => p + quoteIdent(n)).join(', '));
}

/** A savepoint inside a transaction (postgres.js's TransactionSql; `Sql` here types both): an error in `fn` rolls back only its part. */
export function savepoint<T>(tx: Sql, fn: (sp: Sql) => Promise<T>): Promise<T> {
  return (tx as Sql & { savepoint<U>(f: (sp: Sql) => Promise<U>): Promise<U> }).savepoint(fn);
}

/**
 * Adds a column that a table of an older version lacks: looked up in the catalog first, because
 * ALTER TABLE, even one that changes nothing (ADD COLUMN IF NOT EXISTS), takes an exclusive lock that
 * waits for every transaction using the table and holds up every one behind it. `type` is fixed DDL text.
 */
export async function addColumnIfMissing(sql: Sql, schema: string, table: string, column: string, type: string): Promise<void> {
  if (!(await hasColumn(sql, schema, table, column))) await sql`ALTER TABLE ${ident(sql, schema, table)} ADD COLUMN ${ident(sql, column)} ${sql.unsafe(type)}`;
}

/** Whether an existing table has a column of that name (not dropped), from the catalog. */
export async function hasColumn(sql: Sql, schema: string, table: string, column: string): Promise<boolean> {
  const [has] = await sql`SELECT 1 FROM pg_attribute
    WHERE attrelid = format('%I.%I', ${schema}::text, ${table}::text)::regclass AND attname = ${column} AND NOT attisdropped`;
  return Boolean(has);
}

export interface PoolOptions {
  max: number;
  idleTimeoutS?: number;
  connectTimeoutS?: number;
  applicationName: string;
}

/**
 * One pool per database. Values are fetched as text for every type (no JS Date/number
 * round-trips that lose microseconds or int8 precision): row data only moves as COPY bytes.
 *
 * Every session commits with synchronous_commit = on, whatever the server's default: an agent acks a
 * batch, and reports a task or an index rebuild done, only once its commit is flushed to the WAL. With
 * `off` (the test clusters' setting), a database crash right after takes back commits already
 * reported: seen, a completed job whose target had lost the primary key its load had rebuilt; a task's
 * last acked batches could go the same way. With synchronous standbys, commits wait for them too.
 *
 * Reconnects wait at most ~1 s (reconnectBackoffS). postgres.js's own backoff grows with every
 * failed connect of the pool (3^n / 100 s, up to 20 s) and queries wait for it: after a 20 s outage
 * the first query once the database was back waited ~15 s, and a `dlq retry` hit its deadline. Not
 * hammering a down database is the breaker's work (agent/breaker.ts), which refuses work at once.
 */
export function createPool(url: string, opts: PoolOptions): Sql {
  return postgres(url, {
    max: opts.max,
    idle_timeout: opts.idleTimeoutS ?? 30,
    connect_timeout: opts.connectTimeoutS ?? 10,
    max_lifetime: 60 * 30,
    backoff: reconnectBackoffS,
    prepare: true,
    onnotice: () => undefined,
    connection: { application_name: opts.applicationName, synchronous_commit: 'on' },
    types: TEXT_TYPES as never,
    transform: { undefined: null },
    fetch_types: true,
  }) as unknown as Sql;
}

/** Seconds before a closed pooled connection reconnects, by failed connects in a row: 0.1, 0.2, 0.4, 0.8, then 1 (±25 %). */
export function reconnectBackoffS(retries: number): number {
  return Math.min(0.1 * 2 ** retries, 1) * (0.75 + Math.random() / 2);
}

/** int8, numeric, date, timestamp, timestamptz, interval stay the server's text both ways. */
const TEXT_TYPES = Object.fromEntries([20, 1700, 1082, 1114, 1184, 1186].map((oid) => [
  `text_${oid}`, { to: oid, from: [oid], serialize: (x: unknown) => String(x), parse: (x: string) => x },
]));

export { describeDatabase };
