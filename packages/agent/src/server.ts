import { grpc, unary, invalidArgument, taskMessage, decodeJson, withSpan, metadataCarrier, extractContext, SpanKind, type Logger, type pb } from '@syncflow/shared';
import type { Pools } from './pools.js';
import { checkReachable } from './pools.js';
import { introspect } from './read/introspect.js';
import type { SnapshotHolder } from './read/snapshot.js';
import { assertChangeSlots, dropChangeSlots, type ChangeLog } from './read/change-log.js';
import { prepareTarget, finalizeTarget, restoreConstraints } from './apply/target.js';
import { restoreIndexes, analyzeTable } from './apply/defer-indexes.js';
import { purgeUndo } from './apply/undo.js';
import { transferHandler } from './stream/transfer-server.js';
import { splitPoints } from './read/split.js';
import { diffBuckets } from './read/diff-digests.js';
import { safetyHandlers } from './safety-rpc.js';
import type { DiffPrefetch } from './work/diff-prefetch.js';

/** Binds AgentService: each RPC validates its input and delegates to its stage. */
export function agentService(pools: Pools, snapshots: SnapshotHolder, log: Logger, prefetch: DiffPrefetch, changes: ChangeLog, undoRetentionHours = 168): pb.AgentServiceHandlers {
  const conn = (c: pb.SealedConnection__Output | null) => {
    if (!c?.sealed_url) throw invalidArgument('connection is required');
    return { c, ...pools.get(c) };
  };
  const traced = <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>((req, call) =>
    withSpan(name, {}, () => fn(req), { parent: extractContext(metadataCarrier(call.metadata)), kind: SpanKind.SERVER }));

  return {
    Introspect: traced('introspect', async (req: pb.IntrospectRequest__Output) => {
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      return introspect(sql);
    }),
    ExportSnapshot: traced('export snapshot', async (req: pb.SnapshotRequest__Output) => {
      if (!req.job_id) throw invalidArgument('job_id is required');
      if (req.change_slot) assertChangeSlots([req.change_slot]);
      assertChangeSlots(req.decode_slots);
      const { url, sql } = conn(req.connection);
      const r = await snapshots.export(req.job_id, url, req.change_slot);
      if (r.change) for (const slot of req.decode_slots) changes.prefetch(sql, slot, r.change.lsn);
      return { snapshot_id: r.id, change_slot: r.change?.slot ?? '', change_lsn: r.change?.lsn ?? '', change_note: r.note ?? '' };
    }),
    ReleaseSnapshot: traced('release snapshot', async (req: pb.SnapshotRequest__Output) => {
      await snapshots.release(req.job_id);
      prefetch.dropJob(req.job_id);
      return { snapshot_id: '' };
    }),
    PrepareTarget: traced('prepare target', async (req: pb.PrepareTargetRequest__Output) => {
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      const reply = await prepareTarget(sql, req, log);
      await purgeUndo(sql, undoRetentionHours);
      return reply;
    }),
    FinalizeTarget: traced('finalize target', async (req: pb.FinalizeTargetRequest__Output) => {
      const { sql } = conn(req.connection);
      return finalizeTarget(sql, req, log);
    }),
    RestoreIndexes: traced('restore indexes', async (req: pb.RestoreIndexesRequest__Output) => {
      const { sql } = conn(req.connection);
      if (!req.job_id) throw invalidArgument('job_id is required');
      // Foreign keys first, after the keys they reference (their validation does not read the child's
      // secondary indexes, and it is the shorter work), then the indexes one at a time: the other tables
      // of the load still use the cores.
      const fks = req.fk_tables.length ? await restoreConstraints(sql, req.job_id, log, [], req.fk_tables) : { restored: 0, keys: 0 };
      const indexes = fks.keys + (req.tables.length ? await restoreIndexes(sql, req.job_id, 1, log, req.tables) : 0);
      // Statistics for the loaded tables, as pgcopydb's VACUUM ANALYZE leaves them: without them the
      // planner guesses (autovacuum may be late or off), e.g. for the next re-sync's upserts.
      for (const t of req.tables) await analyzeTable(sql, t.schema, t.name, log);
      return { indexes_restored: indexes, constraints_restored: fks.restored };
    }),
    SplitPoints: traced('split points', async (req: pb.SplitRequest__Output) => {
      const { sql } = conn(req.connection);
      return splitPoints(sql, req);
    }),
    DiffBuckets: traced('diff buckets', async (req: pb.DiffRequest__Output) => {
      const { sql } = conn(req.connection);
      return diffBuckets(sql, req, log);
    }),
    PrepareDiffs: traced('prepare diffs', async (req: pb.PrepareDiffsRequest__Output) => {
      const tasks = req.tasks.map((b, i) => {
        const t = taskMessage.safeParse(decodeJson(b));
        if (!t.success) throw invalidArgument(`tasks[${i}] is not a task message: ${t.error.issues[0]?.path.join('.') || 'JSON'} ${t.error.issues[0]?.message ?? ''}`.trim());
        return t.data;
      });
      return { accepted: prefetch.add(tasks) };
    }),
    DropChangeSlots: traced('drop change slots', async (req: pb.DropChangeSlotsRequest__Output) => {
      assertChangeSlots(req.slots);
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      return { dropped: await dropChangeSlots(sql, req.slots) };
    }),
    Transfer: transferHandler(pools, log),
    ...safetyHandlers(pools, log, traced, undoRetentionHours),
  } as pb.AgentServiceHandlers;
}
export { grpc };
