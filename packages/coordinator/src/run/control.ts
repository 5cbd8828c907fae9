import { failedPrecondition, scrubSecrets, toSyncflowError, type Sql } from '@syncflow/shared';
import type { JobRunner, RunnerDeps } from './advance.js';
import { failedAncestors } from './schedule.js';

/**
 * Operator control of a running job beyond cancel: retry what failed, pause, resume, and the
 * job-level timeout. Each is a state change through the transition table plus a JobFlags value
 * the agents watch.
 */

/**
 * Re-runs failed and blocked tables (all of them, or `taskIds`) from their checkpoints: the target's
 * ledger says where each stands, so nothing committed is applied again.
 */
export async function retryTasks(d: RunnerDeps, runner: JobRunner, jobId: string, why: string, taskIds?: string[]): Promise<void> {
  // Between the runner's advances of the job: one that is ending it would count these tables as failed.
  await runner.exclusive(jobId, async () => {
    const job = await d.jobs.get(jobId);
    if (!['failed', 'completed_with_errors', 'running'].includes(job.state)) {
      throw failedPrecondition(`job ${jobId} is ${job.state}: only a failed, completed_with_errors or running job has tables to retry`, 'bad_state');
    }
    // A table retried alone while an FK parent of it is still failed would be blocked again at once: the parent goes with it.
    const parents = taskIds ? failedAncestors(job.plan, await d.jobs.tasks(jobId), taskIds) : [];
    let ids = await d.deadLetters.requeue(jobId, taskIds && [...taskIds, ...parents.map((t) => t.id)]);
    // Children blocked by a retried table get their chance too (blocked again if their parent fails again).
    if (taskIds && ids.length) ids = [...ids, ...(await d.deadLetters.requeue(jobId, (await d.jobs.tasks(jobId)).filter((t) => t.state === 'blocked').map((t) => t.id)))];
    if (ids.length === 0) throw failedPrecondition(`job ${jobId} has no failed or blocked table to retry`, 'nothing_to_retry');
    await d.deadLetters.markTasksRetried(ids);
    if (job.state !== 'running') {
      await d.deadLetters.reopen(jobId);
      // The first end put set-aside constraints and indexes back; a cycle's tables need their constraints
      // aside again to load, and a retried table loaded by COPY its foreign keys (they no longer order
      // the load: a held one would refuse rows whose parent is retried beside it) and indexes.
      const tasks = await d.jobs.tasks(jobId);
      const retried = new Set(tasks.filter((t) => ids.includes(t.id)).map((t) => `${t.schema_name}.${t.table_name}`));
      const reload = (job.plan.loadTables ?? []).filter((t) => retried.has(`${t.schema}.${t.name}`));
      if (job.plan.deferred.length || reload.length) {
        const to = await d.connections.get(job.to_conn);
        try {
          // A few tries: after a target outage the agent's first query may land on a pooled connection the
          // database's restart killed (57P01, retryable).
          const prepare = () => d.agents.call(to.agent_group, 'PrepareTarget', { job_id: jobId, connection: { name: to.name, sealed_url: to.sealed_url }, defer_constraints: job.plan.deferred, defer_index_tables: reload });
          for (let attempt = 1; ; attempt++) {
            try {
              await prepare();
              break;
            } catch (e) {
              if (attempt >= 3 || !toSyncflowError(e).retryable) throw e;
              await new Promise((r) => setTimeout(r, 500 * attempt));
            }
          }
        } catch (e) {
          throw toSyncflowError(e, 'preparing the target again');
        }
      }
      if (!(await d.jobs.moveJob(jobId, 'running'))) throw failedPrecondition(`job ${jobId} changed state meanwhile`, 'bad_state');
      await d.flags.set(jobId, 'running');
    }
    const withParents = parents.length ? ` (with the failed FK parent table(s) it waits for: ${[...new Set(parents.map((t) => `${t.schema_name}.${t.table_name}`))].join(', ')})` : '';
    await d.jobs.log(jobId, null, 'info', `${why}: ${ids.length} table(s) queued again, resuming from their checkpoints${withParents}`);
    d.log.info({ job: jobId, tasks: ids.length }, why);
  });
  await runner.advance(jobId);
}

export async function pauseJob(d: RunnerDeps, jobId: string): Promise<void> {
  const job = await d.jobs.get(jobId);
  if (job.state === 'paused') return;
  if (job.state !== 'running' || !(await d.jobs.moveJob(jobId, 'paused'))) throw failedPrecondition(`job ${jobId} is ${job.state}: only a running job can be paused`, 'bad_state');
  await d.flags.set(jobId, 'paused');
  await d.jobs.log(jobId, null, 'info', 'job paused by operator: running tables stop after their current batch');
}

export async function resumeJob(d: RunnerDeps, runner: JobRunner, jobId: string): Promise<void> {
  const job = await d.jobs.get(jobId);
  if (job.state === 'running') return;
  if (job.state !== 'paused' || !(await d.jobs.moveJob(jobId, 'running'))) throw failedPrecondition(`job ${jobId} is ${job.state}: only a paused job can be resumed`, 'bad_state');
  await d.flags.set(jobId, 'running');
  await d.jobs.log(jobId, null, 'info', 'job resumed by operator: stopped tables continue from their checkpoints');
  await runner.advance(jobId);
}

/** Cancels jobs that outlive their `timeout_seconds` (counted from when they last went to running). */
export function startTimeoutSweep(sql: Sql, runner: JobRunner, d: RunnerDeps, everyMs = 1_000): () => void {
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void (async () => {
      await sql`UPDATE jobs SET timeout_at = now() + make_interval(secs => (spec->>'timeout_seconds')::float8)
                WHERE state IN ('running', 'paused') AND timeout_at IS NULL AND coalesce((spec->>'timeout_seconds')::int8, 0) > 0`;
      const due = await sql<{ id: string; secs: string }[]>`SELECT id, spec->>'timeout_seconds' AS secs FROM jobs WHERE state IN ('running', 'paused') AND timeout_at <= now()`;
      for (const j of due) {
        await runner.cancel(j.id, `timed out after ${j.secs} s`);
        d.alerts.send({ kind: 'job_failed', job_id: j.id, message: `timed out after ${j.secs} s`, at: new Date().toISOString() });
      }
    })().catch((e) => d.log.warn({ err: scrubSecrets((e as Error).message) }, 'timeout sweep failed')).finally(() => { busy = false; });
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
