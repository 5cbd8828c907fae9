import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { ident, invalidArgument, type Sql } from '@syncflow/shared';
import { joinFragments, columnTypes, keyCompare, type KeySpec } from './keys.js';
import { pinTextForms } from './text-forms.js';

/**
 * Hash buckets of a table for diff re-sync, computed next to each database the same way, so only
 * digests cross between the agents.
 *
 * Every column is hashed on its own, with a seed of its own position, and the column hashes are
 * combined with XOR (`#`): the planner's `hashed` columns (same type on both sides, equality is
 * identity) by their type's hash function (`hashint8extended`, `hash_numeric_extended`, …), every
 * other column through its text form (`hashtextextended(col::text COLLATE "C")`, the bytes of the
 * text); NULL is a constant per position. A row's fine bucket is the low `fineBits` bits of its
 * *bucket hash* — the XOR over its key columns, or over all columns for a keyless table; its coarse
 * bucket is the fine bucket >> COARSE_SHIFT. The agent reads (bucket hash, rest hash) per row out of a
 * binary COPY and builds the digests itself (digest-builder.ts). Text forms depend on session
 * settings (and timestamptz → timestamp on TimeZone), so every statement that computes a bucket pins
 * them (text-forms.ts, the same as verify's).
 */
export const COARSE_SHIFT = 4;
export const MAX_FINE_BITS = 22;
const MIN_FINE_BITS = COARSE_SHIFT;

/** Fine bits for a table part of `rows` rows: about one row per fine bucket. */
export function fineBitsFor(rows: number): number {
  const bits = Math.ceil(Math.log2(Math.max(rows, 1)));
  return Math.min(MAX_FINE_BITS, Math.max(MIN_FINE_BITS, bits));
}

export function assertFineBits(bits: number): number {
  if (!Number.isInteger(bits) || bits < MIN_FINE_BITS || bits > MAX_FINE_BITS) throw invalidArgument(`fine_bits must be between ${MIN_FINE_BITS} and ${MAX_FINE_BITS}`);
  return bits;
}

export interface BucketSpec {
  columns: readonly string[];
  keyColumns: readonly string[];
  fineBits: number;
  /**
   * Columns hashed by their type's own hash function instead of through their text form (cheaper):
   * the planner names only columns of the same type on both sides whose equality is identity
   * (integers, bool, bytea, uuid, dates and times, numeric with a fixed scale).
   */
  hashed?: readonly string[];
  /** pg_catalog type names of the hashed columns in this database (hashedTypes); a column missing here is hashed as a record. */
  types?: ReadonlyMap<string, string>;
}

/** The type names of the hashed columns (a type outside pg_catalog is named '' and hashed as a record). */
export async function hashedTypes(tx: Sql, schema: string, table: string, hashed: readonly string[]): Promise<Map<string, string>> {
  if (!hashed.length) return new Map();
  const types = await columnTypes(tx, schema, table);
  return new Map(hashed.flatMap((c) => {
    const t = types.get(c);
    return t ? [[c, t.schema === 'pg_catalog' ? t.name : ''] as [string, string]] : [];
  }));
}

const col = (sql: Sql, alias: string, c: string) => (alias ? sql`${ident(sql, alias)}.${ident(sql, c)}` : ident(sql, c));

