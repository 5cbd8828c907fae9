import { call, grpc, ident, injectContext, SyncflowError, ErrorKind, type Logger, type pb, type Sql, type TaskMessage } from '@syncflow/shared';
import { randomUUID } from 'node:crypto';
import { digestsOf, dropDigests, replyDigests, rowsOf, type DigestRequest } from '../read/diff-digests.js';
import {
  bitmapOf, countBits, differingSlots, fineBitsFor, hasBit, keyFilter, packFilter, typedKeys, unpackFilter, COARSE_SHIFT, MAX_TID_LOOKUPS, type BucketFilter,
} from '../read/buckets.js';
import type { TidLog } from '../read/digest-builder.js';
import { IntegerKeys, joinFragments } from '../read/keys.js';
import { withPinnedTextForms } from '../read/text-forms.js';
import type { ChangeLog } from '../read/change-log.js';

/**
 * Above this share of differing coarse buckets, a task ships every row: the fine digests (8 bytes
 * a row) no longer pay off against rows that almost all differ anyway.
 */
const MAX_DIFFERING_SHARE = 3 / 4;

export interface DiffDecision {
  /** null: ship every row. An empty bitmap: nothing differs. */
  filter: BucketFilter | null;
  /** One line for the job log. */
  note: string;
  /** Digest and filter bytes exchanged with the target agent for this decision. */
  wireBytes: number;
  /** The filter's wire form (sent on the Transfer stream before the first batch). */
  message: pb.DiffFilter | null;
  fineDiffering: number;
  fineTotal: number;
  /** Taken from the decisions prepared ahead of the task's FK level (work/diff-prefetch.ts), with the rows read ahead there. */
  prepared?: true;
}

/** A decision with a filter that no row passes: the task has nothing to read, ship, or mark. */
export const shipsNothing = (d: DiffDecision | null | undefined): boolean => Boolean(d?.filter) && d!.fineDiffering === 0;

const full = (note: string, wireBytes = 0): DiffDecision => ({ filter: null, note, wireBytes, fineDiffering: 0, fineTotal: 0, message: null });

/**
 * Diff re-sync, the source's side: which hash buckets of this task differ between the job
 * snapshot and the target's current state (sized from the planner's row estimate, else a count). Coarse buckets (~16 rows) first for the whole part,
 * then fine buckets (~1 row) only inside the coarse buckets that differ; both sides hash next to
 * their database in parallel, and only 8-byte digests cross. Each side scans its part once: the
 * coarse round builds the fine sums, which stay cached under the decision's session for the fine
 * round (read/diff-digests.ts).
 *
 * A resumed task (batches already committed) keeps the filter stored with those batches (the
 * target sends it back in its ready ack), or ships every row if it had none: every committed
 * batch of a task is applied under the same filter, so what was skipped as equal stays equal.
 */
export async function decideDiff(task: TaskMessage, sql: Sql, target: pb.AgentServiceClient,
  start: { committedSeq: number; diff: pb.DiffFilter__Output | null }, snapshotUsable: boolean, log: Logger,
  prepared?: Promise<DiffDecision>, changes?: ChangeLog): Promise<DiffDecision> {
  if (start.committedSeq > 0) {
    const pinned = unpackFilter(start.diff);
    if (!pinned) return full('diff: the task resumed after batches shipped without a bucket filter; every row is shipped');
    if (!pinned.keys && pinned.hashed.join('\0') !== task.diff_hashed.join('\0')) throw new SyncflowError(ErrorKind.Internal, 'the stored bucket filter hashes other columns than this task', { code: 'diff_filter_mismatch' });
    return describe(pinned, 0, `diff (resumed with the stored ${pinned.keys ? 'keys' : 'bucket filter'})`);
  }
  // Both sides must hash the same rows the reader will read: only inside the job snapshot.
  if (!snapshotUsable || !task.snapshot_id) return full('diff: the job snapshot is gone; every row is shipped');
  // Decided ahead of the task's FK level (work/diff-prefetch.ts); computed here if that failed.
  const early = await prepared?.catch((e) => {
    log.warn({ err: (e as Error).message }, 'diff: the filter prepared ahead failed; computing it now');
    return undefined;
  });
  if (early) return { ...early, note: `${early.note}, prepared ahead of its FK level`, prepared: true };
  return computeDiff(task, sql, target, log, changes);
}

/**
 * A task's diff: from the changes tracked since the table's last sync when the coordinator passed a
 * change slot and its decoding names every changed key (read/change-log.ts) — or, for a table
 * without a key, shows that none changed — else by hashing both sides (hashDiff), with the reason in
 * the job log.
 */
