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

/**
 * Compact summary printed when a watched job ends: one line per table. A big table split into
 * key-range tasks is one line too: its parts' rows and bytes summed, its time from the first
 * part's start to the last part's end, and its state the worst of its parts' (`job show` lists the parts).
 */
export function printSummary(job: pb.Job__Output): void {
  const tables = tablesOf(job);
  if (tables.length) {
    const split = tables.some((t) => t.parts.length > 1);
    const cols: Column[] = [
      { header: 'TABLE' }, ...(split ? [{ header: 'PARTS', align: 'right' as const }] : []), { header: 'STATE' }, { header: 'METHOD' },
      { header: 'ROWS', align: 'right' }, { header: 'BYTES', align: 'right' }, { header: 'SECONDS', align: 'right' },
    ];
    printTable(cols, tables.map((t) => [
      t.name, ...(split ? [String(t.parts.length)] : []), tableState(t.parts), methodWord(t.parts[0]!.method),
      count(sumOf(t.parts, 'rows')), humanBytes(sumOf(t.parts, 'bytes')), tableSeconds(t.parts),
    ]));
    printTaskErrors(sortedTasks(job));
  }
  println(totalsLine(job));
}

/** The job's tables in plan order, each with its tasks (several when the table was split into key ranges). */
export function tablesOf(job: pb.Job__Output): { name: string; parts: pb.TaskInfo__Output[] }[] {
  const out = new Map<string, pb.TaskInfo__Output[]>();
  for (const t of sortedTasks(job)) {
    const k = JSON.stringify([t.schema, t.table]);
    const g = out.get(k);
    if (g) g.push(t);
    else out.set(k, [t]);
  }
  return [...out.values()].map((parts) => ({ name: taskName(parts[0]!), parts }));
}

// Worst first: what a table's line shows when its parts ended differently.
const STATE_RANK = ['TASK_STATE_FAILED', 'TASK_STATE_BLOCKED', 'TASK_STATE_CANCELLED', 'TASK_STATE_RUNNING', 'TASK_STATE_QUEUED', 'TASK_STATE_PENDING', 'TASK_STATE_DONE'];

function tableState(parts: pb.TaskInfo__Output[]): string {
  const states = parts.map((p) => p.state);
  if (states.every((s) => s === states[0])) return taskStateWord(states[0]);
  const rank = (s: string) => { const i = STATE_RANK.indexOf(s); return i < 0 ? STATE_RANK.length : i; };
  const worst = [...states].sort((a, b) => rank(a) - rank(b))[0]!;
  return `${taskStateWord(worst)} (${states.filter((s) => s === worst).length} of ${parts.length} parts)`;
}

/** int64 strings summed without losing precision. */
function sumOf(parts: pb.TaskInfo__Output[], f: 'rows' | 'bytes'): string {
  return parts.reduce((n, p) => n + BigInt(p[f] || '0'), 0n).toString();
}

function tableSeconds(parts: pb.TaskInfo__Output[]): string {
  const started = parts.filter((p) => p.started_at && Number.isFinite(Date.parse(p.started_at)));
  if (!started.length) return '-';
  const first = started.reduce((a, b) => (Date.parse(b.started_at) < Date.parse(a.started_at) ? b : a));
  const open = started.some((p) => !p.finished_at);
  const last = open ? undefined : started.reduce((a, b) => (Date.parse(b.finished_at) > Date.parse(a.finished_at) ? b : a));
  return seconds(first.started_at, last?.finished_at);
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
