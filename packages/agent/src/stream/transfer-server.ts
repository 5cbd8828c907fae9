import {
  grpc, toGrpcError, toSyncflowError, invalidArgument, applyMethodFromProto, extractContext, withSpan, SpanKind,
  type Logger, type pb, type Sql, type RateLimiter, type CopyFormat,
} from '@syncflow/shared';
import type { Pools } from '../pools.js';
import { applyBatch, applyEnd, type ApplySpec } from '../apply/batch.js';
import { ensureTargetSchema, ledgerPosition, ledgerHashes } from '../apply/ledger.js';
import { restartTask } from '../apply/restart.js';
import { registerUndoTable } from '../apply/undo.js';
import { storedFilter, taskFilter, checkResume, rowsByCtid } from '../apply/diff-filter.js';
import { tableColumns } from '../read/keys.js';

type Call = grpc.ServerDuplexStream<pb.TransferMessage__Output, pb.TransferAck>;

/**
 * The target side of Transfer. Reads with `for await`, so HTTP/2 flow control reaches the
 * sender while a batch is being applied; acks each batch only after its transaction commits.
 */
export function transferHandler(pools: Pools, log: Logger): grpc.handleBidiStreamingCall<pb.TransferMessage__Output, pb.TransferAck> {
  return (call: Call) => {
    const it = call[Symbol.asyncIterator]() as AsyncIterator<pb.TransferMessage__Output>;
    serve(call, it, pools, log).catch((e) => {
      const err = toSyncflowError(e);
      log.warn({ code: err.code, err: err.message }, 'transfer failed on the target');
      call.emit('error', toGrpcError(err));
      // grpc-js holds the status back while a received message is still being delivered: keep
      // reading (and dropping) the batches in flight, or the sender never learns of the failure.
      void (async () => {
        try { while (!(await it.next()).done) { /* discard */ } } catch { /* the call ended */ }
      })();
    });
  };
}

async function serve(call: Call, it: AsyncIterator<pb.TransferMessage__Output>, pools: Pools, log: Logger): Promise<void> {
  const first = await it.next();
  const header = first.value?.header;
  if (first.done || !header) throw invalidArgument('a Transfer stream must start with a header');
  const spec: ApplySpec = {
    jobId: header.job_id, taskId: header.task_id, schema: header.schema, table: header.table,
    columns: header.columns, method: applyMethodFromProto(header.method), mirror: header.mirror, onBadRow: header.on_bad_row,
    key: { columns: header.key_columns, types: [] },
    format: copyFormatFromWire(header.copy_format),
  };
  if (!header.target) throw invalidArgument('Transfer header has no target connection');
  const pool = await pools.guarded(header.target);
  try {
    await serveTable(call, it, pool.sql, pool.limiter, spec, header, log);
    pool.breaker.success();
  } catch (e) {
    pool.breaker.failure(e);
    throw e;
  }
}

