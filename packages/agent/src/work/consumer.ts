import {
  taskMessage, decodeJson, publicationOf, toSyncflowError, publishEvent, backoffMs, sleep, ensureGroupConsumer, pullEach, retry, SyncflowError, ErrorKind,
  type JsMsg, type Names, type JetStreamClient, type JetStreamManager, type Logger,
} from '@syncflow/shared';
import { runTask, type TaskDeps } from './run-task.js';

export interface ConsumerOptions { group: string; concurrency: number; ackWaitMs: number; maxDeliver: number }

/**
 * Pulls the tasks of this agent's group from the shared durable consumer, at most `concurrency`
 * at a time. A task stays unacked until it is done (working() keeps it ours while it runs); a
 * failure naks it with backoff while retryable attempts remain, else terminates it (the
 * coordinator hears `failed`, final).
 */
export class TaskConsumer {
  #active = new Map<string, AbortController>();
  /** Slots taken: counted when a message arrives, before its first await, so a burst of messages cannot overrun the limit. */
  #slots = 0;
  #stopping = false;
  #loop: Promise<void> | undefined;

  constructor(private deps: TaskDeps & { jsm: JetStreamManager }, private opts: ConsumerOptions) {}

  get active(): number { return this.#active.size; }

  start(): void {
    this.#loop = this.#run().catch((e) => this.deps.log.error({ err: (e as Error).message }, 'task consumer stopped'));
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    for (const c of this.#active.values()) c.abort();
    await this.#loop;
    const deadline = Date.now() + 10_000;
    while (this.#active.size > 0 && Date.now() < deadline) await sleep(100);
  }

  async #run(): Promise<void> {
    const { js, jsm, names, log } = this.deps;
    const name = await ensureGroupConsumer(jsm, names, this.opts.group, this.opts);
    await pullEach(js, names.tasksStream, name, log, {
      stopping: () => this.#stopping,
      ready: async () => { while (this.#slots >= this.opts.concurrency && !this.#stopping) await sleep(100); },
      expiresMs: 2_000,
    }, (m) => {
      this.#slots++;
      void this.#handle(m).finally(() => { this.#slots--; });
    });
  }

  // term() without a reason: nats-server 2.9 does not know "+TERM <reason>", ignores it, and
  // redelivers the task after the ack wait.
  async #handle(m: JsMsg): Promise<void> {
    const { log, names, js } = this.deps;
    const parsed = taskMessage.safeParse(decodeJson(m.data));
    if (!parsed.success) {
      log.error({ subject: m.subject, issues: parsed.error.issues.length }, 'malformed task message; terminated');
      m.term();
      return;
    }
    const task = parsed.data;
    const delivery = m.info.deliveryCount;
    if (await this.deps.flags.isCancelled(task.job_id)) {
      m.term();
      return;
    }
    if (await this.deps.flags.isPaused(task.job_id)) {
      await this.#paused(task, delivery);
      m.term(); // republished on resume
      return;
    }
    const ctrl = new AbortController();
    this.#active.set(`${task.task_id}:${delivery}`, ctrl);
    const keepAlive = setInterval(() => m.working(), Math.max(1000, Math.floor(this.opts.ackWaitMs / 3)));
    try {
      await runTask(task, delivery, this.deps, ctrl.signal);
      await m.ackAck().catch((e) => log.warn({ err: (e as Error).message }, 'task ack not confirmed; it may be redelivered and will be skipped by the ledger'));
    } catch (e) {
      const err = toSyncflowError(e);
      const cancelled = err.kind === 'cancelled' || ctrl.signal.aborted;
      // The job's own budget (max_attempts), capped by the consumer's max_deliver (JetStream stops there).
      const attempts = Math.min(task.max_attempts, this.opts.maxDeliver);
      const retry = !cancelled && err.retryable && delivery < attempts;
      log[retry ? 'warn' : 'error']({ job: task.job_id, task: task.task_id, code: err.code, retryable: err.retryable, delivery, err: err.message }, 'task failed');
      if (this.#stopping) { m.nak(); return; } // shutting down: another agent takes it now, from its checkpoint
      if (err.code === 'paused') {
        // Stopped after a committed batch; the coordinator republishes the task on resume.
        await this.#paused(task, delivery);
        m.term();
        return;
      }
      if (cancelled) { m.term(); return; }
      // The task message's stream sequence in the id: a dead letter retried republishes the task, and
      // its deliveries count from 1 again; "failed" of delivery 3 again within the dedup window was
      // dropped as a duplicate, and the job stayed running with its tasks queued.
      await publishEvent(js, names, {
        type: 'failed', job_id: task.job_id, task_id: task.task_id, agent_id: this.deps.agentId, at: new Date().toISOString(),
        error: { kind: err.kind, code: err.code, message: err.message, retryable: err.retryable }, final: !retry, delivery,
        publish: publicationOf(m.headers?.get('Nats-Msg-Id')),
      }, `${task.task_id}:failed:${m.seq}:${delivery}`).catch(() => undefined);
      // An open circuit breaker refuses every attempt until its next probe: the next delivery waits for
      // it, or a short job budget (3 attempts in ~1.5 s) is spent inside one cooldown (2 s and more).
      if (retry) m.nak(Math.max(backoffMs(delivery, { attempts: this.opts.maxDeliver, baseMs: 500, maxMs: 30_000 }), Math.min(err.retryAfterMs ?? 0, 60_000) + 100));
      else m.term();
    } finally {
      clearInterval(keepAlive);
      this.#active.delete(`${task.task_id}:${delivery}`);
    }
  }

  /** Tells the coordinator the task stopped for a pause (it republishes it on resume). */
  async #paused(task: { job_id: string; task_id: string }, delivery: number): Promise<void> {
    await retry(() => publishEvent(this.deps.js, this.deps.names, { type: 'paused', job_id: task.job_id, task_id: task.task_id, agent_id: this.deps.agentId,
      at: new Date().toISOString(), delivery }, `${task.task_id}:paused:${delivery}`).catch((e) => {
      throw new SyncflowError(ErrorKind.Unavailable, (e as Error).message, { retryable: true });
    }), { attempts: 10, baseMs: 250, maxMs: 3_000 }).catch((e) => this.deps.log.warn({ err: (e as Error).message }, 'paused event not published'));
  }
}
