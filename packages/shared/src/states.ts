import { failedPrecondition } from './errors.js';

/** Job and task states, each with one transition table. Proto enums carry them on the wire. */
export const JobState = {
  Pending: 'pending',
  Running: 'running',
  Completed: 'completed',
  Failed: 'failed',
  Cancelled: 'cancelled',
  /** Every table ended, some failed (dead-lettered): retryable with `job retry --failed`. */
  CompletedWithErrors: 'completed_with_errors',
  /** Stopped by the operator after the running batches; resume continues from the checkpoints. */
  Paused: 'paused',
} as const;
export type JobState = (typeof JobState)[keyof typeof JobState];

export const TaskState = {
  Pending: 'pending',
  Queued: 'queued',
  Running: 'running',
  Done: 'done',
  Failed: 'failed',
  Cancelled: 'cancelled',
  /** A parent table failed: this one cannot run (its rows would break the FK) until the parent is retried. */
  Blocked: 'blocked',
} as const;
export type TaskState = (typeof TaskState)[keyof typeof TaskState];

const JOB_TRANSITIONS: Record<JobState, readonly JobState[]> = {
  pending: ['running', 'failed', 'cancelled'],
  running: ['completed', 'completed_with_errors', 'failed', 'cancelled', 'paused'],
  paused: ['running', 'cancelled', 'failed'],
  completed: [],
  // failed / completed_with_errors → running: `job retry --failed` or `dlq retry` re-runs what failed
  completed_with_errors: ['running'],
  failed: ['running'],
  cancelled: [],
};
/** States a job ends in (a retry may still move failed ones back to running). */
const JOB_ENDED: ReadonlySet<JobState> = new Set(['completed', 'completed_with_errors', 'failed', 'cancelled']);

const TASK_TRANSITIONS: Record<TaskState, readonly TaskState[]> = {
  // pending → done: a diff re-sync task its source agent found with nothing to ship, ahead of its FK level
  pending: ['queued', 'cancelled', 'failed', 'blocked', 'done'],
  queued: ['running', 'cancelled', 'failed', 'done', 'pending', 'blocked'],
  // running → queued: the agent died and JetStream redelivers the task
  // running → pending: paused, republished on resume
  running: ['done', 'failed', 'cancelled', 'queued', 'running', 'pending', 'blocked'],
  done: [],
  // failed / blocked → pending: retried (job retry --failed, dlq retry)
  failed: ['pending'],
  blocked: ['pending', 'cancelled'],
  cancelled: [],
};
const TASK_ENDED: ReadonlySet<TaskState> = new Set(['done', 'failed', 'cancelled', 'blocked']);

export const isTerminalJob = (s: JobState) => JOB_ENDED.has(s);
export const isTerminalTask = (s: TaskState) => TASK_ENDED.has(s);

export function canMoveJob(from: JobState, to: JobState): boolean {
  return JOB_TRANSITIONS[from].includes(to);
}
export function canMoveTask(from: TaskState, to: TaskState): boolean {
  return TASK_TRANSITIONS[from].includes(to);
}
export function assertJobMove(from: JobState, to: JobState): void {
  if (!canMoveJob(from, to)) throw failedPrecondition(`job cannot go from ${from} to ${to}`, 'bad_transition');
}
/** States from which a task may move to `to`: used to guard UPDATEs in the store. */
export function taskStatesBefore(to: TaskState): TaskState[] {
  return (Object.keys(TASK_TRANSITIONS) as TaskState[]).filter((s) => TASK_TRANSITIONS[s].includes(to));
}
export function jobStatesBefore(to: JobState): JobState[] {
  return (Object.keys(JOB_TRANSITIONS) as JobState[]).filter((s) => JOB_TRANSITIONS[s].includes(to));
}

/** Proto enum names ↔ internal states. */
export const jobStateToProto = (s: JobState) => `JOB_STATE_${s.toUpperCase()}` as const;
export const taskStateToProto = (s: TaskState) => `TASK_STATE_${s.toUpperCase()}` as const;
export function jobStateFromProto(p: string): JobState | undefined {
  const v = p.replace(/^JOB_STATE_/, '').toLowerCase();
  return (Object.values(JobState) as string[]).includes(v) ? (v as JobState) : undefined;
}
