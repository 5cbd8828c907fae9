import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { ident, invalidArgument, type Logger, type Sql, type pb } from '@syncflow/shared';
import { keyCompare, joinFragments, keyVsSettings, setKeySettings } from './keys.js';
import { keyTypes } from './hash-ranges.js';
import { useSnapshot } from './snapshot.js';
import { pinTextForms } from './text-forms.js';
import { assertFineBits, bucketHash, hasBit, hashedTypes, restHash, COARSE_SHIFT, MAX_TID_LOOKUPS } from './buckets.js';
import { BucketSums, CopyHashReader, TidLog } from './digest-builder.js';
import { digestMemory } from './digest-cache.js';

export interface DigestRequest {
  schema: string;
  table: string;
  columns: readonly string[];
  keyColumns: readonly string[];
  after: readonly (string | null)[] | null;
  upto: readonly (string | null)[] | null;
  fineBits: number;
  /** null: digests of every coarse bucket; else a bitmap of the coarse buckets whose fine digests are wanted. */
  coarse: Buffer | null;
  hashed?: readonly string[];
  /** One diff decision's requests share it: the fine request is answered from the sums the coarse one built. */
  session?: string;
  /** A keyless table: keep each row's ctid by its fine bucket (TidLog), for reading or deleting the differing rows by TID. */
  tids?: boolean;
}

/** Rows of a keyless table part whose ctids a pass keeps (12 bytes each: 24 MiB); a bigger part is read and deleted by scanning. */
const MAX_TID_ROWS = 2 ** 21;

/** Whether a pass keeps ctids, and for how many rows at most (about one row per fine bucket, with room). */
const tidRows = (req: DigestRequest) => (req.tids && !req.keyColumns.length ? Math.min(MAX_TID_ROWS, 2 * 2 ** req.fineBits) : 0);

/**
 * One pass over a table (part) in a REPEATABLE READ, READ ONLY transaction — inside the job snapshot
 * on the source (`snapshotId`), in the current state on the target: PostgreSQL computes each row's
 * (bucket hash, rest hash) and streams them as a binary COPY; the agent sums them into fine buckets.
 * Measured on order_items (2.2 M rows): ~0.75 s, where the GROUP BY coarse pass alone took ~2.9 s and
 * a fine pass scanned the table again.
 */
async function buildSums(sql: Sql, req: DigestRequest, snapshotId: string): Promise<BucketSums> {
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (txAny) => {
    const tx = txAny as unknown as Sql;
    if (snapshotId) await useSnapshot(tx, snapshotId);
    await pinTextForms(tx);
    const hashed = (req.hashed ?? []).filter((c) => req.columns.includes(c));
    const spec = { columns: req.columns, keyColumns: req.keyColumns, fineBits: req.fineBits, hashed, types: await hashedTypes(tx, req.schema, req.table, hashed) };
    const conds = [];
    if (req.keyColumns.length && (req.after || req.upto)) {
      const types = await keyTypes(tx, { schema: req.schema, table: req.table, key: req.keyColumns.map((name) => ({ name, type_schema: '', type_name: '' })) });
      const key = { columns: req.keyColumns, types };
      // COPY takes no parameters: the range bounds ride in transaction-local settings, as the reader's do.
      if (req.after) { await setKeySettings(tx, req.after, 'syncflow.k'); conds.push(keyVsSettings(tx, key, '>', 'syncflow.k')); }
      if (req.upto) { await setKeySettings(tx, req.upto, 'syncflow.u'); conds.push(keyVsSettings(tx, key, '<=', 'syncflow.u')); }
    }
    const rest = restHash(tx, spec, '');
    const maxTids = tidRows(req);
    const second = rest ?? (maxTids ? tx`ctid` : null);
    const fields = second ? [bucketHash(tx, spec, ''), second] : [bucketHash(tx, spec, '')];
    const where = conds.length ? tx`WHERE ${joinFragments(tx, conds, ' AND ')}` : tx``;
    const sums = new BucketSums(req.fineBits);
    if (maxTids) sums.tids = new TidLog(maxTids);
    const reader = new CopyHashReader(sums, second ? 2 : 1, sums.tids);
    const query = tx`COPY (SELECT ${joinFragments(tx, fields)} FROM ${ident(tx, req.schema, req.table)} ${where}) TO STDOUT (FORMAT binary)`;
    const stream = await query.readable();
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) reader.push(chunk);
    } finally {
      // As in table-reader.ts: resume postgres.js's socket in case the last chunk paused it.
      (stream as unknown as { _read?: () => void })._read?.();
    }
    reader.end();
    return sums;
  });
}

const cacheKey = (req: DigestRequest, snapshotId: string) => JSON.stringify([
  req.session, snapshotId, req.schema, req.table, req.columns, req.keyColumns, req.after, req.upto, req.fineBits, req.hashed ?? [], Boolean(req.tids),
]);

