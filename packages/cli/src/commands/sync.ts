import { Option, type Command } from 'commander';
import { displayName, type pb } from '@syncflow/shared';
import { byteSizeArg, checkName, collect, intArg, rateArg, splitTables, syncMode } from '../args.js';
import { SLOW_DEADLINE_MS, withClient, type Globals } from '../client.js';
import { failureReason } from '../jobview.js';
import { CliError, count, formatTable, humanBytes, list, methodWord, printJson, println, usageError } from '../output.js';
import { followJob } from '../progress.js';
import { printChecks } from './safety.js';

/** `sync plan` (what would happen) and `sync start` (do it, optionally following the job). */

interface SpecOpts {
  from: string; to: string; tables?: string[]; mode?: string; batchBytes?: string; maxAttempts?: number; jobTimeout?: number;
  maxRowsPerS?: number; maxBytesPerS?: number; splitRows?: number; keepIndexes?: boolean;
  confirm?: string; createMissing?: boolean; dryRun?: boolean; onBadRow?: string; onFailure?: string; diff?: string; copyFormat?: string; verify?: string;
}

function buildSpec(opts: SpecOpts): pb.SyncSpec {
  checkName('connection', opts.from);
  checkName('connection', opts.to);
  if (opts.from === opts.to) throw usageError('--from and --to name the same connection');
  return {
    from: opts.from,
    to: opts.to,
    tables: splitTables(opts.tables),
    mode: syncMode(opts.mode),
    batch_bytes: opts.batchBytes ?? '0',
    max_attempts: opts.maxAttempts ?? 0,
    timeout_seconds: String(opts.jobTimeout ?? 0),
    max_rows_per_s: opts.maxRowsPerS ?? 0,
    max_bytes_per_s: opts.maxBytesPerS ?? 0,
    split_rows: opts.splitRows ?? 0,
    keep_indexes: !!opts.keepIndexes,
    confirm: opts.confirm ?? '',
    create_missing: Boolean(opts.createMissing),
    dry_run: Boolean(opts.dryRun),
    on_bad_row: opts.onBadRow ?? '',
    on_failure: opts.onFailure ?? '',
    diff: opts.diff ?? '',
    copy_format: opts.copyFormat ?? '',
    verify: opts.verify ?? '',
  };
}

const tablesOption = () => new Option('--tables <list>', 'only these tables, comma separated: orders,public.users,"Sales Dept"."Order Items" (repeatable; default: all)')
  .argParser(collect);
const modeOption = () => new Option('--mode <mode>', 'upsert (default): insert and update, keep rows only the target has; mirror: also delete them');

