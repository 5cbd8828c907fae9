import { randomUUID } from 'node:crypto';
import { withSpan, injectContext, trace, context, toSyncflowError, scrubSecrets, failedPrecondition, invalidArgument, type pb } from '@syncflow/shared';
import { gatherAndPlan, introspectTarget, type SyncRequest } from '../plan/gather.js';
import type { RunnerDeps, JobRunner } from './advance.js';
import { assertNoErrors } from '../plan/checks.js';
import { changeSlotOf, dropRetiredSlots } from './changes.js';

/** A protected target takes a job only when the request names it again in `confirm`. */
function assertConfirmed(req: SyncRequest): void {
  if (req.to.protected && req.confirm !== req.to.name) {
    throw failedPrecondition(`target connection "${req.to.name}" is protected: start again with --confirm ${req.to.name}`, 'protected');
  }
}

async function createMissingTables(d: RunnerDeps, req: SyncRequest, tables: { schema: string; name: string }[]): Promise<string[]> {
  if (!tables.length) return [];
  const refs = tables.map((t) => ({ schema: t.schema, name: t.name, key: [] }));
  const ddl = await d.agents.call<pb.TableDdlReply__Output>(req.from.agent_group, 'TableDdl', { connection: { name: req.from.name, sealed_url: req.from.sealed_url }, tables: refs });
  await d.agents.call(req.to.agent_group, 'ApplyDdl', { connection: { name: req.to.name, sealed_url: req.to.sealed_url }, statements: ddl.tables.flatMap((t) => t.create) });
  d.log.info({ tables: tables.length, target: req.to.name }, 'created missing tables on the target');
  return ddl.tables.flatMap((t) => t.post_data);
}

/**
 * Starts a job: export the source snapshot, plan inside it (refusing bad input before anything
 * is written), store job and tasks, prepare the target, then let the runner publish level 0.
 * The whole job is one trace: this span is the root, its context travels with every task.
 */
