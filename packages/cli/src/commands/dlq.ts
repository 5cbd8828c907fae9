import type { Command } from 'commander';
import { intArg } from '../args.js';
import { SLOW_DEADLINE_MS, withClient, type Globals } from '../client.js';
import { dash, jobStateWord, oneLine, printJson, printTable, println, usageError } from '../output.js';

/** `dlq list|retry`: tasks that exhausted their attempts (the dead-letter stream), and re-running them. */

function checkDlqId(id: string): string {
  const v = id.trim();
  if (!/^[1-9][0-9]{0,17}$/.test(v)) throw usageError(`dead letter id ${JSON.stringify(id)} is invalid (a positive number, see syncflow dlq list)`);
  return v;
}

export function registerDlq(group: (name: string, description: string) => Command): void {
  const cmd = group('dlq', 'dead letters: tables that failed for good, and retrying them');

  cmd.command('list')
    .alias('ls')
    .description('dead letters, newest first (not yet retried unless --all)')
    .option('--job <id>', 'only this job')
    .option('--all', 'include dead letters already retried')
    .option('--limit <n>', 'how many', intArg(1, 1000), 100)
    .action(async (opts: { job?: string; all?: boolean; limit: number }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const res = await withClient(g, (client) => client.unary('ListDeadLetters', { job_id: opts.job ?? '', limit: opts.limit, include_retried: !!opts.all }));
      if (g.json) return printJson(res);
      const rows = res.dead_letters ?? [];
      if (!rows.length) return println('no dead letters');
      printTable(
        [{ header: 'ID', align: 'right' }, { header: 'JOB' }, { header: 'TABLE' }, { header: 'ATTEMPTS', align: 'right' },
          { header: 'CODE' }, { header: 'AT' }, { header: 'RETRIED' }, { header: 'ERROR' }],
        rows.map((d) => [d.id, d.job_id, `${d.schema}.${d.table}`, String(d.attempts), d.error_code, d.created_at, dash(d.retried_at), oneLine(d.error).slice(0, 120)]),
      );
    });

  cmd.command('retry')
    .description('re-run the table of a dead letter (and the tables it blocked) from its checkpoint')
    .argument('<id>', 'dead letter id (see syncflow dlq list)')
    .action(async (id: string, _opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const job = await withClient(g, (client) => client.unary('RetryDeadLetter', { id: checkDlqId(id) }, SLOW_DEADLINE_MS));
      if (g.json) return printJson(job);
      println(`dead letter ${id} retried: job ${job.id} ${jobStateWord(job.state)}`);
    });
}
