import { isTerminalTask, scrubSecrets, type EventMessage } from '@syncflow/shared';
import type { PlanRecord, TaskRow } from '../store/jobs.js';
import type { RunnerDeps } from './advance.js';
import { parentsOf } from './schedule.js';

type Failed = Extract<EventMessage, { type: 'failed' }>;
const keyOf = (schema: string, name: string) => `${schema}.${name}`;

/**
 * The mirror delete order when some tables did not finish: only tables that are done and none of
 * whose children is unfinished (a child's old rows on the target may still reference parent rows
 * the source deleted; deleting those parents would break the FK).
 */
export function safeDeleteOrder(plan: PlanRecord, tasks: TaskRow[]): PlanRecord['deleteOrder'] {
  const parents = parentsOf(plan);
  const unfinished = new Set(tasks.filter((t) => t.state !== 'done').map((t) => keyOf(t.schema_name, t.table_name)));
  const heldBack = new Set(unfinished);
  for (const [child, ps] of parents) if (unfinished.has(child)) for (const p of ps) heldBack.add(p);
  return plan.deleteOrder.filter((t) => !heldBack.has(keyOf(t.schema, t.name)));
}

/** Tables with a part not done (failed, blocked, cancelled, or still open): once each. */
export function unfinishedTables(tasks: TaskRow[]): { schema: string; name: string }[] {
  const keys = new Set(tasks.filter((t) => t.state !== 'done').map((t) => keyOf(t.schema_name, t.table_name)));
  return tasks.filter((t, i) => keys.has(keyOf(t.schema_name, t.table_name)) && tasks.findIndex((x) => x.schema_name === t.schema_name && x.table_name === t.table_name) === i)
    .map((t) => ({ schema: t.schema_name, name: t.table_name }));
}

/**
 * A task failed for good: into the dead-letter stream (with its error and history) and the
 * control DB, then an alert (error log line, metric, webhook). Idempotent: a redelivered event
 * neither publishes (message id) nor records (unique key) twice. Returns false for a failure of
 * an attempt that no longer matters (the task already ended otherwise, e.g. done or cancelled).
 */
export async function deadLetter(d: RunnerDeps, e: Failed): Promise<boolean> {
  const tasks = await d.jobs.tasks(e.job_id);
  const task = tasks.find((t) => t.id === e.task_id);
  if (!task || (isTerminalTask(task.state) && task.state !== 'failed')) return false;
  // A final failure of an earlier publication, delivered late (after a coordinator restart, or past the
  // ack wait) once `dlq retry` or `job retry` had queued the task anew: not this run's.
  if (e.publish !== undefined && e.publish < task.publishes) return false;
  const message = scrubSecrets(`${e.error.code}: ${e.error.message}`);
  const history = (await d.jobs.logs(e.job_id)).filter((l) => l.task_id === e.task_id).map((l) => `${l.at} ${l.level} ${l.message}`);
  const group = task.message.source.group;
  const payload = {
    job_id: e.job_id, task_id: e.task_id, schema: task.schema_name, table: task.table_name, agent_id: e.agent_id,
    error: { ...e.error, message: scrubSecrets(e.error.message) }, attempts: e.delivery, history, at: e.at,
    task: task.message, // sealed URLs only, as published
  };
  const ack = await d.js.publish(d.names.deadLetterSubject(group), JSON.stringify(payload), { msgID: `${e.task_id}:dlq:${task.publishes}` });
  const fresh = await d.deadLetters.add({
    job_id: e.job_id, task_id: e.task_id, error_code: e.error.code, error: message, attempts: e.delivery, history, publish: task.publishes, stream_seq: ack.seq,
  });
  if (fresh) {
    d.metrics.inc('syncflow_dead_letters_total');
    d.alerts.send({ kind: 'dead_letter', job_id: e.job_id, task_id: e.task_id, table: keyOf(task.schema_name, task.table_name), error_code: e.error.code, message, at: new Date().toISOString() });
  }
  return true;
}