export async function startJob(d: RunnerDeps, runner: JobRunner, req: SyncRequest): Promise<string> {
  if (req.dryRun) throw invalidArgument('dry_run is answered by PlanSync (syncflow sync start --dry-run calls it); StartSync never runs dry');
  assertConfirmed(req);
  const jobId = randomUUID();
  // Limits are in place before the first task can be pulled.
  if (req.maxRowsPerS || req.maxBytesPerS) await d.rates.set(jobId, { rows_per_s: req.maxRowsPerS ?? 0, bytes_per_s: req.maxBytesPerS ?? 0 });
  return withSpan('sync job', { 'syncflow.job': jobId, 'syncflow.from': req.from.name, 'syncflow.to': req.to.name, 'syncflow.mode': req.mode }, async (span) => {
    const traceId = span.spanContext().traceId;
    const carrier = injectContext(trace.setSpan(context.active(), span));
    // Every job but --diff off leaves a change slot: the next re-sync of its tables decodes what changed since.
    const askedSlot = req.diff === 'off' ? '' : changeSlotOf(jobId);
    await dropRetiredSlots(d, req.from);
    const baselines = await d.baselines.forPair(req.from.name, req.to.name);
    // The agent starts decoding the earlier syncs' slots as soon as it has made this job's, while we plan.
    const decodeSlots = askedSlot && req.diff !== 'hash' ? [...new Set([...baselines.values()].map((b) => b.slot))] : [];
    const target = introspectTarget(d.agents, req);
    target.catch(() => undefined); // awaited by the planning below; a failure there, not unhandled here
    const snap = await d.agents.call<pb.SnapshotReply__Output>(req.from.agent_group, 'ExportSnapshot', {
      job_id: jobId, connection: { name: req.from.name, sealed_url: req.from.sealed_url }, change_slot: askedSlot, decode_slots: decodeSlots,
    });
    const snapshotId = snap.snapshot_id;
    // Asked for but not made (or made and the reply lost): retired, so it cannot be left behind.
    if (askedSlot && !snap.change_slot) await d.baselines.retireIfUnused(req.from.name, askedSlot, jobId);
    let planned;
    try {
      const changes = snap.change_lsn ? { lsn: snap.change_lsn, baselines } : undefined;
      planned = await gatherAndPlan(d.agents, req, { jobId, snapshotId, trace: carrier, changes, target });
      assertNoErrors(planned.plan.checks ?? []);
      // --create-missing: tables created now (one transaction), their indexes and FKs after the data.
      planned.record.postDdl = await createMissingTables(d, req, planned.record.createTables ?? []);
    } catch (e) {
      await d.agents.broadcast(req.from.agent_group, 'ReleaseSnapshot', { job_id: jobId });
      await d.baselines.retireIfUnused(req.from.name, snap.change_slot, jobId);
      await dropRetiredSlots(d, req.from);
      throw e;
    }
    // This job writes these target tables: baselines of other sources on them no longer hold.
    await d.baselines.forgetTargetTables(req.to.name, planned.record.tables as { schema: string; name: string }[], req.from.name);
    await d.jobs.create({
      id: jobId, from_conn: req.from.name, to_conn: req.to.name, mode: req.mode,
      spec: {
        tables: req.tables, mode: req.mode, batch_bytes: req.batchBytes, max_attempts: req.maxAttempts ?? 3, timeout_seconds: req.timeoutSeconds ?? 0,
        on_bad_row: req.onBadRow ?? 'quarantine', on_failure: req.onFailure ?? 'keep', create_missing: Boolean(req.createMissing), diff: req.diff ?? 'auto', copy_format: req.copyFormat ?? 'auto',
        verify: req.verify ?? 'full',
      },
      plan: planned.record,
      snapshot_id: snapshotId, change_slot: snap.change_slot, change_lsn: snap.change_lsn, trace_id: traceId, trace: carrier,
    }, planned.tasks.map((t) => ({
      id: t.id, job_id: jobId, level: t.level, schema_name: t.schema, table_name: t.table, method: t.method,
      message: { ...t.message, max_attempts: req.maxAttempts ?? 3 }, row_estimate: String(t.rowEstimate),
    })));
    await d.jobs.log(jobId, null, 'info', `planned ${planned.tasks.length} table(s) in ${planned.record.levels} level(s); snapshot ${snapshotId}`);
    if (snap.change_slot) await d.jobs.log(jobId, null, 'info', `change slot ${snap.change_slot} created with the snapshot (at ${snap.change_lsn}): the next re-sync of these tables decodes the changes since, instead of hashing every row`);
    else if (snap.change_note) await d.jobs.log(jobId, null, 'warn', snap.change_note);
    for (const note of planned.record.notes) await d.jobs.log(jobId, null, 'info', note);
    if (planned.record.createTables?.length) await d.jobs.log(jobId, null, 'info', `created ${planned.record.createTables.length} missing table(s) on the target: ${planned.record.createTables.map((t) => `${t.schema}.${t.name}`).join(', ')}`);
    for (const c of planned.plan.checks ?? []) if (c.severity === 'warning') await d.jobs.log(jobId, null, 'warn', `pre-flight: ${c.message}`);
    d.log.info({ job: jobId, tables: planned.tasks.length, levels: planned.record.levels, trace_id: traceId }, 'job planned');

    try {
      const reply = await d.agents.call<pb.TargetReply__Output>(req.to.agent_group, 'PrepareTarget', {
        job_id: jobId, connection: { name: req.to.name, sealed_url: req.to.sealed_url }, defer_constraints: planned.record.deferred,
        defer_index_tables: planned.record.loadTables ?? [],
      });
      if (reply.constraints_deferred || reply.indexes_deferred) {
        await d.jobs.log(jobId, null, 'info', `set aside on the target for the load: ${reply.constraints_deferred} foreign key(s), ${reply.indexes_deferred} index(es)`);
      }
    } catch (e) {
      const job = await d.jobs.get(jobId);
      await d.jobs.moveJob(jobId, 'running');
      await runner.fail({ ...job, state: 'running' }, `preparing the target: ${scrubSecrets(toSyncflowError(e).message)}`);
      return jobId;
    }
    await d.jobs.moveJob(jobId, 'running');
    await runner.advance(jobId);
    return jobId;
  });
}