async function serveTable(call: Call, it: AsyncIterator<pb.TransferMessage__Output>, sql: Sql, limiter: RateLimiter, spec: ApplySpec,
  header: pb.TransferHeader__Output, log: Logger): Promise<void> {
  const tlog = log.child({ job: spec.jobId, task: spec.taskId, table: `${spec.schema}.${spec.table}` });

  await withSpan('apply table', { 'syncflow.job': spec.jobId, 'syncflow.task': spec.taskId, 'db.sql.table': `${spec.schema}.${spec.table}` }, async (span) => {
    // What the ready ack needs, asked at once (every task's first step waits for it): the key's types
    // (and whether the table is partitioned: how its upserts take before-images), where the ledger says
    // to resume, and (diff re-sync) the bucket filter of the committed batches.
    const opening = () => Promise.all([targetKey(sql, spec), ledgerPosition(sql, spec.jobId, spec.taskId), storedFilter(sql, spec.jobId, spec.taskId)]);
    const [{ types, partitioned }, found, storedFound] = await opening().catch(async (e) => {
      if (toSyncflowError(e).code !== '42P01') throw e;
      await ensureTargetSchema(sql);
      return opening();
    });
    spec.key = { columns: header.key_columns, types };
    spec.partitioned = partitioned;
    let pos = found;
    let stored = storedFound;
    // Registered once, committed, before any batch: every batch registers it again in its own
    // transaction (ON CONFLICT DO NOTHING), which then finds a committed row instead of waiting for
    // another part's uncommitted first batch (the parts of one table applied one after the other).
    const register = () => registerUndoTable(sql, { jobId: spec.jobId, taskId: spec.taskId, seq: 0, schema: spec.schema, table: spec.table, columns: spec.columns, key: spec.key });
    if (header.restart) {
      await register(); // before the restart's logged deletes
      await restartTask(sql, spec);
      tlog.warn({ earlier_batches: pos.seq }, 'keyless table restarted: rows of earlier attempts deleted with their ledger rows');
      pos = { seq: 0, lastKey: null };
      stored = null; // dropped with the ledger rows
    }
    const committedHashes = pos.seq > 0 && spec.key.columns.length === 0 ? await ledgerHashes(sql, spec.jobId, spec.taskId) : [];
    call.write({
      ready: true, committed_seq: pos.seq, resume_after: pos.lastKey ? { values: pos.lastKey } : null,
      committed_hashes: committedHashes, diff: stored?.wire ?? null,
    });
    // While the source takes the ack (before its first batch can arrive, which is read below).
    if (!header.restart) await register();
    if (pos.seq > 0) tlog.info({ committed_seq: pos.seq }, 'resuming after the last committed batch');
    // Mirror marks start at the range's lower end (or the last committed key) and end at its upper end.
    let prevKey = pos.lastKey ?? (header.range_after?.values.length ? header.range_after.values : null);
    const upto = header.range_upto?.values.length ? header.range_upto.values : null;
    let batches = pos.seq;
    let applied = 0, duplicates = 0;
    for (;;) {
      const { value: msg, done } = await it.next();
      if (done) throw invalidArgument('Transfer stream ended without TransferEnd');
      if (msg.diff) {
        if (applied || duplicates) throw invalidArgument('a bucket filter must come before the first batch');
        spec.diff = taskFilter(msg.diff);
        const keys = spec.diff?.filter.keys;
        if (keys && (!spec.key.columns.length || keys.some((k) => k.length !== spec.key.columns.length || k.includes(null)))) {
          throw invalidArgument(`a filter of keys needs a keyed table and ${spec.key.columns.length} non-null value(s) per key`);
        }
        checkResume(pos.seq, stored, spec.diff ?? null);
        const byCtid = spec.diff && spec.method === 'replace' ? rowsByCtid(spec.diff.filter) : null;
        tlog.info(keys ? { keys: keys.length } : { fine_bits: msg.diff.fine_bits, rows_by_ctid: byCtid }, keys ? 'diff re-sync: shipping the rows of the changed keys' : 'diff re-sync: shipping only differing hash buckets');
      } else if (msg.batch) {
        if (!applied && !duplicates) checkResume(pos.seq, stored, spec.diff ?? null);
        const b = msg.batch;
        tlog.debug({ seq: b.seq, rows: b.rows, bytes: b.data.length }, 'applying batch');
        await limiter.take(Number(b.rows), b.data.length);
        const lastKey = b.last_key?.values.length ? b.last_key.values : null;
        const r = await applyBatch(sql, spec, {
          seq: Number(b.seq), data: b.data, rows: Number(b.rows),
          firstKey: b.first_key?.values.length ? b.first_key.values : null, lastKey,
        }, prevKey);
        if (lastKey) prevKey = lastKey;
        batches = Math.max(batches, Number(b.seq));
        if (r.duplicate) duplicates++; else applied++;
        call.write({ seq: b.seq, last_key: lastKey ? { values: lastKey } : null, rows: b.rows, duplicate: r.duplicate,
          rows_inserted: r.inserted, rows_updated: r.updated, rows_marked_for_delete: r.marked, rows_quarantined: r.quarantined });
        if (r.quarantined) tlog.warn({ seq: b.seq, quarantined: r.quarantined }, 'rows refused by the target were quarantined');
        if (r.relocked) tlog.info({ seq: b.seq }, 'a row of the batch changed under it (another writer); applied again, its rows locked before their before-images');
      } else if (msg.end) {
        if (!applied && !duplicates) checkResume(pos.seq, stored, spec.diff ?? null);
        const marked = await applyEnd(sql, spec, prevKey, upto, batches);
        span.setAttribute('syncflow.batches', applied);
        tlog.info({ batches: applied, duplicates, marked_at_end: marked }, 'task applied on the target');
        call.write({ final: true, rows_marked_for_delete: marked, seq: 0 });
        call.end();
        return;
      } else {
        throw invalidArgument('unexpected message in Transfer stream');
      }
    }
  }, { parent: extractContext(header.trace), kind: SpanKind.SERVER });
}

function copyFormatFromWire(f: string): CopyFormat {
  if (f === '' || f === 'text') return 'text';
  if (f === 'binary') return 'binary';
  throw invalidArgument(`unknown copy_format ${JSON.stringify(f)}`);
}

/**
 * The target's own types of the key columns (casts on the target use the target's catalog), and
 * whether the table is partitioned; a keyless table needs neither (it is never upserted).
 */
async function targetKey(sql: Sql, spec: ApplySpec): Promise<{ types: { schema: string; name: string }[]; partitioned: boolean }> {
  if (spec.key.columns.length === 0) return { types: [], partitioned: false };
  const { types, partitioned } = await tableColumns(sql, spec.schema, spec.table);
  return {
    types: spec.key.columns.map((c) => {
      const t = types.get(c);
      if (!t) throw invalidArgument(`key column ${c} not found on target table ${spec.schema}.${spec.table}`);
      return t;
    }),
    partitioned,
  };
}
