import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/** Directory of the newest PostgreSQL (>= 13) under /usr/lib/postgresql, or null (then PATH is used). */
export const pgBinDir: string | null = (() => {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return null;
  const versions = readdirSync(root)
    .filter((v) => /^\d+(\.\d+)?$/.test(v) && Number.parseFloat(v) >= 13 && existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a));
  return versions.length ? join(root, versions[0]!, 'bin') : null;
})();

/**
 * Absolute path of a PostgreSQL program. Taken from pgBinDir when it is there, so psql/pg_dump match the
 * server version (Debian's /usr/bin/psql is a wrapper that wants a configured cluster).
 */
export function pgBin(name: 'initdb' | 'pg_ctl' | 'psql' | 'pg_dump' | 'postgres'): string {
  return pgBinDir ? join(pgBinDir, name) : name;
}

/** initdb refuses to run as root: as root, server programs run as the `postgres` OS user. */
export const isRoot = process.getuid?.() === 0;

export interface RunOptions {
  /** Run as the postgres OS user when we are root (runuser). */
  asPostgres?: boolean;
  input?: string | Buffer;
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Default 120 000 ms. */
  timeoutMs?: number;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly result: RunResult,
  ) {
    super(`${command} failed with exit code ${result.code}: ${tail(result.stderr || result.stdout, 2000)}`);
    this.name = 'CommandError';
  }
}

function tail(text: string, max: number): string {
  const t = text.trim();
  return t.length > max ? '…' + t.slice(-max) : t;
}

/** Runs a program without a shell; rejects with CommandError on a non-zero exit unless `allowFail`. */
export function run(file: string, args: readonly string[], opts: RunOptions & { allowFail?: boolean } = {}): Promise<RunResult> {
  const [cmd, argv] = opts.asPostgres && isRoot ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, [...args]];
  const label = `${file.split('/').pop()} ${args.slice(0, 4).join(' ')}`.trim();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, {
      cwd: opts.cwd ?? '/',
      env: { ...process.env, LC_MESSAGES: 'C', PGCLIENTENCODING: 'UTF8', ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 120_000,
      killSignal: 'SIGKILL',
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {}); // the program may exit before reading all input; its exit code tells
    child.once('error', (e) => reject(new Error(`could not run ${cmd}: ${e.message}`, { cause: e })));
    child.once('close', (code, signal) => {
      const result = {
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `\n(killed by ${signal})` : ''),
      };
      if (result.code !== 0 && !opts.allowFail) reject(new CommandError(label, result));
      else resolve(result);
    });
    child.stdin.end(opts.input ?? '');
  });
}
