import type { Command } from 'commander';
import { displayName, type pb } from '@syncflow/shared';
import { intArg } from '../args.js';
import { SLOW_DEADLINE_MS, withClient, type Globals } from '../client.js';
import { count, humanBytes, oneLine, printJson, printTable, println, usageError } from '../output.js';

/** `job rollback|rejects|report`: undo a job, see the rows its target refused, its per-table report. */

function checkId(id: string): string {
  const v = id.trim();
  if (!v || v.length > 128 || /\s/.test(v)) throw usageError(`job id ${JSON.stringify(id)} is invalid`);
  return v;
}

export function registerSafety(program: Command): void {
  const job = program.commands.find((c) => c.name() === 'job');
  if (!job) throw new Error('the job command group must be registered first');

  job.command('rollback')
    .description('undo what a finished or failed job wrote on its target (refused if rows it wrote were changed since, unless --force)')
    .argument('<id>', 'job id')
    .option('--force', 'undo even rows changed since by someone else (their changes are lost)')
    .action(async (id: string, opts: { force?: boolean }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const r = await withClient(g, (client) => client.unary('RollbackJob', { id: checkId(id), force: Boolean(opts.force) }, SLOW_DEADLINE_MS));
      if (g.json) return printJson(r);
      println(`job ${r.job_id} rolled back: ${count(r.rows_deleted)} inserted row(s) deleted, ${count(r.rows_restored)} updated row(s) restored, ${count(r.rows_reinserted)} deleted row(s) re-inserted, ${r.sequences_restored} sequence(s) set back`);
    });

  job.command('rejects')
    .description('rows the target refused during a job (quarantined), with the reason')
    .argument('<id>', 'job id')
    .option('--limit <n>', 'how many', intArg(1, 100_000), 1000)
    .option('--rows', 'also print each refused row (COPY text): it contains data')
    .action(async (id: string, opts: { limit: number; rows?: boolean }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const r = await withClient(g, (client) => client.unary('ListRejects', { id: checkId(id), limit: opts.limit }, SLOW_DEADLINE_MS));
      if (g.json) return printJson(r);
      if (!r.rejects?.length) return println('no rejected rows');
      // A table split into key ranges has a task per part, each numbering its batches from 1: then the part is shown too.
      const parts = new Map<string, Set<string>>();
      for (const x of r.rejects) parts.set(displayName(x.schema, x.table), (parts.get(displayName(x.schema, x.table)) ?? new Set()).add(x.task_id));
      const split = [...parts.values()].some((p) => p.size > 1);
      const part = (taskId: string) => taskId.slice(taskId.lastIndexOf('/') + 1) || taskId;
      printTable([{ header: 'TABLE' }, ...(split ? [{ header: 'PART', align: 'right' as const }] : []), { header: 'BATCH', align: 'right' }, { header: 'SQLSTATE' }, { header: 'REASON' }, ...(opts.rows ? [{ header: 'ROW' }] : [])],
        r.rejects.map((x) => [displayName(x.schema, x.table), ...(split ? [part(x.task_id)] : []), String(x.seq), x.sqlstate, oneLine(x.message), ...(opts.rows ? [oneLine(x.row)] : [])]));
      println(`${count(r.total)} rejected row(s): ${r.counts.map((x) => `${displayName(x.schema, x.table)} ${count(x.rows)}`).join(', ')}`);
    });

  job.command('report')
    .description('per table: rows read, inserted, updated, deleted, quarantined, bytes, duration, verification')
    .argument('<id>', 'job id')
    .action(async (id: string, _opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const r = await withClient(g, (client) => client.unary('GetJobReport', { id: checkId(id) }, 30 * 60_000));
      if (g.json) return printJson(r);
      println(`job ${r.job_id} ${r.state}${r.rolled_back_at ? `, rolled back at ${r.rolled_back_at}` : ''} (report made ${r.created_at || '-'})`);
      if (r.rolled_back_at && (r.tables ?? []).some((t) => !t.verification.startsWith('not verified'))) println('the verification below is as of the job\'s end, before the rollback');
      printTable(
        [{ header: 'TABLE' }, { header: 'READ', align: 'right' }, { header: 'INSERTED', align: 'right' }, { header: 'UPDATED', align: 'right' },
          { header: 'DELETED', align: 'right' }, { header: 'QUARANTINED', align: 'right' }, { header: 'BYTES', align: 'right' },
          { header: 'SECONDS', align: 'right' }, { header: 'VERIFICATION' }],
        (r.tables ?? []).map((t) => [displayName(t.schema, t.table), count(t.rows_read), count(t.inserted), count(t.updated), count(t.deleted),
          count(t.quarantined), humanBytes(t.bytes), (Number(t.duration_ms) / 1000).toFixed(1), t.verification]),
      );
    });

  program.command('verify')
    .description('compare two databases table by table (key-range hashes, bisected down to the differing keys); exit 0 only if they match')
    .requiredOption('--from <conn>', 'source connection')
    .requiredOption('--to <conn>', 'target connection')
    .option('--tables <list>', 'only these tables, comma separated (default: all of the source)')
    .option('--max-keys <n>', 'differing keys listed per table and kind (default 100)', intArg(1, 100_000))
    .action(async (opts: { from: string; to: string; tables?: string; maxKeys?: number }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const tables = opts.tables ? opts.tables.split(',').map((s) => s.trim()).filter(Boolean) : [];
      const r = await withClient(g, (client) => client.unary('Verify', { from: opts.from, to: opts.to, tables, max_keys: opts.maxKeys ?? 0 }, 60 * 60_000));
      if (g.json) printJson(r);
      else printVerify(r);
      if (!r.match) process.exitCode = 1;
    });
}

