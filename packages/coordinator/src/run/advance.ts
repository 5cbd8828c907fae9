import {
  isTerminalJob, toSyncflowError, scrubSecrets, type Logger, type JetStreamClient, type Names, type JobFlags, type pb,
} from '@syncflow/shared';
import type { JobStore, JobRow } from '../store/jobs.js';
import type { ConnectionStore } from '../store/connections.js';
import type { AgentLink } from '../agents.js';
import { publishTask } from '../assign/publish.js';
import { rollbackOnFailure } from './rollback.js';

export interface RunnerDeps {
  jobs: JobStore;
  connections: ConnectionStore;
  agents: AgentLink;
  js: JetStreamClient;
  names: Names;
  flags: JobFlags;
  log: Logger;
}

/**
 * Moves jobs forward from what the control DB says, so it is correct to call at any time and
 * again after a restart: publish the next FK level once the previous one is done, finish the
 * job once every task is done, fail it once a task has failed for good.
 */
export class JobRunner {
  readonly #chains = new Map<string, Promise<void>>();
  constructor(private d: RunnerDeps) {}

  /** Serialises work per job inside this process. */
  advance(jobId: string): Promise<void> {
    const prev = this.#chains.get(jobId) ?? Promise.resolve();
    const next = prev.then(() => this.#advance(jobId)).catch((e) => {
      this.d.log.error({ job: jobId, err: scrubSecrets((e as Error).message) }, 'advancing job failed');
    });
    this.#chains.set(jobId, next);
    void next.finally(() => { if (this.#chains.get(jobId) === next) this.#chains.delete(jobId); });
    return next;
  }

  async #advance(jobId: string): Promise<void> {
    const job = await this.d.jobs.get(jobId);
    if (job.state !== 'running') return;
    const tasks = await this.d.jobs.tasks(jobId);
    const failed = tasks.filter((t) => t.state === 'failed');
    if (failed.length) {
      await this.fail(job, `${failed.length} table(s) failed: ${failed.map((t) => `${t.schema_name}.${t.table_name}: ${t.error}`).join('; ')}`);
      return;
    }
    const open = tasks.filter((t) => t.state !== 'done');
    if (open.length === 0) {
      await this.#complete(job);
      return;
    }
    const level = Math.min(...open.map((t) => t.level));
    const from = await this.d.connections.get(job.from_conn);
    for (const t of open.filter((x) => x.level === level && x.state === 'pending')) {
      await publishTask(this.d.js, this.d.names, from.agent_group, t.message);
      await this.d.jobs.moveTask(t.id, 'queued');
    }
  }

  async #complete(job: JobRow): Promise<void> {
    if (!job.finalized) {
      const to = await this.d.connections.get(job.to_conn);
      const reply = await this.d.agents.call<pb.TargetReply__Output>(to.agent_group, 'FinalizeTarget', {
        job_id: job.id, connection: { name: to.name, sealed_url: to.sealed_url },
        delete_order: job.plan.deleteOrder, sequences: job.plan.sequences, post_ddl: job.plan.postDdl ?? [],
      }, 30 * 60_000);
      await this.d.jobs.setFinalized(job.id, Number(reply.rows_deleted));
      await this.d.jobs.log(job.id, null, 'info', `finalized target: ${reply.rows_deleted} row(s) deleted, ${reply.constraints_restored} constraint(s) restored, ${reply.sequences_set} sequence(s) set`);
    }
    await this.#releaseSnapshot(job);
    if (await this.d.jobs.moveJob(job.id, 'completed')) {
      await this.d.flags.set(job.id, 'completed').catch(() => undefined);
      await this.d.jobs.log(job.id, null, 'info', 'job completed');
      this.d.log.info({ job: job.id }, 'job completed');
    }
  }

  /** Fails a job: stops its open tasks, puts set-aside constraints back, releases the snapshot. */
  async fail(job: JobRow, reason: string): Promise<void> {
    if (isTerminalJob(job.state)) return;
    const message = scrubSecrets(reason);
    await this.d.jobs.moveOpenTasks(job.id, 'cancelled', 'job failed');
    await this.d.flags.set(job.id, 'cancelled').catch(() => undefined);
    await this.#restoreTarget(job);
    await this.#releaseSnapshot(job);
    if (await this.d.jobs.moveJob(job.id, 'failed', { error: message })) {
      await this.d.jobs.log(job.id, null, 'error', `job failed: ${message}`);
      this.d.log.error({ job: job.id, reason: message }, 'job failed');
      await rollbackOnFailure(this.d, { ...job, state: 'failed' });
    }
  }

  async cancel(jobId: string): Promise<JobRow> {
    const job = await this.d.jobs.get(jobId);
    if (isTerminalJob(job.state)) return job;
    await this.d.jobs.moveJob(jobId, 'cancelled', { error: 'cancelled by operator' });
    await this.d.jobs.moveOpenTasks(jobId, 'cancelled', 'job cancelled');
    await this.d.flags.set(jobId, 'cancelled');
    await this.d.jobs.log(jobId, null, 'warn', 'job cancelled by operator');
    await this.#restoreTarget(job);
    await this.#releaseSnapshot(job);
    return this.d.jobs.get(jobId);
  }

  async #restoreTarget(job: JobRow): Promise<void> {
    if (job.plan.deferred.length === 0) return;
    try {
      const to = await this.d.connections.get(job.to_conn);
      await this.d.agents.call(to.agent_group, 'FinalizeTarget', { job_id: job.id, connection: { name: to.name, sealed_url: to.sealed_url }, delete_order: [], sequences: [] });
    } catch (e) {
      const err = toSyncflowError(e);
      await this.d.jobs.log(job.id, null, 'error', `could not restore set-aside constraints yet: ${scrubSecrets(err.message)} (they are kept in syncflow.deferred_constraints on the target)`);
    }
  }

  async #releaseSnapshot(job: JobRow): Promise<void> {
    if (!job.snapshot_id) return;
    const from = await this.d.connections.get(job.from_conn).catch(() => undefined);
    if (!from) return;
    await this.d.agents.broadcast(from.agent_group, 'ReleaseSnapshot', { job_id: job.id }).catch(() => undefined);
  }
}
