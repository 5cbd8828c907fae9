import { spawn, execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pgBin, pgBinDir, type PgCluster } from '../harness/index.js';
import { RssSampler } from '../harness/rss.js';
import { FK_LEVELS, FK_ORDER, KEYS } from './dataset.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface Measured {
  wallS: number;
  /** label → peak RSS (MB) of the process tree doing the copy. */
  peakRssMb: Record<string, number>;
  notes: string[];
  /** label → CPU seconds used during the run (filled in by the caller for the baselines). */
  cpuS?: Record<string, number>;
}

/** A child process whose exit we await; rejects with its stderr tail on a non-zero exit. */
function runChild(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; onPid?: (pid: number) => void } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid) opts.onPid?.(child.pid);
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-8000)));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args[0] ?? ''} failed (code ${code}, signal ${signal}): ${err.slice(-3000)}`));
    });
  });
}

/** PATH with the server's own client programs first (pgcopydb runs pg_dump/pg_restore from PATH). */
function pgPath(): string {
  return pgBinDir ? `${pgBinDir}:${process.env.PATH ?? ''}` : (process.env.PATH ?? '');
}

/** Makes sure `pgcopydb` is installed (Debian's package, with apt-get as root); returns its version line or null. */
export function ensurePgcopydb(): string | null {
  const version = () => {
    try {
      return execFileSync('pgcopydb', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n').find((l) => l.startsWith('pgcopydb version')) ?? 'pgcopydb';
    } catch {
      return null;
    }
  };
  const v = version();
  if (v || process.getuid?.() !== 0) return v;
  try {
    const policy = execFileSync('apt-cache', ['policy', 'pgcopydb'], { encoding: 'utf8' });
    if (/Candidate:\s*\(none\)/.test(policy)) return null;
    execFileSync('apt-get', ['install', '-y', '-qq', '-o', 'DPkg::Lock::Timeout=600', 'pgcopydb'], {
      stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 900_000,
    });
  } catch {
    return null;
  }
  return version();
}

/** 1. pgcopydb clone into an existing empty database: schema, 2 COPY jobs, 2 index jobs, constraints. */
export async function runPgcopydb(source: PgCluster, db: string, target: PgCluster, toDb: string): Promise<Measured> {
  await target.createDatabase(toDb);
  const dir = await mkdtemp(join(tmpdir(), 'syncflow-bench-pgcopydb-'));
  let pid = 0;
  const rss = new RssSampler(() => ({ pgcopydb: pid ? [pid] : [] }), { tree: true }).start();
  const t0 = performance.now();
  try {
    await runChild('pgcopydb', ['clone', '--source', source.url(db), '--target', target.url(toDb), '--table-jobs', '2', '--index-jobs', '2',
      '--no-owner', '--no-acl', '--dir', dir], { env: { PATH: pgPath() }, onPid: (p) => (pid = p) });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const wallS = (performance.now() - t0) / 1000;
  return { wallS, peakRssMb: rss.stop(), notes: ['pgcopydb 0.10 also runs VACUUM ANALYZE on each target table (no switch to skip it in 0.10)'] };
}

/** Target database with the source's full schema (tables, indexes, constraints) from pg_dump --schema-only. */
export async function schemaCopy(source: PgCluster, db: string, target: PgCluster, toDb: string): Promise<void> {
  await target.createDatabase(toDb);
  const dump = await runChild(pgBin('pg_dump'), ['-h', '127.0.0.1', '-p', String(source.port), '-U', 'postgres', '--schema-only', '--no-owner', '--no-privileges', db]);
  await target.exec(toDb, dump);
}

/**
 * 2. `psql -c "COPY t TO STDOUT" | psql -c "COPY t FROM STDIN"` per table, 2 tables at a time within
 * an FK level (levels in order), into tables that already have their indexes and FKs.
 */
export async function runPsqlPipe(source: PgCluster, db: string, target: PgCluster, toDb: string): Promise<Measured> {
  const t0 = performance.now();
  await schemaCopy(source, db, target, toDb);
  const pids = new Set<number>();
  const rss = new RssSampler(() => ({ psql: [...pids] }), { tree: true }).start();
  const psql = pgBin('psql');
  const conn = (c: PgCluster, d: string) => `${psql} -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p ${c.port} -U postgres -d ${d}`;
  const pipeOne = (t: string) =>
    runChild('bash', ['-o', 'pipefail', '-c', `${conn(source, db)} -c 'COPY public.${t} TO STDOUT' | ${conn(target, toDb)} -c 'COPY public.${t} FROM STDIN'`], {
      onPid: (p) => pids.add(p),
    });
  for (const level of FK_LEVELS) {
    const queue = [...level];
    await Promise.all([0, 1].map(async () => {
      for (let t = queue.shift(); t; t = queue.shift()) await pipeOne(t);
    }));
  }
  const wallS = (performance.now() - t0) / 1000;
  return { wallS, peakRssMb: rss.stop(), notes: ['schema (with indexes and FKs) created by pg_dump --schema-only first; its time is included'] };
}

/** 3. The predecessor's batched upsert (test/bench/naive-upsert.mjs), in its own node process. */
export async function runNaive(source: PgCluster, db: string, target: PgCluster, toDb: string): Promise<Measured> {
  const t0 = performance.now();
  await schemaCopy(source, db, target, toDb);
  let pid = 0;
  const rss = new RssSampler(() => ({ naive: pid ? [pid] : [] }), { useHwm: true }).start();
  const arg = JSON.stringify({ source: source.url(db), target: target.url(toDb), tables: FK_ORDER.map((name) => ({ name, key: KEYS[name] })) });
  await runChild(process.execPath, [join(here, 'naive-upsert.mjs'), arg], { onPid: (p) => (pid = p) });
  const wallS = (performance.now() - t0) / 1000;
  return { wallS, peakRssMb: rss.stop(), notes: ['schema (with indexes and FKs) created by pg_dump --schema-only first; its time is included'] };
}