function printVerify(r: pb.VerifyReport__Output): void {
  printTable([{ header: 'TABLE' }, { header: 'SOURCE ROWS', align: 'right' }, { header: 'TARGET ROWS', align: 'right' }, { header: 'RESULT' }],
    r.tables.map((t) => [t.schema ? displayName(t.schema, t.table) : t.table, count(t.source_rows), count(t.target_rows),
      t.match ? 'match' : t.note && t.differences === '0' ? t.note : `${count(t.differences)} difference(s)`]));
  for (const t of r.tables) {
    const name = t.schema ? displayName(t.schema, t.table) : t.table;
    if (t.only_source.length) println(`${name}: missing on the target: ${t.only_source.join(' ')}`);
    if (t.only_target.length) println(`${name}: only on the target: ${t.only_target.join(' ')}`);
    if (t.different.length) println(`${name}: different: ${t.different.join(' ')}`);
  }
  println(r.match ? 'the databases match' : 'the databases differ');
}

/** Pre-flight findings, estimates and dry-run counts of a plan. */
export function printChecks(plan: pb.Plan__Output): void {
  if (Number(plan.estimated_seconds) > 0) println(`estimated: ~${count(plan.estimated_rows)} rows, ${humanBytes(plan.estimated_bytes)}, ~${count(plan.estimated_seconds)} s`);
  const checks = plan.checks ?? [];
  if (checks.length) {
    println('pre-flight checks:');
    for (const c of checks) println(`  ${c.severity.toUpperCase().padEnd(7)} ${c.message}`);
    const errors = checks.filter((c) => c.severity === 'error').length;
    println(errors ? `${errors} error(s): sync start will refuse this plan` : 'no errors');
  }
  if (plan.dry_run?.length) {
    println('dry run (nothing written):');
    printTable([{ header: 'TABLE' }, { header: 'INSERT', align: 'right' }, { header: 'UPDATE', align: 'right' }, { header: 'DELETE', align: 'right' },
      { header: 'SOURCE ROWS', align: 'right' }, { header: 'TARGET ROWS', align: 'right' }, { header: 'NOTE' }],
    plan.dry_run.map((t) => [displayName(t.schema, t.table), count(t.inserts), count(t.updates), count(t.deletes), count(t.source_rows), count(t.target_rows), t.note || '']), '  ');
  }
}
