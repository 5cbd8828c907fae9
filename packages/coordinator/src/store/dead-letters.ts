import { notFound, type Sql } from '@syncflow/shared';

export interface DeadLetterRow {
  id: string; job_id: string; task_id: string; schema_name: string; table_name: string; error_code: string; error: string;
  attempts: number; history: string[]; stream_seq: string; created_at: string; retried_at: string | null;
}

const COLS = `d.id::text, d.job_id, d.task_id, t.schema_name, t.table_name, d.error_code, d.error, d.attempts, d.history,
  d.stream_seq::text, d.created_at::text, d.retried_at::text`;

/** Dead letters (tasks that exhausted their attempts) and the bookkeeping of retries, in the control DB. */
export class DeadLetterStore {
  constructor(private sql: Sql) {}

  /** Records a dead letter once per (task, publish): a redelivered `failed` event adds nothing. */
  async add(d: { job_id: string; task_id: string; error_code: string; error: string; attempts: number; history: string[]; publish: number; stream_seq: number }): Promise<boolean> {
    const r = await this.sql`
      INSERT INTO dead_letters (job_id, task_id, error_code, error, attempts, history, publish, stream_seq)
      VALUES (${d.job_id}, ${d.task_id}, ${d.error_code}, ${d.error}, ${d.attempts}, ${this.sql.json(d.history)}, ${d.publish}, ${d.stream_seq})
      ON CONFLICT (task_id, publish) DO NOTHING`;
    return r.count > 0;
  }

  async list(opts: { jobId?: string; limit: number; includeRetried: boolean }): Promise<DeadLetterRow[]> {
    return this.sql.unsafe<DeadLetterRow[]>(`SELECT ${COLS} FROM dead_letters d JOIN tasks t ON t.id = d.task_id
      WHERE ($1::uuid IS NULL OR d.job_id = $1::uuid) AND ($2::bool OR d.retried_at IS NULL) ORDER BY d.id DESC LIMIT $3`,
    [opts.jobId ?? null, opts.includeRetried, opts.limit]);
  }

  async get(id: string): Promise<DeadLetterRow> {
    const [row] = await this.sql.unsafe<DeadLetterRow[]>(`SELECT ${COLS} FROM dead_letters d JOIN tasks t ON t.id = d.task_id WHERE d.id = $1`, [id]);
    if (!row) throw notFound(`dead letter ${id} does not exist`);
    return row;
  }

  async markRetried(ids: string[]): Promise<void> {
    await this.sql`UPDATE dead_letters SET retried_at = now() WHERE id = ANY(${ids}::int8[]) AND retried_at IS NULL`;
  }

  /** Marks every open dead letter of these tasks retried (a `job retry` covers them too). */
  async markTasksRetried(taskIds: string[]): Promise<void> {
    await this.sql`UPDATE dead_letters SET retried_at = now() WHERE task_id = ANY(${taskIds}) AND retried_at IS NULL`;
  }

  /**
   * Puts failed and blocked tasks back to pending for another round (new publish number, so the
   * JetStream message id is new); returns the ids moved. Checkpoints stay: they resume from there.
   */
  async requeue(jobId: string, taskIds?: string[]): Promise<string[]> {
    const rows = await this.sql<{ id: string }[]>`
      UPDATE tasks SET state = 'pending', error = '', finished_at = NULL, publishes = publishes + 1
      WHERE job_id = ${jobId} AND state IN ('failed', 'blocked') AND (${taskIds ?? null}::text[] IS NULL OR id = ANY(${taskIds ?? null}::text[]))
      RETURNING id`;
    return rows.map((r) => r.id);
  }

  /** Tasks stopped by a pause go back to pending; they are republished on resume. */
  async pausedTaskStopped(taskId: string): Promise<boolean> {
    const r = await this.sql`UPDATE tasks SET state = 'pending', publishes = publishes + 1 WHERE id = ${taskId} AND state IN ('queued', 'running')`;
    return r.count > 0;
  }

  /** A retried job runs again: finalize again at its end, a fresh timeout. */
  async reopen(jobId: string): Promise<void> {
    await this.sql`UPDATE jobs SET finalized = false, error = '', timeout_at = NULL WHERE id = ${jobId}`;
  }
}
