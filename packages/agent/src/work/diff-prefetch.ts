import { SyncflowError, ErrorKind, type AgentRegistry, type Logger, type TaskMessage } from '@syncflow/shared';
import type { Pools } from '../pools.js';
import type { AgentClients } from '../clients.js';
import { computeDiff, shipsNothing, type DiffDecision } from './diff-plan.js';
import { batchSizerFor } from './limits.js';
import type { ChangeLog } from '../read/change-log.js';
import { readTable, taskReadSpec, type ReadBatch } from '../read/table-reader.js';

/** Decisions computed at once (each holds a source and a target connection while it hashes, then a source one while it reads ahead). */
const PARALLEL = 2;
/** Tasks held at once (a decision keeps a bitmap of at most 512 KiB). */
const MAX_ENTRIES = 256;
/** A decision nobody took within this time is dropped (its job ended, or another agent ran the task). */
const TTL_MS = 30 * 60_000;

interface Entry {
  task: TaskMessage; fingerprint: string; at: number;
  decision?: Promise<DiffDecision>;
  /** The rows of the decision's filter, read ahead in the job snapshot; undefined: not read (the task reads them). */
  rows?: Promise<ReadBatch[] | undefined>;
  /** Bytes of those rows counted against the budget (released when the entry is dropped and its read has ended). */
  held: number;
}

export interface PrefetchDeps {
  pools: Pools; registry: AgentRegistry; clients: AgentClients;
  /**
   * A decision with nothing to ship for a task not taken yet: the task has nothing to do (no row to
   * send, none the target could have that the source lacks), so it is reported done now, before its
   * FK level comes, and the tables that wait for it need not (work/run-task.ts finishAhead).
   */
  nothingToShip?: (task: TaskMessage, d: DiffDecision) => Promise<void>;
}

/** What a task takes: its decision, and the rows the decision ships if they were read ahead. */
export interface Prepared { decision: Promise<DiffDecision>; rows: Promise<ReadBatch[] | undefined> }

/** What a decision and its read depend on: a task taken with another definition (never expected) computes its own. */
const fingerprintOf = (t: TaskMessage) => JSON.stringify([t.snapshot_id, t.schema, t.table, t.columns, t.key_columns, t.key_types, t.range ?? null,
  t.diff_hashed, t.row_estimate, t.blocks ?? null, t.copy_format, t.batch_bytes]);

const overBudget = () => new SyncflowError(ErrorKind.FailedPrecondition, 'rows read ahead would exceed the budget', { code: 'read_ahead_budget' });

/**
 * Diff re-sync ahead of the FK levels (AgentService.PrepareDiffs): the coordinator hands a source
 * agent the diff tasks of later levels when a job starts, and this agent compares their buckets with
 * the target's, PARALLEL at a time in the order given, while the earlier levels ship; then it reads
 * the rows a decision ships (a small diff's few rows, up to a budget of bytes in all) out of the job
 * snapshot, so the task only streams them to the target when its level comes. Comparing and reading
 * do not need the parents shipped first; only applying does. When a task runs (work/run-task.ts) it
 * takes its decision and rows, waiting for them if they are under way, starting them if still queued.
 * A task delivered to another agent of the group, or a decision that failed, is computed by the task
 * itself; rows not read ahead are read by the task.
 */
export class DiffPrefetch {
  readonly #entries = new Map<string, Entry>();
  #running = 0;
  #held = 0;
  #deps: PrefetchDeps | undefined;

  /**
   * `readAheadBytes`: bytes of rows read ahead and held until their tasks take them, over all tasks of
   * this agent (SYNCFLOW_READ_AHEAD_BYTES); a task whose rows do not fit reads them when it runs.
   */
  constructor(private log: Logger, private changes?: ChangeLog, private readAheadBytes = 0) {}

  /** The agent's connections, once NATS is up (PrepareDiffs before that accepts nothing). */
  attach(deps: PrefetchDeps): void {
    this.#deps = deps;
  }

