import { displayName, type pb } from '@syncflow/shared';
import {
  count, humanBytes, jobStateWord, methodWord, modeWord, printFields, printTable, println, seconds, taskStateWord,
  type Column,
} from './output.js';

/** Static renderings of a job (header, tasks, totals), shared by `job show`, `job watch` and `sync start --wait`. */

export const TERMINAL_JOB_STATES: ReadonlySet<string> = new Set(['JOB_STATE_COMPLETED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_COMPLETED_WITH_ERRORS']);
export const isTerminal = (job: pb.Job__Output) => TERMINAL_JOB_STATES.has(job.state);

export const taskName = (t: pb.TaskInfo__Output) => displayName(t.schema, t.table);

/** Tasks in plan order: level, then table, then id (a big table may be split into several key-range tasks). */
export function sortedTasks(job: pb.Job__Output): pb.TaskInfo__Output[] {
  return [...(job.tasks ?? [])].sort((a, b) =>
    a.level - b.level || taskName(a).localeCompare(taskName(b)) || a.id.localeCompare(b.id));
}

/** True when some table has more than one task: then the task id is shown to tell them apart. */
function hasSplitTables(tasks: pb.TaskInfo__Output[]): boolean {
  const seen = new Set<string>();
  for (const t of tasks) {
    const n = taskName(t);
    if (seen.has(n)) return true;
    seen.add(n);
  }
  return false;
}

export function printJobHeader(job: pb.Job__Output): void {
  printFields([
    ['job', job.id],
    ['state', jobStateWord(job.state)],
    ['sync', `${job.from} → ${job.to} (${modeWord(job.mode)})`],
    ['created', job.created_at],
    ['started', job.started_at],
    ['finished', job.finished_at],
    ['rows', `${count(job.rows)} copied, ${count(job.rows_deleted)} deleted, ${humanBytes(job.bytes)}`],
    ['elapsed', job.started_at ? `${seconds(job.started_at, job.finished_at)} s` : undefined],
    ['trace', job.trace_id],
    ['error', job.error],
  ]);
}

/** Full task table of `job show`. */
export function printTasksDetailed(job: pb.Job__Output): void {
  const tasks = sortedTasks(job);
  if (!tasks.length) { println('no tasks'); return; }
  const split = hasSplitTables(tasks);
  const cols: Column[] = [
    { header: 'LEVEL', align: 'right' }, { header: 'TABLE' }, ...(split ? [{ header: 'TASK' }] : []), { header: 'STATE' },
    { header: 'METHOD' }, { header: 'ROWS', align: 'right' }, { header: 'EST', align: 'right' }, { header: 'BYTES', align: 'right' },
    { header: 'BATCHES', align: 'right' }, { header: 'TRIES', align: 'right' }, { header: 'SECONDS', align: 'right' },
  ];
  printTable(cols, tasks.map((t) => [
    String(t.level), taskName(t), ...(split ? [t.id] : []), taskStateWord(t.state), methodWord(t.method), count(t.rows),
    estimate(t.row_estimate), humanBytes(t.bytes), count(t.batches), String(t.attempts ?? 0), seconds(t.started_at, t.finished_at),
  ]));
  printTaskErrors(tasks);
}

/** Compact per-task summary printed when a watched job ends. */
export function printSummary(job: pb.Job__Output): void {
  const tasks = sortedTasks(job);
  if (tasks.length) {
    const split = hasSplitTables(tasks);
    const cols: Column[] = [
      { header: 'TABLE' }, ...(split ? [{ header: 'TASK' }] : []), { header: 'STATE' }, { header: 'METHOD' },
      { header: 'ROWS', align: 'right' }, { header: 'BYTES', align: 'right' }, { header: 'SECONDS', align: 'right' },
    ];
    printTable(cols, tasks.map((t) => [
      taskName(t), ...(split ? [t.id] : []), taskStateWord(t.state), methodWord(t.method), count(t.rows), humanBytes(t.bytes),
      seconds(t.started_at, t.finished_at),
    ]));
    printTaskErrors(tasks);
  }
  println(totalsLine(job));
}

export function totalsLine(job: pb.Job__Output): string {
  const deleted = job.rows_deleted && job.rows_deleted !== '0' ? `, ${count(job.rows_deleted)} deleted` : '';
  const took = job.started_at ? ` in ${seconds(job.started_at, job.finished_at)} s` : '';
  return `job ${job.id} ${jobStateWord(job.state)}: ${count(job.rows)} rows${deleted}, ${humanBytes(job.bytes)}${took}`;
}

function printTaskErrors(tasks: pb.TaskInfo__Output[]): void {
  const failed = tasks.filter((t) => t.error);
  if (!failed.length) return;
  println('errors:');
  for (const t of failed) println(`  ${taskName(t)} [${t.id}]: ${t.error.replace(/\s*\n\s*/g, ' ')}`);
}

/** Row estimates may be 0 or negative when Postgres has never analysed the table. */
export function estimate(v: string | undefined): string {
  const n = Number(v ?? 0);
  return n > 0 ? `~${count(v)}` : '?';
}

/** The reason a watched job did not complete, as one line. */
export function failureReason(job: pb.Job__Output): string {
  const state = jobStateWord(job.state);
  if (job.error) return `job ${job.id} ${state}: ${job.error}`;
  const t = sortedTasks(job).find((x) => x.error);
  if (t) return `job ${job.id} ${state}: ${taskName(t)}: ${t.error}`;
  return `job ${job.id} ended ${state}`;
}
