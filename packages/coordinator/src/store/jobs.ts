import { EventEmitter } from 'node:events';
import {
  notFound, jobStatesBefore, taskStatesBefore, type Sql, type JobState, type TaskState, type TaskMessage,
} from '@syncflow/shared';

export interface JobRow {
  id: string; from_conn: string; to_conn: string; mode: 'upsert' | 'mirror'; state: JobState;
  spec: unknown; plan: PlanRecord; snapshot_id: string; trace_id: string; trace: Record<string, string>;
  /** The change slot created with the job snapshot and its consistent point (both empty without one). */
  change_slot: string; change_lsn: string;
  error: string; rows_deleted: string; finalized: boolean;
  created_at: string; started_at: string | null; finished_at: string | null;
}

/** What the job keeps of its plan to finish it: delete order, sequences, constraints set aside. */
export interface PlanRecord {
  levels: number;
  tables: unknown[];
  notes: string[];
  deleteOrder: { schema: string; name: string; key: { name: string; type_schema: string; type_name: string }[] }[];
  sequences: { schema: string; name: string; last_value: string; is_called: boolean; owned_by_schema: string; owned_by_table: string }[];
  deferred: { schema: string; table: string; name: string }[];
  /** Empty tables loaded by COPY whose secondary indexes and FKs are set aside during the load. */
  loadTables?: { schema: string; name: string }[];
  sourceGroup: string;
  targetGroup: string;
  /** --create-missing: tables created on the target at start; their indexes and FKs run at finalize. */
  createTables?: { schema: string; name: string }[];
  postDdl?: string[];
  /** Per table ("schema.name"): its columns and types on both sides, kept with its change baseline (store/change-baselines.ts). */
  shapes?: Record<string, string>;
}

export interface TaskRow {
  id: string; job_id: string; level: number; schema_name: string; table_name: string; state: TaskState; method: string;
  message: TaskMessage; row_estimate: string; rows: string; bytes: string; batches: string; inserted: string; updated: string;
  marked_for_delete: string; checkpoint: { seq: number; last_key: (string | null)[] | null } | null; attempts: number; error: string;
  started_at: string | null; finished_at: string | null; publishes: number;
}

/** What a change moved. */
export type Change = 'job' | 'task';

const JOB_COLS = 'id, from_conn, to_conn, mode, state, spec, plan, snapshot_id, change_slot, change_lsn, trace_id, trace, error, rows_deleted::text, finalized, created_at::text, started_at::text, finished_at::text';
const TASK_COLS = 'id, job_id, level, schema_name, table_name, state, method, message, row_estimate::text, rows::text, bytes::text, batches::text, inserted::text, updated::text, marked_for_delete::text, checkpoint, attempts, error, started_at::text, finished_at::text, publishes';

/** Jobs, tasks and their logs in the control DB. State changes are guarded by the transition tables. */
export class JobStore {
  /** 'change' with a job id and what moved ('job' or 'task') whenever this process moves the job or one of its tasks (WatchJob listens). */
  readonly changes = new EventEmitter().setMaxListeners(0);
  constructor(readonly sql: Sql) {}

  /**
   * Resolves at this process's next change of the job (only a move of the job itself with `only:
   * 'job'`) with what moved, or after `ms` with null (another coordinator may have moved it).
   */
  nextChange(jobId: string, ms: number, only?: Change): Promise<Change | null> {
    return new Promise((resolve) => {
      const done = (what: Change | null) => { clearTimeout(timer); this.changes.off('change', on); resolve(what); };
      const on = (id: string, what: Change) => { if (id === jobId && (!only || what === only)) done(what); };
      const timer = setTimeout(() => done(null), ms);
      this.changes.on('change', on);
    });
  }

  async create(job: Omit<JobRow, 'state' | 'error' | 'rows_deleted' | 'finalized' | 'created_at' | 'started_at' | 'finished_at'>, tasks: Omit<TaskRow, 'state' | 'rows' | 'bytes' | 'batches' | 'inserted' | 'updated' | 'marked_for_delete' | 'checkpoint' | 'attempts' | 'error' | 'started_at' | 'finished_at' | 'publishes'>[]): Promise<void> {
    await this.sql.begin(async (tx) => {
      await tx`INSERT INTO jobs (id, from_conn, to_conn, mode, state, spec, plan, snapshot_id, change_slot, change_lsn, trace_id, trace)
               VALUES (${job.id}, ${job.from_conn}, ${job.to_conn}, ${job.mode}, 'pending', ${tx.json(job.spec as never)}, ${tx.json(job.plan as never)},
                       ${job.snapshot_id}, ${job.change_slot}, ${job.change_lsn}, ${job.trace_id}, ${tx.json(job.trace)})`;
      for (const t of tasks) {
        await tx`INSERT INTO tasks (id, job_id, level, schema_name, table_name, state, method, message, row_estimate)
                 VALUES (${t.id}, ${t.job_id}, ${t.level}, ${t.schema_name}, ${t.table_name}, 'pending', ${t.method}, ${tx.json(t.message as never)}, ${t.row_estimate})`;
      }
    });
  }

  async get(id: string): Promise<JobRow> {
    const [row] = await this.sql.unsafe<JobRow[]>(`SELECT ${JOB_COLS} FROM jobs WHERE id = $1`, [id]);
    if (!row) throw notFound(`job ${id} does not exist`);
    return row;
  }