export async function computeDiff(task: TaskMessage, sql: Sql, target: pb.AgentServiceClient, log: Logger, changes?: ChangeLog): Promise<DiffDecision> {
  if (!task.snapshot_id) throw new SyncflowError(ErrorKind.FailedPrecondition, 'a diff needs the job snapshot', { code: 'no_snapshot' });
  // The decode first on this side: the tracked tables wait for it (ChangeLog.idle); the target hashes meanwhile.
  if (!task.changes || !changes) return hashDiff(task, sql, target, log, changes?.idle());
  const decoded = changes.changesFor(sql, task.changes.slot, task.changes.upto, task.schema, task.table, task.key_columns);
  if (!task.key_columns.length) {
    // Without a key its changes name no rows, but a table no change names is as its last sync left it.
    // The target hashes at once, beside the decode (while its side has nothing else to do), this side after it.
    const d = await hashDiff(task, sql, target, log, decoded, decoded.then((f) => 'keys' in f));
    const f = await decoded;
    return 'keys' in f ? d : { ...d, note: `${d.note} (tracked changes not usable: ${f.unusable})` };
  }
  const found = await decoded;
  if ('keys' in found) return changedKeys(task, sql, found.keys, log);
  log.info({ reason: found.unusable }, 'diff: tracked changes not usable; hashing both sides');
  const d = await hashDiff(task, sql, target, log);
  return { ...d, note: `${d.note} (tracked changes not usable: ${found.unusable})` };
}

/**
 * The keys changed since the table's last sync that fall into this task's key range, typed from
 * their text forms (pinned, as decoded) and back, so equal values are listed once in one form: the
 * task ships the rows of exactly these keys as they are in this job's snapshot (index lookups on both
 * sides instead of a scan), and the target marks those of them the source no longer has.
 */
async function changedKeys(task: TaskMessage, sql: Sql, keys: (string | null)[][], log: Logger): Promise<DiffDecision> {
  const t0 = Date.now();
  const inRange = !keys.length ? [] : IntegerKeys.of(task.key_types, keys)?.between(task.range?.after, task.range?.upto) ?? await sql.begin(async (txAny) => withPinnedTextForms(txAny as unknown as Sql, async () => {
    const tx = txAny as unknown as Sql;
    const key = { columns: task.key_columns, types: task.key_types };
    const rows = await tx<{ k: string[] }[]>`
      SELECT DISTINCT ARRAY[${joinFragments(tx, task.key_columns.map((c) => tx`r.${ident(tx, c)}::text`))}] AS k
      FROM ${typedKeys(tx, key, keys, (i) => task.key_columns[i]!, { after: task.range?.after, upto: task.range?.upto })} r`;
    return rows.map((r) => r.k);
  }));
  log.info({ changed_keys: keys.length, in_range: inRange.length, ms: Date.now() - t0 }, 'diff: keys of the tracked changes');
  return describe(keyFilter(inRange), 0, `diff from tracked changes: ${keys.length} key(s) of the table changed since its last sync`);
}

/**
 * A table without a key that no change touched since its last sync (its changes cannot name rows,
 * but their absence says it is as that sync left it): no bucket differs, so nothing is read,
 * shipped, or deleted on the target, and the source does not scan it.
 */
function unchanged(task: TaskMessage): DiffDecision {
  const fineBits = fineBitsFor(0);
  return describe({ fineBits, bitmap: bitmapOf(2 ** fineBits, []), hashed: task.diff_hashed }, 0, 'diff from tracked changes: the table did not change since its last sync');
}

/**
 * Both rounds of a task's diff in the job snapshot against the target's current state. Valid until
 * the task ships: nothing of this job writes the task's table on the target before then (parents'
 * upserts touch other tables; mirror deletes wait for the finalize). `localReady`: when this side may
 * scan (after the decode of a change slot); the target hashes its side at once. `unchangedSince`: a
 * keyless table's decode says no change names it (nothing differs; this side does not scan).
 */