/**
 * Bucket digests of a table (part): dense, 8 bytes each (0 = empty) — every coarse bucket (a request
 * without `coarse`: one pass, whose sums stay cached for the session's fine request), or the 16 fine
 * buckets of each coarse bucket asked for, in ascending order (from the cached sums; computed again if
 * they were evicted or expired).
 */
export async function digestsOf(sql: Sql, req: DigestRequest, snapshotId = ''): Promise<{ digests: Buffer; rows: number; scanned: boolean; tids: TidLog | null }> {
  if (!req.columns.length) throw invalidArgument('columns are required');
  assertFineBits(req.fineBits);
  if (req.coarse && req.coarse.length !== Math.ceil(2 ** (req.fineBits - COARSE_SHIFT) / 8)) throw invalidArgument('coarse bitmap has the wrong size');
  const key = cacheKey(req, snapshotId);
  if (req.coarse && req.session) {
    const cached = digestMemory.take(key);
    if (cached) return { digests: cached.fineDigests(req.coarse), rows: cached.rows, scanned: false, tids: cached.tids };
  }
  const bytes = BucketSums.bytes(req.fineBits) + TidLog.bytes(tidRows(req));
  const release = await digestMemory.reserve(bytes);
  let kept = false;
  try {
    const sums = await buildSums(sql, req, snapshotId);
    if (req.coarse) return { digests: sums.fineDigests(req.coarse), rows: sums.rows, scanned: true, tids: sums.tids };
    const digests = sums.coarseDigests();
    if (req.session) { digestMemory.keep(key, sums, bytes); kept = true; }
    return { digests, rows: sums.rows, scanned: true, tids: null };
  } finally {
    if (!kept) release();
  }
}

/** Frees a session's cached sums (its decision needed no fine round). */
export function dropDigests(req: DigestRequest, snapshotId = ''): void {
  digestMemory.drop(cacheKey({ ...req, coarse: null }, snapshotId));
}

/**
 * A keyless table's rows on the target, by the session of the diff decision that compared them: kept
 * from the fine round (only the rows of the coarse buckets asked about) until the task's Transfer
 * takes them with its filter (takeTargetTids), or for 10 minutes; a few sessions at most.
 */
const targetTids = new Map<string, { log: TidLog; fineBits: number; at: number }>();
const TARGET_TIDS_TTL_MS = 10 * 60_000;
const TARGET_TIDS_MAX = 8;

/** The target's ctids of a diff decision's rows (read/diff-digests.ts), handed out once; null when gone or another agent compared them. */
export function takeTargetTids(session: string, fineBits: number): TidLog | null {
  const e = targetTids.get(session);
  targetTids.delete(session);
  return e && e.fineBits === fineBits && Date.now() - e.at < TARGET_TIDS_TTL_MS ? e.log : null;
}

function keepTargetTids(session: string, fineBits: number, coarse: Buffer, log: TidLog): void {
  const now = Date.now();
  for (const [k, e] of targetTids) if (now - e.at >= TARGET_TIDS_TTL_MS) targetTids.delete(k);
  while (targetTids.size >= TARGET_TIDS_MAX) targetTids.delete(targetTids.keys().next().value!);
  const kept = log.only((bucket) => hasBit(coarse, bucket >>> COARSE_SHIFT), MAX_TID_LOOKUPS);
  if (!kept.overflow) targetTids.set(session, { log: kept, fineBits, at: now });
}

/** AgentService.DiffBuckets: the target's digests, in its current state. */
export async function diffBuckets(sql: Sql, req: pb.DiffRequest__Output, log?: Logger): Promise<pb.DiffReply> {
  const r = await digestsOf(sql, {
    schema: req.schema, table: req.table, columns: req.columns, keyColumns: req.key_columns,
    after: req.range_after?.values.length ? req.range_after.values : null,
    upto: req.range_upto?.values.length ? req.range_upto.values : null,
    fineBits: req.fine_bits, coarse: req.coarse.length ? req.coarse : null, hashed: req.hashed_columns, session: req.session,
    tids: Boolean(req.session) && !req.key_columns.length,
  });
  if (req.coarse.length && r.scanned) log?.info({ table: `${req.schema}.${req.table}`, fine_bits: req.fine_bits }, 'diff buckets: cached sums were gone (evicted, expired or another agent answered the coarse round); scanned again');
  if (req.coarse.length && req.session && r.tids && !r.tids.overflow) keepTargetTids(req.session, req.fine_bits, req.coarse, r.tids);
  // Digests cross the WAN: empty buckets (zeros) shrink to almost nothing.
  const packed = deflateRawSync(r.digests, { level: 1 });
  return packed.length < r.digests.length * 0.9 ? { digests: packed, rows: r.rows, deflated: true } : { digests: r.digests, rows: r.rows };
}

/** The digests of a DiffBuckets reply, inflated when they came deflated (at most 8 bytes per fine bucket). */
export function replyDigests(reply: pb.DiffReply__Output, fineBits: number): Buffer {
  return reply.deflated ? inflateRawSync(reply.digests, { maxOutputLength: 8 * 2 ** assertFineBits(fineBits) }) : reply.digests;
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
