import {
  isTerminalJob, isTerminalTask, toSyncflowError, scrubSecrets, type Logger, type JetStreamClient, type Names, type JobFlags, type JobRates, type pb,
} from '@syncflow/shared';
import type { JobStore, JobRow, TaskRow } from '../store/jobs.js';
import type { ConnectionStore } from '../store/connections.js';
import type { AgentLink } from '../agents.js';
import { publishTask } from '../assign/publish.js';
import type { DeadLetterStore } from '../store/dead-letters.js';
import type { Metrics } from '../alerts/metrics.js';
import type { Alerts } from '../alerts/webhook.js';
import { safeDeleteOrder, unfinishedTables } from './recovery.js';
import { blockedTasks, readyTasks } from './schedule.js';
import { rollbackOnFailure } from './rollback.js';
import { reportJobEnd } from './report.js';
import { dropRetiredSlots, recordBaselines } from './changes.js';
import type { ChangeBaselines } from '../store/change-baselines.js';

export interface RunnerDeps {
  jobs: JobStore;
  connections: ConnectionStore;
  agents: AgentLink;
  js: JetStreamClient;
  names: Names;
  flags: JobFlags;
  rates: JobRates;
  log: Logger;
  deadLetters: DeadLetterStore;
  metrics: Metrics;
  alerts: Alerts;
  baselines: ChangeBaselines;
}

/**
 * Biggest parts first (the table's bytes from the plan over its parts): agents take tasks in publish
 * order, so the longest ones start first instead of becoming the job's tail (longest processing time
 * first): in name order the bench's product_media (250 MB, one part) and attachments (160 MB in
 * 40 rows) went out after the small tables.
 */
function largestFirst(tasks: TaskRow[], plan: JobRow['plan']): TaskRow[] {
  const tables = plan.tables as { schema: string; name: string; bytes?: string | number; parts?: number }[];
  const size = new Map(tables.map((t) => [`${t.schema}.${t.name}`, Number(t.bytes ?? 0) / Math.max(1, t.parts ?? 1)]));
  const of = (t: TaskRow) => size.get(`${t.schema_name}.${t.table_name}`) ?? 0;
  return [...tasks].sort((a, b) => of(b) - of(a));
}

/**
 * Moves jobs forward from what the control DB says, so it is correct to call at any time and
 * again after a restart: publish a table's tasks once its FK parents are done (schedule.ts), block the
 * children of failed tables, and end the job once every task has ended: completed, or
 * completed_with_errors / failed when some tables failed for good (one table's failure does not
 * stop the others).
 */
export class JobRunner {
  readonly #chains = new Map<string, Promise<void>>();
  /** Per job: failed advances in a row, and the last error said in the job's log. */
  readonly #failures = new Map<string, { n: number; said: string }>();
  /** Per job: tables whose early index rebuild was asked for (#rebuildLoaded). */
  readonly #rebuilt = new Map<string, Set<string>>();
  /** Jobs whose later levels' diffs were handed to a source agent (#prepareDiffs). */
  readonly #diffsAsked = new Set<string>();
  constructor(private d: RunnerDeps) {}

