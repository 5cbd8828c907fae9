import cliProgress from 'cli-progress';
import { grpc, sleep, type pb } from '@syncflow/shared';
import { SyncClient, UnreachableError } from './client.js';
import { isTerminal, printSummary, sortedTasks, taskName } from './jobview.js';
import { count, humanBytes, isGrpcError, jobStateWord, oneLine, seconds, shortCount, taskStateWord } from './output.js';

/**
 * Follows a job through WatchJob until it is terminal: live bars per table on a terminal,
 * a line per task state change otherwise, then the summary. Survives a coordinator restart
 * (re-subscribes for up to a minute of failures).
 */

interface Renderer {
  update(job: pb.Job__Output): void;
  note(line: string): void;
  stop(): void;
}

const RECONNECT_FOR_MS = 60_000;

export async function followJob(client: SyncClient, id: string, opts: { json: boolean }): Promise<pb.Job__Output> {
  const renderer: Renderer = opts.json ? new SilentRenderer() : process.stderr.isTTY ? new BarRenderer() : new LineRenderer();
  const onSigint = () => {
    renderer.stop();
    process.stderr.write(`syncflow: interrupted; job ${id} keeps running (follow it with: syncflow job watch ${id})\n`);
    process.exit(130);
  };
  process.once('SIGINT', onSigint);
  let last: pb.Job__Output | undefined;
  let failingSince: number | undefined;
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        for await (const job of client.watchJob(id)) {
          last = job;
          if (failingSince !== undefined) renderer.note('coordinator reachable again');
          failingSince = undefined;
          attempt = 0;
          renderer.update(job);
        }
        if (last && isTerminal(last)) break;
        // The stream ended early (coordinator shutting down, failover): ask once, then watch again.
        last = await client.unary('GetJob', { id });
        renderer.update(last);
        if (isTerminal(last)) break;
      } catch (e) {
        if (isGrpcError(e) && e.code === grpc.status.UNIMPLEMENTED) {
          last = await pollJob(client, id, renderer);
          break;
        }
        // never reached it: say so now rather than after a minute of retries
        if (!(e instanceof UnreachableError) || last === undefined) throw e;
        if (failingSince === undefined) {
          failingSince = Date.now();
          renderer.note(`${e.message}; retrying for up to ${RECONNECT_FOR_MS / 1000} s`);
        } else if (Date.now() - failingSince > RECONNECT_FOR_MS) {
          throw e;
        }
      }
      await sleep(Math.min(5_000, 250 * 2 ** Math.min(attempt, 5)));
    }
  } finally {
    renderer.stop();
    process.removeListener('SIGINT', onSigint);
  }
  if (!opts.json) printSummary(last!);
  return last!;
}

/** For a coordinator without WatchJob: GetJob once a second. */
async function pollJob(client: SyncClient, id: string, renderer: Renderer): Promise<pb.Job__Output> {
  for (;;) {
    const job = await client.unary('GetJob', { id });
    renderer.update(job);
    if (isTerminal(job)) return job;
    await sleep(1_000);
  }
}

class SilentRenderer implements Renderer {
  update(): void {}
  note(): void {}
  stop(): void {}
}

const time = () => new Date().toTimeString().slice(0, 8);

/** Non-TTY: one line per job or task state change, easy to grep in CI logs. */
class LineRenderer implements Renderer {
  #jobState = '';
  #taskStates = new Map<string, string>();
  #width = 0;

  update(job: pb.Job__Output): void {
    const tasks = sortedTasks(job);
    if (!this.#width) {
      this.#split = splitNames(tasks);
      this.#width = Math.min(48, Math.max(5, ...tasks.map((t) => this.#label(t).length)));
    }
    const jobChanged = job.state !== this.#jobState;
    const first = this.#jobState === '';
    this.#jobState = job.state;
    // a new state is announced before the task lines it explains, an end state after them
    if (jobChanged && !isTerminal(job)) this.#print(`job ${job.id} ${jobStateWord(job.state)}${first ? ` (${tasks.length} tasks)` : ''}`);
    for (const t of tasks) {
      const prev = this.#taskStates.get(t.id);
      const state = t.state + ':' + t.attempts;
      if (prev === state) continue;
      this.#taskStates.set(t.id, state);
      // don't list every pending task at the start; do report them once they move
      if (prev === undefined && (t.state === 'TASK_STATE_PENDING' || t.state === 'TASK_STATE_QUEUED')) continue;
      let line = `${this.#label(t).padEnd(this.#width)}  ${taskStateWord(t.state).padEnd(9)}`;
      if (t.state === 'TASK_STATE_RUNNING' && t.attempts > 1) line += ` attempt ${t.attempts}`;
      if (t.state === 'TASK_STATE_DONE') line += ` ${count(t.rows)} rows, ${humanBytes(t.bytes)}, ${seconds(t.started_at, t.finished_at)} s`;
      if (t.error) line += ` ${oneLine(t.error)}`;
      this.#print(line.trimEnd());
    }
    if (jobChanged && isTerminal(job)) this.#print(`job ${job.id} ${jobStateWord(job.state)}`);
  }
  #split = new Set<string>();
  #label(t: pb.TaskInfo__Output): string {
    const n = taskName(t);
    return this.#split.has(n) ? `${n} [${t.id}]` : n;
  }
  note(line: string): void { this.#print(line); }
  stop(): void {}
  #print(line: string) { process.stdout.write(`${time()}  ${line}\n`); }
}