/** splitmix64 of a seed, as a signed int8: the hash of NULL at that position. */
function nullHash(seed: number): bigint {
  let z = (BigInt(seed) + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  z ^= z >> 31n;
  return BigInt.asIntN(64, z);
}

/** Seeds: a column's position in `columns` (+1); key columns in the bucket hash by key position (+KEY_SEED). */
const KEY_SEED = 1_000_003;

/**
 * One column's 64-bit hash (int8), seeded by position. Measured on 1 M rows (PostgreSQL 15): int8 via
 * hashint8extended ~10 ms a column where ROW(…) through hash_record_extended costs ~85; timestamptz
 * ::timestamp into timestamp_hash_extended ~75–130 ms vs ~150–230 as a record and ~240 as text; bytea
 * as a record (its detoast dominates; hex text costs twice as much).
 */
function columnHash(sql: Sql, alias: string, c: string, seed: number, type: string | undefined) {
  const x = col(sql, alias, c);
  const s = sql.unsafe(String(seed));
  let h;
  switch (type) {
    case undefined: h = sql`hashtextextended(${x}::text COLLATE "C", ${s})`; break; // text form (not hashed by type)
    case 'int2': h = sql`hashint2extended(${x}, ${s})`; break;
    case 'int4': h = sql`hashint4extended(${x}, ${s})`; break;
    case 'int8': h = sql`hashint8extended(${x}, ${s})`; break;
    case 'oid': h = sql`hashoidextended(${x}, ${s})`; break;
    case 'numeric': h = sql`hash_numeric_extended(${x}, ${s})`; break; // fixed scale only (planner)
    case 'uuid': h = sql`uuid_hash_extended(${x}, ${s})`; break;
    case 'bool': h = sql`hashint4extended(${x}::int4, ${s})`; break;
    case 'date': h = sql`timestamp_hash_extended(${x}::timestamp, ${s})`; break;
    case 'timestamp': h = sql`timestamp_hash_extended(${x}, ${s})`; break;
    case 'timestamptz': h = sql`timestamp_hash_extended(${x}::timestamp, ${s})`; break; // TimeZone is pinned to UTC
    case 'time': h = sql`time_hash_extended(${x}, ${s})`; break;
    default: h = sql`hash_record_extended(ROW(${x}), ${s})`; // bytea and anything else of the same type on both sides
  }
  return sql`coalesce(${h}, ${sql.unsafe(String(nullHash(seed)))})`;
}

function xorOf(sql: Sql, spec: BucketSpec, alias: string, cols: readonly { c: string; seed: number }[]) {
  const hashed = spec.hashed ?? [];
  const type = (c: string) => (hashed.includes(c) ? spec.types?.get(c) ?? 'record' : undefined);
  return sql`(${joinFragments(sql, cols.map(({ c, seed }) => columnHash(sql, alias, c, seed, type(c))), ' # ')})`;
}

/** The bucket hash (int8): XOR of the key columns' hashes, or of every column's for a keyless table. */
export function bucketHash(sql: Sql, spec: BucketSpec, alias: string) {
  if (spec.keyColumns.length) return xorOf(sql, spec, alias, spec.keyColumns.map((c, j) => ({ c, seed: KEY_SEED + j })));
  return xorOf(sql, spec, alias, spec.columns.map((c, i) => ({ c, seed: i + 1 })));
}

/** The rest hash (int8) of a keyed table: XOR of the non-key columns' hashes; null when every column is a key column or the table is keyless. */
export function restHash(sql: Sql, spec: BucketSpec, alias: string) {
  if (!spec.keyColumns.length) return null;
  const rest = spec.columns.map((c, i) => ({ c, seed: i + 1 })).filter(({ c }) => !spec.keyColumns.includes(c));
  return rest.length ? xorOf(sql, spec, alias, rest) : null;
}

/** `(bucket hash & mask)`: a row's fine bucket (int8). The mask is a checked integer literal. */
export function fineBucket(sql: Sql, spec: BucketSpec, alias: string) {
  const mask = 2 ** assertFineBits(spec.fineBits) - 1;
  return sql`(${bucketHash(sql, spec, alias)} & ${sql.unsafe(String(mask))})`;
}

/** `get_bit(bitmap, bucket) = 1`: the row's fine bucket is in the filter. */
export function inBuckets(sql: Sql, spec: BucketSpec, alias: string, bitmap: ReturnType<Sql['unsafe']>) {
  return sql`get_bit(${bitmap}, ${fineBucket(sql, spec, alias)}::int4) = 1`;
}

/** Indexes of the 8-byte slots that differ between two dense digest arrays of equal length. */
export function differingSlots(a: Buffer, b: Buffer): number[] {
  if (a.length !== b.length) throw invalidArgument('digest arrays differ in length');
  const out: number[] = [];
  for (let i = 0; i < a.length; i += 8) if (a.readBigUInt64BE(i) !== b.readBigUInt64BE(i)) out.push(i / 8);
  return out;
}

export function bitmapOf(bits: number, set: Iterable<number>): Buffer {
  const m = Buffer.alloc(Math.ceil(bits / 8));
  for (const n of set) m[n >>> 3]! |= 1 << (n & 7);
  return m;
}

export const hasBit = (m: Buffer, n: number): boolean => ((m[n >>> 3]! >>> (n & 7)) & 1) === 1;

export function* setBits(m: Buffer, bits: number): Generator<number> {
  for (let i = 0; i < m.length; i++) {
    const v = m[i]!;
    if (v === 0) continue;
    for (let j = 0; j < 8; j++) if (v & (1 << j) && i * 8 + j < bits) yield i * 8 + j;
  }
}

export function countBits(m: Buffer): number {
  let n = 0;
  for (const v of m) { let x = v; while (x) { n += x & 1; x >>= 1; } }
  return n;
}

/**
 * What a diff task ships: the rows of the set fine buckets, or — `keys` set (diff from tracked changes,
 * fineBits 0) — the rows of exactly these keys (text forms in key column order).
 */
export interface BucketFilter {
  fineBits: number; bitmap: Buffer; hashed: readonly string[]; keys?: readonly (string | null)[][];
  /**
   * A keyless table: where the rows of the set buckets are in this database (ctids), kept by the pass
   * that compared them — read or deleted by TID lookups, still checked against the buckets. Never on the wire.
   */
  tids?: readonly string[];
  /** The diff decision's session: the target looks up the ctids its own pass kept under it (diff-digests.ts takeTargetTids). */
  session?: string;
}

/** Rows a filter reads or deletes by their ctids at most (a tid[] of ~7 MB); more, and they are found by scanning. */
export const MAX_TID_LOOKUPS = 2 ** 19;

/** A ctid list as a tid[] literal ('{"(0,1)","(5,3)"}'): bound as text, or set in a transaction-local setting for a COPY. */
export const tidArray = (tids: readonly string[]): string => `{${tids.map((t) => `"${t}"`).join(',')}}`;

export const keyFilter = (keys: readonly (string | null)[][]): BucketFilter => ({ fineBits: 0, bitmap: Buffer.alloc(0), hashed: [], keys });

/** The wire form: a deflated bitmap (sparse bitmaps shrink to a few bits per set bit), or the deflated JSON of the keys. */
export function packFilter(f: BucketFilter): { fine_bits: number; buckets: Buffer; hashed_columns: string[]; keys: Buffer; session: string } {
  if (f.keys) return { fine_bits: 0, buckets: Buffer.alloc(0), hashed_columns: [], keys: deflateRawSync(JSON.stringify(f.keys), { level: 6 }), session: '' };
  return { fine_bits: f.fineBits, buckets: deflateRawSync(f.bitmap, { level: 6 }), hashed_columns: [...f.hashed], keys: Buffer.alloc(0), session: f.session ?? '' };
}

/** Keys a filter may list: what one decode of a change slot keeps at most, with room. */
const MAX_FILTER_KEY_BYTES = 512 << 20;

export function unpackFilter(f: { fine_bits: number; buckets: Buffer; hashed_columns?: string[]; keys?: Buffer; session?: string } | null | undefined): BucketFilter | null {
  if (f?.keys?.length) {
    let keys: unknown;
    try {
      keys = JSON.parse(inflateRawSync(f.keys, { maxOutputLength: MAX_FILTER_KEY_BYTES }).toString('utf8'));
    } catch {
      throw invalidArgument('diff filter keys are not deflated JSON');
    }
    if (!Array.isArray(keys) || !keys.every((k) => Array.isArray(k) && k.every((v) => v === null || typeof v === 'string'))) {
      throw invalidArgument('diff filter keys must be an array of key tuples of strings');
    }
    return keyFilter(keys as (string | null)[][]);
  }
  if (!f || !f.fine_bits) return null;
  const fineBits = assertFineBits(f.fine_bits);
  const bitmap = inflateRawSync(f.buckets, { maxOutputLength: 2 ** fineBits / 8 });
  if (bitmap.length !== 2 ** fineBits / 8) throw invalidArgument('bucket filter bitmap has the wrong size');
  return { fineBits, bitmap, hashed: f.hashed_columns ?? [], ...(f.session ? { session: f.session } : {}) };
}

/**
 * A FROM item of the table's rows with the filter's keys, as `alias`: one index lookup per key, in
 * a LATERAL subquery the planner cannot flatten (OFFSET 0) — a plain `IN (…)` let it scan a freshly
 * loaded target table without statistics once per key (a minute for 5 000 keys of a 440 000-row
 * part). `keys`: bound arrays, or the reader's transaction-local setting (COPY takes no parameters).
 * The key columns of the list are named "syncflow.kN", which no unqualified column name can hit.
 * `except`: a table (a batch's stage) whose rows' keys are dropped from the list before the lookups.
 */
export function keysFrom(sql: Sql, table: { schema: string; table: string }, key: KeySpec, keys: KeyList, alias: string, range: KeyRange = {}, except?: string) {
  const kcol = (i: number) => `syncflow.k${i}`;
  const equal = (a: string) => joinFragments(sql, key.columns.map((c, i) => sql`${ident(sql, a)}.${ident(sql, c)} = k.${ident(sql, kcol(i))}`), ' AND ');
  // Only the keys inside the range are looked up (a batch's marks, not every key of the task's filter).
  const typed = typedKeys(sql, key, keys, kcol, range);
  const list = except ? sql`(SELECT * FROM ${typed} AS k WHERE NOT EXISTS (SELECT 1 FROM ${ident(sql, except)} s WHERE ${equal('s')}))` : typed;
  return sql`${list} AS k
    CROSS JOIN LATERAL (SELECT * FROM ${ident(sql, table.schema, table.table)} x WHERE ${equal('x')} OFFSET 0) AS ${ident(sql, alias)}`;
}

/** A key range (after, upto] as text forms; either end open when missing. */
export interface KeyRange { after?: readonly (string | null)[] | null; upto?: readonly (string | null)[] | null }

/** Key tuples as text forms in key column order: bound arrays, or (COPY takes no parameters) the JSON in the transaction-local setting syncflow.diff_keys. */
export type KeyList = readonly (string | null)[][] | 'setting';

/**
 * `(SELECT DISTINCT CAST(… AS type1) AS name(0), …)`: the key tuples cast back to the key types
 * (read in the pinned text forms they were written in), each distinct value once; with `range`, only
 * those inside (after, upto], compared as the key types.
 */
export function typedKeys(sql: Sql, key: KeySpec, keys: KeyList, name: (i: number) => string, range: KeyRange = {}) {
  const typed = key.types.map((t, i) => {
    const text = keys === 'setting' ? sql`e ->> ${sql.unsafe(String(i))}` : sql`u.${ident(sql, `k${i}`)}`;
    return sql`CAST(${text} AS ${ident(sql, t.schema, t.name)}) AS ${ident(sql, name(i))}`;
  });
  const list = keys === 'setting'
    ? sql`jsonb_array_elements(current_setting('syncflow.diff_keys')::jsonb) AS e`
    : sql`unnest(${joinFragments(sql, key.columns.map((_, i) => sql`${keys.map((k) => k[i] ?? null) as string[]}::text[]`))}) AS u(${joinFragments(sql, key.columns.map((_, i) => ident(sql, `k${i}`)))})`;
  const named = { columns: key.columns.map((_, i) => name(i)), types: key.types };
  const bounds = [
    ...range.after ? [keyCompare(sql, named, 'd', '>', range.after)] : [],
    ...range.upto ? [keyCompare(sql, named, 'd', '<=', range.upto)] : [],
  ];
  const distinct = sql`(SELECT DISTINCT ${joinFragments(sql, typed)} FROM ${list})`;
  return bounds.length ? sql`(SELECT * FROM ${distinct} AS d WHERE ${joinFragments(sql, bounds, ' AND ')})` : distinct;
}

/**
 * The reader's filter (COPY takes no parameters): the bitmap (or the keys, as JSON) rides in a
 * transaction-local setting, decoded once by an uncorrelated subquery (an InitPlan), then tested per
 * row. Pins the text forms for the read transaction (COPY output in ISO/UTC forms reads back to the
 * same values; the keys' text forms are cast back in the same settings).
 */
export async function readerBucketCondition(tx: Sql, table: { schema: string; table: string }, spec: BucketSpec & { key: KeySpec }, filter: BucketFilter):
  Promise<{ cond?: ReturnType<Sql['unsafe']>; from?: ReturnType<Sql['unsafe']> }> {
  await pinTextForms(tx);
  if (filter.keys) {
    await tx`SELECT set_config('syncflow.diff_keys', ${JSON.stringify(filter.keys)}, true)`;
    return { from: keysFrom(tx, table, spec.key, 'setting', 't') };
  }
  await tx`SELECT set_config('syncflow.diff', ${filter.bitmap.toString('base64')}, true)`;
  const types = await hashedTypes(tx, table.schema, table.table, filter.hashed);
  const cond = inBuckets(tx, { ...spec, fineBits: filter.fineBits, hashed: filter.hashed, types }, '', tx`(SELECT decode(current_setting('syncflow.diff'), 'base64'))`);
  if (!filter.tids) return { cond };
  // The rows' ctids in this snapshot (kept by the pass that compared the buckets): a TID scan instead of hashing every row.
  await tx`SELECT set_config('syncflow.tids', ${tidArray(filter.tids)}, true)`;
  // Wrapped: an async function returning the fragment itself would run it (fragments are thenables).
  return { cond: tx`ctid = ANY(current_setting('syncflow.tids')::tid[]) AND ${cond}` };
}