  /**
   * Runs `fn` between this process's advances of the job, never beside one: an operator's requeue of
   * tables (retry) and the advance that sees every table ended and ends the job cannot interleave
   * (seen: a `dlq retry` during the job's finalize was lost, the job ended with the retried table
   * counted as failed). `fn` must not wait for an advance of the same job.
   */
  exclusive<T>(jobId: string, fn: () => Promise<T>): Promise<T> {
    const result = (this.#chains.get(jobId) ?? Promise.resolve()).then(fn);
    const next = result.then(() => undefined, () => undefined);
    this.#chains.set(jobId, next);
    void next.finally(() => { if (this.#chains.get(jobId) === next) this.#chains.delete(jobId); });
    return result;
  }

  /** Serialises work per job inside this process (on the chain of exclusive); never rejects. */
  advance(jobId: string): Promise<void> {
    return this.exclusive(jobId, () => this.#advance(jobId).then(() => { this.#failures.delete(jobId); }).catch(async (e) => {
      const err = toSyncflowError(e);
      if (!err.retryable) {
        // e.g. a restored foreign key that the data violates: retrying cannot help, the job fails (never stuck).
        this.#failures.delete(jobId);
        const job = await this.d.jobs.get(jobId).catch(() => undefined);
        if (job) await this.fail(job, `finishing the job: ${err.message}`).catch((f) => this.d.log.error({ job: jobId, err: scrubSecrets((f as Error).message) }, 'failing the job failed'));
        return;
      }
      // e.g. the agent picked for FinalizeTarget just died: try again, or the job would wait for an event that never comes.
      const message = scrubSecrets(err.message);
      const last = this.#failures.get(jobId);
      const n = (last?.n ?? 0) + 1;
      const delay = Math.min(15_000, 500 * 2 ** Math.min(n, 5));
      this.d.log.warn({ job: jobId, err: message, retry_in_ms: delay }, 'advancing job failed; will try again');
      // Said in the job's log too (the first time, when the reason changes, and every 10th), so a job
      // waiting e.g. for an agent of a group that is all down is visibly waiting, not silently stuck;
      // the job timeout still bounds it.
      const say = n % 10 === 1 || message !== last?.said;
      this.#failures.set(jobId, { n, said: say ? message : last!.said });
      if (say) await this.d.jobs.log(jobId, null, 'warn', `waiting to advance the job (attempt ${n}, next in ${Math.round(delay / 1000)} s): ${message}`).catch(() => undefined);
      setTimeout(() => void this.advance(jobId), delay).unref();
    }));
  }

  async #advance(jobId: string): Promise<void> {
    const job = await this.d.jobs.get(jobId);
    if (job.state !== 'running') return;
    let tasks = await this.d.jobs.tasks(jobId);
    const blocked = blockedTasks(job.plan, tasks);
    for (const [id, reason] of blocked) {
      if (await this.d.jobs.moveTask(id, 'blocked', { error: reason })) await this.d.jobs.log(jobId, id, 'warn', reason);
    }
    if (blocked.size) tasks = await this.d.jobs.tasks(jobId);
    const open = tasks.filter((t) => !isTerminalTask(t.state));
    if (open.length === 0) {
      if (tasks.every((t) => t.state === 'done')) await this.#complete(job, tasks);
      else await this.#endWithErrors(job, tasks);
      return;
    }
    const ready = readyTasks(job.plan, tasks);
    this.#rebuildLoaded(job, tasks);
    if (!ready.length && this.#diffsAsked.has(job.id)) return;
    const from = await this.d.connections.get(job.from_conn);
    // Published together (the connection writes them in this order, biggest first), then marked
    // queued: a restart in between publishes them again under the same message ids (deduplicated).
    // Only a task still pending is marked: one whose agent has started it already stays running.
    const publishing = largestFirst(ready, job.plan);
    await Promise.all(publishing.map((t) => publishTask(this.d.js, this.d.names, from.agent_group, t.message, t.publishes)));
    await Promise.all(publishing.map((t) => this.d.jobs.moveTask(t.id, 'queued', { only: ['pending'] })));
    this.#prepareDiffs(job, open.filter((t) => t.state === 'pending' && !ready.includes(t)), from);
  }

  /**
   * Diff re-sync: the tasks still waiting for their FK parents compare their buckets with the target's
   * now, on a source agent, while the parents ship (work/diff-prefetch.ts in the agent); only the shipping waits
   * for the parents. Once per job and coordinator process; in the background, and only a speed-up:
   * a task whose filter was not prepared (another agent took it, the call failed) computes its own.
   */
  #prepareDiffs(job: JobRow, waiting: TaskRow[], from: { agent_group: string }): void {
    if (this.#diffsAsked.has(job.id)) return;
    this.#diffsAsked.add(job.id);
    const later = waiting.filter((t) => t.message.diff).sort((x, y) => x.level - y.level);
    if (!later.length) return;
    void this.d.agents.call<pb.PrepareDiffsReply__Output>(from.agent_group, 'PrepareDiffs', {
      tasks: later.map((t) => Buffer.from(JSON.stringify(t.message))),
    }).then((r) => this.d.log.info({ job: job.id, tasks: later.length, accepted: r.accepted }, 'diffs of later FK levels handed to a source agent'))
      .catch((e) => this.d.log.warn({ job: job.id, err: scrubSecrets((e as Error).message) }, 'could not hand diffs of later FK levels to a source agent; each task computes its own'));
  }

  /**
   * A table of a load whose every part is done gets its set-aside indexes back at once, while the
   * other tables still load (as pgcopydb does), instead of all of them at the end; once its FK parents
   * are done too, its set-aside foreign keys are added back and validated as well. In the background:
   * a failure only leaves them to the finalize, which restores whatever is left.
   */
  #rebuildLoaded(job: JobRow, tasks: TaskRow[]): void {
    const load = job.plan.loadTables ?? [];
    if (!load.length) return;
    const asked = this.#rebuilt.get(job.id) ?? new Set<string>();
    this.#rebuilt.set(job.id, asked);
    const key = (schema: string, name: string) => `${schema}.${name}`;
    const open = new Set(tasks.filter((x) => x.state !== 'done').map((x) => key(x.schema_name, x.table_name)));
    const done = (k: string) => !open.has(k) && tasks.some((x) => key(x.schema_name, x.table_name) === k);
    const parents = new Map((job.plan.tables as { schema: string; name: string; depends_on?: string[] }[]).map((t) => [key(t.schema, t.name), t.depends_on ?? []]));
    const ready = load.filter((t) => !asked.has(key(t.schema, t.name)) && done(key(t.schema, t.name)));
    const fkReady = load.filter((t) => !asked.has(`fk:${key(t.schema, t.name)}`) && done(key(t.schema, t.name))
      && (parents.get(key(t.schema, t.name)) ?? []).every(done));
    if (!ready.length && !fkReady.length) return;
    for (const t of ready) asked.add(key(t.schema, t.name));
    for (const t of fkReady) asked.add(`fk:${key(t.schema, t.name)}`);
    void (async () => {
      const to = await this.d.connections.get(job.to_conn);
      const reply = await this.d.agents.call<pb.TargetReply__Output>(to.agent_group, 'RestoreIndexes', {
        job_id: job.id, connection: { name: to.name, sealed_url: to.sealed_url }, tables: ready, fk_tables: fkReady,
      }, 30 * 60_000);
      if (reply.indexes_restored || reply.constraints_restored) {
        const names = [...new Set([...ready, ...fkReady].map((t) => key(t.schema, t.name)))].join(', ');
        await this.d.jobs.log(job.id, null, 'info', `${reply.indexes_restored} index(es) rebuilt and ${reply.constraints_restored} foreign key(s) validated while the rest loads: ${names}`);
      }
    })().catch((e) => this.d.log.warn({ job: job.id, err: scrubSecrets((e as Error).message) }, 'early index rebuild or foreign key validation failed; the finalize does it'));
  }

  /** Every task ended, some not done: finalize what is safe, then completed_with_errors (some done) or failed (none). */
  async #endWithErrors(job: JobRow, tasks: TaskRow[]): Promise<void> {
    const bad = tasks.filter((t) => t.state !== 'done');
    const reason = `${bad.length} table(s) not synced: ${bad.map((t) => `${t.schema_name}.${t.table_name}: ${t.error || t.state}`).join('; ')}`;
    // All or nothing when the job asked for a rollback on failure: a partial result is a failure.
    const allOrNothing = (job.spec as { on_failure?: string })?.on_failure === 'rollback';
    if (allOrNothing || !tasks.some((t) => t.state === 'done')) {
      await this.fail(job, reason);
      return;
    }
    await this.#complete(job, tasks, reason);
  }
  async #complete(job: JobRow, tasks: TaskRow[], withErrors?: string): Promise<void> {
    if (!job.finalized) {
      const to = await this.d.connections.get(job.to_conn);
      const reply = await this.d.agents.call<pb.TargetReply__Output>(to.agent_group, 'FinalizeTarget', {
        job_id: job.id, connection: { name: to.name, sealed_url: to.sealed_url },
        delete_order: withErrors ? safeDeleteOrder(job.plan, tasks) : job.plan.deleteOrder, sequences: job.plan.sequences, post_ddl: job.plan.postDdl ?? [],
        unfinished: unfinishedTables(tasks),
      }, 30 * 60_000);
      await this.d.jobs.setFinalized(job.id, Number(reply.rows_deleted));
      const held = reply.constraints_held ? `, ${reply.constraints_held} foreign key(s) back NOT VALID until their parent table is synced (job retry)` : '';
      await this.d.jobs.log(job.id, null, 'info', `finalized target: ${reply.rows_deleted} row(s) deleted, ${reply.indexes_restored} index(es) rebuilt, ${reply.constraints_restored} constraint(s) restored${held}, ${reply.sequences_set} sequence(s) set`);
    }
    // Before the job counts as ended: a finish that stops here runs again and records the same.
    await recordBaselines(this.d, job, tasks);
    await this.#releaseSnapshot(job);
    if (withErrors) {
      if (await this.d.jobs.moveJob(job.id, 'completed_with_errors', { error: scrubSecrets(withErrors) })) {
        await this.d.flags.set(job.id, 'completed_with_errors').catch(() => undefined);
        await this.d.jobs.log(job.id, null, 'error', `job completed with errors: ${scrubSecrets(withErrors)} (syncflow job retry ${job.id} --failed re-runs them)`);
        this.#ended(job.id, 'completed_with_errors', tasks);
        this.d.alerts.send({ kind: 'job_completed_with_errors', job_id: job.id, message: scrubSecrets(withErrors), at: new Date().toISOString() });
      }
      return;
    }
    if (await this.d.jobs.moveJob(job.id, 'completed')) {
      await this.d.flags.set(job.id, 'completed').catch(() => undefined);
      await this.d.jobs.log(job.id, null, 'info', 'job completed');
      this.d.log.info({ job: job.id }, 'job completed');
      this.#ended(job.id, 'completed', tasks);
    }
  }

  #ended(jobId: string, state: string, tasks: TaskRow[]): void {
    this.#rebuilt.delete(jobId);
    this.#diffsAsked.delete(jobId);
    this.d.metrics.inc('syncflow_jobs_total', { state });
    this.d.metrics.inc('syncflow_rows_total', {}, tasks.reduce((s, t) => s + Number(t.rows), 0));
    reportJobEnd(this.d, jobId);
  }

  /** Fails a job: stops its open tasks, puts set-aside constraints back, releases the snapshot. */
  async fail(job: JobRow, reason: string): Promise<void> {
    if (isTerminalJob(job.state)) return;
    const message = scrubSecrets(reason);
    await this.d.jobs.moveOpenTasks(job.id, 'cancelled', 'job failed');
    await this.d.flags.set(job.id, 'cancelled').catch(() => undefined);
    await this.#restoreTarget(job);
    await this.#releaseSnapshot(job);
    this.#rebuilt.delete(job.id);
    this.#diffsAsked.delete(job.id);
    if (await this.d.jobs.moveJob(job.id, 'failed', { error: message })) {
      await this.d.jobs.log(job.id, null, 'error', `job failed: ${message}`);
      this.d.log.error({ job: job.id, reason: message }, 'job failed');
      this.d.metrics.inc('syncflow_jobs_total', { state: 'failed' });
      this.d.alerts.send({ kind: 'job_failed', job_id: job.id, message, at: new Date().toISOString() });
      reportJobEnd(this.d, job.id); // in the background; a rollback right after marks it
      await rollbackOnFailure(this.d, { ...job, state: 'failed' });
    }
  }

  async cancel(jobId: string, reason = 'cancelled by operator'): Promise<JobRow> {
    const job = await this.d.jobs.get(jobId);
    if (isTerminalJob(job.state)) return job;
    if (!(await this.d.jobs.moveJob(jobId, 'cancelled', { error: reason }))) return this.d.jobs.get(jobId);
    this.#rebuilt.delete(jobId);
    this.#diffsAsked.delete(jobId);
    await this.d.jobs.moveOpenTasks(jobId, 'cancelled', 'job cancelled');
    await this.d.flags.set(jobId, 'cancelled');
    await this.d.jobs.log(jobId, null, 'warn', `job ${reason}`);
    this.d.metrics.inc('syncflow_jobs_total', { state: 'cancelled' });
    reportJobEnd(this.d, jobId);
    await this.#restoreTarget(job);
    await this.#releaseSnapshot(job);
    return this.d.jobs.get(jobId);
  }

  async #restoreTarget(job: JobRow): Promise<void> {
    if (job.plan.deferred.length === 0 && !job.plan.loadTables?.length) return;
    try {
      const to = await this.d.connections.get(job.to_conn);
      const unfinished = unfinishedTables(await this.d.jobs.tasks(job.id));
      await this.d.agents.call(to.agent_group, 'FinalizeTarget', { job_id: job.id, connection: { name: to.name, sealed_url: to.sealed_url }, delete_order: [], sequences: [], unfinished });
    } catch (e) {
      const err = toSyncflowError(e);
      await this.d.jobs.log(job.id, null, 'error', `could not restore set-aside constraints yet: ${scrubSecrets(err.message)} (they are kept in syncflow.deferred_constraints on the target)`);
    }
  }

  /** Releases the job snapshot; the job's change slot is retired unless a baseline took it (recordBaselines), and retired slots are dropped. */
  async #releaseSnapshot(job: JobRow): Promise<void> {
    if (!job.snapshot_id) return;
    const from = await this.d.connections.get(job.from_conn).catch(() => undefined);
    if (!from) return;
    await this.d.agents.broadcast(from.agent_group, 'ReleaseSnapshot', { job_id: job.id }).catch(() => undefined);
    await this.d.baselines.retireIfUnused(from.name, job.change_slot, job.id)
      .catch((e) => this.d.log.warn({ job: job.id, err: scrubSecrets((e as Error).message) }, 'change slot not retired'));
    await dropRetiredSlots(this.d, from);
  }
}
