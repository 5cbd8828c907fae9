import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { appendFile, chown, mkdtemp, readFile, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { killOnExit, pidAlive } from './cleanup.js';
import { CommandError, isRoot, pgBin, run } from './pgbin.js';
import { freePort } from './ports.js';
import { waitFor, sleep } from './wait.js';

export type Sql = postgres.Sql;

/** Quotes an SQL identifier ("a""b"). */
export function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

export interface PgClusterOptions {
  /** Part of the temp dir name, for humans reading /tmp. */
  name?: string;
  /** Extra postgresql.conf settings (they win over the defaults). */
  settings?: Record<string, string>;
}

export interface PsqlFileOptions {
  /** Drop `\c`/`\connect` lines and DROP/CREATE DATABASE statements (scripts that make their own db). */
  stripConnect?: boolean;
}

const baseSettings: Record<string, string> = {
  listen_addresses: '127.0.0.1',
  wal_level: 'logical',
  max_wal_senders: '10',
  max_replication_slots: '10',
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
  shared_buffers: '128MB',
  max_connections: '100',
};

/** An ephemeral PostgreSQL cluster in its own temp dir, on its own port (127.0.0.1, trust auth). */
export class PgCluster {
  readonly dataDir: string;
  readonly logFile: string;
  private readonly clients = new Map<string, Sql>();
  private readonly unregister: () => void;

  private constructor(
    readonly name: string,
    /** Temp dir holding data/, log and the unix socket. */
    readonly baseDir: string,
    readonly port: number,
  ) {
    this.dataDir = join(baseDir, 'data');
    this.logFile = join(baseDir, 'log');
    this.unregister = killOnExit(() => this.killSync());
  }

  static async start(opts: PgClusterOptions = {}): Promise<PgCluster> {
    const name = (opts.name ?? 'pg').replace(/[^A-Za-z0-9_-]/g, '_');
    const baseDir = await mkdtemp(join(tmpdir(), `syncflow-test-${name}-`));
    if (isRoot) {
      const [uid, gid] = postgresIds();
      await chown(baseDir, uid, gid);
    }
    const cluster = new PgCluster(name, baseDir, await freePort());
    try {
      await cluster.initdb({ ...baseSettings, ...opts.settings });
      await cluster.start();
    } catch (err) {
      await cluster.destroy().catch(() => {});
      throw err;
    }
    return cluster;
  }

  private async initdb(settings: Record<string, string>): Promise<void> {
    const args = ['-D', this.dataDir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'];
    try {
      await run(pgBin('initdb'), [...args, '--locale=C.UTF-8'], { asPostgres: true });
    } catch (err) {
      if (!(err instanceof CommandError) || !/locale/i.test(err.message)) throw err;
      await rm(this.dataDir, { recursive: true, force: true });
      await run(pgBin('initdb'), [...args, '--locale=C'], { asPostgres: true });
    }
    const all = { ...settings, port: String(this.port), unix_socket_directories: this.baseDir };
    const lines = Object.entries(all).map(([k, v]) => `${k} = '${v.replace(/'/g, "''")}'`);
    await appendFile(join(this.dataDir, 'postgresql.conf'), `\n# syncflow test harness\n${lines.join('\n')}\n`);
  }

  /** postgres://postgres@127.0.0.1:PORT/db */
  url(db = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${encodeURIComponent(db)}`;
  }

  /** PID of the running postmaster, or null. */
  postmasterPid(): number | null {
    try {
      const pid = Number.parseInt(readFileSync(join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0] ?? '', 10);
      return Number.isInteger(pid) && pid > 0 && pidAlive(pid) ? pid : null;
    } catch {
      return null;
    }
  }

  get running(): boolean {
    return this.postmasterPid() !== null;
  }

  /** Starts the server (again) on the same data dir and port; a no-op when it runs. */
  async start(): Promise<void> {
    if (this.running) return;
    // After kill(), a postmaster nobody reaps (PID 1 here does not) stays a zombie, and postgres takes
    // lock files naming a zombie for a live server. It is dead (running is false): remove them.
    for (const f of [join(this.dataDir, 'postmaster.pid'), join(this.baseDir, `.s.PGSQL.${this.port}.lock`)]) {
      await unlink(f).catch(() => {});
    }
    let lastErr: unknown;
    for (let attempt = 0; attempt < 10; attempt++) {
      try {
        await run(pgBin('pg_ctl'), ['-D', this.dataDir, '-l', this.logFile, '-w', '-t', '120', 'start'], { asPostgres: true });
        return;
      } catch (err) {
        // Old backends of a killed postmaster may still hold the shared memory for a moment.
        lastErr = err;
        await sleep(500);
      }
    }
    throw new Error(`PgCluster ${this.name}: could not start; server log:\n${await this.serverLog(3000)}`, { cause: lastErr });
  }

  /** Fast shutdown; closes the clients handed out by sql() first. */
  async stop(): Promise<void> {
    await this.closeClients();
    await this.shutdown();
  }

  /** Fast shutdown and start; clients from sql() stay usable (postgres.js reconnects). */
  async restart(): Promise<void> {
    await this.shutdown();
    await this.start();
  }

  /** SIGKILLs the postmaster and its children: a crash. start() brings it back (crash recovery). */
  async kill(): Promise<void> {
    const pid = this.postmasterPid();
    if (pid === null) return;
    const victims = [pid, ...childPids(pid)];
    for (const p of victims) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await waitFor(() => victims.every((p) => !pidAlive(p)), { what: `postgres ${this.name} processes to die`, timeoutMs: 10_000, intervalMs: 50 });
  }

  /** Stops the server and removes its directory. */
  async destroy(): Promise<void> {
    await this.closeClients();
    await this.shutdown().catch(() => this.kill());
    if (this.running) await this.kill();
    this.unregister();
    await rm(this.baseDir, { recursive: true, force: true });
  }

  /** A postgres.js client for `db` (max 4 connections), cached per db and closed by stop()/destroy(). */
  sql(db = 'postgres'): Sql {
    let client = this.clients.get(db);
    if (!client) {
      client = postgres(this.url(db), { max: 4, onnotice: () => {}, connect_timeout: 10, idle_timeout: 30 });
      this.clients.set(db, client);
    }
    return client;
  }

  /** Creates a database and, when given, runs an SQL script in it. */
  async createDatabase(name: string, script?: string): Promise<void> {
    await this.sql().unsafe(`CREATE DATABASE ${quoteIdent(name)}`);
    if (script) await this.exec(name, script);
  }

  /** Runs an SQL script with psql (ON_ERROR_STOP); returns psql's stdout. */
  async psqlFile(db: string, file: string, opts: PsqlFileOptions = {}): Promise<string> {
    if (!opts.stripConnect) return (await this.psql(db, ['-f', file])).stdout;
    const text = (await readFile(file, 'utf8'))
      .split('\n')
      .filter((l) => !/^\s*\\c(onnect)?(\s|;|$)/i.test(l) && !/^\s*(DROP|CREATE)\s+DATABASE\b/i.test(l))
      .join('\n');
    return (await this.psql(db, ['-f', '-'], text)).stdout;
  }

  /**
   * Runs arbitrary SQL (several statements allowed, each on its own, stopping at the first error) with
   * psql; returns the output unaligned and without headers (`-At`), e.g. "42\n".
   */
  async exec(db: string, sqlText: string): Promise<string> {
    return (await this.psql(db, ['-At', '-f', '-'], sqlText)).stdout;
  }

  /** The last `maxChars` of the server log. */
  async serverLog(maxChars = 20_000): Promise<string> {
    const text = await readFile(this.logFile, 'utf8').catch(() => '');
    return text.slice(-maxChars);
  }

  private psql(db: string, args: string[], input?: string) {
    return run(pgBin('psql'), ['-h', '127.0.0.1', '-p', String(this.port), '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1', '-q', '-X', ...args], {
      input,
      env: { PGOPTIONS: '-c client_min_messages=warning' },
    });
  }

  private async shutdown(): Promise<void> {
    if (!this.running) return;
    await run(pgBin('pg_ctl'), ['-D', this.dataDir, '-m', 'fast', '-w', '-t', '60', 'stop'], { asPostgres: true });
  }

  private async closeClients(): Promise<void> {
    const clients = [...this.clients.values()];
    this.clients.clear();
    await Promise.all(clients.map((c) => c.end({ timeout: 2 }).catch(() => {})));
  }

  private killSync(): void {
    const pid = this.postmasterPid();
    if (pid === null) return;
    for (const p of [pid, ...childPids(pid)]) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

let ids: [number, number] | undefined;
/** uid and gid of the postgres OS user (as root, initdb and the server run as that user). */
function postgresIds(): [number, number] {
  if (!ids) {
    try {
      const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
      ids = [uid, gid];
    } catch (err) {
      throw new Error("running as root but there is no 'postgres' OS user to run PostgreSQL as (apt-get install postgresql creates it)", { cause: err });
    }
  }
  return ids;
}

/** Direct children of `pid` (postgres backends and auxiliary processes), read from /proc. */
function childPids(pid: number): number[] {
  if (!existsSync('/proc')) return [];
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // process vanished
    }
  }
  return out;
}