/** Names of tables that have more than one task (key ranges). */
function splitNames(tasks: pb.TaskInfo__Output[]): Set<string> {
  const seen = new Set<string>(), split = new Set<string>();
  for (const t of tasks) {
    const n = taskName(t);
    if (seen.has(n)) split.add(n);
    seen.add(n);
  }
  return split;
}

interface Group { name: string; rows: number; estimate: number; bytes: number; state: string; bar?: cliProgress.SingleBar }

const BAR_WIDTH = 24;

/** TTY: a cli-progress MultiBar on stderr, one bar per table plus a total. */
class BarRenderer implements Renderer {
  #multi: cliProgress.MultiBar | undefined;
  #total: cliProgress.SingleBar | undefined;
  #groups = new Map<string, Group>();
  #width = 5;
  #stopped = false;

  update(job: pb.Job__Output): void {
    if (this.#stopped) return;
    const fresh = new Map<string, Group>();
    for (const t of sortedTasks(job)) {
      const name = taskName(t);
      const g = fresh.get(name) ?? { name, rows: 0, estimate: 0, bytes: 0, state: '' };
      g.rows += Number(t.rows) || 0;
      g.estimate += Math.max(0, Number(t.row_estimate) || 0);
      g.bytes += Number(t.bytes) || 0;
      g.state = combine(g.state, taskStateWord(t.state));
      fresh.set(name, g);
    }
    if (!this.#multi) {
      this.#width = Math.min(40, Math.max(5, ...[...fresh.keys()].map((n) => n.length)));
      this.#multi = new cliProgress.MultiBar({
        format: (_o, params, payload: BarPayload) => formatBar(params.value, params.total, payload, this.#width),
        hideCursor: true, clearOnComplete: false, stopOnComplete: false, autopadding: true, fps: 8,
        stream: process.stderr,
      });
      this.#total = this.#multi.create(1, 0, { name: 'total', state: '', rows: 0, bytes: 0, extra: '' });
    }
    let rows = 0, est = 0, bytes = 0;
    for (const [name, g] of fresh) {
      const old = this.#groups.get(name);
      g.bar = old?.bar ?? this.#multi.create(1, 0, { name, state: '', rows: 0, bytes: 0, extra: '' });
      this.#groups.set(name, g);
      const total = g.state === 'done' ? Math.max(g.rows, 1) : Math.max(g.estimate, g.rows, 1);
      g.bar.setTotal(total);
      g.bar.update(g.state === 'done' ? total : g.rows, { name, state: g.state, rows: g.rows, estimate: g.estimate, bytes: g.bytes, extra: '' });
      rows += g.rows;
      est += g.state === 'done' ? g.rows : Math.max(g.estimate, g.rows);
      bytes += g.bytes;
    }
    // a table Postgres has no estimate for makes the total's percentage unknown too
    const unknown = [...fresh.values()].some((g) => g.estimate <= 0 && g.state !== 'done');
    const total = Math.max(est, rows, 1);
    this.#total!.setTotal(total);
    this.#total!.update(isTerminal(job) && job.state === 'JOB_STATE_COMPLETED' ? total : rows, {
      name: 'total', state: jobStateWord(job.state), rows, estimate: unknown && !isTerminal(job) ? 0 : est, bytes,
      extra: job.started_at ? `${seconds(job.started_at, job.finished_at)} s` : '',
    });
  }

  note(line: string): void {
    if (this.#multi) this.#multi.log(line + '\n');
    else process.stderr.write(line + '\n');
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#multi?.stop();
  }
}

interface BarPayload { name: string; state: string; rows: number; estimate?: number; bytes: number; extra: string }

/** Worst state wins, so a table shows "failed" if any of its key ranges failed. */
const STATE_RANK = ['done', 'pending', 'queued', 'running', 'cancelled', 'failed'];
function combine(a: string, b: string): string {
  if (!a) return b;
  if (a === 'done' && b !== 'done') return b === 'pending' || b === 'queued' ? 'running' : b;
  if (b === 'done' && a !== 'done') return a === 'pending' || a === 'queued' ? 'running' : a;
  return STATE_RANK.indexOf(a) >= STATE_RANK.indexOf(b) ? a : b;
}

function formatBar(value: number, total: number, p: BarPayload, width: number): string {
  const known = (p.estimate ?? 0) > 0 || p.state === 'done' || p.state === 'completed';
  const frac = total > 0 ? Math.min(1, value / total) : 0;
  const filled = known ? Math.round(frac * BAR_WIDTH) : 0;
  const bar = '█'.repeat(filled) + '░'.repeat(BAR_WIDTH - filled);
  const pct = known ? `${String(Math.floor(frac * 100)).padStart(3)}%` : '   ?';
  const name = p.name.length > width ? '…' + p.name.slice(p.name.length - width + 1) : p.name.padEnd(width);
  const of = known && p.state !== 'done' && p.state !== 'completed' ? `/${shortCount(Math.max(p.estimate ?? 0, p.rows))}` : '';
  const rows = `${shortCount(p.rows)}${of} rows`.padEnd(16);
  return `${name}  ${bar} ${pct}  ${rows} ${humanBytes(p.bytes).padStart(9)}  ${p.state}${p.extra ? '  ' + p.extra : ''}`;
}