  /** Queues diff tasks not held yet; returns how many were accepted. */
  add(tasks: readonly TaskMessage[]): number {
    if (!this.#deps) return 0;
    const now = Date.now();
    for (const [id, e] of this.#entries) if (now - e.at > TTL_MS) this.#drop(id, e);
    let accepted = 0;
    for (const task of tasks) {
      if (!task.diff || this.#entries.has(task.task_id) || this.#entries.size >= MAX_ENTRIES) continue;
      this.#entries.set(task.task_id, { task, fingerprint: fingerprintOf(task), at: now, held: 0 });
      accepted++;
    }
    this.#pump();
    return accepted;
  }

  /** The task's decision and rows prepared ahead (started now if still queued), or undefined; handed out once. */
  take(task: TaskMessage): Prepared | undefined {
    const e = this.#entries.get(task.task_id);
    if (!e) return undefined;
    this.#drop(task.task_id, e);
    if (e.fingerprint !== fingerprintOf(task)) return undefined;
    if (!e.decision) this.#start(e);
    return { decision: e.decision!, rows: e.rows! };
  }

  /** Forgets the job's entries (its snapshot was released: nothing of it is read any more). */
  dropJob(jobId: string): void {
    for (const [id, e] of this.#entries) if (e.task.job_id === jobId) this.#drop(id, e);
  }

  /** Removes an entry; its rows' bytes leave the budget once their read has ended (the taker holds them from then on). */
  #drop(id: string, e: Entry): void {
    this.#entries.delete(id);
    void (e.rows ?? Promise.resolve()).finally(() => this.#release(e));
  }

  /** The entry's rows leave the budget. */
  #release(e: Entry): void {
    this.#held -= e.held;
    e.held = 0;
  }

  #pump(): void {
    for (const e of this.#entries.values()) {
      if (this.#running >= PARALLEL) return;
      if (!e.decision) this.#start(e);
    }
  }

  #start(e: Entry): void {
    this.#running++;
    e.decision = this.#decide(e.task);
    e.rows = e.decision.then((d) => this.#readAhead(e, d), () => undefined);
    // Still held (not taken by its task): the task is done ahead. Taken meanwhile, it runs as usual.
    void e.decision.then(async (d) => {
      if (shipsNothing(d) && this.#entries.get(e.task.task_id) === e) await this.#deps?.nothingToShip?.(e.task, d);
    }).catch((err) => this.#logFor(e.task).warn({ err: (err as Error).message }, 'diff: a task with nothing to ship not reported done ahead; it runs when its level comes'));
    void e.rows.finally(() => {
      this.#running--;
      this.#pump();
    });
    e.decision.catch(() => undefined); // a task that takes it sees the failure; nobody else waits on it
  }

  async #decide(task: TaskMessage): Promise<DiffDecision> {
    const deps = this.#deps!;
    const log = this.#logFor(task);
    const { sql } = await deps.pools.guarded(task.source);
    const target = await deps.registry.pick(task.target.group);
    const d = await computeDiff(task, sql, deps.clients.get(target.address), log, this.changes);
    log.info({ fine_differing: d.fineDiffering }, 'diff: filter prepared ahead of the task\'s FK level');
    return d;
  }

  /**
   * The rows a decision ships, read out of the job snapshot as the task would read them (same spec,
   * same first batch size), held in memory. Not read: a decision that ships every row or none, rows
   * past the budget, a job snapshot gone (the task then reads from its own snapshot and says so).
   */
  async #readAhead(e: Entry, d: DiffDecision): Promise<ReadBatch[] | undefined> {
    if (!d.filter || shipsNothing(d) || !this.readAheadBytes || !this.#entries.has(e.task.task_id)) return undefined;
    const task = e.task;
    const log = this.#logFor(task);
    const t0 = Date.now();
    const batches: ReadBatch[] = [];
    try {
      const { sql } = await this.#deps!.pools.guarded(task.source);
      const spec = { ...taskReadSpec(task, task.snapshot_id, null, batchSizerFor(task)?.bytes ?? task.batch_bytes, d.filter), requireSnapshot: true };
      await readTable(sql, spec, log, async (b) => {
        if (this.#held + b.data.length > this.readAheadBytes) throw overBudget();
        this.#held += b.data.length;
        e.held += b.data.length;
        batches.push(b);
      });
    } catch (err) {
      this.#release(e);
      log.info({ reason: (err as Error).message }, 'diff: rows not read ahead; the task reads them');
      return undefined;
    }
    log.info({ batches: batches.length, bytes: e.held, ms: Date.now() - t0 }, 'diff: rows read ahead of the task\'s FK level');
    return batches;
  }

  #logFor(task: TaskMessage): Logger {
    return this.log.child({ job: task.job_id, task: task.task_id, table: `${task.schema}.${task.table}` });
  }
}