async function hashDiff(task: TaskMessage, sql: Sql, target: pb.AgentServiceClient, log: Logger, localReady: Promise<unknown> = Promise.resolve(),
  unchangedSince?: Promise<boolean>): Promise<DiffDecision> {
  const keyless = !task.key_columns.length;
  const base: Omit<DigestRequest, 'fineBits' | 'coarse'> = {
    schema: task.schema, table: task.table, columns: task.columns, keyColumns: task.key_columns,
    after: task.range?.after ?? null, upto: task.range?.upto ?? null, hashed: task.diff_hashed, session: randomUUID(), tids: keyless,
  };
  const t0 = Date.now();
  const rows = await rowsOf(sql, base, task.snapshot_id, task.row_estimate);
  const tCount = Date.now();
  const fineBits = fineBitsFor(rows);
  const coarseCount = 2 ** (fineBits - COARSE_SHIFT);
  let wire = 0;
  let rescanned = false;
  let rowsAt: TidLog | null = null;
  const both = async (coarse: Buffer | null, peer = peerDigests(target, task, fineBits, coarse, base.session!)) => {
    const [mine, theirs] = await Promise.all([localReady.then(() => digestsOf(sql, { ...base, fineBits, coarse }, task.snapshot_id)), peer]);
    wire += theirs.digests.length + (coarse?.length ?? 0);
    if (coarse && mine.scanned) rescanned = true;
    if (coarse) rowsAt = mine.tids;
    return differingSlots(mine.digests, replyDigests(theirs, fineBits));
  };
  const peer = peerDigests(target, task, fineBits, null, base.session!);
  peer.catch(() => undefined); // awaited below, unless the table is found unchanged
  // Found unchanged since its last sync: the target's scan, started for nothing, ends by itself and its sums expire unasked.
  if (await unchangedSince) return unchanged(task);
  const coarseDiff = await both(null, peer);
  const tCoarse = Date.now();
  // The target's cached sums expire (or are evicted) by themselves when no fine round asks for them.
  if (coarseDiff.length > coarseCount * MAX_DIFFERING_SHARE) {
    dropDigests({ ...base, fineBits, coarse: null }, task.snapshot_id);
    return full(`diff: ${coarseDiff.length} of ${coarseCount} coarse buckets differ; every row is shipped`, wire);
  }
  let fine: number[] = [];
  if (!coarseDiff.length) dropDigests({ ...base, fineBits, coarse: null }, task.snapshot_id);
  else {
    const slots = await both(bitmapOf(coarseCount, coarseDiff));
    const per = 2 ** COARSE_SHIFT;
    fine = slots.map((s) => (coarseDiff[Math.floor(s / per)]! << COARSE_SHIFT) | (s % per));
  }
  const filter: BucketFilter = { fineBits, bitmap: bitmapOf(2 ** fineBits, fine), hashed: task.diff_hashed };
  if (keyless) {
    // The target deletes the rows of these buckets by the ctids its pass kept under the session; this
    // side reads them by the ctids its own pass kept (the same snapshot): no second scan on either side.
    filter.session = base.session;
    const tids = (rowsAt as TidLog | null)?.select((b) => hasBit(filter.bitmap, b), MAX_TID_LOOKUPS);
    if (tids) filter.tids = tids;
  }
  log.info({ rows, fine_bits: fineBits, coarse_differing: coarseDiff.length, fine_differing: fine.length, wire_bytes: wire, source_rescanned: rescanned,
    rows_by_ctid: filter.tids?.length ?? null, count_ms: tCount - t0, coarse_ms: tCoarse - tCount, fine_ms: Date.now() - tCoarse }, 'diff: buckets compared');
  return describe(filter, wire, `diff: ${coarseDiff.length} of ${coarseCount} coarse buckets differed`);
}

function describe(filter: BucketFilter, wire: number, lead: string): DiffDecision {
  const message = packFilter(filter);
  const wireBytes = wire + message.buckets.length + message.keys.length;
  if (filter.keys) {
    const n = filter.keys.length;
    return { filter, message, wireBytes, fineDiffering: n, fineTotal: n, note: `${lead}, ${n} in this task's key range` };
  }
  const fineTotal = 2 ** filter.fineBits;
  const fineDiffering = countBits(filter.bitmap);
  return { filter, message, wireBytes, fineDiffering, fineTotal, note: `${lead}, ${fineDiffering} of ${fineTotal} fine buckets` };
}

async function peerDigests(client: pb.AgentServiceClient, task: TaskMessage, fineBits: number, coarse: Buffer | null, session: string): Promise<pb.DiffReply__Output> {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(injectContext())) md.set(k, v);
  return call<pb.DiffRequest, pb.DiffReply__Output>(client as unknown as grpc.Client, 'DiffBuckets', {
    connection: { name: task.target.name, sealed_url: task.target.sealed_url },
    schema: task.schema, table: task.table, columns: task.columns, key_columns: task.key_columns,
    range_after: task.range?.after ? { values: task.range.after as string[] } : null,
    range_upto: task.range?.upto ? { values: task.range.upto as string[] } : null,
    fine_bits: fineBits, coarse: coarse ?? Buffer.alloc(0), hashed_columns: task.diff_hashed, session,
  }, { metadata: md, deadlineMs: 30 * 60_000 });
}


/** The job log's line per task: "diff: N of M buckets differed, R rows shipped" (`readAhead`: rows read before the task's FK level came). */
export function diffSummary(task: TaskMessage, d: DiffDecision, rows: number, bytes: number, readAhead = false): string {
  return `${task.schema}.${task.table}: ${d.note}; ${rows} rows shipped${readAhead ? ', read ahead of its FK level' : ''} (${bytes} bytes of rows, ${d.wireBytes} bytes of digests and filter)`;
}
