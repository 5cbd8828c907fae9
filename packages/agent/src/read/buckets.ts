import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { ident, identList, invalidArgument, type Sql } from '@syncflow/shared';
import { keyCompare, joinFragments, type KeySpec } from './keys.js';
import { pinTextForms } from './text-forms.js';

/**
 * Hash buckets of a table for diff re-sync, computed inside each database the same way, so only
 * digests cross between the agents.
 *
 * A row's fine bucket is the low `fineBits` bits of a 64-bit hash of its key (keyed tables) or of its
 * whole row (keyless) — of the columns' text forms, or of their type's own hash for the planner's
 * `hashed` columns (see BucketSpec);
 * its coarse bucket is the fine bucket >> COARSE_SHIFT. A bucket's digest is a 64-bit hash of
 * (row count, exact sum of the rows' 64-bit hashes) — order-independent, and unlike an XOR it does
 * not cancel a duplicated row (keyless tables). Text forms
 * depend on session settings, so every statement that computes a bucket pins them (text-forms.ts,
 * the same as verify's). Equal digests mean equal row multisets but for a 64-bit hash collision.
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
}

const col = (sql: Sql, alias: string, c: string) => (alias ? sql`${ident(sql, alias)}.${ident(sql, c)}` : ident(sql, c));

/**
 * `hashtextextended(ROW(text columns…, hash_record_extended(ROW(hashed columns…), seed))::text, seed)`:
 * a 64-bit hash of the given columns.
 */
function hashOf(sql: Sql, columns: readonly string[], hashed: readonly string[], alias: string, seed: 0 | 1) {
  const h = columns.filter((c) => hashed.includes(c));
  const t = columns.filter((c) => !hashed.includes(c));
  const s = sql.unsafe(String(seed));
  if (h.length === columns.length) return sql`hash_record_extended(ROW(${joinFragments(sql, h.map((c) => col(sql, alias, c)))}), ${s})`;
  const parts = t.map((c) => col(sql, alias, c));
  if (h.length) parts.push(sql`hash_record_extended(ROW(${joinFragments(sql, h.map((c) => col(sql, alias, c)))}), ${s})`);
  return sql`hashtextextended(ROW(${joinFragments(sql, parts)})::text, ${s})`;
}

/** `(hash(key or, keyless, whole row) & mask)`: a row's fine bucket (int8). The mask is a checked integer literal. */
export function fineBucket(sql: Sql, spec: BucketSpec, alias: string) {
  const mask = 2 ** assertFineBits(spec.fineBits) - 1;
  const cols = spec.keyColumns.length ? spec.keyColumns : spec.columns;
  return sql`(${hashOf(sql, cols, spec.hashed ?? [], alias, 1)} & ${sql.unsafe(String(mask))})`;
}

/** `get_bit(bitmap, bucket) = 1`: the row's fine bucket is in the filter. */
export function inBuckets(sql: Sql, spec: BucketSpec, alias: string, bitmap: ReturnType<Sql['unsafe']>) {
  return sql`get_bit(${bitmap}, ${fineBucket(sql, spec, alias)}::int4) = 1`;
}

export interface DigestQuery extends BucketSpec {
  schema: string;
  table: string;
  key: KeySpec;                       // this database's key types (for the range bounds)
  after: readonly (string | null)[] | null;
  upto: readonly (string | null)[] | null;
  /** null: every coarse bucket; else a bitmap of the coarse buckets whose fine digests are wanted. */
  coarse: Buffer | null;
}

/**
 * Digests of buckets, inside the caller's transaction (which sets the snapshot, if any): dense,
 * 8 bytes each (0 = empty) — every coarse bucket, or the 16 fine buckets of each coarse bucket
 * asked for, in ascending order.
 */
