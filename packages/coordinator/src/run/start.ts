import { randomUUID } from 'node:crypto';
import { withSpan, injectContext, trace, context, toSyncflowError, scrubSecrets, type pb } from '@syncflow/shared';
import { gatherAndPlan, type SyncRequest } from '../plan/gather.js';
import type { RunnerDeps, JobRunner } from './advance.js';

/**
 * Starts a job: export the source snapshot, plan inside it (refusing bad input before anything
 * is written), store job and tasks, prepare the target, then let the runner publish level 0.
 * The whole job is one trace: this span is the root, its context travels with every task.
 */
export async function startJob(d: RunnerDeps, runner: JobRunner, req: SyncRequest): Promise<string> {
  const jobId = randomUUID();
  // Limits are in place before the first task can be pulled.
  if (req.maxRowsPerS || req.maxBytesPerS) await d.rates.set(jobId, { rows_per_s: req.maxRowsPerS, bytes_per_s: req.maxBytesPerS });
  return withSpan('sync job', { 'syncflow.job': jobId, 'syncflow.from': req.from.name, 'syncflow.to': req.to.name, 'syncflow.mode': req.mode }, async (span) => {
    const traceId = span.spanContext().traceId;
    const carrier = injectContext(trace.setSpan(context.active(), span));
    const { snapshot_id: snapshotId } = await d.agents.call<pb.SnapshotReply__Output>(req.from.agent_group, 'ExportSnapshot', {
      job_id: jobId, connection: { name: req.from.name, sealed_url: req.from.sealed_url },
    });
    let planned;
    try {
      planned = await gatherAndPlan(d.agents, req, { jobId, snapshotId, trace: carrier });
    } catch (e) {
      await d.agents.broadcast(req.from.agent_group, 'ReleaseSnapshot', { job_id: jobId });
      throw e;
    }
    await d.jobs.create({
      id: jobId, from_conn: req.from.name, to_conn: req.to.name, mode: req.mode,
      spec: { tables: req.tables, mode: req.mode, batch_bytes: req.batchBytes, max_attempts: req.maxAttempts ?? 3, timeout_seconds: req.timeoutSeconds ?? 0 }, plan: planned.record,
      snapshot_id: snapshotId, trace_id: traceId, trace: carrier,
    }, planned.tasks.map((t) => ({
      id: t.id, job_id: jobId, level: t.level, schema_name: t.schema, table_name: t.table, method: t.method,
      message: { ...t.message, max_attempts: req.maxAttempts ?? 3 }, row_estimate: String(t.rowEstimate),
    })));
    await d.jobs.log(jobId, null, 'info', `planned ${planned.tasks.length} table(s) in ${planned.record.levels} level(s); snapshot ${snapshotId}`);
    for (const note of planned.record.notes) await d.jobs.log(jobId, null, 'info', note);
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