  /** False for an id that is not a job's (also for one that is no uuid at all: never a database error). */
  async exists(id: string): Promise<boolean> {
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id)) return false;
    const [row] = await this.sql`SELECT 1 FROM jobs WHERE id = ${id}`;
    return Boolean(row);
  }

  async list(limit: number): Promise<JobRow[]> {
    return this.sql.unsafe<JobRow[]>(`SELECT ${JOB_COLS} FROM jobs ORDER BY created_at DESC LIMIT $1`, [limit]);
  }

  async active(): Promise<JobRow[]> {
    return this.sql.unsafe<JobRow[]>(`SELECT ${JOB_COLS} FROM jobs WHERE state IN ('pending', 'running', 'paused') ORDER BY created_at`);
  }

  async tasks(jobId: string): Promise<TaskRow[]> {
    return this.sql.unsafe<TaskRow[]>(`SELECT ${TASK_COLS} FROM tasks WHERE job_id = $1 ORDER BY level, schema_name, table_name, id`, [jobId]);
  }

  /** Moves a job if the transition table allows it from its current state; false if it did not move. */
  async moveJob(id: string, to: JobState, fields: { error?: string; rows_deleted?: number; finalized?: boolean } = {}): Promise<boolean> {
    const from = jobStatesBefore(to);
    const r = await this.sql`
      UPDATE jobs SET state = ${to},
        error = coalesce(${fields.error ?? null}, error),
        rows_deleted = coalesce(${fields.rows_deleted ?? null}::int8, rows_deleted),
        started_at = CASE WHEN ${to} = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
        finished_at = CASE WHEN ${to} IN ('completed', 'completed_with_errors', 'failed', 'cancelled') THEN now()
                           WHEN ${to} = 'running' THEN NULL ELSE finished_at END
      WHERE id = ${id} AND state = ANY(${from})`;
    if (r.count > 0) this.changes.emit('change', id, 'job');
    return r.count > 0;
  }

  async setFinalized(id: string, rowsDeleted: number): Promise<void> {
    await this.sql`UPDATE jobs SET finalized = true, rows_deleted = ${rowsDeleted} WHERE id = ${id}`;
  }

  /** Moves a task if the transition table allows it from its current state (and, with `only`, that state is one of them). */
  async moveTask(id: string, to: TaskState, fields: { error?: string; attempts?: number; only?: readonly TaskState[] } = {}): Promise<boolean> {
    const from = taskStatesBefore(to).filter((s) => !fields.only || fields.only.includes(s));
    const r = await this.sql`
      UPDATE tasks SET state = ${to},
        error = coalesce(${fields.error ?? null}, error),
        attempts = greatest(attempts, coalesce(${fields.attempts ?? null}::int, attempts)),
        started_at = CASE WHEN ${to} = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
        finished_at = CASE WHEN ${to} IN ('done', 'failed', 'cancelled', 'blocked') THEN now() ELSE finished_at END
      WHERE id = ${id} AND state = ANY(${from})
      RETURNING job_id::text`;
    if (r[0]) this.changes.emit('change', r[0].job_id, 'task');
    return r.count > 0;
  }

  /** Moves every non-terminal task of a job (cancel, fail). */
  async moveOpenTasks(jobId: string, to: TaskState, error?: string): Promise<void> {
    await this.sql`UPDATE tasks SET state = ${to}, error = coalesce(${error ?? null}, error), finished_at = now()
                   WHERE job_id = ${jobId} AND state IN ('pending', 'queued', 'running')`;
  }

  /** Records a checkpoint: only ever forward, and only keys the target committed. */
  async checkpoint(id: string, c: { seq: number; last_key: (string | null)[] | null; rows: number; bytes: number; batches: number }): Promise<void> {
    await this.sql`
      UPDATE tasks SET checkpoint = ${this.sql.json(c as never)}, rows = greatest(rows, ${c.rows}), bytes = greatest(bytes, ${c.bytes}), batches = greatest(batches, ${c.batches})
      WHERE id = ${id} AND state IN ('queued', 'running') AND coalesce((checkpoint->>'seq')::int8, 0) <= ${c.seq}`;
  }

  async finishTask(id: string, t: { rows: number; bytes: number; batches: number; inserted: number; updated: number; marked_for_delete: number }): Promise<boolean> {
    const from = taskStatesBefore('done');
    const r = await this.sql`
      UPDATE tasks SET state = 'done', rows = ${t.rows}, bytes = ${t.bytes}, batches = ${t.batches}, inserted = ${t.inserted},
        updated = ${t.updated}, marked_for_delete = ${t.marked_for_delete}, finished_at = now(), error = ''
      WHERE id = ${id} AND state = ANY(${from})
      RETURNING job_id::text`;
    if (r[0]) this.changes.emit('change', r[0].job_id, 'task');
    return r.count > 0;
  }

  async log(jobId: string, taskId: string | null, level: string, message: string): Promise<void> {
    await this.sql`INSERT INTO sync_logs (job_id, task_id, level, message) VALUES (${jobId}, ${taskId}, ${level}, ${message})`;
  }

  async logs(jobId: string, limit = 5000): Promise<{ at: string; level: string; task_id: string | null; message: string }[]> {
    return this.sql`SELECT at::text, level, task_id, message FROM sync_logs WHERE job_id = ${jobId} ORDER BY id LIMIT ${limit}`;
  }
}
