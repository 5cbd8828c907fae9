import type { Command } from 'commander';
import { intArg, rateArg } from '../args.js';
import { SLOW_DEADLINE_MS, withClient, type Globals } from '../client.js';
import { failureReason, printJobHeader, printTasksDetailed } from '../jobview.js';
import {
  CliError, count, dash, humanBytes, jobStateWord, modeWord, oneLine, printJson, printTable, println, seconds, usageError,
} from '../output.js';
import { followJob } from '../progress.js';

/** `job show|list|watch|cancel|logs|pause|resume|retry`. */

function checkId(id: string): string {
  const v = id.trim();
  if (!v || v.length > 128 || /\s/.test(v)) throw usageError(`job id ${JSON.stringify(id)} is invalid`);
  return v;
}

export function registerJob(group: (name: string, description: string) => Command): void {
  const cmd = group('job', 'inspect, follow and cancel sync jobs');

  cmd.command('show')
    .description('a job and its tasks')
    .argument('<id>', 'job id')
    .action(async (id: string, _opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const job = await withClient(g, (client) => client.unary('GetJob', { id: checkId(id) }));
      if (g.json) return printJson(job);
      printJobHeader(job);
      println();
      printTasksDetailed(job);
    });

  cmd.command('list')
    .alias('ls')
    .description('recent jobs, newest first')
    .option('--limit <n>', 'how many', intArg(1, 1000), 20)
    .action(async (opts: { limit: number }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const res = await withClient(g, (client) => client.unary('ListJobs', { limit: opts.limit }));
      if (g.json) return printJson(res);
      const jobs = res.jobs ?? [];
      if (!jobs.length) return println('no jobs');
      printTable(
        [{ header: 'ID' }, { header: 'STATE' }, { header: 'FROM' }, { header: 'TO' }, { header: 'MODE' },
          { header: 'TABLES', align: 'right' }, { header: 'ROWS', align: 'right' }, { header: 'BYTES', align: 'right' },
          { header: 'SECONDS', align: 'right' }, { header: 'CREATED' }],
        jobs.map((j) => [
          j.id, jobStateWord(j.state), j.from, j.to, modeWord(j.mode), j.tasks?.length ? String(new Set(j.tasks.map((t) => `${t.schema}.${t.table}`)).size) : '-',
          count(j.rows), humanBytes(j.bytes), seconds(j.started_at, j.finished_at), dash(j.created_at),
        ]),
      );
    });

  cmd.command('watch')
    .description('follow a job with live progress until it ends; exit 0 only if it completes')
    .argument('<id>', 'job id')
    .action(async (id: string, _opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      await withClient(g, async (client) => {
        const final = await followJob(client, checkId(id), { json: !!g.json });
        if (g.json) printJson(final);
        if (final.state !== 'JOB_STATE_COMPLETED') throw new CliError(failureReason(final));
      });
    });

  cmd.command('cancel')
    .description('cancel a job: running tasks stop after their current batch')
    .argument('<id>', 'job id')
    .action(async (id: string, _opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const job = await withClient(g, (client) => client.unary('CancelJob', { id: checkId(id) }));
      if (g.json) return printJson(job);
      println(`job ${job.id} ${jobStateWord(job.state)}`);
    });

  cmd.command('rate')
    .description('change the rate limits of a running job (0 = unlimited); agents apply them at their next batch')
    .argument('<id>', 'job id')
    .option('--rows <n>', 'rows per second', rateArg(false), 0)
    .option('--bytes <size>', 'bytes per second, e.g. 20MiB', rateArg(true), 0)
    .action(async (id: string, opts: { rows: number; bytes: number }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const job = await withClient(g, (client) => client.unary('SetJobRate', { id: checkId(id), max_rows_per_s: opts.rows, max_bytes_per_s: opts.bytes }));
      if (g.json) return printJson(job);
      println(`job ${job.id}: at most ${opts.rows || 'unlimited'} rows/s, ${opts.bytes || 'unlimited'} bytes/s`);
    });

  cmd.command('logs')
    .description('the log of a job: at, level, [task], message')
    .argument('<id>', 'job id')
    .action(async (id: string, _opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const logs = await withClient(g, (client) => client.unary('GetJobLogs', { id: checkId(id) }));
      if (g.json) return printJson(logs);
      const entries = logs.entries ?? [];
      if (!entries.length) return println('no log entries');
      const lw = Math.max(...entries.map((e) => e.level.length));
      for (const e of entries) {
        const task = e.task_id ? ` [${e.task_id}]` : '';
        println(`${e.at} ${e.level.padEnd(lw)}${task} ${oneLine(e.message)}`);
      }
    });

  const control = (name: 'pause' | 'resume', rpc: 'PauseJob' | 'ResumeJob', description: string) =>
    cmd.command(name)
      .description(description)
      .argument('<id>', 'job id')
      .action(async (id: string, _opts: unknown, c: Command) => {
        const g = c.optsWithGlobals<Globals>();
        const job = await withClient(g, (client) => client.unary(rpc, { id: checkId(id) }));
        if (g.json) return printJson(job);
        println(`job ${job.id} ${jobStateWord(job.state)}`);
      });
  control('pause', 'PauseJob', 'pause a job: running tables stop after their current batch, their checkpoints kept');
  control('resume', 'ResumeJob', 'resume a paused job from its checkpoints');

  cmd.command('retry')
    .description('re-run the tables of a job that failed (and those they blocked), from their checkpoints')
    .argument('<id>', 'job id')
    .option('--failed', 'only what failed (the default and only mode)')
    .action(async (id: string, _opts: { failed?: boolean }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const job = await withClient(g, (client) => client.unary('RetryJob', { id: checkId(id), failed_only: true }, SLOW_DEADLINE_MS));
      if (g.json) return printJson(job);
      println(`job ${job.id} ${jobStateWord(job.state)}: failed tables queued again`);
    });
}
