import { eventMessage, decodeJson, extractContext, withSpan, scrubSecrets, pullEach, type JetStreamClient, type Names, type Logger, type EventMessage } from '@syncflow/shared';
import type { JobStore } from '../store/jobs.js';
import type { JobRunner, RunnerDeps } from '../run/advance.js';
import { deadLetter } from '../run/recovery.js';

/**
 * Folds the agents' events (JetStream, durable consumer) into job and task state and the job
 * log. An event is acked only after the control DB has it, so a coordinator restart loses none.
 */
export class EventConsumer {
  #stopping = false;
  #loop: Promise<void> | undefined;
  constructor(private js: JetStreamClient, private n: Names, private jobs: JobStore, private runner: JobRunner, private log: Logger, private rel: RunnerDeps) {}

  start(): void {
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#loop;
  }

  async #run(): Promise<void> {
    // Up to 64 events a pull, applied one after the other as they arrive (each acked once the control DB has it).
    await pullEach(this.js, this.n.eventsStream, this.n.coordinatorConsumer, this.log, { stopping: () => this.#stopping, batch: 64 }, async (m) => {
      const parsed = eventMessage.safeParse(decodeJson(m.data));
      if (!parsed.success) {
        this.log.error({ subject: m.subject }, 'malformed event dropped');
        m.term();
        return;
      }
      try {
        const carrier: Record<string, string> = {};
        for (const k of ['traceparent', 'tracestate']) { const v = m.headers?.get(k); if (v) carrier[k] = v; }
        await withSpan(`event ${parsed.data.type}`, { 'syncflow.job': parsed.data.job_id }, () => this.#apply(parsed.data), { parent: extractContext(carrier) });
        m.ack();
      } catch (e) {
        this.log.warn({ err: scrubSecrets((e as Error).message) }, 'event not applied; will be redelivered');
        m.nak(1_000);
      }
    });
  }

  /**
   * Moves the job on after an event, without holding the event stream: advance runs one at a time per
   * job, and one call may wait for a finalize of many seconds. An event handler waiting for it held up
   * every job's events past the consumer's ack wait (30 s), and JetStream delivered the event again:
   * a task's final "failed", applied again after a `dlq retry` had queued the task anew, failed it again.
   * The runner retries a failed advance itself; a coordinator restart advances every running job.
   */
  #advance(jobId: string): void {
    this.runner.advance(jobId).catch((e) => this.log.warn({ job: jobId, err: scrubSecrets((e as Error).message) }, 'advancing the job after an event failed'));
  }

  /** Jobs this control DB has (jobs are never deleted): an event's job is looked up once, not per event. */
  readonly #known = new Set<string>();

  async #apply(e: EventMessage): Promise<void> {
    if (!this.#known.has(e.job_id)) {
      if (!(await this.jobs.exists(e.job_id))) return; // an event of a job this control DB does not know (another namespace user)
      if (this.#known.size >= 10_000) this.#known.clear();
      this.#known.add(e.job_id);
    }
    switch (e.type) {
      case 'started':
        await this.jobs.moveTask(e.task_id, 'running', { attempts: e.delivery });
        await this.jobs.log(e.job_id, e.task_id, 'info', `started on agent ${e.agent_id} (attempt ${e.delivery})${e.resume_after ? ', resuming after the last committed batch' : ''}`);
        break;
      case 'checkpoint':
        await this.jobs.checkpoint(e.task_id, { seq: e.seq, last_key: e.last_key, rows: e.rows, bytes: e.bytes, batches: e.batches });
        break;
      case 'log':
        await this.jobs.log(e.job_id, e.task_id, e.level, scrubSecrets(e.message));
        break;
      case 'done':
        if (await this.jobs.finishTask(e.task_id, { rows: e.rows, bytes: e.bytes, batches: e.batches, inserted: e.inserted, updated: e.updated, marked_for_delete: e.marked_for_delete })) {
          await this.jobs.log(e.job_id, e.task_id, 'info', `done: ${e.rows} rows read, ${e.inserted} inserted, ${e.updated} updated, ${e.marked_for_delete} marked for delete, ${e.duplicates} duplicate batch(es) skipped`);
        }
        this.#advance(e.job_id);
        break;
      case 'failed': {
        const msg = scrubSecrets(`${e.error.code}: ${e.error.message}`);
        this.rel.metrics.inc('syncflow_task_failures_total', { final: String(e.final) });
        if (e.final) {
          // Dead letter first (idempotent), so a crash between the two cannot lose it.
          if (!(await deadLetter(this.rel, e))) break;
          if (await this.jobs.moveTask(e.task_id, 'failed', { error: msg, attempts: e.delivery })) {
            await this.jobs.log(e.job_id, e.task_id, 'error', `failed for good (attempt ${e.delivery}), sent to the dead-letter stream: ${msg}`);
          }
          this.#advance(e.job_id);
        } else {
          await this.jobs.log(e.job_id, e.task_id, 'warn', `attempt ${e.delivery} failed, will retry: ${msg}`);
        }
        break;
      }
      case 'paused':
        if (await this.rel.deadLetters.pausedTaskStopped(e.task_id)) {
          await this.jobs.log(e.job_id, e.task_id, 'info', `paused on agent ${e.agent_id} after the last committed batch; resumes from its checkpoint`);
        }
        this.#advance(e.job_id); // resumed meanwhile: republish it now
        break;
    }
  }
}