export function registerSync(group: (name: string, description: string) => Command): void {
  const cmd = group('sync', 'plan and start syncs between two connections');

  cmd.command('plan')
    .description('show the tables, their order (levels) and how each will be written, without changing anything')
    .requiredOption('--from <conn>', 'source connection')
    .requiredOption('--to <conn>', 'target connection')
    .addOption(tablesOption())
    .addOption(modeOption())
    .option('--create-missing', 'plan to create tables missing on the target from the source\'s definitions')
    .option('--dry-run', 'also count the rows that would be inserted, updated and deleted (reads both sides, writes nothing)')
    .action(async (opts: SpecOpts, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const spec = buildSpec(opts);
      const plan = await withClient(g, (client) => client.unary('PlanSync', spec, SLOW_DEADLINE_MS));
      if (g.json) return printJson(plan);
      printPlan(plan);
    });

  cmd.command('start')
    .description('start a sync job; with --wait, follow it to the end')
    .requiredOption('--from <conn>', 'source connection')
    .requiredOption('--to <conn>', 'target connection')
    .addOption(tablesOption())
    .addOption(modeOption())
    .option('--batch-bytes <size>', 'largest batch, e.g. 4MiB (default: the server\'s, 4MiB); batches adapt below it', byteSizeArg)
    .option('--max-rows-per-s <n>', 'rate limit of the job in rows per second (default: none; change it later with job rate)', rateArg(false))
    .option('--max-bytes-per-s <size>', 'rate limit of the job in bytes per second, e.g. 20MiB', rateArg(true))
    .option('--split-rows <n>', 'cut tables bigger than this many rows into parallel key ranges (default 500000; -1: never)', (v) => (v.trim() === '-1' ? -1 : intArg(1000)(v)))
    .option('--keep-indexes', 'load empty tables with their indexes and foreign keys in place (default: set aside, rebuilt after)')
    .option('--max-attempts <n>', 'tries per table before it is dead-lettered (default 3)', intArg(1, 100))
    .option('--job-timeout <seconds>', 'cancel the job if it runs longer than this (default: no limit)', intArg(1, 30 * 24 * 3600))
    .option('--wait', 'follow the job with live progress; exit 0 only if it completes')
    .option('--confirm <target>', 'the target connection\'s name: required when the target is protected')
    .option('--create-missing', 'create tables missing on the target from the source\'s definitions (indexes and FKs after the data)')
    .option('--dry-run', 'count per table the rows that would be inserted, updated and deleted; write nothing')
    .addOption(new Option('--on-bad-row <policy>', 'rows the target refuses: quarantine (default), skip, fail').choices(['quarantine', 'skip', 'fail']))
    .addOption(new Option('--on-failure <policy>', 'when the job fails: keep what was written (default), or rollback').choices(['keep', 'rollback']))
    .addOption(new Option('--diff <how>', 'tables whose target has rows: auto (default) ships the rows changed since the table\'s last sync (change slot), else compares hash buckets; hash: always compare hash buckets on both sides (catches writes to the target by others); off: ship every row').choices(['auto', 'hash', 'off']))
    .addOption(new Option('--copy-format <format>', 'auto (default): initial loads of tables whose types allow it travel as binary COPY; text: always COPY text').choices(['auto', 'text']))
    .addOption(new Option('--verify <how>', 'full (default): the job\'s report compares every synced table on both sides when the job ends; off: counts only (syncflow verify compares on request)').choices(['full', 'off']))
    .action(async (opts: SpecOpts & { wait?: boolean }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const spec = buildSpec(opts);
      if (opts.dryRun) {
        const plan = await withClient(g, (client) => client.unary('PlanSync', spec, SLOW_DEADLINE_MS));
        if (g.json) return printJson(plan);
        printPlan(plan);
        if (plan.checks?.some((x) => x.severity === 'error')) throw new CliError('the pre-flight checks found errors; nothing would be synced');
        return;
      }
      await withClient(g, async (client) => {
        const job = await client.unary('StartSync', spec, SLOW_DEADLINE_MS);
        if (!opts.wait) {
          if (g.json) printJson(job);
          else println(`job ${job.id} started`);
          return;
        }
        if (!g.json) println(`job ${job.id} started`);
        const final = await followJob(client, job.id, { json: !!g.json });
        if (g.json) printJson(final);
        else {
          const rejects = await client.unary('ListRejects', { id: job.id, limit: 1 }).catch(() => undefined);
          if (rejects && rejects.total !== '0') println(`${count(rejects.total)} row(s) refused by the target were quarantined: syncflow job rejects ${job.id}`);
        }
        if (final.state !== 'JOB_STATE_COMPLETED') throw new CliError(failureReason(final));
      });
    });
}

function keyText(t: pb.TablePlan__Output): string {
  if (!t.key?.length) return 'none';
  const k = t.key.length === 1 ? t.key[0]! : `(${t.key.join(', ')})`;
  return t.key_kind && t.key_kind !== 'primary' ? `${k} [${t.key_kind}]` : k;
}

export function printPlan(plan: pb.Plan__Output): void {
  const tables = [...(plan.tables ?? [])].sort((a, b) =>
    a.level - b.level || displayName(a.schema, a.name).localeCompare(displayName(b.schema, b.name)));
  if (!tables.length) {
    println('nothing to sync: no tables matched');
  } else {
    const lines = formatTable(
      [{ header: 'TABLE' }, { header: 'METHOD' }, { header: 'KEY' }, { header: 'ROWS', align: 'right' },
        { header: 'SIZE', align: 'right' }, { header: 'DEPENDS ON' }, { header: 'DEFERRED CONSTRAINTS' }],
      tables.map((t) => [
        displayName(t.schema, t.name), methodWord(t.method), keyText(t),
        Number(t.row_estimate) > 0 ? `~${count(t.row_estimate)}` : '?', humanBytes(t.bytes), list(t.depends_on), list(t.deferred_constraints),
      ]),
      '  ',
    );
    println(lines[0]);
    let level: number | undefined;
    tables.forEach((t, i) => {
      if (t.level !== level) {
        level = t.level;
        const n = tables.filter((x) => x.level === level).length;
        println(`level ${level} (${n} ${n === 1 ? 'table' : 'tables'})`);
      }
      println(lines[i + 1]);
      for (const note of t.notes ?? []) println(`      note: ${note}`);
    });
  }
  let rows = 0n, bytes = 0;
  for (const t of tables) {
    if (/^\d+$/.test(t.row_estimate)) rows += BigInt(t.row_estimate);
    bytes += Number(t.bytes) || 0;
  }
  const levels = plan.levels || new Set(tables.map((t) => t.level)).size;
  println(`${tables.length} ${tables.length === 1 ? 'table' : 'tables'} in ${levels} ${levels === 1 ? 'level' : 'levels'}, ~${count(rows.toString())} rows, ${humanBytes(bytes)}`);
  if (plan.notes?.length) {
    println('notes:');
    for (const n of plan.notes) println(`  - ${n}`);
  }
  printChecks(plan);
}
