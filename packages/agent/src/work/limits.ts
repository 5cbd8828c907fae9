import { BatchSizer, RateLimiter, type JobRates, type AgentRegistry, type TaskMessage } from '@syncflow/shared';

/**
 * A task's batch sizer: keyed tables adapt their batch size to the target's commit latency; keyless
 * ones keep a fixed size (undefined), because resuming them re-reads the same batches.
 */
export const batchSizerFor = (task: TaskMessage): BatchSizer | undefined =>
  task.key_columns.length ? new BatchSizer(64 * 1024, task.batch_bytes) : undefined;

/**
 * Per-job rate limits as this agent applies them: the job's limit shared evenly among the live
 * agents of this group (each reads its share of the job's tasks), updated when an operator changes
 * the job's limits.
 */
export class JobLimiters {
  readonly #limiters = new Map<string, RateLimiter>();
  constructor(private rates: JobRates, private registry: AgentRegistry, private group: string) {
    rates.onChange((jobId) => { if (this.#limiters.has(jobId)) void this.#refresh(jobId); });
  }

  async get(jobId: string): Promise<RateLimiter> {
    let l = this.#limiters.get(jobId);
    if (!l) {
      l = new RateLimiter();
      this.#limiters.set(jobId, l);
      await this.#refresh(jobId);
    }
    return l;
  }

  async #refresh(jobId: string): Promise<void> {
    const r = await this.rates.get(jobId);
    const agents = Math.max(1, (await this.registry.list(this.group).catch(() => [])).length);
    this.#limiters.get(jobId)?.set(r.rows_per_s / agents, r.bytes_per_s / agents);
  }
}

/**
 * Bytes of batches in flight across every transfer of this agent: a cap that keeps memory flat
 * whatever the row size (one batch bigger than the cap still goes, alone).
 */
export class InflightBytes {
  #used = 0;
  #waiters: (() => void)[] = [];
  constructor(private cap: number) {}

  async acquire(n: number): Promise<void> {
    while (this.#used > 0 && this.#used + n > this.cap) await new Promise<void>((r) => this.#waiters.push(r));
    this.#used += n;
  }

  release(n: number): void {
    this.#used = Math.max(0, this.#used - n);
    for (const w of this.#waiters.splice(0)) w();
  }
}