export async function bucketDigests(tx: Sql, q: DigestQuery): Promise<{ digests: Buffer; rows: number }> {
  await pinTextForms(tx);
  const table = ident(tx, q.schema, q.table);
  const conds: ReturnType<Sql['unsafe']>[] = [];
  if (q.key.columns.length) {
    if (q.after) conds.push(keyCompare(tx, q.key, 't', '>', q.after));
    if (q.upto) conds.push(keyCompare(tx, q.key, 't', '<=', q.upto));
  }
  const shift = tx.unsafe(String(COARSE_SHIFT));
  const fine = !!q.coarse;
  // Fine digests: only rows of the coarse buckets asked for are hashed.
  if (fine) conds.push(tx`get_bit(${q.coarse!}::bytea, (${fineBucket(tx, q, 't')} >> ${shift})::int4) = 1`);
  const where = conds.length ? tx`WHERE ${joinFragments(tx, conds, ' AND ')}` : tx``;
  const group = fine ? tx`b` : tx`(b >> ${shift})`;
  // (bucket, digest) pairs in any order: each lands in its slot of the dense answer below.
  // OFFSET 0 keeps x a subquery: inlined, each use of h would hash every row again.
  // sum(int8) adds exactly (128-bit), so a bucket's digest covers each row's 64-bit hash whole.
  const [r] = await tx<{ d: Buffer | null; n: string }[]>`
    WITH x AS (SELECT ${fineBucket(tx, q, 't')} AS b, ${hashOf(tx, q.columns, q.hashed ?? [], 't', 0)} AS h
               FROM ${table} t ${where} OFFSET 0),
         g AS (SELECT ${group}::int4 AS c, count(*) AS n, sum(h) AS s FROM x GROUP BY 1)
    SELECT string_agg(int4send(c) || int8send(hashtextextended(n || ':' || s, 0)), ''::bytea) AS d,
           coalesce(sum(n), 0)::text AS n FROM g`;
  const pairs = r?.d ?? Buffer.alloc(0);
  const coarseCount = 2 ** (q.fineBits - COARSE_SHIFT);
  const per = 2 ** COARSE_SHIFT;
  // Slot of each bucket in the dense answer.
  let slot: (c: number) => number;
  let slots: number;
  if (!fine) {
    slot = (c) => c;
    slots = coarseCount;
  } else {
    const index = new Map<number, number>();
    for (const c of setBits(q.coarse!, coarseCount)) index.set(c, index.size);
    slot = (b) => index.get(b >>> COARSE_SHIFT)! * per + (b & (per - 1));
    slots = index.size * per;
  }
  const out = Buffer.alloc(slots * 8);
  for (let i = 0; i + 12 <= pairs.length; i += 12) {
    const c = pairs.readInt32BE(i);
    let d = pairs.readBigUInt64BE(i + 4);
    if (d === 0n) d = 1n; // 0 stands for an empty bucket
    out.writeBigUInt64BE(d, slot(c) * 8);
  }
  return { digests: out, rows: Number(r?.n ?? 0) };
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

/** The wire form of a bucket filter: a deflated bitmap (sparse bitmaps shrink to a few bits per set bit). */
export function packFilter(fineBits: number, bitmap: Buffer): { fine_bits: number; buckets: Buffer } {
  return { fine_bits: fineBits, buckets: deflateRawSync(bitmap, { level: 6 }) };
}

export interface BucketFilter { fineBits: number; bitmap: Buffer; hashed: readonly string[] }

export function unpackFilter(f: { fine_bits: number; buckets: Buffer; hashed_columns?: string[] } | null | undefined): BucketFilter | null {
  if (!f || !f.fine_bits) return null;
  const fineBits = assertFineBits(f.fine_bits);
  const bitmap = inflateRawSync(f.buckets, { maxOutputLength: 2 ** fineBits / 8 });
  if (bitmap.length !== 2 ** fineBits / 8) throw invalidArgument('bucket filter bitmap has the wrong size');
  return { fineBits, bitmap, hashed: f.hashed_columns ?? [] };
}

/**
 * The reader's filter (COPY takes no parameters): the bitmap rides in a transaction-local setting,
 * decoded once by an uncorrelated subquery (an InitPlan), then tested per row. Pins the text forms
 * for the read transaction (COPY output in ISO/UTC forms reads back to the same values).
 */
export async function readerBucketCondition(tx: Sql, spec: BucketSpec, filter: BucketFilter) {
  await pinTextForms(tx);
  await tx`SELECT set_config('syncflow.diff', ${filter.bitmap.toString('base64')}, true)`;
  // Wrapped: an async function returning the fragment itself would run it (fragments are thenables).
  return { cond: inBuckets(tx, { ...spec, fineBits: filter.fineBits, hashed: filter.hashed }, '', tx`(SELECT decode(current_setting('syncflow.diff'), 'base64'))`) };
}
