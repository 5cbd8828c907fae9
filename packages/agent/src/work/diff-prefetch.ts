import { type AgentRegistry, type Logger, type TaskMessage } from '@syncflow/shared';
import type { Pools } from '../pools.js';
import type { AgentClients } from '../clients.js';
import { computeDiff, type DiffDecision } from './diff-plan.js';
import type { ChangeLog } from '../read/change-log.js';

/** Decisions computed at once (each holds a source and a target connection while it hashes). */
const PARALLEL = 2;
/** Tasks held at once (a decision keeps a bitmap of at most 512 KiB). */
const MAX_ENTRIES = 256;
/** A decision nobody took within this time is dropped (its job ended, or another agent ran the task). */
const TTL_MS = 30 * 60_000;

interface Entry { task: TaskMessage; fingerprint: string; at: number; decision?: Promise<DiffDecision> }

/** What a decision depends on: a task taken with another definition (never expected) computes its own. */
const fingerprintOf = (t: TaskMessage) => JSON.stringify([t.snapshot_id, t.schema, t.table, t.columns, t.key_columns, t.range ?? null, t.diff_hashed, t.row_estimate]);

/**
 * Diff re-sync ahead of the FK levels (AgentService.PrepareDiffs): the coordinator hands a source
 * agent the diff tasks of later levels when a job starts, and this agent compares their buckets with
 * the target's, PARALLEL at a time in the order given, while the earlier levels ship. Comparing does
 * not need the parents shipped first; only applying does. When a task runs (work/run-task.ts) it
 * takes its decision, waiting for it if it is under way, starting it if it is still queued. A task
 * delivered to another agent of the group, or a decision that failed, is computed by the task itself.
 */
export class DiffPrefetch {
  readonly #entries = new Map<string, Entry>();
  #running = 0;
  #deps: { pools: Pools; registry: AgentRegistry; clients: AgentClients } | undefined;

  constructor(private log: Logger, private changes?: ChangeLog) {}

  /** The agent's connections, once NATS is up (PrepareDiffs before that accepts nothing). */
  attach(deps: { pools: Pools; registry: AgentRegistry; clients: AgentClients }): void {
    this.#deps = deps;
  }

  /** Queues diff tasks not held yet; returns how many were accepted. */
  add(tasks: readonly TaskMessage[]): number {
    if (!this.#deps) return 0;
    const now = Date.now();
    for (const [id, e] of this.#entries) if (now - e.at > TTL_MS) this.#entries.delete(id);
    let accepted = 0;
    for (const task of tasks) {
      if (!task.diff || this.#entries.has(task.task_id) || this.#entries.size >= MAX_ENTRIES) continue;
      this.#entries.set(task.task_id, { task, fingerprint: fingerprintOf(task), at: now });
      accepted++;
    }
    this.#pump();
    return accepted;
  }

  /** The task's decision prepared ahead (started now if still queued), or undefined; it is handed out once. */
  take(task: TaskMessage): Promise<DiffDecision> | undefined {
    const e = this.#entries.get(task.task_id);
    if (!e) return undefined;
    this.#entries.delete(task.task_id);
    if (e.fingerprint !== fingerprintOf(task)) return undefined;
    return e.decision ?? this.#start(e);
  }

  #pump(): void {
    for (const e of this.#entries.values()) {
      if (this.#running >= PARALLEL) return;
      if (!e.decision) this.#start(e);
    }
  }

  #start(e: Entry): Promise<DiffDecision> {
    this.#running++;
    e.decision = this.#decide(e.task).finally(() => {
      this.#running--;
      this.#pump();
    });
    e.decision.catch(() => undefined); // a task that takes it sees the failure; nobody else waits on it
    return e.decision;
  }

  async #decide(task: TaskMessage): Promise<DiffDecision> {
    const deps = this.#deps!;
    const log = this.log.child({ job: task.job_id, task: task.task_id, table: `${task.schema}.${task.table}` });
    const { sql } = await deps.pools.guarded(task.source);
    const target = await deps.registry.pick(task.target.group);
    const d = await computeDiff(task, sql, deps.clients.get(target.address), log, this.changes);
    log.info({ fine_differing: d.fineDiffering }, 'diff: filter prepared ahead of the task\'s FK level');
    return d;
  }
}
